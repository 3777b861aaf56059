"""The simulated host's kernel side: the device-mapper ioctls and loop devices.

Each function takes the ``HostState`` and does what the kernel does for one ioctl, raising
``ThinsimError`` with the kernel's errno (and leaving the kernel log lines the kernel
leaves).  Formatting what the tools print is the commands' job (``thinsim.host.tools``).
"""

from __future__ import annotations

import errno as E
import os

from ..constants import DM_MAJOR, LOOP_MAJOR
from ..constants import SECTOR_SIZE as SECTOR
from ..dm import log_device_too_small, log_table_error
from ..errors import ThinsimError, error_for
from ..model.pool import Pool, PoolTable, TableError, warn_if_metadata_device_too_big
from ..model.store import MemoryStore
from ..model.thin import Thin
from . import loopfile
from .command import command_opens
from .state import DmDevice, HostState, LoopDevice, Target

# -- loop devices ---------------------------------------------------------------------


def loop_attach(
    state: HostState,
    number: int,
    path: str,
    *,
    offset: int = 0,
    sizelimit: int = 0,
    read_only: bool = False,
) -> LoopDevice:
    """LOOP_CONFIGURE: bind ``path`` to loop ``number``.  EBUSY if bound already.  The
    device keeps the file open (lo_backing_file), not its name: see loopfile.py."""
    if number in state.loops:
        raise error_for(E.EBUSY)
    try:
        fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
    except OSError as e:
        raise error_for(e.errno) from None
    try:
        st = os.fstat(fd)
        size = max(0, st.st_size - offset)
        if sizelimit:
            size = min(size, sizelimit)
        loop = LoopDevice(
            number,
            os.path.abspath(path),
            st.st_ino,
            st.st_dev,
            offset=offset,
            sizelimit=sizelimit,
            read_only=read_only,
            size=size - size % SECTOR,
        )
        loopfile.hold(loop, fd)
    finally:
        os.close(fd)
    state.loops[number] = loop
    return loop


def loop_detach(state: HostState, loop: LoopDevice) -> None:
    """loop_clr_fd (__loop_clr_fd): the device is unbound and lets its file go."""
    del state.loops[loop.number]
    loopfile.release(loop)


def loop_in_use(state: HostState, loop: LoopDevice) -> bool:
    """Whether a device-mapper table (live or inactive) holds the loop device open."""
    return any(
        isinstance(d, LoopDevice) and d.number == loop.number
        for dev in state.dm.values()
        for d in table_devices(state, dev)
    )


def loop_set_capacity(state: HostState, loop: LoopDevice) -> None:
    """LOOP_SET_CAPACITY: the device takes its backing file's new size."""
    size = max(0, loopfile.size(loop) - loop.offset)
    if loop.sizelimit:
        size = min(size, loop.sizelimit)
    loop.size = size - size % SECTOR


def device_size(state: HostState, dev) -> int:
    """Bytes of a simulated block device."""
    if isinstance(dev, LoopDevice):
        return dev.size
    if dev.live is None:
        return 0
    return sum(t.length for t in dev.live) * SECTOR


# -- device-mapper ----------------------------------------------------------------------

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


def _unbound_loop(number: int) -> LoopDevice:
    """A loop device node with no backing file: it opens, with size 0."""
    return LoopDevice(number, "", 0, 0)


def lookup_device(state: HostState, path: str):
    """dm-table.c: dm_get_device's lookup (lookup_bdev, else "major:minor"), then the open:
    a LoopDevice (bound, or unbound with size 0), a DmDevice, None (-ENODEV) or NO_DISK
    (a device number nothing answers: -ENXIO).  Opening
    7:N for a loop device that does not exist yet makes the loop driver create it."""
    nodes = getattr(state, "loop_nodes", None)
    if nodes is None:
        nodes = set(range(8))
    p = os.path.normpath(path) if path.startswith("/") else path
    if p.startswith("/dev/loop") and p[9:].isdigit() and p[9:] == str(int(p[9:])):
        n = int(p[9:])
        if n in state.loops:
            return state.loops[n]
        return _unbound_loop(n) if n in nodes else None
    if p.startswith("/dev/mapper/"):
        dev = state.dm.get(p[12:])
        return dev if dev is not None and has_mapper_node(dev) else None
    if p.startswith("/dev/dm-") and p[8:].isdigit():
        dev = dm_by_minor(state, int(p[8:]))
        return dev if dev is not None and dev.disk_added else None
    if p.startswith("/"):
        return None
    major, sep, minor = path.partition(":")
    if not (sep and major.isdigit() and minor.isdigit()):
        return None
    major_n, minor_n = int(major), int(minor)
    if major_n == LOOP_MAJOR and minor_n < (1 << 20):
        if minor_n in state.loops:
            return state.loops[minor_n]
        if isinstance(nodes, set):
            nodes.add(minor_n)  # loop_probe: the open creates loopN
        return _unbound_loop(minor_n)
    if major_n == DM_MAJOR:
        dev = dm_by_minor(state, minor_n)
        if dev is not None and dev.disk_added:
            return dev
    # blkdev_get_by_dev: a device number with no disk behind it
    return NO_DISK


NO_DISK = "ENXIO"


def has_mapper_node(dev: DmDevice) -> bool:
    """udev makes /dev/mapper/NAME once the device has a disk (its first table load);
    libdm's dm_mknodes makes a node for one without (``mknod``)."""
    return dev.disk_added or getattr(dev, "mknod", False)


def dm_by_minor(state: HostState, minor: int) -> DmDevice | None:
    return next((d for d in state.dm.values() if d.minor == minor), None)


def dm_by_uuid(state: HostState, uuid: str) -> DmDevice | None:
    return next((d for d in state.dm.values() if d.uuid == uuid), None)


def blkdev_name(state: HostState, devno: str) -> str | None:
    """The kernel name of a block device (/sys/dev/block/M:N), None if there is none."""
    major, _, minor = devno.partition(":")
    if int(major) == LOOP_MAJOR:
        nodes = getattr(state, "loop_nodes", set(range(8)))
        n = int(minor)
        return f"loop{n}" if n in nodes or n in state.loops else None
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


def _pool_for_metadata(state: HostState, md_devno: str):
    """__pool_find: the live pool object whose metadata device is ``md_devno``, if any."""
    for d in state.dm.values():
        for t in (d.live or []) + (d.inactive or []):
            if t.type == "thin-pool" and t.obj is not None and t.md_devno == md_devno:
                return d, t
    return None, None


def _open(state: HostState, target: Target, path: str, error: str, errno: int = E.ENODEV):
    dev = lookup_device(state, path)
    if dev is None or dev is NO_DISK:
        raise TableError(error, E.ENXIO if dev is NO_DISK else errno)
    target.devs.append(f"{LOOP_MAJOR}:{dev.number}" if isinstance(dev, LoopDevice) else dev.devno)
    return dev


def _ctr_thin_pool(state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
    log = state.log
    # pool_ctr: argument count, distinct devices and features first, then the devices,
    # then block size and low water mark
    PoolTable.parse(argv[:2] + ["128", "0"] + argv[4:] if len(argv) >= 4 else argv)
    md_dev = _open(state, target, argv[0], "Error opening metadata block device")
    data_dev = _open(state, target, argv[1], "Error getting data device")
    md_size, md_name = device_size(state, md_dev), _bdev_name(md_dev)
    table = PoolTable.parse(argv, metadata_bytes=md_size, metadata_dev_name=md_name, log=log)
    md, md_offset = _backing_loop(md_dev)
    data, data_offset = _backing_loop(data_dev)
    if not md.backing_file:
        raise NotSimulated("a pool on an unattached metadata loop device")
    data_name = _bdev_name(data_dev)
    target.md_loop = md.number
    target.data_loop = data.number
    target.md_devno, target.data_devno = target.devs[0], target.devs[1]
    target.loops = (md.number, data.number)
    other_dev, other = _pool_for_metadata(state, target.md_devno)
    if other is not None and other_dev is not dev:
        raise TableError("metadata device already in use by a pool", E.EBUSY)
    if other is not None:
        # a reload of the same pool: the pool object is kept
        pool = other.obj
        if pool.data_dev_name != data_name:
            raise TableError("data device already in use by a pool", E.EBUSY)
        pool.metadata_bytes = md_size
        pool.data_bytes = device_size(state, data_dev)
        pool.load(table, target.length)
        target.obj = pool
        return
    if any(
        t.type == "thin-pool" and t.obj is not None for t in (dev.live or []) + (dev.inactive or [])
    ):
        # __pool_find: this mapped device already binds a pool on other devices
        raise TableError("different pool cannot replace a pool", E.EINVAL)
    metadata = _open_metadata(state, md, md_offset, table)
    if data.backing_file:
        store = loopfile.LoopStore(data, data_offset)
        discards = store.supports_discard()
    else:
        store, discards = MemoryStore(), False  # an unattached loop device: size 0
    pool = Pool(
        table,
        length_sectors=target.length,
        metadata_bytes=md_size,
        data_bytes=device_size(state, data_dev),
        store=store,
        log=log,
        clock=state.clock,
        name=dev.devno,
        data_dev_name=data_name,
        data_dev_discards=discards,
        metadata=metadata,
        track_metadata_writes=True,
    )
    if pool.pmd.tm.dirty is None:
        pool.pmd.tm.dirty = set()
    _attach_metadata_device(pool, md, md_offset, formatted=metadata is None)
    target.obj = pool


def _bdev_name(dev) -> str:
    """The kernel's name for a block device (bdevname): loopN, dm-N."""
    return f"loop{dev.number}" if isinstance(dev, LoopDevice) else f"dm-{dev.minor}"


def _backing_loop(dev) -> tuple[LoopDevice, int]:
    """The loop device a pool's metadata or data I/O reaches, and the byte offset into it
    (past the loop device's own): the device itself, or, for a dm device whose live table is
    one linear target (LVM's tmeta/tdata), what that target maps to, followed down as
    linear_map does."""
    offset = 0
    while isinstance(dev, DmDevice):
        live = dev.live or []
        if len(live) != 1 or live[0].type != "linear":
            raise NotSimulated(
                f"a pool on dm-{dev.minor}: only a dm device of one linear target is simulated "
                "under a pool"
            )
        _, dev, start = live[0].obj
        offset += start * SECTOR
    return dev, offset


def _attach_metadata_device(pool: Pool, md: LoopDevice, offset: int, formatted: bool) -> None:
    """Commits go to the metadata loop device's file from now on (at ``offset`` bytes into
    the device, for a linear device on it).  A device just formatted is written at once, as
    __format_metadata writes its initial superblock in pool_ctr (a failure fails the table
    load: "Error creating metadata object")."""
    from ..model.disk import MetadataDevice, MetadataWriteError

    pool.pmd.device = MetadataDevice(loopfile.io_path(md), md.offset + offset)
    if formatted:
        try:
            pool.pmd.device.write(pool.pmd)
        except MetadataWriteError as e:
            pool.store.close()
            raise TableError("Error creating metadata object", e.errno) from None


def _open_metadata(state: HostState, md: LoopDevice, offset: int, table: PoolTable):
    """__open_or_format_metadata: None (format) when the superblock is all zeroes, else
    what the device holds (``offset`` bytes into the loop device)."""
    from ..model.disk import CorruptMetadata, read_metadata, superblock_is_blank

    path = loopfile.io_path(md)
    if path is None:
        raise TableError("Error creating metadata object", E.EIO)  # the file is lost
    with open(path, "rb") as f:
        f.seek(md.offset + offset)
        head = f.read(512)
    if superblock_is_blank(head):
        return None
    try:
        return read_metadata(path, md.offset + offset)
    except CorruptMetadata as e:
        state.log.emit("thin metadata", str(e))
        raise TableError("Error creating metadata object", E.EILSEQ) from None


def _ctr_thin(state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
    dev_id = Thin.parse(argv)
    origin = None
    if len(argv) > 2:
        # thin_ctr opens an external origin before the pool; reads of unprovisioned blocks
        # would come from it, which the model does not do (see target.origin)
        _open(state, target, argv[2], "Error opening origin device")
        origin = target.devs[-1]
    pool_dev = _open(state, target, argv[0], "Error opening pool device")
    if not isinstance(pool_dev, DmDevice):
        raise TableError("Couldn't get pool mapped device", E.EINVAL)
    pt = next(
        (
            t
            for t in (pool_dev.live or []) + (pool_dev.inactive or [])
            if t.type == "thin-pool" and t.obj is not None
        ),
        None,
    )
    if pt is None:
        raise TableError("Couldn't find pool object", E.EINVAL)
    pool: Pool = pt.obj
    if pool.suspended:
        raise TableError("Unable to activate thin device while pool is suspended", E.EINVAL)
    thin = Thin(pool, dev_id, target.length, pool_dev=pool_dev.devno)
    target.origin = origin
    target.obj = thin
    target.pool_name = pool_dev.name
    target.pool_minor = pool_dev.minor


def _ctr_linear(state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
    if len(argv) != 2:
        raise TableError("Invalid argument count")
    start = _sscanf_llu(argv[1])
    if start is None:
        raise TableError("Invalid device sector")
    under = _open(state, target, argv[0], "Device lookup failed")
    target.obj = ("linear", under, start)


def _ctr_error(state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
    target.obj = ("error",)


def _sscanf_llu(text: str) -> int | None:
    """sscanf(argv, "%llu%c", ...) == 1: digits after optional space and sign, nothing
    after them."""
    s = text.lstrip()
    body = s[1:] if s[:1] in "+-" else s
    if not body.isdigit() or not body.isascii():
        return None
    value = int(body) & ((1 << 64) - 1)
    return (-value) & ((1 << 64) - 1) if s[:1] == "-" else value


_CTRS = {
    "thin-pool": _ctr_thin_pool,
    "thin": _ctr_thin,
    "linear": _ctr_linear,
    "error": _ctr_error,
}


def _device_area_checks(state: HostState, dev: DmDevice, targets: list[Target]) -> bool:
    """dm-table.c: device_area_is_invalid over each target's iterate_devices; logs the
    first device too small and returns False."""
    for t in targets:
        if t.type == "thin-pool":
            areas = [(t.data_devno, 0, t.length)]
        elif t.type == "linear":
            under, start = t.obj[1], t.obj[2]
            areas = [(t.devs[0], start, t.length)]
        else:
            continue
        for devno, start, length in areas:
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
        return state.loops.get(int(minor)) or _unbound_loop(int(minor))
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
            ctr = _CTRS.get(ttype)
            if ctr is None:
                state.log.emit("table", f"{dev.devno}: {ttype}: unknown target type")
                state.log.emit("ioctl", "error adding target to table")
                raise error_for(E.EINVAL)
            prev = targets[-1] if targets else None
            if start != (prev.start + prev.length if prev else 0):
                raise TableError("Gap in table")
            ctr(state, dev, target, params.split())
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
                if t.type == "thin-pool" and t.obj is not None:
                    t.obj.pending = None
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
        if t.type == "thin" and isinstance(t.obj, Thin):
            t.obj.close()
        elif (
            t.type == "thin-pool" and isinstance(t.obj, Pool) and not _pool_used_elsewhere(state, t)
        ):
            pool = t.obj
            pool.suspend()  # dm_pool_metadata_close commits
            if pool.pmd.device is not None:
                pool.pmd.device.close(pool.pmd)
            pool.store.close()


def _pool_used_elsewhere(state: HostState, target: Target) -> bool:
    return any(
        t is not target and t.obj is target.obj
        for d in state.dm.values()
        for t in (d.live or []) + (d.inactive or [])
    )


def dm_suspend(state: HostState, dev: DmDevice, *, noflush: bool = False) -> None:
    """DM_DEV_SUSPEND with the suspend flag: presuspend/postsuspend of the live targets."""
    if dev.suspended:
        return
    for t in dev.live or []:
        if t.type == "thin-pool":
            t.obj.suspend()
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
                if t.type == "thin-pool" and t.obj is not None:
                    t.obj.pending = None
            _destroy(state, new)
            raise error_for(E.EINVAL)
        old = dev.live
        dev.live = new
        dev.read_only = new_ro
        dev.read_ahead = _default_read_ahead(state, dev)
        if old:
            _destroy(state, [t for t in old if t.type != "thin-pool" or t.obj is not new[0].obj])
    if not dev.suspended:
        return
    if not dev.live:
        raise error_for(E.EINVAL)  # dm_resume: nothing to resume without a table
    for t in dev.live:
        if t.type == "thin-pool":
            t.obj.resume()  # may raise: the new table stays live, the device suspended
    dev.suspended = False


def _io_opt(state: HostState, dev) -> int:
    """The queue's optimal I/O size in bytes (the targets' io_hints, stacked)."""
    if not isinstance(dev, DmDevice):
        return 0
    opt = 0
    for t in dev.live or []:
        if t.type in ("thin-pool", "thin"):
            pool = t.obj if t.type == "thin-pool" else t.obj.pool
            value = pool.block_bytes
        elif t.type == "linear":
            value = _io_opt(state, t.obj[1])
        else:
            value = 0
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
    return max(2 * _io_opt(state, dev), 128 * 1024) // SECTOR


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
    those of the commands under way that have it open (a dd waiting for its resume)."""
    return command_opens(dev) + sum(
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
            if t.type == "thin-pool":
                t.obj.suspend()
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
    if target.type != "thin-pool":
        state.log.emit("ioctl", "Target type does not support messages")
        raise error_for(E.EINVAL)
    target.obj.message(text)
    return ""


def target_status(
    state: HostState, t: Target, *, table: bool, noflush: bool = False, ima: bool = False
) -> str:
    """A target's status (STATUSTYPE_INFO), table (STATUSTYPE_TABLE) or IMA text."""
    if ima:
        if t.type == "linear":
            # dm-linear.c: linear_status, STATUSTYPE_IMA
            return (
                f"target_name=linear,target_version=1.4.0,device_name={t.devs[0]},start={t.obj[2]};"
            )
        return ""
    if t.type == "thin-pool":
        pool: Pool = t.obj
        if table:
            return pool.table_params(t.md_devno, t.data_devno)
        return pool.status(noflush=noflush or pool.suspended)
    if t.type == "thin":
        thin: Thin = t.obj
        if not table:
            return thin.status()
        origin = getattr(t, "origin", None)
        return thin.table_params() + (f" {origin}" if origin else "")
    if t.type == "linear":
        return f"{t.devs[0]} {t.obj[2]}" if table else ""
    return ""


def event_nr(dev: DmDevice) -> int:
    n = dev.event_nr
    for t in dev.live or []:
        if t.type == "thin-pool":
            n += t.obj.event_nr
    return n


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
    "loop_attach",
    "loop_detach",
    "loop_set_capacity",
    "target_status",
    "warn_if_metadata_device_too_big",
]


def reopen_pools(state: HostState) -> None:
    """Re-create every pool of a state loaded without its metadata (state.Unloaded), as
    pool_ctr opens a formatted metadata device: dm_pool_metadata_open reads the superblock
    and the space maps, then each active thin's details are opened again (__open_device).

    The metadata is what the pool last committed (the kernel keeps uncommitted changes in
    its memory only: the host's process keeps its pools in memory while it runs, and its
    state file leaves them out, so this runs at the process's start: after a kill, an idle
    stop or the end of a run, where a real host would have kept the kernel's memory; what
    it had not committed is lost then, as a crash loses it -- every message, suspend and
    FLUSH commits, and so does the periodic commit at the next command's start).  The pool's other
    in-core facts (table, mode, counters, suspension, the space maps' allocation cursors,
    needs_check) are the state's, so that a pool re-opened after a commit goes on as the one
    kept in memory would.  A metadata device whose file is lost or unreadable gives a pool
    in failure mode (PM_FAIL: status "Fail", I/O ends in EIO), as the kernel's pool is after
    a metadata I/O error, never a host that cannot load.

    The whole metadata is still read into memory here (disk.read_metadata), once per
    process start: the kernel reads btree nodes on demand through dm-bufio."""
    from ..model.pool import PM_FAIL
    from .state import Unloaded

    pools: dict[int, tuple[Pool, Target]] = {}
    thins: list[Thin] = []
    for dev in state.dm.values():
        for t in (dev.live or []) + (dev.inactive or []):
            if isinstance(t.obj, Pool) and isinstance(t.obj.pmd, Unloaded):
                pools.setdefault(id(t.obj), (t.obj, t))
            elif isinstance(t.obj, Thin) and isinstance(t.obj.td, Unloaded):
                thins.append(t.obj)
    for pool, target in pools.values():
        if not _reopen_metadata(state, pool, target):
            pool._set_mode(PM_FAIL)
    for thin in thins:
        pool = thin.pool
        if isinstance(pool.pmd, Unloaded):  # a pool no table holds any more
            _blank_metadata(pool, pool.pmd.value)
            pool._set_mode(PM_FAIL)
        try:
            thin.td = pool.pmd.open_device(thin.dev_id)
        except KeyError:
            # the committed metadata has no such thin (created after the last commit)
            if pool.mode != PM_FAIL:
                pool._set_mode(PM_FAIL)
            pool.pmd.create_thin(thin.dev_id)
            thin.td = pool.pmd.open_device(thin.dev_id)


def _reopen_metadata(state: HostState, pool: Pool, target: Target) -> bool:
    """Read the pool's metadata from its device; False (a blank in-core metadata in its
    place) when the device's file is lost or holds no metadata this pool can use."""
    from ..model.disk import CorruptMetadata, MetadataDevice, read_metadata, superblock_is_blank

    offset = pool.pmd.value
    md = state.loops.get(getattr(target, "md_loop", -1))
    path = loopfile.io_path(md) if md is not None else None
    pmd = None
    if path is not None:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                blank = superblock_is_blank(f.read(512))
            if not blank:
                pmd = read_metadata(path, offset)
        except (OSError, CorruptMetadata) as e:
            state.log.emit("thin metadata", f"{pool.name}: cannot reopen the metadata: {e}")
            pmd = None
    if pmd is None or pmd.data_block_size != pool.sectors_per_block:
        _blank_metadata(pool, offset)
        return False
    if pmd.tm.dirty is None:
        pmd.tm.dirty = set()
    pmd.device = MetadataDevice(path, offset)
    pmd.metadata_sm.log = pool.log
    incore = pool.pmd.incore
    pmd.metadata_sm.begin = incore.get("metadata_begin", pmd.metadata_sm.begin)
    pmd.data_sm.begin = incore.get("data_begin", pmd.data_sm.begin)
    pmd.commit_count = incore.get("commit_count", pmd.commit_count)
    pmd.in_service = incore.get("in_service", pmd.in_service)
    # set in core when a commit failed (it reaches the disk when the pool goes)
    pmd.needs_check = pmd.needs_check or incore.get("needs_check", False)
    pmd.device.flags_on_disk = incore.get("flags_on_disk", pmd.device.flags_on_disk)
    pool.pmd = pmd
    pmd.metadata_sm.register_threshold(pool.metadata_threshold(), pool._metadata_low_callback)
    return True


def _blank_metadata(pool: Pool, offset: int) -> None:
    """An in-core metadata for a failed pool (nothing is ever committed from it)."""
    from ..model.disk import MetadataDevice
    from ..model.metadata import PoolMetadata

    pool.pmd = PoolMetadata(1024, pool.sectors_per_block, track_writes=True)
    pool.pmd.device = MetadataDevice(None, offset)
    pool.pmd.metadata_sm.log = pool.log
