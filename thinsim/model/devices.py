"""The simulated machine's devices: loop devices, device-mapper devices and their tables,
and the kernel log; and the one lookup of a device by its node or its number (what
lookup_bdev and blkdev_get_by_dev answer), which every command and the device-mapper core
use.

Plain data: the kernel's code over it is in dm.py (device-mapper), loop.py and blockio.py
(the block layer's I/O); thinsim/host/state.py keeps it in the host's folder.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..constants import DM_MAJOR, LOOP_MAJOR, SECTOR_SIZE
from .pool import NO_SPACE_TIMEOUT_SECS, Clock, KernelLog


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
    # thinsim/model/loopfile.py keeps for the host; device and inode are the file's
    holder_pid: int = 0
    holder_fd: int = -1

    @property
    def path(self) -> str:
        return f"/dev/loop{self.number}"

    @property
    def devno(self) -> str:
        return f"{LOOP_MAJOR}:{self.number}"


@dataclass
class StoreLoop(LoopDevice):
    """A loop device of the model backend (thinsim/backends/model.py): its bytes are a
    DataStore's (the pool's data device: accounting, memory or a file), or, with no store,
    the metadata device, which the model keeps in memory only."""

    store: object = None


@dataclass
class Target:
    """One row of a device-mapper table."""

    start: int
    length: int
    type: str
    params: str  # as given
    obj: object = None  # the model target (pool, thin) once constructed
    # what the constructor sets: the devices it opened (dm_get_device, MAJ:MIN); a
    # pool's metadata and data devices and the loop devices their I/O reaches; a thin's
    # external origin and its pool's mapped device
    devs: list[str] = field(default_factory=list)
    md_devno: str = ""
    data_devno: str = ""
    md_loop: int = -1
    data_loop: int = -1
    loops: tuple[int, ...] = ()
    origin: str | None = None
    pool_name: str | None = None
    pool_minor: int | None = None


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
    mknod: bool = False  # a /dev/mapper node libdm made without a disk (dm_mknodes)

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
    # dm_thin_pool's module parameter no_space_timeout (seconds), given to each new pool
    no_space_timeout: int = NO_SPACE_TIMEOUT_SECS
    # commands run so far: the simulated host's clock for a pool's periodic commit
    command_seq: int = 0

    def __repr__(self) -> str:
        return f"HostState(loops={sorted(self.loops)}, dm={sorted(self.dm)})"

    # -- the kernel log with timestamps (dmesg) --------------------------------------

    def stamp_log(self) -> None:
        """Give every log line without a time the current uptime."""
        now = time.time() - self.boot_time
        while len(self.log_times) < len(self.log.lines):
            self.log_times.append(now)

    # -- lookups ---------------------------------------------------------------------

    def _check(self) -> None:
        """Assert the invariants of the machine's devices: names and minors unique, every
        table a gapless run of constructed targets, a target's object (a pool's) bound by
        one mapped device's tables only."""
        minors = [d.minor for d in self.dm.values()]
        assert len(minors) == len(set(minors)), minors
        owner: dict[int, str] = {}
        for name, dev in self.dm.items():
            assert dev.name == name, (name, dev.name)
            assert dev.disk_added or dev.live is None, name
            for table in (dev.live, dev.inactive):
                if table is None:
                    continue
                assert table, name
                end = 0
                for t in table:
                    assert t.start == end and t.length > 0, (name, t)
                    assert t.obj is not None, (name, t)
                    end += t.length
                    if not isinstance(t.obj, tuple):  # a pool's object outlives a reload
                        assert owner.setdefault(id(t.obj), name) == name, name
        for n, loop in self.loops.items():
            assert loop.number == n, (n, loop)

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
        """The bound loop device or the dm device a node or MAJ:MIN names, or None."""
        dev = lookup(self, path) if path.startswith("/") else None
        if dev is None and not path.startswith("/"):
            dev = get_by_devno(self, path) if is_devno(path) else None
        if isinstance(dev, LoopDevice) and dev.number not in self.loops:
            return None
        return dev


def is_device_path(path: str) -> bool:
    """Whether ``path`` names a device node the simulated host owns (whether or not it
    exists there): such paths must never reach the real host."""
    p = os.path.normpath(path)
    return (
        (p.startswith("/dev/loop") and (p[9:].isdigit() or p == "/dev/loop-control"))
        or p.startswith("/dev/mapper/")
        or (p.startswith("/dev/dm-") and p[8:].isdigit())
    )


class Unloaded:
    """What stands for a pool's metadata (``kind`` "pmd": the metadata device's byte
    offset as ``value``, and ``incore``: the in-core facts the kernel keeps beside what it
    reads from the device: its space maps' allocation cursors, the needs_check flag
    set after a failed commit) or a thin's in-core details
    (``kind`` "td": its device id) in a state saved without its pools, until
    dm_thin.reopen_pools reads them from the metadata device."""

    def __init__(self, kind: str, value: int, incore: dict | None = None) -> None:
        self.kind, self.value, self.incore = kind, value, incore or {}

    def __repr__(self) -> str:
        return f"Unloaded({self.kind}, {self.value})"


def device_size(state: HostState, dev) -> int:
    """Bytes of a simulated block device."""
    if isinstance(dev, LoopDevice):
        return dev.size
    if dev.live is None:
        return 0
    return sum(t.length for t in dev.live) * SECTOR_SIZE


# -- the one lookup of a block device -------------------------------------------------------


def loop_nodes(state: HostState) -> set[int]:
    """The loop devices that exist, bound or not (a state saved before they were kept has
    loop0-7)."""
    nodes = getattr(state, "loop_nodes", None)
    if nodes is None:
        nodes = state.loop_nodes = set(range(8))
    return nodes


def dm_by_minor(state: HostState, minor: int) -> DmDevice | None:
    return next((d for d in state.dm.values() if d.minor == minor), None)


def dm_by_uuid(state: HostState, uuid: str) -> DmDevice | None:
    return next((d for d in state.dm.values() if d.uuid == uuid), None)


def has_mapper_node(dev: DmDevice) -> bool:
    """udev makes /dev/mapper/NAME once the device has a disk (its first table load);
    libdm's dm_mknodes makes a node for one without (``mknod``)."""
    return dev.disk_added or getattr(dev, "mknod", False)


def _number(text: str) -> int | None:
    """A node's number as the kernel names it (no sign, no leading zero)."""
    return int(text) if text.isdigit() and text.isascii() and text == str(int(text)) else None


def is_devno(text: str) -> bool:
    major, sep, minor = text.partition(":")
    return bool(sep) and major.isdigit() and minor.isdigit()


def node_devno(state: HostState, path: str) -> str | None:
    """The device number of the node ``path`` names in the simulated /dev (devtmpfs's
    loopN and dm-N, udev's /dev/mapper/NAME), or None when there is no such node.  A
    relative path is taken from the current folder."""
    p = os.path.normpath(os.path.join(os.getcwd(), path))
    if p.startswith("/dev/loop"):
        n = _number(p[9:])
        if n is not None and (n in state.loops or n in loop_nodes(state)):
            return f"{LOOP_MAJOR}:{n}"
        return None
    if p.startswith("/dev/mapper/"):
        dev = state.dm.get(p[12:])
        return dev.devno if dev is not None and has_mapper_node(dev) else None
    if p.startswith("/dev/dm-"):
        n = _number(p[8:])
        dev = dm_by_minor(state, n) if n is not None else None
        return dev.devno if dev is not None and dev.disk_added else None
    return None


def get_by_devno(state: HostState, devno: str, *, probe: bool = False):
    """blkdev_get_by_dev: the device behind a number -- a loop device (one that is not
    bound opens with size 0), a dm device that has a disk -- or None when no disk answers.
    With ``probe``, opening 7:N for a loop device that does not exist makes the loop driver
    create it (loop_probe); without, only existing loop devices answer."""
    major, _, minor = devno.partition(":")
    major_n, minor_n = int(major), int(minor)
    if major_n == LOOP_MAJOR and minor_n < (1 << 20):
        if minor_n in state.loops:
            return state.loops[minor_n]
        nodes = loop_nodes(state)
        if probe:
            nodes.add(minor_n)
        return unbound_loop(minor_n) if minor_n in nodes else None
    if major_n == DM_MAJOR:
        dev = dm_by_minor(state, minor_n)
        if dev is not None and dev.disk_added:
            return dev
    return None


def lookup(state: HostState, path: str):
    """The device a file name opens (lookup_bdev, then blkdev_get_by_dev): a LoopDevice
    (bound, or unbound with size 0), a DmDevice, or None (no node, or no disk behind it)."""
    devno = node_devno(state, path)
    return get_by_devno(state, devno) if devno is not None else None


#: opens of devices by holders outside the device-mapper tables (id -> opens): the commands
#: of the simulated host that have a device open, a dd that waits on a suspended device
#: included.  Not saved: an open ends with its command, as bd_openers does with its process.
_opens: dict[int, int] = {}


def blkdev_get(dev) -> None:
    """An open of DEV (blkdev_get): it counts in the device's open count until its put."""
    _opens[id(dev)] = _opens.get(id(dev), 0) + 1


def blkdev_put(dev) -> None:
    n = _opens.get(id(dev), 0) - 1
    if n > 0:
        _opens[id(dev)] = n
    else:
        _opens.pop(id(dev), None)


#: the opens programs have of the real block device that shows DEV under thinsim run
#: (thinsim/host/realdev.py sets it: a mounted file system's, which claims the device)
external_opens = None


def blkdev_opens(dev) -> int:
    """How many opens of DEV its holders outside the tables have."""
    extra = external_opens(dev) if external_opens is not None else 0
    return _opens.get(id(dev), 0) + extra


def unbound_loop(number: int) -> LoopDevice:
    """A loop device node with no backing file: it opens, with size 0."""
    return LoopDevice(number, "", 0, 0)
