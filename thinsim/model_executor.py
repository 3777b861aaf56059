"""Scenario operations on the model: what the recorded kernel transcripts are checked against."""

from __future__ import annotations

import errno as E
import hashlib

from .dm import log_device_too_small, log_table_error
from .errors import ThinsimError, error_for
from .model.pool import (
    NO_SPACE_TIMEOUT_SECS,
    Clock,
    KernelLog,
    Pool,
    PoolTable,
    TableError,
)
from .model.store import MemoryStore
from .model.thin import Thin
from .scenario import SECTOR_SIZE, Executor, pattern
from .thin_dump import dump_xml

DM_MAJOR = 254


class ModelExecutor(Executor):
    """The scenario language on a model pool.

    ``store_factory`` makes the data store for each new pool: a fresh ``MemoryStore`` by
    default; a ``FileStore`` on a real sparse file makes ``du`` a real measurement.
    """

    def __init__(self, store_factory=MemoryStore) -> None:
        self.store_factory = store_factory
        self.log = KernelLog()
        self.clock = Clock()
        self._seen = 0
        self.pool_obj: Pool | None = None
        self.pool_minor: int | None = None
        self.thins: dict[int, tuple[Thin, int]] = {}
        self.store = store_factory()
        self.md_bytes = 0
        self.data_bytes = 0
        self.no_space_timeout_secs = NO_SPACE_TIMEOUT_SECS
        self.suspended_thins: set[int] = set()

    def __repr__(self) -> str:
        return "ModelExecutor()"

    # -- helpers -------------------------------------------------------------------

    def _minor(self) -> int:
        used = {m for _, m in self.thins.values()}
        if self.pool_minor is not None:
            used.add(self.pool_minor)
        m = 0
        while m in used:
            m += 1
        return m

    def _table_error(self, minor: int, target: str, e: TableError) -> None:
        log_table_error(self.log, f"{DM_MAJOR}:{minor}", target, e)

    @staticmethod
    def _argv(block_size_sectors, low_water_blocks, features) -> list[str]:
        argv = ["/dev/loop0", "/dev/loop1", block_size_sectors, low_water_blocks]
        if features:
            argv += [str(len(features))] + list(features)
        return argv

    def _pool(self) -> Pool:
        if self.pool_obj is None:
            raise error_for(E.ENXIO)
        return self.pool_obj

    def _thin(self, thin_id: int) -> Thin:
        if thin_id not in self.thins:
            raise error_for(E.ENXIO)
        return self.thins[thin_id][0]

    # -- pool lifecycle -------------------------------------------------------------

    def pool(
        self,
        *,
        md_bytes,
        data_bytes,
        length_sectors,
        block_size_sectors,
        low_water_blocks,
        features,
    ) -> list[str]:
        minor = self._minor()
        argv = self._argv(block_size_sectors, low_water_blocks, features)
        self.store = self.store_factory()  # fresh sparse files for every pool
        try:
            table = PoolTable.parse(argv, metadata_bytes=md_bytes, log=self.log)
            pool = Pool(
                table,
                length_sectors=length_sectors,
                metadata_bytes=md_bytes,
                data_bytes=data_bytes,
                store=self.store,
                log=self.log,
                clock=self.clock,
                name=f"{DM_MAJOR}:{minor}",
            )
        except TableError as e:
            self._table_error(minor, "thin-pool", e)
            raise
        if length_sectors > data_bytes // SECTOR_SIZE:
            # checked after the target was constructed
            log_device_too_small(
                self.log,
                f"{DM_MAJOR}:{minor}",
                "loop1",
                0,
                length_sectors,
                data_bytes // SECTOR_SIZE,
                first_table=True,
            )
            raise error_for(E.EINVAL)
        pool.no_space_timeout = self.no_space_timeout_secs
        pool.resume()
        self.pool_obj = pool
        self.pool_minor = minor
        self.md_bytes, self.data_bytes = md_bytes, data_bytes
        return []

    def reload(
        self,
        *,
        md_bytes,
        data_bytes,
        length_sectors,
        block_size_sectors,
        low_water_blocks,
        features,
    ) -> list[str]:
        pool = self._pool()
        pool.metadata_bytes = md_bytes
        pool.data_bytes = data_bytes
        argv = self._argv(block_size_sectors, low_water_blocks, features)
        pool.suspend()
        try:
            try:
                table = PoolTable.parse(argv, metadata_bytes=md_bytes, log=self.log)
                pool.load(table, length_sectors)
            except TableError as e:
                self._table_error(self.pool_minor, "thin-pool", e)
                raise
            if length_sectors > data_bytes // SECTOR_SIZE:
                log_device_too_small(
                    self.log,
                    f"{DM_MAJOR}:{self.pool_minor}",
                    "loop1",
                    0,
                    length_sectors,
                    data_bytes // SECTOR_SIZE,
                    first_table=False,
                )
                pool.pending = None
                raise error_for(E.EINVAL)
            pool.resume()
        except ThinsimError:
            if pool.suspended:
                try:
                    pool.resume()
                except ThinsimError:
                    pass
            raise
        return []

    def remove_pool(self) -> list[str]:
        pool = self._pool()
        if pool.thins:
            raise error_for(E.EBUSY)
        pool.suspend()
        self.pool_obj = None
        self.pool_minor = None
        return []

    def suspend(self) -> list[str]:
        self._pool().suspend()
        return []

    def resume(self) -> list[str]:
        self._pool().resume()
        return []

    def msg(self, *, message: str) -> list[str]:
        self._pool().message(message)
        return []

    def no_space_timeout(self, *, seconds: int) -> list[str]:
        self.no_space_timeout_secs = seconds
        if self.pool_obj is not None:
            self.pool_obj.no_space_timeout = seconds
        return []

    # -- thins -----------------------------------------------------------------------

    def thin(self, *, thin_id: int, length_sectors: int) -> list[str]:
        pool = self._pool()
        minor = self._minor()
        try:
            dev = Thin.parse([f"{DM_MAJOR}:{self.pool_minor}", str(thin_id)])
            if pool.suspended:
                raise TableError("Unable to activate thin device while pool is suspended")
            thin = Thin(pool, dev, length_sectors, pool_dev=f"{DM_MAJOR}:{self.pool_minor}")
        except TableError as e:
            self._table_error(minor, "thin", e)
            raise
        self.thins[thin_id] = (thin, minor)
        return []

    def remove_thin(self, *, thin_id: int) -> list[str]:
        thin = self._thin(thin_id)
        thin.close()
        del self.thins[thin_id]
        return []

    def suspend_thin(self, *, thin_id: int) -> list[str]:
        self._thin(thin_id)
        self.suspended_thins.add(thin_id)
        return []

    def resume_thin(self, *, thin_id: int) -> list[str]:
        self._thin(thin_id)
        self.suspended_thins.discard(thin_id)
        return []

    # -- I/O -------------------------------------------------------------------------

    def _write(self, thin_id, offset, length, seed) -> Thin:
        thin = self._thin(thin_id)
        data = pattern(seed, offset, length)
        thin.write(offset, data)
        return thin

    def write(self, *, thin_id, offset, length, seed) -> list[str]:
        thin = self._write(thin_id, offset, length, seed)
        thin.flush()
        return []

    def write_nosync(self, *, thin_id, offset, length, seed) -> list[str]:
        self._write(thin_id, offset, length, seed)
        return []

    def read(self, *, thin_id, offset, length) -> list[str]:
        data = self._thin(thin_id).read(offset, length)
        return ["md5 " + hashlib.md5(data).hexdigest()]

    def discard(self, *, thin_id, offset, length) -> list[str]:
        self._thin(thin_id).discard(offset, length)
        return []

    def flush(self, *, thin_id) -> list[str]:
        self._thin(thin_id).flush()
        return []

    # -- observation ----------------------------------------------------------------------

    def _pool_prefix(self) -> str:
        pool = self._pool()
        return f"0 {pool.length_sectors} thin-pool "

    def status(self) -> list[str]:
        pool = self._pool()
        return [self._pool_prefix() + pool.status()]

    def status_noflush(self) -> list[str]:
        pool = self._pool()
        return [self._pool_prefix() + pool.status(noflush=True)]

    def thin_status(self, *, thin_id) -> list[str]:
        thin = self._thin(thin_id)
        return [f"0 {thin.length_sectors} thin {thin.status()}"]

    def table(self) -> list[str]:
        return [self._pool_prefix() + self._pool().table_params()]

    def thin_table(self, *, thin_id) -> list[str]:
        thin = self._thin(thin_id)
        return [f"0 {thin.length_sectors} thin {thin.table_params()}"]

    def events(self) -> list[str]:
        return [f"event_nr {self._pool().event_nr}"]

    def dump(self) -> list[str]:
        pool = self._pool()
        pool.message("reserve_metadata_snap")
        lines = dump_xml(pool.pmd, metadata_snap=True)
        pool.message("release_metadata_snap")
        return lines

    def du(self) -> list[str]:
        return [f"allocated {self.store.allocated_bytes()}"]

    def log_lines(self) -> list[str]:
        new = self.log.lines[self._seen :]
        self._seen = len(self.log.lines)
        return new


__all__ = ["SECTOR_SIZE", "ModelExecutor"]
