"""Run a recorded host script on the simulated host, where the VM ran it: in
/run/thinsim/work, an empty folder on an ext4 file system.  Each run gets its own mount
namespace with a private folder bound on /run/thinsim, so runs can go on side by side."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = HERE / "scripts"
RECORDED = HERE / "recorded"
MOUNT = "/run/thinsim"  # record.py's MOUNT: paths under it appear in the output

# Binds the private folder on /run/thinsim, then runs the script from /run/thinsim/work.
_RUN = 'mkdir -p "$1" && mount --bind "$2" "$1" && cd "$1/work" && shift 2 && exec "$@"'


def run_simulated(script: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run SCRIPT with ``thinsim run`` in a fresh /run/thinsim/work; return its result."""
    private = tempfile.mkdtemp(prefix="thinsim-host-", dir=os.environ.get("TMPDIR", "/tmp"))
    try:
        os.mkdir(os.path.join(private, "work"))
        env = {"PATH": os.environ["PATH"], "HOME": "/root", "LANG": "C.UTF-8"}
        if "PYTHONPATH" in os.environ:  # a checkout other than the installed one
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        argv = [sys.executable, "-m", "thinsim.cli", "run", str(script)]
        p = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _RUN, "sh"]
            + [MOUNT, private]
            + argv,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)
    p.stdout, p.stderr = normalise(p.stdout), normalise(p.stderr)
    return p


def recorded(name: str) -> tuple[str, str, str]:
    """The real host's stdout, stderr and exit status (as text) for script NAME, with the
    backing files' device and inode numbers normalised as in ``run_simulated``."""
    out, err, rc = ((RECORDED / f"{name}.{x}").read_text() for x in ("out", "err", "rc"))
    return normalise(out), normalise(err), rc


# -- the backing file's device and inode numbers ------------------------------------------
#
# losetup prints the device and inode of each loop device's backing file: "[0256]:13" in
# `losetup -a`, `-j` and `losetup DEV` (printf "[%04jd]:%ju", st_dev as the kernel encodes it
# (huge_encode_dev), st_ino: sys-utils/losetup.c, printf_loopdev), and the BACK-INO and
# BACK-MAJ:MIN columns of `losetup -l -O ...`.  In the VM the files live on a fresh ext4 on
# /dev/ram0 (1:0, so "[0256]", inodes from 13); the simulated host shows its own file system's
# numbers, which differ by machine and by run.  Like the recorder's masking of dd's timings,
# both sides get these numbers replaced by placeholders before they are compared: "[<dev>]"
# for the device and "<iN>" for the Nth distinct inode in order of appearance (so that two
# loop devices on one file still show the same inode).  In tables the placeholder keeps the
# column's width, so column alignment is still compared.

_DEV_INO = re.compile(r"^(/dev/loop\d+: )\[(\d+)\]:(\d+) \(", re.MULTILINE)
_LOSETUP_HEADER = re.compile(r"^NAME +.*\bBACK-(?:INO|MAJ:MIN)\b")


def normalise(text: str) -> str:
    """Replace the backing files' device and inode numbers by placeholders (see above)."""
    inodes: dict[str, str] = {}

    def ino(number: str) -> str:
        return inodes.setdefault(number, f"<i{len(inodes) + 1}>")

    text = _DEV_INO.sub(lambda m: f"{m[1]}[<dev>]:{ino(m[3])} (", text)
    lines = text.split("\n")
    columns: list[tuple[int, int, str]] = []
    for k, line in enumerate(lines):
        if _LOSETUP_HEADER.match(line):
            tokens = [(m.start(), m.end(), m[0]) for m in re.finditer(r"\S+", line)]
            columns = []
            for i, (start, end, name) in enumerate(tokens):
                if name == "BACK-INO":  # right-aligned: from the previous column's end
                    columns.append((tokens[i - 1][1] + 1, end, name))
                elif name == "BACK-MAJ:MIN":  # left-aligned: up to the next column
                    stop = tokens[i + 1][0] - 1 if i + 1 < len(tokens) else len(line)
                    columns.append((start, stop, name))
            continue
        if not columns or not line.startswith("/dev/loop"):
            columns = [] if not line.startswith("/dev/loop") else columns
            continue
        for start, end, name in sorted(columns, reverse=True):
            cell = line[start:end].strip()
            if not cell:
                continue
            if name == "BACK-INO":
                new = ino(cell).rjust(end - start)
            else:
                new = "<dev>".ljust(end - start)
            lines[k] = lines[k][:start] + new + lines[k][end:]
            line = lines[k]
    return "\n".join(lines)
