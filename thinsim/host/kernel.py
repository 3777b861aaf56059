"""The simulated host's kernel side: the device-mapper ioctls and loop devices.

Each function takes the ``HostState`` and does what the kernel does for one ioctl, raising
``ThinsimError`` with the kernel's errno (and leaving the kernel log lines the kernel
leaves).  Formatting what the tools print is the commands' job (``thinsim.host.tools``).
"""

from __future__ import annotations

import errno as E
import os

from ..dm import log_device_too_small, log_table_error
from ..errors import ThinsimError, error_for
from ..model.pool import Pool, PoolTable, TableError, warn_if_metadata_device_too_big
from ..model.store import FileStore
from ..model.thin import Thin
from .state import DM_MAJOR, DmDevice, HostState, LoopDevice, Target

SECTOR = 512


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
    """LOOP_CONFIGURE: bind ``path`` to loop ``number``.  EBUSY if bound already."""
    if number in state.loops:
        raise error_for(E.EBUSY)
    st = os.stat(path)
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
    state.loops[number] = loop
    return loop


def loop_in_use(state: HostState, loop: LoopDevice) -> bool:
    return any(
        t.obj is not None and loop.number in getattr(t, "loops", ())
        for d in state.dm.values()
        for t in (d.live or [])
    )


def loop_set_capacity(state: HostState, loop: LoopDevice) -> None:
    """LOOP_SET_CAPACITY: the device takes its backing file's new size."""
    st = os.stat(loop.backing_file)
    size = max(0, st.st_size - loop.offset)
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


def dm_create(state: HostState, name: str, uuid: str = "") -> DmDevice:
    """DM_DEV_CREATE."""
    if name in state.dm or (uuid and any(d.uuid == uuid for d in state.dm.values())):
        raise error_for(E.EBUSY)
    dev = DmDevice(name, state.free_dm_minor(), uuid)
    state.dm[name] = dev
    return dev


def _pool_for_metadata(state: HostState, loop: LoopDevice):
    """__pool_find: the live pool object whose metadata device is ``loop``, if any."""
    for d in state.dm.values():
        for t in (d.live or []) + (d.inactive or []):
            if t.type == "thin-pool" and t.obj is not None and t.md_loop == loop.number:
                return d, t
    return None, None


def _ctr_thin_pool(state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
    log = state.log
    md = state.device_by_path(argv[0]) if len(argv) >= 4 else None
    if len(argv) >= 4 and argv[0] != argv[1]:
        # the table's own checks come first (pool_ctr), then the devices
        try:
            PoolTable.parse(argv)
        except TableError:
            pass
    md_bytes = md.size if isinstance(md, LoopDevice) else None
    table = PoolTable.parse(argv, metadata_bytes=md_bytes, log=log)
    if not isinstance(md, LoopDevice):
        raise TableError("Error opening metadata block device", E.ENODEV)
    data = state.device_by_path(argv[1])
    if not isinstance(data, LoopDevice):
        raise TableError("Error getting data device", E.ENODEV)
    other_dev, other = _pool_for_metadata(state, md)
    if other is not None and other_dev is not dev:
        raise TableError("metadata device already in use by a pool", E.EBUSY)
    target.md_loop = md.number
    target.data_loop = data.number
    target.loops = (md.number, data.number)
    if other is not None:
        # a reload of the same pool: the pool object is kept
        pool = other.obj
        if pool.data_dev_name != f"loop{data.number}":
            raise TableError("data device already in use by a pool", E.EBUSY)
        pool.metadata_bytes = md.size
        pool.data_bytes = data.size
        pool.load(table, target.length)
        target.obj = pool
        return
    metadata = _open_metadata(state, md, table)
    store = FileStore(data.backing_file, offset=data.offset)
    pool = Pool(
        table,
        length_sectors=target.length,
        metadata_bytes=md.size,
        data_bytes=data.size,
        store=store,
        log=log,
        clock=state.clock,
        name=dev.devno,
        data_dev_name=f"loop{data.number}",
        data_dev_discards=store.supports_discard(),
        metadata=metadata,
        track_metadata_writes=True,
    )
    if pool.pmd.tm.dirty is None:
        pool.pmd.tm.dirty = set()
    target.obj = pool


def _open_metadata(state: HostState, md: LoopDevice, table: PoolTable):
    """__open_or_format_metadata: None (format) when the superblock is all zeroes, else
    what the device holds."""
    from ..model.disk import CorruptMetadata, read_metadata, superblock_is_blank

    with open(md.backing_file, "rb") as f:
        f.seek(md.offset)
        head = f.read(512)
    if superblock_is_blank(head):
        return None
    try:
        return read_metadata(md.backing_file, md.offset)
    except CorruptMetadata as e:
        state.log.emit("thin metadata", str(e))
        raise TableError("Error creating metadata object", E.EILSEQ) from None


def _ctr_thin(state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
    dev_id = Thin.parse(argv)
    pool_dev = state.device_by_path(argv[0])
    if not isinstance(pool_dev, DmDevice) or not pool_dev.live:
        raise TableError("Couldn't get pool mapped device", E.EINVAL)
    pt = pool_dev.live[0]
    if pt.type != "thin-pool" or pt.obj is None:
        raise TableError("Couldn't find pool object", E.EINVAL)
    pool: Pool = pt.obj
    if pool.suspended:
        raise TableError("Unable to activate thin device while pool is suspended", E.EINVAL)
    thin = Thin(pool, dev_id, target.length, pool_dev=pool_dev.devno)
    target.obj = thin
    target.pool_name = pool_dev.name


def _ctr_linear(state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
    if len(argv) != 2:
        raise TableError("Invalid argument count")
    under = state.device_by_path(argv[0])
    try:
        start = int(argv[1])
    except ValueError:
        raise TableError("Invalid device sector") from None
    if under is None:
        raise TableError("Device lookup failed", E.ENODEV)
    target.obj = ("linear", under, start)


_CTRS = {"thin-pool": _ctr_thin_pool, "thin": _ctr_thin, "linear": _ctr_linear}


def dm_load(state: HostState, dev: DmDevice, rows: list[tuple[int, int, str, str]]) -> None:
    """DM_TABLE_LOAD: construct every target into the inactive table."""
    targets = []
    for start, length, ttype, params in rows:
        target = Target(start, length, ttype, params)
        ctr = _CTRS.get(ttype)
        if ctr is None:
            state.log.emit("table", f"{dev.devno}: {ttype}: unknown target type")
            state.log.emit("ioctl", "error adding target to table")
            raise error_for(E.EINVAL)
        try:
            ctr(state, dev, target, params.split())
        except TableError as e:
            log_table_error(state.log, dev.devno, ttype, e)
            _destroy(state, targets)
            raise
        targets.append(target)
    # dm-table.c: device_area_is_invalid
    for t in targets:
        if t.type == "thin-pool":
            data = state.loops[t.data_loop]
            if t.start + t.length > data.size // SECTOR:
                log_device_too_small(
                    state.log,
                    dev.devno,
                    f"loop{data.number}",
                    t.start,
                    t.length,
                    data.size // SECTOR,
                    first_table=dev.live is None,
                )
                if t.obj is not None:
                    t.obj.pending = None
                _destroy(state, targets)
                raise error_for(E.EINVAL)
    if dev.inactive:
        _destroy(state, dev.inactive)
    dev.inactive = targets


def _destroy(state: HostState, targets: list[Target]) -> None:
    """The targets' dtrs."""
    for t in targets:
        if t.type == "thin" and isinstance(t.obj, Thin):
            t.obj.close()
        elif t.type == "thin-pool" and isinstance(t.obj, Pool):
            if not _pool_used_elsewhere(state, t):
                pool = t.obj
                pool.suspend()  # dm_pool_metadata_close commits
                loop = state.loops.get(t.md_loop)
                if loop is not None and pool.pmd.commit_count:
                    from ..model.disk import write_metadata

                    write_metadata(pool.pmd, loop.backing_file, loop.offset)
                pool.store.close()


def _pool_used_elsewhere(state: HostState, target: Target) -> bool:
    return any(
        t is not target and t.obj is target.obj
        for d in state.dm.values()
        for t in (d.live or []) + (d.inactive or [])
    )


def dm_suspend(state: HostState, dev: DmDevice) -> None:
    """DM_DEV_SUSPEND with the suspend flag: presuspend/postsuspend of the live targets."""
    if dev.suspended or dev.live is None:
        dev.suspended = dev.suspended or dev.live is not None
        return
    for t in dev.live:
        if t.type == "thin-pool":
            t.obj.suspend()
    dev.suspended = True


def dm_resume(state: HostState, dev: DmDevice) -> None:
    """DM_DEV_SUSPEND without the flag: swap in the inactive table, then resume."""
    if dev.inactive is not None:
        if not dev.suspended and dev.live is not None:
            dm_suspend(state, dev)
        old = dev.live
        dev.live, dev.inactive = dev.inactive, None
        if old:
            _destroy(
                state, [t for t in old if t.obj is not dev.live[0].obj or t.type != "thin-pool"]
            )
        dev.suspended = True
    if not dev.suspended:
        return
    for t in dev.live or []:
        if t.type == "thin-pool":
            t.obj.resume()  # may raise: the new table stays live, the device suspended
    dev.suspended = False


def dm_open_count(state: HostState, dev: DmDevice) -> int:
    """How many live tables hold this device open (thins on a pool)."""
    n = 0
    for d in state.dm.values():
        for t in d.live or []:
            if t.type == "thin" and getattr(t, "pool_name", None) == dev.name:
                n += 1
            if t.type == "linear" and isinstance(t.obj, tuple) and t.obj[1] is dev:
                n += 1
    return n


def dm_remove(state: HostState, dev: DmDevice) -> None:
    """DM_DEV_REMOVE: EBUSY while open."""
    if dm_open_count(state, dev):
        raise error_for(E.EBUSY)
    targets = (dev.live or []) + (dev.inactive or [])
    if dev.live and not dev.suspended:
        for t in dev.live:
            if t.type == "thin-pool":
                t.obj.suspend()
    del state.dm[dev.name]
    _destroy(state, targets)


def dm_message(state: HostState, dev: DmDevice, sector: int, text: str) -> None:
    """DM_TARGET_MSG."""
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


def target_status(state: HostState, t: Target, *, table: bool, noflush: bool = False) -> str:
    if t.type == "thin-pool":
        pool: Pool = t.obj
        if table:
            md, data = state.loops[t.md_loop].devno, state.loops[t.data_loop].devno
            return pool.table_params(md, data)
        return pool.status(noflush=noflush or pool.suspended)
    if t.type == "thin":
        thin: Thin = t.obj
        return thin.table_params() if table else thin.status()
    if t.type == "linear":
        _, under, start = t.obj
        return f"{under.devno} {start}" if table else ""
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
    "ThinsimError",
    "dm_create",
    "dm_load",
    "dm_message",
    "dm_remove",
    "dm_resume",
    "dm_suspend",
    "loop_attach",
    "loop_set_capacity",
    "target_status",
    "warn_if_metadata_device_too_big",
]
