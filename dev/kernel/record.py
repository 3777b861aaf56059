"""Record scenario transcripts on the real kernel.  Runs inside the VM (see record.sh).

    python3 dev/kernel/record.py [--out DIR] [--environment] [NAME...]

For each scenario NAME (default: every tests/kernel/scenarios/*.scn) it mounts a fresh tmpfs,
runs the scenario with the package's one scenario executor on the real kernel
(``ScenarioExecutor.on_kernel``: thinsim/executor.py over thinsim/backends/kernel.py) and writes DIR/NAME.txt (DIR defaults to
tests/kernel/recorded).  ``--environment`` also writes DIR/ENVIRONMENT.txt.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from thinsim.backends.dmtools import run_command
from thinsim.executor import ScenarioExecutor
from thinsim.scenario import parse, run

SCENARIOS = REPO / "tests" / "kernel" / "scenarios"
# The backing files' tmpfs, fresh for each scenario (the kernel backend's ledgers stay in
# /run/thinsim/kernel-ledger, outside it).
WORKDIR = Path("/run/thinsim/scenario")


def environment() -> str:
    out = []
    for argv in (
        ["uname", "-r"],
        ["dmsetup", "version"],
        ["dmsetup", "targets"],
        ["thin_dump", "--version"],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True, check=True)
        out.append("$ " + " ".join(argv))
        out.extend(proc.stdout.splitlines())
    return "".join(line + "\n" for line in out)


def record(name: str, out_dir: Path, scenarios: Path = SCENARIOS) -> None:
    ops = parse((scenarios / f"{name}.scn").read_text())
    WORKDIR.mkdir(parents=True, exist_ok=True)
    run_command(["mount", "-t", "tmpfs", "-o", "size=8g", "tmpfs", str(WORKDIR)])
    try:
        executor = ScenarioExecutor.on_kernel(WORKDIR)
        try:
            transcript = run(ops, executor)
        finally:
            executor.close()
    finally:
        run_command(["umount", str(WORKDIR)])
    (out_dir / f"{name}.txt").write_text(transcript)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "kernel" / "recorded")
    parser.add_argument("--scenarios", type=Path, default=SCENARIOS, help="scenario folder")
    parser.add_argument("--environment", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    names = args.names or sorted(p.stem for p in args.scenarios.glob("*.scn"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.environment:
        (args.out / "ENVIRONMENT.txt").write_text(environment())
    failed = []
    start = time.monotonic()
    for name in names:
        t0 = time.monotonic()
        try:
            record(name, args.out, args.scenarios)
        except Exception:  # noqa: BLE001 - report it, record the other scenarios
            traceback.print_exc()
            failed.append(name)
            print(f"FAILED {name}", file=sys.stderr, flush=True)
        else:
            print(f"recorded {name} in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    print(
        f"{len(names) - len(failed)}/{len(names)} scenarios in {time.monotonic() - start:.0f} s",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
