"""The simulated kernel's device-mapper core (drivers/md/dm.c, dm-table.c, dm-ioctl.c):
mapped devices, their tables, the ioctls, and the registry of target types whose hooks
the core calls (dm_register_target: dm_thin.py, dm_linear.py).  One core, used by the
simulated host's dmsetup (thinsim/host/tools/dmsetup.py) and by the model backend's Python
API (thinsim/backends/model.py).

Each ioctl function takes the ``HostState`` and does what the kernel does for one ioctl,
raising ``ThinsimError`` with the kernel's errno (and leaving the kernel log lines the
kernel leaves).  Formatting what the tools print is the commands' job.
"""

from __future__ import annotations

import errno as E

from ..constants import DM_MAJOR, LOOP_MAJOR
from ..constants import SECTOR_SIZE as SECTOR
from ..errors import ThinsimError, error_for
from .devices import (
    DmDevice,
    HostState,
    LoopDevice,
    Target,
    blkdev_opens,
    device_size,
    dm_by_minor,
    dm_by_uuid,
    get_by_devno,
    is_devno,
    loop_nodes,
    node_devno,
    unbound_loop,
)
from .loop import loop_detach
from .pool import KernelLog, TableError, warn_if_metadata_device_too_big

# -- device-mapper ----------------------------------------------------------------------


def log_table_error(log: KernelLog, devno: str, target: str, e: TableError) -> None:
    """dm_table_add_target's failure: "%s: %s: %s (%pe)", then the ioctl's line."""
    log.emit("table", f"{devno}: {target}: {e.ti_error} (-{e.errno_name})")
    log.emit("ioctl", "error adding target to table")


def log_device_too_small(
    log: KernelLog,
    devno: str,
    dev_name: str,
    start: int,
    length: int,
    dev_sectors: int,
    first_table: bool,
) -> None:
    """dm-table.c: device_area_is_invalid; a device's first table also fails to set up
    its queue (dm-ioctl.c: table_load)."""
    log.emit(
        "table",
        f"{devno}: {dev_name} too small for target: start={start}, len={length}, "
        f"dev_size={dev_sectors}",
    )
    if first_table:
        log.emit("core", "Cannot calculate initial queue limits")
        log.emit("ioctl", "unable to set up device queue for new table.")


DM_DRIVER_VERSION = (4, 47, 0)
# dm_get_target_version/list_versions: the registered targets, newest registration first
# (dm-thin-pool.ko loaded after the built-in striped, linear and error).
TARGET_VERSIONS = (
    ("thin-pool", (1, 22, 0)),
    ("thin", (1, 22, 0)),
    ("striped", (1, 6, 0)),
    ("linear", (1, 4, 0)),
    ("error", (1, 5, 0)),
)
# Targets a Debian 12 kernel has (built in, or as a module it would load on first use)
# that the simulation does not implement: a table or request naming one is refused.
UNSIMULATED_TARGETS = frozenset(
    [
        "striped",
        "zero",
        "mirror",
        "snapshot",
        "snapshot-origin",
        "snapshot-merge",
        "crypt",
        "raid",
        "cache",
        "cache-cleaner",
        "era",
        "delay",
        "flakey",
        "multipath",
        "integrity",
        "verity",
        "writecache",
        "clone",
        "dust",
        "ebs",
        "log-writes",
        "switch",
        "unstriped",
        "vdo",
        "zoned",
    ]
)


class NotSimulated(Exception):
    """The kernel would do this, the simulation does not (the caller refuses)."""


def lookup_device(state: HostState, path: str):
    """dm-table.c: dm_get_device's lookup (lookup_bdev, else "major:minor"), then the open:
    a LoopDevice (bound, or unbound with size 0), a DmDevice, None (-ENODEV: no such node)
    or NO_DISK (a device number nothing answers: -ENXIO).  Opening 7:N for a loop device
    that does not exist yet makes the loop driver create it."""
    if path.startswith("/"):
        devno = node_devno(state, path)
        if devno is None:
            return None
    elif is_devno(path):
        devno = path
    else:
        return None
    dev = get_by_devno(state, devno, probe=True)
    return dev if dev is not None else NO_DISK


NO_DISK = "ENXIO"


def blkdev_name(state: HostState, devno: str) -> str | None:
    """The kernel name of a block device (/sys/dev/block/M:N), None if there is none."""
    major, _, minor = devno.partition(":")
    if int(major) == LOOP_MAJOR:
        n = int(minor)
        return f"loop{n}" if n in loop_nodes(state) or n in state.loops else None
    dev = dm_by_minor(state, int(minor))
    return f"dm-{dev.minor}" if dev is not None and dev.disk_added else None


def dm_create(state: HostState, name: str, uuid: str = "", minor: int | None = None) -> DmDevice:
    """DM_DEV_CREATE (dm_hash_insert): EBUSY for a name or uuid in use or a taken minor."""
    if "/" in name:
        state.log.emit("ioctl", "invalid device name")
        raise error_for(E.EINVAL)
    if name in state.dm or (uuid and dm_by_uuid(state, uuid) is not None):
        raise error_for(E.EBUSY)
    if minor is not None and dm_by_minor(state, minor) is not None:
        raise error_for(E.EBUSY)
    dev = DmDevice(name, state.free_dm_minor() if minor is None else minor, uuid)
    state.dm[name] = dev
    return dev


class TargetType:
    """struct target_type: the hooks of one kind of target, which the core calls and
    nothing else switches on (dm_register_target).  Each hook's default is what the core
    does for a target without it."""

    name = ""

    def ctr(self, state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
        """Construct ``target`` from its table words (``target.obj``, ``target.devs``);
        TableError with the kernel's ti->error refuses the table."""
        raise NotImplementedError

    def dtr(self, state: HostState, target: Target) -> None:
        """The target leaves its table (the table is destroyed)."""

    def cancel_load(self, target: Target) -> None:
        """A constructed table is dropped before it went live (its queue limits failed)."""

    def postsuspend(self, target: Target) -> None:
        pass

    def resume(self, target: Target) -> None:
        """preresume, then resume: may raise (the table stays live, the device suspended)."""

    def status(self, state: HostState, target: Target, noflush: bool) -> str:
        return ""  # STATUSTYPE_INFO

    def table(self, state: HostState, target: Target) -> str:
        return ""  # STATUSTYPE_TABLE

    def ima(self, state: HostState, target: Target) -> str:
        return ""  # STATUSTYPE_IMA

    def message(self, state: HostState, target: Target, text: str) -> None:
        state.log.emit("ioctl", "Target type does not support messages")
        raise error_for(E.EINVAL)

    def iterate_devices(self, target: Target) -> list[tuple[str, int, int]]:
        """The device areas the target maps to, ``(devno, start, length)`` in sectors:
        each is checked against its device's size (device_area_is_invalid)."""
        return []

    def io_opt(self, state: HostState, target: Target) -> int:
        """io_hints: the optimal I/O size in bytes, 0 for none."""
        return 0

    def io_min(self, state: HostState, target: Target) -> int:
        """io_hints: the minimum I/O size in bytes, 0 for the queue's own (a pool's data
        block size; not stacked through other targets in the simulation)."""
        return 0

    def discard_granularity(self, state: HostState, target: Target) -> int | None:
        """io_hints: the discard granularity in bytes (0: discards off), or None for a
        target that sets none."""
        return None

    def remaps_to(self, target: Target) -> tuple[object, int] | None:
        """The device the whole target maps onto unchanged and the byte offset into it
        (a linear target), or None: a pool on such a device does its I/O there."""
        return None

    def io_blocked(self, target: Target) -> bool:
        """Whether bios to the target's device wait for a reason of the target's own, while
        the device itself is not suspended (dm-thin: an internal suspend)."""
        return False

    def event_nr(self, target: Target) -> int:
        """Events the target raised (dm_table_event), beside the device's own."""
        return 0

    def worker(self, state: HostState, target: Target) -> None:
        """What the target's own threads did between two commands (a live target)."""

    # the map: I/O at byte offsets into the target (blockio.py calls these)

    def read(self, state: HostState, target: Target, offset: int, length: int) -> bytes:
        raise error_for(E.EIO)

    def write(self, state: HostState, target: Target, offset: int, data: bytes) -> None:
        raise error_for(E.EIO)

    def discard(self, state: HostState, target: Target, offset: int, length: int) -> None:
        raise error_for(E.EOPNOTSUPP)

    def flush(self, state: HostState, target: Target) -> None:
        pass

    def supports_discard(self, state: HostState, target: Target) -> bool:
        return False


TARGET_TYPES: dict[str, TargetType] = {}


def dm_register_target(tt: TargetType) -> TargetType:
    """dm_register_target: the core finds the type by its name from now on."""
    TARGET_TYPES[tt.name] = tt
    return tt


_NO_TYPE = TargetType()


def target_type(target: Target) -> TargetType:
    """The registered type of a table's target (ti->type)."""
    return TARGET_TYPES.get(target.type, _NO_TYPE)


def dm_get_device(state: HostState, target: Target, path: str, error: str, errno: int = E.ENODEV):
    """dm_get_device: open the device ``path`` names for ``target`` (it joins the table's
    devices) or refuse the table with ``error``."""
    dev = lookup_device(state, path)
    if dev is None or dev is NO_DISK:
        raise TableError(error, E.ENXIO if dev is NO_DISK else errno)
    target.devs.append(f"{LOOP_MAJOR}:{dev.number}" if isinstance(dev, LoopDevice) else dev.devno)
    return dev


def _device_area_checks(state: HostState, dev: DmDevice, targets: list[Target]) -> bool:
    """dm-table.c: device_area_is_invalid over each target's iterate_devices; logs the
    first device too small and returns False."""
    for t in targets:
        for devno, start, length in target_type(t).iterate_devices(t):
            under = resolve_devno(state, devno)
            size = device_size(state, under) // SECTOR if under is not None else 0
            if size and start + length > size:  # a device of size 0 is not checked
                name = blkdev_name(state, devno) or devno
                log_device_too_small(
                    state.log, dev.devno, name, start, length, size, first_table=not dev.disk_added
                )
                return False
    return True


def resolve_devno(state: HostState, devno: str):
    """The device a table's MAJ:MIN names: a loop device (bound or not) or a dm device."""
    major, _, minor = devno.partition(":")
    if int(major) == LOOP_MAJOR:
        return state.loops.get(int(minor)) or unbound_loop(int(minor))
    return dm_by_minor(state, int(minor))


def dm_load(
    state: HostState,
    dev: DmDevice,
    rows: list[tuple[int, int, str, str]],
    *,
    read_only: bool = False,
) -> None:
    """DM_TABLE_LOAD (table_load): build the table target by target (dm_table_add_target),
    set the device up on its first table, and put the table in the inactive slot."""
    if not rows:
        state.log.emit("ioctl", "populate_table: no targets specified")
        raise error_for(E.EINVAL)
    targets: list[Target] = []
    for start, length, ttype, params in rows:
        target = Target(start, length, ttype, params)
        target.devs = []
        try:
            if not length:
                state.log.emit("table", f"{dev.devno}: zero-length target")
                state.log.emit("ioctl", "error adding target to table")
                raise error_for(E.EINVAL)
            if ttype in UNSIMULATED_TARGETS:
                raise NotSimulated(f"the {ttype} target")
            tt = TARGET_TYPES.get(ttype)
            if tt is None:
                state.log.emit("table", f"{dev.devno}: {ttype}: unknown target type")
                state.log.emit("ioctl", "error adding target to table")
                raise error_for(E.EINVAL)
            prev = targets[-1] if targets else None
            if start != (prev.start + prev.length if prev else 0):
                raise TableError("Gap in table")
            tt.ctr(state, dev, target, params.split())
        except TableError as e:
            log_table_error(state.log, dev.devno, ttype, e)
            _destroy(state, targets)
            raise
        except (ThinsimError, NotSimulated):
            _destroy(state, targets)
            raise
        targets.append(target)
    if not dev.disk_added:
        # dm_setup_md_queue: the first table's queue limits (device areas) decide now
        if not _device_area_checks(state, dev, targets):
            for t in targets:
                target_type(t).cancel_load(t)
            _destroy(state, targets)
            raise error_for(E.EINVAL)
        dev.disk_added = True
    if dev.inactive:
        _destroy(state, dev.inactive)
    dev.inactive = targets
    dev.inactive_ro = read_only


def dm_clear(state: HostState, dev: DmDevice) -> None:
    """DM_TABLE_CLEAR: drop the inactive table."""
    if dev.inactive is not None:
        _destroy(state, dev.inactive)
    dev.inactive = None
    dev.inactive_ro = False


def _destroy(state: HostState, targets: list[Target]) -> None:
    """The targets' dtrs."""
    for t in targets:
        target_type(t).dtr(state, t)


def dm_suspend(state: HostState, dev: DmDevice, *, noflush: bool = False) -> None:
    """DM_DEV_SUSPEND with the suspend flag: presuspend/postsuspend of the live targets."""
    if dev.suspended:
        return
    for t in dev.live or []:
        target_type(t).postsuspend(t)
    dev.suspended = True


def dm_resume(state: HostState, dev: DmDevice) -> None:
    """DM_DEV_SUSPEND without the flag (do_resume): swap in the inactive table, then
    resume."""
    if dev.inactive is not None:
        new, new_ro = dev.inactive, dev.inactive_ro
        dev.inactive, dev.inactive_ro = None, False
        if not dev.suspended:
            dm_suspend(state, dev)
        # dm_swap_table: the new table's queue limits (dm_calculate_queue_limits)
        if dev.live is not None and not _device_area_checks(state, dev, new):
            for t in new:
                target_type(t).cancel_load(t)
            _destroy(state, new)
            raise error_for(E.EINVAL)
        old = dev.live
        dev.live = new
        dev.read_only = new_ro
        dev.read_ahead = _default_read_ahead(state, dev)
        if old:
            # a target object the new table took over (a pool's) outlives the old table
            kept = {id(t.obj) for t in new}
            _destroy(state, [t for t in old if id(t.obj) not in kept])
    if not dev.suspended:
        return
    if not dev.live:
        raise error_for(E.EINVAL)  # dm_resume: nothing to resume without a table
    for t in dev.live:
        target_type(t).resume(t)  # may raise: the new table stays live, the device suspended
    dev.suspended = False


def io_opt(state: HostState, dev) -> int:
    """The queue's optimal I/O size in bytes (the targets' io_hints, stacked)."""
    if not isinstance(dev, DmDevice):
        return 0
    opt = 0
    for t in dev.live or []:
        value = target_type(t).io_opt(state, t)
        if value:
            opt = value if not opt else opt * value // _gcd(opt, value)
    return opt


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _default_read_ahead(state: HostState, dev: DmDevice) -> int:
    """blk-settings.c: disk_update_readahead -- twice the optimal I/O size, at least
    VM_READAHEAD_PAGES (128 KiB); in sectors."""
    return max(2 * io_opt(state, dev), 128 * 1024) // SECTOR


def table_devnos(dev: DmDevice, *, inactive: bool = False) -> list[str]:
    """DM_TABLE_DEPS: the devices a table uses, as dm_table's device list holds them (each
    new device at the head, so the last opened first)."""
    seen: list[str] = []
    for t in (dev.inactive if inactive else dev.live) or []:
        for d in getattr(t, "devs", ()):
            if d not in seen:
                seen.append(d)
    return seen[::-1]


def table_devices(state: HostState, dev: DmDevice) -> list:
    """The devices the mapped device holds open: md->table_devices, shared by its live
    and inactive tables."""
    out = []
    for devno in dict.fromkeys(table_devnos(dev) + table_devnos(dev, inactive=True)):
        d = resolve_devno(state, devno)
        if d is not None:
            out.append(d)
    return out


def dm_open_count(state: HostState, dev: DmDevice) -> int:
    """How many opens the device has: one for each mapped device whose tables use it, and
    those of its other holders (a command that has it open: a dd waiting for its resume)."""
    return blkdev_opens(dev) + sum(
        1
        for d in state.dm.values()
        if d is not dev and dev.devno in table_devnos(d) + table_devnos(d, inactive=True)
    )


def dm_remove(state: HostState, dev: DmDevice, *, deferred: bool = False) -> None:
    """DM_DEV_REMOVE: EBUSY while open (a deferred remove is then only marked)."""
    if dm_open_count(state, dev):
        if deferred:
            dev.deferred_remove = True
            return
        raise error_for(E.EBUSY)
    _remove(state, dev)
    _run_deferred_removes(state)


def _remove(state: HostState, dev: DmDevice) -> None:
    targets = (dev.live or []) + (dev.inactive or [])
    if dev.live and not dev.suspended:
        for t in dev.live:
            target_type(t).postsuspend(t)
    del state.dm[dev.name]
    _destroy(state, targets)
    _autoclear_loops(state)


def dm_blk_close(state: HostState, dev: DmDevice) -> None:
    """dm_blk_close: the last close of a device marked for a deferred remove removes it (a
    command that held it open while it waited, dd on a suspended device)."""
    if dev.deferred_remove and not dm_open_count(state, dev):
        _run_deferred_removes(state)


def _run_deferred_removes(state: HostState) -> None:
    """dm_deferred_remove: devices marked for a deferred remove go on their last close."""
    again = True
    while again:
        again = False
        for d in list(state.dm.values()):
            if d.deferred_remove and not dm_open_count(state, d):
                _remove(state, d)
                again = True


def loop_in_use(state: HostState, loop: LoopDevice) -> bool:
    """Whether a device-mapper table (live or inactive) holds the loop device open."""
    return any(
        isinstance(d, LoopDevice) and d.number == loop.number
        for dev in state.dm.values()
        for d in table_devices(state, dev)
    )


def _autoclear_loops(state: HostState) -> None:
    """A loop device detached while held (LO_FLAGS_AUTOCLEAR) goes on its last close."""
    for n, loop in list(state.loops.items()):
        if loop.autoclear and not loop_in_use(state, loop):
            loop_detach(state, loop)


def dm_remove_all(state: HostState) -> None:
    """DM_REMOVE_ALL (dm_hash_remove_all, keeping open devices): remove every device
    nobody holds, again until none goes."""
    again = True
    while again:
        again = False
        for d in sorted(state.dm.values(), key=lambda d: d.name):
            if d.name in state.dm and not dm_open_count(state, d):
                _remove(state, d)
                again = True


def dm_rename(state: HostState, dev_name: str, new: str, *, uuid: bool = False) -> DmDevice:
    """DM_DEV_RENAME (dev_rename, dm_hash_rename)."""
    if not new or "/" in new and not uuid:
        state.log.emit(
            "ioctl",
            "Invalid new mapped device name or uuid string supplied."
            if not new
            else "invalid device name",
        )
        raise error_for(E.EINVAL)
    taken = dm_by_uuid(state, new) if uuid else state.dm.get(new)
    if taken is not None:
        state.log.emit(
            "ioctl",
            f"Unable to change {'uuid' if uuid else 'name'} on mapped device {dev_name} "
            f"to one that already exists: {new}",
        )
        raise error_for(E.EBUSY)
    dev = state.dm.get(dev_name)
    if dev is None:
        state.log.emit(
            "ioctl",
            f"Unable to rename non-existent device, {dev_name} to {'uuid ' if uuid else ''}{new}",
        )
        raise error_for(E.ENXIO)
    if uuid:
        if dev.uuid:
            state.log.emit(
                "ioctl",
                f"Unable to change uuid of mapped device {dev_name} to {new} because uuid "
                f"is already set to {dev.uuid}",
            )
            raise error_for(E.EINVAL)
        dev.uuid = new
    else:
        del state.dm[dev_name]
        dev.name = new
        state.dm[new] = dev
        for d in state.dm.values():
            for t in (d.live or []) + (d.inactive or []):
                if getattr(t, "pool_name", None) == dev_name:
                    t.pool_name = new
    if dev.live is not None:
        dev.event_nr += 1  # dm_table_event: wakes event waiters
    return dev


def dm_message(state: HostState, dev: DmDevice, sector: int, text: str) -> str:
    """DM_TARGET_MSG; returns the target's response (none of these targets gives one)."""
    argv = text.split()
    if not argv:
        state.log.emit("ioctl", "Empty message received.")
        raise error_for(E.EINVAL)
    if argv[0].startswith("@"):
        if argv[0].lower() == "@cancel_deferred_remove":
            if len(argv) != 1:
                state.log.emit("ioctl", "Invalid arguments for @cancel_deferred_remove")
                raise error_for(E.EINVAL)
            dev.deferred_remove = False
            return ""
        if argv[0].lower().startswith("@stats_"):
            raise NotSimulated("dm statistics (@stats messages)")
    if not dev.live:
        raise error_for(E.EINVAL)
    target = next((t for t in dev.live if t.start <= sector < t.start + t.length), None)
    if target is None:
        state.log.emit("ioctl", "Target message sector outside device.")
        raise error_for(E.EINVAL)
    target_type(target).message(state, target, text)
    return ""


def target_status(
    state: HostState, t: Target, *, table: bool, noflush: bool = False, ima: bool = False
) -> str:
    """A target's status (STATUSTYPE_INFO), table (STATUSTYPE_TABLE) or IMA text."""
    tt = target_type(t)
    if ima:
        return tt.ima(state, t)
    return tt.table(state, t) if table else tt.status(state, t, noflush)


def status_lines(
    state: HostState, dev: DmDevice, *, table: bool, noflush: bool = False
) -> list[str]:
    """DM_TABLE_STATUS as dmsetup prints it: ``START LENGTH TYPE PARAMS`` for each live
    target."""
    return [
        f"{t.start} {t.length} {t.type} {target_status(state, t, table=table, noflush=noflush)}"
        for t in dev.live or []
    ]


def event_nr(dev: DmDevice) -> int:
    return dev.event_nr + sum(target_type(t).event_nr(t) for t in dev.live or [])


def dm_major() -> int:
    return DM_MAJOR


__all__ = [
    "NotSimulated",
    "ThinsimError",
    "dm_clear",
    "dm_create",
    "dm_load",
    "dm_message",
    "dm_remove",
    "dm_remove_all",
    "dm_rename",
    "dm_resume",
    "dm_suspend",
    "target_status",
    "warn_if_metadata_device_too_big",
]
