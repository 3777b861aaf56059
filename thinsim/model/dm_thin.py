"""dm-thin.c's two targets on the simulated kernel: ``thin-pool`` and ``thin``.

The pool and thin objects are thinsim.model's (model/pool.py, model/thin.py); this module
is what drivers/md/dm-thin.c adds around them for the device-mapper core: the
constructors (opening the devices, the metadata device's superblock, __pool_find), the
destructors, suspend and resume, status, messages, the device areas, io_hints, the map
(I/O, an external origin's included), the worker's periodic commit, and a pool's re-open
from its metadata device by the host's process (reopen_pools).  Registered with the core
(dm_register_target) when the simulated kernel is imported (thinsim/model/__init__.py).
"""

from __future__ import annotations

import errno as E

from . import blockio, external_origin, loopfile
from .devices import DmDevice, HostState, LoopDevice, StoreLoop, Target, Unloaded, device_size
from .disk import (
    CorruptMetadata,
    MetadataDevice,
    MetadataWriteError,
    read_metadata,
    superblock_is_blank,
)
from .dm import (
    NotSimulated,
    TargetType,
    dm_get_device,
    dm_register_target,
    resolve_devno,
    target_type,
)
from .metadata import PoolMetadata
from .pool import PM_FAIL, Pool, PoolTable, TableError
from .store import MemoryStore
from .thin import Thin


def _pool_targets(dev: DmDevice) -> list[Target]:
    """dm-thin.c's pool table, by mapped device (__pool_table_lookup): the pool targets of
    the device's tables, live or loaded, that bind a pool object."""
    return [t for t in (dev.live or []) + (dev.inactive or []) if isinstance(t.obj, Pool)]


def _pool_for_metadata(state: HostState, md_devno: str):
    """__pool_find: the live pool object whose metadata device is ``md_devno``, if any."""
    for d in state.dm.values():
        for t in _pool_targets(d):
            if t.md_devno == md_devno:
                return d, t
    return None, None


def _pool_used_elsewhere(state: HostState, target: Target) -> bool:
    return any(
        t is not target and t.obj is target.obj
        for d in state.dm.values()
        for t in (d.live or []) + (d.inactive or [])
    )


def _ctr_thin_pool(state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
    log = state.log
    # pool_ctr: argument count, distinct devices and features first, then the devices,
    # then block size and low water mark
    PoolTable.parse(argv[:2] + ["128", "0"] + argv[4:] if len(argv) >= 4 else argv)
    md_dev = dm_get_device(state, target, argv[0], "Error opening metadata block device")
    data_dev = dm_get_device(state, target, argv[1], "Error getting data device")
    md_size, md_name = device_size(state, md_dev), _bdev_name(md_dev)
    table = PoolTable.parse(argv, metadata_bytes=md_size, metadata_dev_name=md_name, log=log)
    md, md_offset = _backing_loop(md_dev)
    data, data_offset = _backing_loop(data_dev)
    in_memory = isinstance(md, StoreLoop)  # the model backend's: no metadata file
    if not md.backing_file and not in_memory:
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
    if _pool_targets(dev):
        # __pool_find: this mapped device already binds a pool on other devices
        raise TableError("different pool cannot replace a pool", E.EINVAL)
    metadata = None if in_memory else _open_metadata(state, md, md_offset, table)
    if isinstance(data, StoreLoop):
        store, discards = data.store, True
    elif data.backing_file:
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
        track_metadata_writes=not in_memory,
    )
    pool.no_space_timeout = getattr(state, "no_space_timeout", pool.no_space_timeout)
    if not in_memory:
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
        under = target_type(live[0]).remaps_to(live[0]) if len(live) == 1 else None
        if under is None:
            raise NotSimulated(
                f"a pool on dm-{dev.minor}: only a dm device of one linear target is simulated "
                "under a pool"
            )
        dev, start = under
        offset += start
    return dev, offset


def _attach_metadata_device(pool: Pool, md: LoopDevice, offset: int, formatted: bool) -> None:
    """Commits go to the metadata loop device's file from now on (at ``offset`` bytes into
    the device, for a linear device on it).  A device just formatted is written at once, as
    __format_metadata writes its initial superblock in pool_ctr (a failure fails the table
    load: "Error creating metadata object")."""
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
        dm_get_device(state, target, argv[2], "Error opening origin device")
        origin = target.devs[-1]
    pool_dev = dm_get_device(state, target, argv[0], "Error opening pool device")
    if not isinstance(pool_dev, DmDevice):
        raise TableError("Couldn't get pool mapped device", E.EINVAL)
    pt = next(iter(_pool_targets(pool_dev)), None)
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


class ThinPoolType(TargetType):
    """dm-thin.c: pool_target."""

    name = "thin-pool"

    def ctr(self, state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
        _ctr_thin_pool(state, dev, target, argv)

    def dtr(self, state: HostState, target: Target) -> None:
        """pool_dtr: the last table holding the pool object closes it."""
        if not isinstance(target.obj, Pool) or _pool_used_elsewhere(state, target):
            return
        pool = target.obj
        pool.suspend()  # dm_pool_metadata_close commits
        if pool.pmd.device is not None:
            pool.pmd.device.close(pool.pmd)
        pool.store.close()

    def cancel_load(self, target: Target) -> None:
        if target.obj is not None:
            target.obj.pending = None

    def postsuspend(self, target: Target) -> None:
        target.obj.suspend()

    def resume(self, target: Target) -> None:
        target.obj.resume()

    def status(self, state: HostState, target: Target, noflush: bool) -> str:
        pool: Pool = target.obj
        return pool.status(noflush=noflush or pool.suspended)

    def table(self, state: HostState, target: Target) -> str:
        return target.obj.table_params(target.md_devno, target.data_devno)

    def message(self, state: HostState, target: Target, text: str) -> None:
        target.obj.message(text)

    def iterate_devices(self, target: Target) -> list[tuple[str, int, int]]:
        return [(target.data_devno, 0, target.length)]  # pool_iterate_devices: the data device

    def io_opt(self, state: HostState, target: Target) -> int:
        return target.obj.block_bytes

    def io_min(self, state: HostState, target: Target) -> int:
        return target.obj.block_bytes if target.obj is not None else 0

    def discard_granularity(self, state: HostState, target: Target) -> int | None:
        pool: Pool = target.obj
        return pool.block_bytes if pool.pf.discard_enabled else 0

    def event_nr(self, target: Target) -> int:
        return target.obj.event_nr

    def worker(self, state: HostState, target: Target) -> None:
        """do_waker: the pool's worker commits a changed transaction once COMMIT_PERIOD
        has passed (blockio.worker_commit)."""
        pool = target.obj
        if pool is None:
            return
        if not hasattr(pool, "host_commit_seq"):
            pool.host_commit_seq = getattr(state, "command_seq", 1) - 1
        if pool.pmd.device is not None:
            # the metadata loop device's file as it holds it now (loopfile.py): the
            # holder's fd, or None once the file is lost, when commits fail with EIO
            md = state.loops.get(target.md_loop)
            pool.pmd.device.path = loopfile.io_path(md) if md is not None else None
        blockio.worker_commit(state, pool)

    # pool_map: I/O to the pool device goes straight to the data device

    def read(self, state: HostState, target: Target, offset: int, length: int) -> bytes:
        return blockio.read(state, resolve_devno(state, target.data_devno), offset, length)

    def write(self, state: HostState, target: Target, offset: int, data: bytes) -> None:
        blockio.write(state, resolve_devno(state, target.data_devno), offset, data)

    def flush(self, state: HostState, target: Target) -> None:
        target.obj.commit()


class ThinType(TargetType):
    """dm-thin.c: thin_target."""

    name = "thin"

    def ctr(self, state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
        _ctr_thin(state, dev, target, argv)

    def dtr(self, state: HostState, target: Target) -> None:
        if isinstance(target.obj, Thin):
            target.obj.close()

    def io_blocked(self, target: Target) -> bool:
        """pool_presuspend suspends every thin of the pool (pool_suspend_active_thins:
        dm_internal_suspend_noflush on each), until pool_resume resumes them: all their
        bios wait meanwhile, mapped or not, though `dmsetup info` does not show them
        suspended (DMF_SUSPENDED_INTERNALLY is not DM_SUSPEND_FLAG)."""
        return isinstance(target.obj, Thin) and target.obj.pool.suspended

    def status(self, state: HostState, target: Target, noflush: bool) -> str:
        return target.obj.status()

    def table(self, state: HostState, target: Target) -> str:
        origin = getattr(target, "origin", None)
        return target.obj.table_params() + (f" {origin}" if origin else "")

    def io_opt(self, state: HostState, target: Target) -> int:
        return target.obj.pool.block_bytes

    def io_min(self, state: HostState, target: Target) -> int:
        return target.obj.pool.block_bytes if target.obj is not None else 0

    def discard_granularity(self, state: HostState, target: Target) -> int | None:
        pool: Pool = target.obj.pool
        return pool.block_bytes if pool.pf.discard_enabled else 0

    # thin_map; the worker's commit for time after each bio it processed

    def read(self, state: HostState, target: Target, offset: int, length: int) -> bytes:
        if getattr(target, "origin", None):
            return external_origin.read(target, offset, length, _origin(state, target))
        return target.obj.read(offset, length)

    def write(self, state: HostState, target: Target, offset: int, data: bytes) -> None:
        thin: Thin = target.obj
        before = thin.pool.pmd.commit_count
        try:
            if getattr(target, "origin", None):
                external_origin.write(target, offset, data, _origin(state, target))
            else:
                thin.write(offset, data)
        finally:
            blockio.worker_committed(state, thin.pool, before)
            blockio.worker_commit(state, thin.pool)

    def discard(self, state: HostState, target: Target, offset: int, length: int) -> None:
        thin: Thin = target.obj
        before = thin.pool.pmd.commit_count
        try:
            thin.discard(offset, length)
        finally:
            blockio.worker_committed(state, thin.pool, before)
            blockio.worker_commit(state, thin.pool)

    def flush(self, state: HostState, target: Target) -> None:
        thin: Thin = target.obj
        before = thin.pool.pmd.commit_count
        thin.flush()
        blockio.worker_committed(state, thin.pool, before)

    def supports_discard(self, state: HostState, target: Target) -> bool:
        return target.obj.pool.pf.discard_enabled


def _origin(state: HostState, target: Target) -> external_origin.OriginReader:
    """The external origin of thin target ``target``: its size in bytes, and a read of it."""
    dev = resolve_devno(state, target.origin)
    size = device_size(state, dev) if dev is not None else 0
    return external_origin.OriginReader(size, lambda offset, n: blockio.read(state, dev, offset, n))


dm_register_target(ThinPoolType())
dm_register_target(ThinType())


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

    Only the superblock and the space maps are read here (disk.read_metadata); btree nodes
    are read from the metadata file when they are used, as dm-bufio reads them, so this
    costs the same whatever the pool's thins map."""

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
    broken: list[Pool] = []
    for thin in thins:
        pool = thin.pool
        if isinstance(pool.pmd, Unloaded):  # a pool no table holds any more
            _blank_metadata(pool, pool.pmd.value)
            pool._set_mode(PM_FAIL)
        try:
            thin.td = pool.pmd.open_device(thin.dev_id)
        except CorruptMetadata as e:
            # the thin's details are in a node that fails its checks: a failed pool, its
            # thins opened again below on a blank metadata
            state.log.emit("thin metadata", f"{pool.name}: cannot reopen the metadata: {e}")
            _blank_metadata(pool, pool.pmd.device.offset)
            pool._set_mode(PM_FAIL)
            broken.append(pool)
        except KeyError:
            # the committed metadata has no such thin (created after the last commit)
            if pool.mode != PM_FAIL:
                pool._set_mode(PM_FAIL)
            pool.pmd.create_thin(thin.dev_id)
            thin.td = pool.pmd.open_device(thin.dev_id)
    for thin in thins:
        pool = thin.pool
        if any(pool is p for p in broken) and thin.dev_id not in pool.pmd.devices:
            pool.pmd.create_thin(thin.dev_id)
            thin.td = pool.pmd.open_device(thin.dev_id)


def _reopen_metadata(state: HostState, pool: Pool, target: Target) -> bool:
    """Read the pool's metadata from its device; False (a blank in-core metadata in its
    place) when the device's file is lost or holds no metadata this pool can use."""
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
    pool.pmd = PoolMetadata(1024, pool.sectors_per_block, track_writes=True)
    pool.pmd.device = MetadataDevice(None, offset)
    pool.pmd.metadata_sm.log = pool.log
