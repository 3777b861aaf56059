"""The ``thinsim`` command."""

from __future__ import annotations

import argparse
import json
import sys


def _scenario(args) -> int:
    from .model_executor import ModelExecutor
    from .scenario import parse, run

    with open(args.file) as f:
        ops = parse(f.read())
    sys.stdout.write(run(ops, ModelExecutor()))
    return 0


def _bench(args) -> int:
    from .bench import run_all

    results = run_all(quick=args.quick)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        for k, v in sorted(results.items()):
            print(f"{k:24} {v}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="thinsim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("scenario", help="run a scenario file on the model, print its transcript")
    p.add_argument("file")
    p.set_defaults(func=_scenario)
    p = sub.add_parser("bench", help="measure the model's speed and memory")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--quick", action="store_true", help="smaller sizes (for a smoke run)")
    p.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
