"""The model backend: the interface on the simulation in ``thinsim.model``.

A thin layer over the simulated kernel's device-mapper core (thinsim/model/dm.py), the
one the simulated host's dmsetup calls: a pool is a mapped device whose ``thin-pool`` table
names two loop devices of its own (thinsim.model.devices.StoreLoop: the data device's bytes
in the pool's store, the metadata in memory), a thin a mapped device with a ``thin`` table.
Tables, constructor errors and their log lines, minors, status and table lines, suspend,
resume, reload and remove are the core's; only the data path calls the thin target directly
(no device lookup per I/O), as a bio reaches thin_map.
"""

from __future__ import annotations

import contextlib
import errno as E
import os
from collections.abc import Callable, Iterator, Sequence

from .. import interface
from ..constants import SECTOR_SIZE
from ..errors import (
    InvalidArgumentError,
    NoDeviceError,
    NotFoundError,
    ThinsimError,
    error_for,
    with_kernel_log,
)
from ..model import dm
from ..model.devices import DmDevice, HostState
from ..model.loop import loop_add_store, loop_detach
from ..model.pool import NO_SPACE_TIMEOUT_SECS, Clock, KernelLog
from ..model.pool import Pool as PoolTarget
from ..model.store import AccountingStore, DataStore, FileStore, MemoryStore
from ..model.thin import Thin as ThinTarget
from ..thin_dump import dump_xml


def _store_path(store: object) -> str | None:
    """The file a ``store`` argument names, or None for a store that is not a file.

    A path is an ``os.PathLike`` or a str with a ``/`` in it ("./data", "/tmp/data"): a bare
    word is a store's name, so a misspelt one ("memroy") is refused rather than taken for a
    file of that name in the current folder."""
    if isinstance(store, DataStore) or store in ("accounting", "memory"):
        return None
    if isinstance(store, os.PathLike):
        store = os.fspath(store)
    if isinstance(store, str) and "/" in store:
        return store
    if isinstance(store, str):
        raise InvalidArgumentError(
            f"unknown store {store!r}: give 'accounting', 'memory', a DataStore, or a path "
            f"(a pathlib.Path, or a str with a '/' such as './{store}')"
        )
    raise InvalidArgumentError(
        f"store must be 'accounting', 'memory', a DataStore or a path, not {type(store).__name__}"
    )


def make_store(store: str | os.PathLike[str] | DataStore, data_size: int) -> DataStore:
    """``"accounting"`` (no payload), ``"memory"``, a path (a real sparse file of
    ``data_size`` bytes, grown to it when smaller) or a store.  A bad argument, or a path
    whose folder is missing, raises a thinsim error before any file is made."""
    if isinstance(store, DataStore):
        return store
    if store == "accounting":
        return AccountingStore()
    if store == "memory":
        return MemoryStore()
    path = _store_path(store)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NotFoundError(f"store {path!r}: no folder {folder!r}")
    try:
        return FileStore(path, data_size)
    except OSError as e:
        raise error_for(e.errno or E.EIO, f"store {path!r}: {e.strerror}") from None


@contextlib.contextmanager
def _ioctl(state: HostState | None = None) -> Iterator[None]:
    """A call into the device-mapper core: what the simulation does not do is refused with
    EOPNOTSUPP (a thinsim error, as every failure of the Python API is); a refusal carries
    the log lines the kernel printed for it (``state``'s, from the call on)."""
    seen = len(state.log.lines) if state is not None else 0
    try:
        yield
    except dm.NotSimulated as e:
        raise error_for(E.EOPNOTSUPP, f"not simulated: {e}") from None
    except ThinsimError as e:
        if state is not None:
            raise with_kernel_log(e, state.log.lines[seen:]) from None
        raise


def _remove(state: HostState, dev: DmDevice) -> None:
    """DM_DEV_REMOVE of a device this backend made, if it is still there."""
    if state.dm.get(dev.name) is dev:
        with _ioctl():
            dm.dm_remove(state, dev)


class ModelThin(interface.Thin):
    def __init__(self, pool: ModelPool, md: DmDevice) -> None:
        self.pool = pool
        self._dm = md
        # the data path calls the thin target itself, as dm's map does per bio
        self.target: ThinTarget = md.live[0].obj
        self.dev_id = self.target.dev_id
        self.minor = md.minor

    def __repr__(self) -> str:
        return f"ModelThin(dev_id={self.dev_id}, length={self.target.size})"

    @property
    def suspended(self) -> bool:
        return self._dm.suspended

    def _check_active(self) -> None:
        """ENXIO once the device is removed (deactivate, or its pool closed), as
        device-mapper answers for a device that is gone."""
        if self.pool._kernel.dm.get(self._dm.name) is not self._dm:
            raise NoDeviceError(f"thin {self.dev_id} was deactivated: its device is gone")

    # I/O that fails carries the kernel's lines logged meanwhile (the first write a full pool
    # refuses: "switching pool to out-of-data-space (error IO) mode"); a try costs nothing
    # on the data path until something raises

    def read(self, offset: int, length: int) -> bytes:
        self._check_active()
        interface.check_read(offset, length)
        seen = len(self.pool._kernel.log.lines)
        try:
            return self.target.read(offset, length)
        except ThinsimError as e:
            raise with_kernel_log(e, self.pool._kernel.log.lines[seen:]) from None

    def write(self, offset: int, data: bytes) -> None:
        self._check_active()
        view = interface.check_write(offset, data, self.target.size)
        if not view.nbytes:
            return
        seen = len(self.pool._kernel.log.lines)
        try:
            self.target.write(offset, view.obj if type(view.obj) is bytes else view.tobytes())
        except ThinsimError as e:
            raise with_kernel_log(e, self.pool._kernel.log.lines[seen:]) from None

    def discard(self, offset: int, length: int) -> None:
        self._check_active()
        interface.check_discard(offset, length)
        seen = len(self.pool._kernel.log.lines)
        try:
            self.target.discard(offset, length)
        except ThinsimError as e:
            raise with_kernel_log(e, self.pool._kernel.log.lines[seen:]) from None

    def flush(self) -> None:
        self._check_active()
        seen = len(self.pool._kernel.log.lines)
        try:
            self.target.flush()
        except ThinsimError as e:
            raise with_kernel_log(e, self.pool._kernel.log.lines[seen:]) from None

    def status(self) -> str:
        self._check_active()
        (line,) = dm.status_lines(self.pool._kernel, self._dm, table=False)
        return line

    def table(self) -> str:
        self._check_active()
        (line,) = dm.status_lines(self.pool._kernel, self._dm, table=True)
        return line

    def deactivate(self) -> None:
        self._check_active()
        with _ioctl(self.pool._kernel):
            _remove(self.pool._kernel, self._dm)
        if self.pool._thins.get(self.dev_id) is self:
            del self.pool._thins[self.dev_id]

    def suspend(self) -> None:
        # dm-thin.c: a thin's suspend only waits for its in-flight bios; the model has none
        self._check_active()
        with _ioctl(self.pool._kernel):
            dm.dm_suspend(self.pool._kernel, self._dm)

    def resume(self) -> None:
        self._check_active()
        with _ioctl(self.pool._kernel):
            dm.dm_resume(self.pool._kernel, self._dm)


class ModelPool(interface.Pool):
    """A simulated pool.  ``store`` keeps the data device's bytes: ``"accounting"``
    (none: fastest, for what-ifs), ``"memory"``, or a file path (a real sparse file)."""

    def __init__(
        self,
        data_size: int,
        metadata_size: int,
        data_block_size_sectors: int = 128,
        low_water_mark_blocks: int = 0,
        features: Sequence[str] = (),
        *,
        length_sectors: int | None = None,
        store: str | DataStore = "accounting",
        log: KernelLog | None = None,
        clock: Clock | None = None,
    ) -> None:
        interface.check_pool_args(
            data_size,
            metadata_size,
            data_block_size_sectors,
            low_water_mark_blocks,
            features,
            length_sectors,
        )
        self._make(
            data_size,
            metadata_size,
            length_sectors if length_sectors is not None else data_size // SECTOR_SIZE,
            str(data_block_size_sectors),
            str(low_water_mark_blocks),
            list(features),
            store=store,
            state=self._own_kernel(log, clock, NO_SPACE_TIMEOUT_SECS),
        )

    @staticmethod
    def _own_kernel(log: KernelLog | None, clock: Clock | None, no_space_timeout: int) -> HostState:
        """A simulated kernel of the pool's own (a ModelMachine's pools share one)."""
        state = HostState(
            log=log if log is not None else KernelLog(),
            clock=clock if clock is not None else Clock(),
        )
        state.no_space_timeout = no_space_timeout
        return state

    @classmethod
    def from_table(
        cls,
        *,
        metadata_size: int,
        data_size: int,
        length_sectors: int,
        block_size: str,
        low_water_mark: str,
        features: Sequence[str],
        store: str | DataStore = "accounting",
        log: KernelLog | None = None,
        clock: Clock | None = None,
        minor: int | None = None,
        no_space_timeout: int = NO_SPACE_TIMEOUT_SECS,
    ) -> ModelPool:
        """A pool made as ``dmsetup create`` makes it from a table's words (what
        :meth:`ModelMachine.create_pool` does): nothing is checked before the kernel's own
        parsing, which refuses bad words with its log lines."""
        pool = cls.__new__(cls)
        pool._make(
            data_size,
            metadata_size,
            length_sectors,
            block_size,
            low_water_mark,
            list(features),
            store=store,
            state=cls._own_kernel(log, clock, no_space_timeout),
            minor=minor,
        )
        return pool

    def _make(
        self,
        data_size: int,
        metadata_size: int,
        length_sectors: int,
        block_size: str,
        low_water_mark: str,
        features: list[str],
        *,
        store: str | DataStore,
        state: HostState,
        minor: int | None = None,
    ) -> None:
        """``dmsetup create`` on two fresh loop devices: DM_DEV_CREATE, DM_TABLE_LOAD (the
        target's constructor, a refusal logged as dm_table_add_target logs it; the check
        of the table against its data device), then the first resume.  A pool that could
        not be made leaves nothing: no device, no loop device, not the file it made."""
        self._kernel = state
        self.data_size = data_size
        self.metadata_size = metadata_size
        self._bs = block_size
        self._lwm = low_water_mark
        self._features = features
        self._length = length_sectors
        self._closed = False
        self._log_seen = len(state.log.lines)
        self._thins: dict[int, ModelThin] = {}
        path = _store_path(store)
        made = path is not None and not os.path.lexists(path)
        data_store = make_store(store, data_size)
        self._loops = (
            loop_add_store(state, metadata_size),
            loop_add_store(state, data_size, data_store),
        )
        minor = state.free_dm_minor() if minor is None else minor
        md = None
        try:
            with _ioctl(state):
                md = dm.dm_create(state, f"pool{minor}", minor=minor)
                dm.dm_load(state, md, [(0, length_sectors, "thin-pool", self._params())])
                dm.dm_resume(state, md)
        except BaseException as e:
            if md is not None:
                _remove(state, md)
            for loop in self._loops:
                loop_detach(state, loop)
            if path is not None:
                data_store.close()
                if made:
                    os.unlink(path)
            if isinstance(e, MemoryError):
                raise error_for(
                    E.ENOMEM, f"not enough memory to model a pool of {data_size} bytes"
                ) from None
            raise
        self._dm = md
        self.minor = md.minor
        self.dev = md.devno
        self.target: PoolTarget = md.live[0].obj
        self.data_block_size_sectors = self.target.sectors_per_block

    def __repr__(self) -> str:
        return (
            f"ModelPool(data_size={self.data_size}, metadata_size={self.metadata_size}, "
            f"data_block_size_sectors={self.data_block_size_sectors}, "
            f"low_water_mark_blocks={self._lwm}, features={self._features!r})"
        )

    def _params(self) -> str:
        """The table's parameters: the pool's own two loop devices, then the words given."""
        meta, data = self._loops
        words = [meta.devno, data.devno, self._bs, self._lwm]
        if self._features:
            words += [str(len(self._features)), *self._features]
        return " ".join(words)

    @property
    def log(self) -> KernelLog:
        return self._kernel.log

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def devno(self) -> str:
        return self.dev

    def log_lines(self) -> list[str]:
        self._check_open()
        lines = self._kernel.log.lines
        new = [line for line in lines[self._log_seen :] if line.startswith("device-mapper:")]
        self._log_seen = len(lines)
        return new

    def message(self, text: str) -> None:
        self._check_open()
        text = interface.check_message(text)
        with _ioctl(self._kernel):
            dm.dm_message(self._kernel, self._dm, 0, text)

    def activate(self, dev_id: int, length: int) -> ModelThin:
        """dmsetup create of a thin device: thin_ctr's checks, its refusals logged."""
        self._check_open()
        interface.check_activate(dev_id, length)
        state = self._kernel
        minor = state.free_dm_minor()
        md = dm.dm_create(state, f"thin{minor}", minor=minor)
        try:
            with _ioctl(state):
                dm.dm_load(state, md, [(0, length // SECTOR_SIZE, "thin", f"{self.dev} {dev_id}")])
                dm.dm_resume(state, md)
        except BaseException:
            _remove(state, md)
            raise
        thin = ModelThin(self, md)
        self._thins[dev_id] = thin
        return thin

    def reload_table(
        self,
        *,
        metadata_size: int,
        data_size: int,
        length_sectors: int,
        block_size: str,
        low_water_mark: str,
        features: Sequence[str],
    ) -> None:
        """What KernelPool.reload_table does: the loop devices take their new sizes
        (``losetup -c``), then ``dmsetup suspend``, ``reload`` and ``resume``; after a
        failure the pool is resumed on its old table if it stayed suspended."""
        state, md = self._kernel, self._dm
        meta, data = self._loops
        meta.size, data.size = metadata_size, data_size
        self.data_size, self.metadata_size = data_size, metadata_size
        saved = (self._bs, self._lwm, self._features, self._length)
        self._bs, self._lwm, self._features = block_size, low_water_mark, list(features)
        self._length = length_sectors
        try:
            with _ioctl(state):
                dm.dm_suspend(state, md)
                dm.dm_load(state, md, [(0, length_sectors, "thin-pool", self._params())])
                dm.dm_resume(state, md)
        except ThinsimError:
            self._bs, self._lwm, self._features, self._length = saved
            if md.suspended:
                with contextlib.suppress(ThinsimError):
                    dm.dm_resume(state, md)  # dmsetup's retry (fails again after preresume)
            raise
        self.data_block_size_sectors = self.target.sectors_per_block

    def suspend(self) -> None:
        self._check_open()
        with _ioctl(self._kernel):
            dm.dm_suspend(self._kernel, self._dm)

    def resume(self) -> None:
        self._check_open()
        with _ioctl(self._kernel):
            dm.dm_resume(self._kernel, self._dm)

    def commit(self) -> None:
        self._check_open()
        self.target.commit()

    def status(self, noflush: bool = False) -> str:
        self._check_open()
        (line,) = dm.status_lines(self._kernel, self._dm, table=False, noflush=noflush)
        return line

    def table(self) -> str:
        self._check_open()
        (line,) = dm.status_lines(self._kernel, self._dm, table=True)
        return line

    @property
    def event_nr(self) -> int:
        self._check_open()
        return dm.event_nr(self._dm)

    def metadata_dump(self) -> str:
        self._check_open()
        self.reserve_metadata_snap()
        try:
            lines = dump_xml(self.target.pmd, metadata_snap=True)
        finally:
            self.release_metadata_snap()
        return "".join(line + "\n" for line in lines)

    def allocated_bytes(self) -> int:
        self._check_open()
        return self.target.store.allocated_bytes()

    def close(self) -> None:
        """Remove the thins, the pool (which commits, as its last suspend does) and its
        loop devices.  Safe to call twice."""
        if self._closed:
            return
        state = self._kernel
        for thin in list(self._thins.values()):
            if state.dm.get(thin._dm.name) is thin._dm:
                thin.deactivate()
        for md in list(state.dm.values()):  # a thin activated twice under one id
            if any(
                isinstance(t.obj, ThinTarget) and t.obj.pool is self.target for t in md.live or []
            ):
                _remove(state, md)
        _remove(state, self._dm)
        for loop in self._loops:
            loop_detach(state, loop)
        self._closed = True


class ModelMachine(interface.Machine):
    """Pools on the model in one simulated kernel: one kernel log, one simulated clock,
    one set of device minors.

    ``store_factory`` makes the data store of each new pool: a fresh ``MemoryStore`` by
    default; a ``FileStore`` on a real sparse file makes ``du`` a real measurement.
    """

    def __init__(self, store_factory: Callable[[], DataStore] = MemoryStore) -> None:
        self.store_factory = store_factory
        self._kernel = HostState()
        self.log = self._kernel.log
        self.clock = self._kernel.clock
        self.no_space_timeout = NO_SPACE_TIMEOUT_SECS
        self._seen = 0
        self._pools: list[ModelPool] = []

    def __repr__(self) -> str:
        return "ModelMachine()"

    def create_pool(
        self,
        *,
        metadata_size: int,
        data_size: int,
        length_sectors: int,
        block_size: str,
        low_water_mark: str,
        features: Sequence[str],
    ) -> ModelPool:
        self._pools = [p for p in self._pools if not p.closed]
        pool = ModelPool.__new__(ModelPool)
        pool._make(
            data_size,
            metadata_size,
            length_sectors,
            block_size,
            low_water_mark,
            list(features),
            store=self.store_factory(),  # fresh sparse files for every pool
            state=self._kernel,
        )
        self._pools.append(pool)
        return pool

    def log_lines(self) -> list[str]:
        new = self.log.lines[self._seen :]
        self._seen = len(self.log.lines)
        return new

    def set_no_space_timeout(self, seconds: int) -> None:
        """dm_thin_pool's module parameter: every pool's, now and later."""
        self.no_space_timeout = self._kernel.no_space_timeout = seconds
        for pool in self._pools:
            pool.target.no_space_timeout = seconds

    def close(self) -> None:
        """Remove every pool made here, with its thins."""
        for pool in self._pools:
            pool.close()
        self._pools.clear()
