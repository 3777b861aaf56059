"""The model backend: the interface on the simulation in ``thinsim.model``."""

from __future__ import annotations

import errno as E
import os
from collections.abc import Sequence

from .. import interface
from ..errors import InvalidArgumentError, NotFoundError, error_for
from ..model.pool import Clock, KernelLog, PoolTable
from ..model.pool import Pool as PoolTarget
from ..model.store import AccountingStore, DataStore, FileStore, MemoryStore
from ..model.thin import Thin as ThinTarget

DM_MAJOR = 254


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
        self.data_size = data_size
        self.metadata_size = metadata_size
        self._features = list(features)
        self._lwm = low_water_mark_blocks
        self._length = length_sectors if length_sectors is not None else data_size // 512
        self.data_block_size_sectors = data_block_size_sectors
        table = PoolTable.parse(self._argv())
        path = _store_path(store)
        made = path is not None and not os.path.lexists(path)
        data_store = make_store(store, data_size)
        try:
            self.target = PoolTarget(
                table,
                length_sectors=self._length,
                metadata_bytes=metadata_size,
                data_bytes=data_size,
                store=data_store,
                log=log,
                clock=clock,
                name=f"{DM_MAJOR}:0",
            )
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
        self._thins: dict[int, ModelThin] = {}

    def __repr__(self) -> str:
        return (
            f"ModelPool(data_size={self.data_size}, metadata_size={self.metadata_size}, "
            f"data_block_size_sectors={self.data_block_size_sectors}, "
            f"low_water_mark_blocks={self._lwm}, features={self._features!r})"
        )

    def _argv(self) -> list[str]:
        argv = ["7:0", "7:1", str(self.data_block_size_sectors), str(self._lwm)]
        if self._features:
            argv += [str(len(self._features)), *self._features]
        return argv

    @property
    def log(self) -> KernelLog:
        return self.target.log

    def message(self, text: str) -> None:
        self.target.message(interface.check_message(text))

    def activate(self, dev_id: int, length: int) -> ModelThin:
        interface.check_activate(dev_id, length)
        used = {t.minor for t in self._thins.values()} | {0}
        minor = next(m for m in range(len(used) + 1) if m not in used)
        target = ThinTarget(self.target, dev_id, length // 512, pool_dev=f"{DM_MAJOR}:0")
        thin = ModelThin(self, target, minor)
        self._thins[dev_id] = thin
        return thin

    def reload(
        self,
        *,
        data_size: int | None = None,
        metadata_size: int | None = None,
        length_sectors: int | None = None,
        low_water_mark_blocks: int | None = None,
        features: Sequence[str] | None = None,
    ) -> None:
        interface.check_reload_args(
            self.data_size,
            data_size=data_size,
            metadata_size=metadata_size,
            length_sectors=length_sectors,
            low_water_mark_blocks=low_water_mark_blocks,
            features=features,
        )
        t = self.target
        new_data = self.data_size if data_size is None else max(data_size, self.data_size)
        new_md = (
            self.metadata_size if metadata_size is None else max(metadata_size, self.metadata_size)
        )
        if length_sectors is None:
            length_sectors = new_data // 512 if data_size is not None else self._length
        saved = (self._lwm, self._features)
        if low_water_mark_blocks is not None:
            self._lwm = low_water_mark_blocks
        if features is not None:
            self._features = list(features)
        try:
            table = PoolTable.parse(self._argv())
        except Exception:
            self._lwm, self._features = saved
            raise
        self.data_size, self.metadata_size = new_data, new_md
        t.data_bytes, t.metadata_bytes = new_data, new_md
        t.suspend()
        try:
            t.load(table, length_sectors)
            t.resume()
        except Exception:
            self._lwm, self._features = saved
            if t.suspended:
                t.pending = None
                t.resume()
            raise
        self._length = length_sectors

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

    def close(self) -> None:
        for thin in list(self._thins.values()):
            thin.deactivate()
        self.target.suspend()
        self.target.store.close()
