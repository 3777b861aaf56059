"""Run a recorded host script on the simulated host, where the VM ran it: in
/run/thinsim/work, an empty folder on an ext4 file system.  Each run gets its own mount
namespace with a private folder bound on /run/thinsim, so runs can go on side by side."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
# This checkout's thinsim, also when dev/host/compare.py runs and another one is installed
sys.path.insert(0, str(HERE.parent.parent))

from thinsim.host.real import normalise  # the backing files' device and inode numbers
from thinsim.host.run import this_thinsim

SCRIPTS = HERE / "scripts"
RECORDED = HERE / "recorded"
MOUNT = "/run/thinsim"  # record.py's MOUNT: paths under it appear in the output

# Mounts a fresh ext4 (made in the private folder) on /run/thinsim, as record.py puts one on
# /dev/ram0 for every script, then runs the script from /run/thinsim/work.  A file's size on
# disk (du) is the file system's: the pool flushes its metadata file at every commit, as the
# kernel does, and on a file system other writers share (/tmp) the flushed pieces land apart,
# costing the file an extent block a fresh one does not.  Without a loop device for the image
# the private folder itself is bound there.
_RUN = (
    'mkdir -p "$1" && { mount -o loop "$2/fs.img" "$1" || mount --bind "$2" "$1"; } '
    '&& mkdir -p "$1/work" && cd "$1/work" && shift 2 && exec "$@"'
)
FS_BYTES = 2 << 30  # record.sh's ram disk (brd rd_size=2097152)
# Scripts that run real programs on simulated devices (mkfs, mount: thinsim/host/realdev.py);
# where this machine cannot make them real block devices, the simulated host refuses them.
REAL_DEVICE_SCRIPTS = ("00_seed_walkthrough", "35_ext4_on_thin", "36_xfs_on_thin")


def run_simulated(script: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run SCRIPT with ``thinsim run`` in a fresh /run/thinsim/work; return its result."""
    private = tempfile.mkdtemp(prefix="thinsim-host-", dir=os.environ.get("TMPDIR", "/tmp"))
    try:
        os.mkdir(os.path.join(private, "work"))
        image = os.path.join(private, "fs.img")
        with open(image, "wb") as f:
            f.truncate(FS_BYTES)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], capture_output=True, check=False)
        env = {"PATH": os.environ["PATH"], "HOME": "/root", "LANG": "C.UTF-8"}
        # the thinsim these tests came with (python -m from /run/thinsim/work would import
        # whichever thinsim is installed: another checkout's)
        argv = this_thinsim("thinsim.cli", "run", str(script))
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
