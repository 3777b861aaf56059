"""The simulated host's state: loop devices, device-mapper devices, pools, the kernel log.

Every simulated command is its own process (a shim on PATH), so the state lives in a folder
(``--host DIR``) and each command loads it, changes it and saves it under an exclusive
``flock``, so that commands run at once lose nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..model.pool import Clock, KernelLog

LOOP_MAJOR = 7
DM_MAJOR = 254  # what Debian 12's kernel gave device-mapper in the VM (vm-recipe.md)
STATE_FILE = "state.pickle"
LOCK_FILE = "lock"


@dataclass
class LoopDevice:
    """A loop device bound to a backing file (drivers/block/loop.c)."""

    number: int
    backing_file: str
    inode: int
    device: int
    offset: int = 0
    sizelimit: int = 0
    read_only: bool = False
    autoclear: bool = False
    size: int = 0  # capacity in bytes, fixed at attach and at ``losetup -c``
    dio: bool = False
    partscan: bool = False
    # the open backing file (lo_backing_file): fd HOLDER_FD of process HOLDER_PID, which
    # thinsim/host/loopfile.py keeps for the host; device and inode are the file's
    holder_pid: int = 0
    holder_fd: int = -1

    @property
    def path(self) -> str:
        return f"/dev/loop{self.number}"

    @property
    def devno(self) -> str:
        return f"{LOOP_MAJOR}:{self.number}"


@dataclass
class Target:
    """One row of a device-mapper table."""

    start: int
    length: int
    type: str
    params: str  # as given
    obj: object = None  # the model target (pool, thin) once constructed


@dataclass
class DmDevice:
    """A device-mapper device: a name, a minor, a live and an inactive table."""

    name: str
    minor: int
    uuid: str = ""
    live: list[Target] | None = None
    inactive: list[Target] | None = None
    suspended: bool = False
    event_nr: int = 0
    read_only: bool = False
    # dm-ioctl.c/dm.c facts dmsetup shows: the inactive table's mode, a pending deferred
    # remove, the gendisk's existence (added at the first table load) and its read-ahead
    inactive_ro: bool = False
    deferred_remove: bool = False
    disk_added: bool = False
    read_ahead: int = 256

    @property
    def devno(self) -> str:
        return f"{DM_MAJOR}:{self.minor}"

    @property
    def path(self) -> str:
        return f"/dev/mapper/{self.name}"


@dataclass
class HostState:
    """Everything a simulated host remembers between commands."""

    loops: dict[int, LoopDevice] = field(default_factory=dict)
    dm: dict[str, DmDevice] = field(default_factory=dict)
    log: KernelLog = field(default_factory=KernelLog)
    log_times: list[float] = field(default_factory=list)
    clock: Clock = field(default_factory=Clock)
    boot_time: float = field(default_factory=time.time)
    # loop devices that exist, bound or not: loop0-7 from loop.ko's load, more from
    # LOOP_CTL_GET_FREE / LOOP_CTL_ADD (losetup); none goes away
    loop_nodes: set[int] = field(default_factory=lambda: set(range(8)))

    def __repr__(self) -> str:
        return f"HostState(loops={sorted(self.loops)}, dm={sorted(self.dm)})"

    # -- the kernel log with timestamps (dmesg) --------------------------------------

    def stamp_log(self) -> None:
        """Give every log line without a time the current uptime."""
        now = time.time() - self.boot_time
        while len(self.log_times) < len(self.log.lines):
            self.log_times.append(now)

    # -- lookups ---------------------------------------------------------------------

    def free_loop(self) -> int:
        n = 0
        while n in self.loops:
            n += 1
        return n

    def free_dm_minor(self) -> int:
        used = {d.minor for d in self.dm.values()}
        m = 0
        while m in used:
            m += 1
        return m

    def device_by_path(self, path: str):
        """The simulated device a path names (/dev/loopN, /dev/mapper/NAME, /dev/dm-N,
        MAJ:MIN), or None."""
        p = os.path.normpath(path)
        if p.startswith("/dev/loop") and p[9:].isdigit():
            return self.loops.get(int(p[9:]))
        if p.startswith("/dev/mapper/"):
            return self.dm.get(p[12:])
        if p.startswith("/dev/dm-") and p[8:].isdigit():
            minor = int(p[8:])
            return next((d for d in self.dm.values() if d.minor == minor), None)
        if ":" in path:
            major, _, minor = path.partition(":")
            if major.isdigit() and minor.isdigit():
                if int(major) == LOOP_MAJOR:
                    return self.loops.get(int(minor))
                if int(major) == DM_MAJOR:
                    return next((d for d in self.dm.values() if d.minor == int(minor)), None)
        return None


def is_device_path(path: str) -> bool:
    """Whether ``path`` names a device node the simulated host owns (whether or not it
    exists there): such paths must never reach the real host."""
    p = os.path.normpath(path)
    return (
        (p.startswith("/dev/loop") and (p[9:].isdigit() or p == "/dev/loop-control"))
        or p.startswith("/dev/mapper/")
        or (p.startswith("/dev/dm-") and p[8:].isdigit())
    )


@contextlib.contextmanager
def open_host(folder: str | os.PathLike, *, write: bool = True):
    """Load the host state from ``folder`` under its lock; save it back on success."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
        path = folder / STATE_FILE
        if path.exists():
            with open(path, "rb") as f:
                state = pickle.load(f)
        else:
            state = HostState()
        if write:
            from .blockio import new_command

            new_command(state)  # the pool's periodic commit between commands
        yield state
        if write:
            state.stamp_log()
            _write_committed_metadata(state)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)


def _write_committed_metadata(state: HostState) -> None:
    """Put every pool's metadata, as of its last commit, into its metadata file (in the
    kernel's on-disk format, so that the real thin tools can read it)."""
    from ..model.disk import write_metadata
    from . import loopfile

    for dev in state.dm.values():
        for t in dev.live or []:
            if t.type != "thin-pool" or t.obj is None:
                continue
            pmd = t.obj.pmd
            if getattr(t, "written", None) == pmd.commit_count:
                continue
            loop = state.loops.get(t.md_loop)
            if loop is None:
                continue
            path = loopfile.io_path(loop)
            if path is None:
                continue  # the file is lost: the kernel's metadata writes fail (EIO)
            write_metadata(pmd, path, loop.offset)
            t.written = pmd.commit_count
