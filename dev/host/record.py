"""Record what the real host tools print for tests/host/scripts/NAME.sh.  Runs inside the VM.

    python3 dev/host/record.py [--scripts DIR] [--out DIR] [--environment] [NAME...]

Started by dev/host/record.sh (one ``thinsim vm`` boot).  NEVER run it on a machine whose
devices you care about: inside the VM every script starts from a wiped machine.

For each script NAME (default: every DIR/*.sh, sorted) it runs ``bash NAME.sh`` as
``thinsim run --backend kernel`` does (thinsim/host/real.py: a machine as just booted, a fresh
ext4 on a RAM disk mounted on /run/thinsim, the folder /run/thinsim/work, a fixed environment)
and writes OUT/NAME.out, OUT/NAME.err (both masked: dd timings, dmesg timestamps) and
OUT/NAME.rc (the exit status, a decimal number and a newline).

``--environment`` also writes OUT/ENVIRONMENT.txt (kernel and tool versions).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from thinsim.host.real import TIMEOUT, environment, in_vm, run_in_vm

__all__ = ["record"]

SCRIPTS = REPO / "tests" / "host" / "scripts"


def record(script: Path, out_dir: Path) -> float:
    """Run SCRIPT, write its masked outputs and status; return the seconds it took."""
    name = script.stem
    t0 = time.monotonic()
    result = run_in_vm(script.resolve()).masked()
    elapsed = time.monotonic() - t0
    for ext, text in (("out", result.stdout), ("err", result.stderr)):
        (out_dir / f"{name}.{ext}").write_bytes(text.encode("utf-8", "surrogateescape"))
    (out_dir / f"{name}.rc").write_text(f"{result.returncode}\n")
    if result.returncode == "timeout":
        raise RuntimeError(f"timed out after {TIMEOUT} s (partial output kept)")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("--scripts", type=Path, default=SCRIPTS)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "host" / "recorded")
    parser.add_argument("--environment", action="store_true")
    args = parser.parse_args(argv)
    if not in_vm():
        parser.error("runs only inside `thinsim vm` (use dev/host/record.sh)")
    scripts = sorted(args.scripts.glob("*.sh"))
    if args.names:
        scripts = [args.scripts / f"{name.removesuffix('.sh')}.sh" for name in args.names]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.environment:
        (args.out / "ENVIRONMENT.txt").write_text(environment())
    failed = []
    start = time.monotonic()
    for script in scripts:
        try:
            elapsed = record(script, args.out)
        except Exception as exc:  # noqa: BLE001 - report it, record the other scripts
            failed.append(script.stem)
            print(f"FAILED {script.stem}: {exc!r}", file=sys.stderr, flush=True)
        else:
            print(f"recorded {script.stem} in {elapsed:.1f} s", file=sys.stderr, flush=True)
    print(
        f"{len(scripts) - len(failed)}/{len(scripts)} scripts in {time.monotonic() - start:.0f} s",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
