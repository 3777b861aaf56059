"""The model backend: the interface on the simulation in ``thinsim.model``."""

from __future__ import annotations

import errno as E
import os
from collections.abc import Callable, Sequence

from .. import interface
from ..constants import DM_MAJOR, SECTOR_SIZE
from ..dm import log_device_too_small, log_table_error
from ..errors import InvalidArgumentError, NotFoundError, ThinsimError, error_for
from ..model.pool import NO_SPACE_TIMEOUT_SECS, Clock, KernelLog, PoolTable, TableError
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


class ModelThin(interface.Thin):
    def __init__(self, pool: ModelPool, target: ThinTarget, minor: int) -> None:
        self.pool = pool
        self.target = target
        self.dev_id = target.dev_id
        self.minor = minor
        self.suspended = False

    def __repr__(self) -> str:
        return f"ModelThin(dev_id={self.dev_id}, length={self.target.size})"

    def read(self, offset: int, length: int) -> bytes:
        interface.check_read(offset, length)
        return self.target.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        view = interface.check_write(offset, data, self.target.size)
        if not view.nbytes:
            return
        self.target.write(offset, view.obj if type(view.obj) is bytes else view.tobytes())

    def discard(self, offset: int, length: int) -> None:
        interface.check_discard(offset, length)
        self.target.discard(offset, length)

    def flush(self) -> None:
        self.target.flush()

    def status(self) -> str:
        return f"0 {self.target.length_sectors} thin {self.target.status()}"

    def table(self) -> str:
        return f"0 {self.target.length_sectors} thin {self.target.table_params()}"

    def deactivate(self) -> None:
        self.target.close()
        self.pool._thins.pop(self.dev_id, None)

    def suspend(self) -> None:
        # dm-thin.c: a thin's suspend only waits for its in-flight bios; the model has none.
        self.suspended = True

    def resume(self) -> None:
        self.suspended = False


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
            log=log,
            clock=clock,
        )

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
        minor: int = 0,
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
            log=log,
            clock=clock,
            minor=minor,
            no_space_timeout=no_space_timeout,
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
        log: KernelLog | None,
        clock: Clock | None,
        minor: int = 0,
        no_space_timeout: int = NO_SPACE_TIMEOUT_SECS,
    ) -> None:
        """dm-ioctl.c's create and table load, then the first resume: the target's
        constructor (a refusal logged as dm_table_add_target logs it), the check of the
        table against its data device (dm-table.c: device_area_is_invalid), pool_resume."""
        self.data_size = data_size
        self.metadata_size = metadata_size
        self._bs = block_size
        self._lwm = low_water_mark
        self._features = features
        self._length = length_sectors
        self.minor = minor
        self.dev = f"{DM_MAJOR}:{minor}"
        self.closed = False
        self._thins: dict[int, ModelThin] = {}
        log = log if log is not None else KernelLog()
        path = _store_path(store)
        made = path is not None and not os.path.lexists(path)
        data_store = make_store(store, data_size)
        try:
            try:
                table = PoolTable.parse(self._argv(), metadata_bytes=metadata_size, log=log)
                self.target = PoolTarget(
                    table,
                    length_sectors=length_sectors,
                    metadata_bytes=metadata_size,
                    data_bytes=data_size,
                    store=data_store,
                    log=log,
                    clock=clock,
                    name=self.dev,
                )
            except TableError as e:
                log_table_error(log, self.dev, "thin-pool", e)
                raise
            data_sectors = data_size // SECTOR_SIZE
            if length_sectors > data_sectors:
                # checked after the target was constructed
                log_device_too_small(
                    log, self.dev, "loop1", 0, length_sectors, data_sectors, first_table=True
                )
                raise error_for(E.EINVAL)
            self.data_block_size_sectors = table.block_size
            self.target.no_space_timeout = no_space_timeout
            self.target.resume()
        except BaseException as e:
            # a pool that could not be made leaves nothing: not the file it made either
            if path is not None:
                data_store.close()
                if made:
                    os.unlink(path)
            if isinstance(e, MemoryError):
                raise error_for(
                    E.ENOMEM, f"not enough memory to model a pool of {data_size} bytes"
                ) from None
            raise

    def __repr__(self) -> str:
        return (
            f"ModelPool(data_size={self.data_size}, metadata_size={self.metadata_size}, "
            f"data_block_size_sectors={self.data_block_size_sectors}, "
            f"low_water_mark_blocks={self._lwm}, features={self._features!r})"
        )

    def _argv(self) -> list[str]:
        argv = ["7:0", "7:1", self._bs, self._lwm]
        if self._features:
            argv += [str(len(self._features)), *self._features]
        return argv

    @property
    def log(self) -> KernelLog:
        return self.target.log

    def message(self, text: str) -> None:
        self.target.message(interface.check_message(text))

    def activate(self, dev_id: int, length: int) -> ModelThin:
        """dmsetup create of a thin device: thin_ctr's checks, its refusals logged."""
        interface.check_activate(dev_id, length)
        used = {t.minor for t in self._thins.values()} | {self.minor}
        minor = next(m for m in range(len(used) + 1) if m not in used)
        try:
            dev = ThinTarget.parse([self.dev, str(dev_id)])
            if self.target.suspended:
                raise TableError("Unable to activate thin device while pool is suspended")
            target = ThinTarget(self.target, dev, length // SECTOR_SIZE, pool_dev=self.dev)
        except TableError as e:
            log_table_error(self.log, f"{DM_MAJOR}:{minor}", "thin", e)
            raise
        thin = ModelThin(self, target, minor)
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
        t = self.target
        self.data_size, self.metadata_size = data_size, metadata_size
        t.data_bytes, t.metadata_bytes = data_size, metadata_size
        saved = (self._bs, self._lwm, self._features, self._length)
        self._bs, self._lwm, self._features = block_size, low_water_mark, list(features)
        t.suspend()
        try:
            try:
                table = PoolTable.parse(self._argv(), metadata_bytes=metadata_size, log=t.log)
                t.load(table, length_sectors)
            except TableError as e:
                log_table_error(t.log, self.dev, "thin-pool", e)
                raise
            if length_sectors > data_size // SECTOR_SIZE:
                log_device_too_small(
                    t.log,
                    self.dev,
                    "loop1",
                    0,
                    length_sectors,
                    data_size // SECTOR_SIZE,
                    first_table=False,
                )
                t.pending = None
                raise error_for(E.EINVAL)
            t.resume()
        except ThinsimError:
            self._bs, self._lwm, self._features, self._length = saved
            if t.suspended:
                try:
                    t.resume()
                except ThinsimError:
                    pass  # a table that failed in preresume fails again: dmsetup's retry
            raise
        self._length = length_sectors
        self.data_block_size_sectors = table.block_size

    def suspend(self) -> None:
        self.target.suspend()

    def resume(self) -> None:
        self.target.resume()

    def commit(self) -> None:
        self.target.commit()

    def status(self, noflush: bool = False) -> str:
        return f"0 {self.target.length_sectors} thin-pool {self.target.status(noflush)}"

    def table(self) -> str:
        return f"0 {self.target.length_sectors} thin-pool {self.target.table_params()}"

    @property
    def event_nr(self) -> int:
        return self.target.event_nr

    def metadata_dump(self) -> str:
        self.reserve_metadata_snap()
        try:
            lines = dump_xml(self.target.pmd, metadata_snap=True)
        finally:
            self.release_metadata_snap()
        return "".join(line + "\n" for line in lines)

    def allocated_bytes(self) -> int:
        return self.target.store.allocated_bytes()

    def close(self) -> None:
        for thin in list(self._thins.values()):
            thin.deactivate()
        self.target.suspend()
        self.target.store.close()
        self.closed = True


class ModelMachine(interface.Machine):
    """Pools on the model, sharing one kernel log and one simulated clock.

    ``store_factory`` makes the data store of each new pool: a fresh ``MemoryStore`` by
    default; a ``FileStore`` on a real sparse file makes ``du`` a real measurement.
    """

    def __init__(self, store_factory: Callable[[], DataStore] = MemoryStore) -> None:
        self.store_factory = store_factory
        self.log = KernelLog()
        self.clock = Clock()
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
        used = {p.minor for p in self._pools} | {
            t.minor for p in self._pools for t in p._thins.values()
        }
        pool = ModelPool.from_table(
            metadata_size=metadata_size,
            data_size=data_size,
            length_sectors=length_sectors,
            block_size=block_size,
            low_water_mark=low_water_mark,
            features=features,
            store=self.store_factory(),  # fresh sparse files for every pool
            log=self.log,
            clock=self.clock,
            minor=next(m for m in range(len(used) + 1) if m not in used),
            no_space_timeout=self.no_space_timeout,
        )
        self._pools.append(pool)
        return pool

    def log_lines(self) -> list[str]:
        new = self.log.lines[self._seen :]
        self._seen = len(self.log.lines)
        return new

    def set_no_space_timeout(self, seconds: int) -> None:
        self.no_space_timeout = seconds
        for pool in self._pools:
            pool.target.no_space_timeout = seconds
