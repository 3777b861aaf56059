"""``thinsim diff``: run scripts on the simulated host and on the real one, and show where
they part.

Both sides run a script the same way (thinsim/host/real.py): ``bash SCRIPT`` in an empty
/run/thinsim/work with the same fixed environment.  The simulated run gets that folder
privately (``thinsim run --workdir``: a fresh folder bound on /run/thinsim in the run's own
mount namespace), so runs can go on side by side and the host's /run is left alone.  Outputs
are compared after :func:`thinsim.host.real.mask` (dd timings, dmesg timestamps).
"""

from __future__ import annotations

import difflib
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .real import ENV, MOUNT, TIMEOUT, Result, run_scripts
from .run import this_thinsim
from .sandbox import die_with_parent


def run_simulated(script: Path, args: Sequence[str] = (), timeout: float = TIMEOUT) -> Result:
    """Run SCRIPT with ``thinsim run`` in a private, empty /run/thinsim/work."""
    argv = this_thinsim("thinsim.cli", "run", "--workdir", str(MOUNT), str(script), *args)
    # thinsim run gives the script THINSIM_PYTHON anyway; its sandbox needs it first.
    env = {**ENV, "THINSIM_PYTHON": sys.executable}
    # thinsim run ends its script, all of it, and removes its folder on SIGTERM: when the
    # timeout comes, and when this process dies (PR_SET_PDEATHSIG), SIGKILL included.
    # (thinsim diff starts no threads.)
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, preexec_fn=die_with_parent(signal.SIGTERM),  # noqa: PLW1509
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        returncode: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        proc.terminate()
        stdout, stderr = proc.communicate()
        returncode = "timeout"
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return Result(_text(stdout), _text(stderr), returncode)


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "surrogateescape")


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


def unified(name: str, real: Result, simulated: Result) -> str:
    """The unified diff from the real host's output to the simulated host's (empty when they
    agree): stdout, stderr and the exit status, each under its own header.  Both are masked
    (dd timings, dmesg timestamps) and the backing files' device and inode numbers, which
    depend on the file system each host keeps its files on, are replaced by placeholders."""
    real, simulated = real.normalised(), simulated.normalised()
    out = []
    for what, a, b in (
        ("stdout", real.stdout, simulated.stdout),
        ("stderr", real.stderr, simulated.stderr),
        ("exit status", f"{real.returncode}\n", f"{simulated.returncode}\n"),
    ):
        out += difflib.unified_diff(
            _lines(a), _lines(b), f"real {name} ({what})", f"simulated {name} ({what})"
        )
    return "".join(out)


def diff_scripts(scripts: Sequence[str | Path], timeout: float = TIMEOUT) -> tuple[str, int]:
    """Run every script on both hosts (the real ones in one VM boot where needed); return the
    diffs and how many scripts differ."""
    paths = [Path(s).resolve() for s in scripts]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such script")
    real = run_scripts([(p, []) for p in paths], timeout=timeout)
    text, differing = [], 0
    for path, r in zip(paths, real, strict=True):
        d = unified(str(path), r, run_simulated(path, timeout=timeout))
        differing += bool(d)
        text.append(d)
    return "".join(text), differing


def main(scripts: Sequence[str], timeout: float = TIMEOUT) -> int:
    """``thinsim diff``: print the diffs; exit 0 only when every script agrees."""
    try:
        text, differing = diff_scripts(scripts, timeout)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"thinsim diff: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    if len(scripts) > 1:
        print(f"{len(scripts) - differing}/{len(scripts)} scripts identical", file=sys.stderr)
    return 1 if differing else 0
