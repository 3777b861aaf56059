"""The scenario executor: each operation of the scenario language (tests/kernel/README.md)
done once, over the interface (:class:`thinsim.interface.Machine`, ``Pool``, ``Thin``), so
that the same code records a scenario on the real kernel (``KernelMachine``, inside the VM:
dev/kernel/record.py) and replays it on the model (``ModelMachine``: ``thinsim scenario``,
tests/test_kernel_recordings.py).

>>> from thinsim.scenario import parse, run
>>> print(run(parse("pool md=4M data=1G bs=128 lwm=0\\nmsg create_thin 0\\nthin 0 2048\\n"
...                 "write 0 0 4k\\nthin_status 0"), ScenarioExecutor.on_model()), end="")
$ pool md=4M data=1G bs=128 lwm=0
$ msg create_thin 0
$ thin 0 2048
$ write 0 0 4k
$ thin_status 0
0 2048 thin 128 127
"""

from __future__ import annotations

import errno as E
import hashlib
from collections.abc import Callable, Iterator

from .constants import SECTOR_SIZE
from .errors import error_for
from .interface import Machine, Pool, Thin, io_requests
from .model.store import DataStore, MemoryStore
from .scenario import Executor, pattern

__all__ = ["ScenarioExecutor"]


class ScenarioExecutor(Executor):
    """Scenario operations on one :class:`~thinsim.interface.Machine`.

    The scenario's names are dm names: one pool ``pool`` and thins ``thin<ID>``; an
    operation on a device that does not exist fails with ENXIO (libdevmapper's "Device does
    not exist."), creating one whose name is taken with EBUSY (dm-ioctl.c: dm_hash_insert).
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.pool_dev: Pool | None = None
        self.last_pool: Pool | None = None  # for ``du`` after remove_pool
        self.thins: dict[int, Thin] = {}

    @classmethod
    def on_model(cls, store_factory: Callable[[], DataStore] = MemoryStore) -> ScenarioExecutor:
        """On a fresh model machine (``store_factory`` makes each pool's data store)."""
        from .backends.model import ModelMachine

        return cls(ModelMachine(store_factory))

    @classmethod
    def on_kernel(cls, workdir=None) -> ScenarioExecutor:
        """On the real kernel (root, dm-thin, no other loop or dm device: run it in the VM)."""
        from .backends.kernel import KernelMachine

        return cls(KernelMachine(workdir))

    def __repr__(self) -> str:
        return f"ScenarioExecutor({self.machine!r})"

    # -- helpers --------------------------------------------------------------------------

    def _pool(self) -> Pool:
        if self.pool_dev is None:
            raise error_for(E.ENXIO)
        return self.pool_dev

    def _thin(self, thin_id: int) -> Thin:
        if thin_id not in self.thins:
            raise error_for(E.ENXIO)
        return self.thins[thin_id]

    def _requests(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """One O_DIRECT request per pool data block (interface.io_requests)."""
        return io_requests(offset, length, self._pool().data_block_size_sectors)

    # -- pool lifecycle -------------------------------------------------------------------

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
        if self.pool_dev is not None:
            raise error_for(E.EBUSY, "a device named pool exists")
        self.pool_dev = self.machine.create_pool(
            metadata_size=md_bytes,
            data_size=data_bytes,
            length_sectors=length_sectors,
            block_size=block_size_sectors,
            low_water_mark=low_water_blocks,
            features=features,
        )
        self.last_pool = self.pool_dev
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
        self._pool().reload_table(
            metadata_size=md_bytes,
            data_size=data_bytes,
            length_sectors=length_sectors,
            block_size=block_size_sectors,
            low_water_mark=low_water_blocks,
            features=features,
        )
        return []

    def remove_pool(self) -> list[str]:
        pool = self._pool()
        if self.thins:
            raise error_for(E.EBUSY, "the pool is open: its thins hold it")
        pool.close()
        self.pool_dev = None
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
        self.machine.set_no_space_timeout(seconds)
        return []

    # -- thin devices ---------------------------------------------------------------------

    def thin(self, *, thin_id: int, length_sectors: int) -> list[str]:
        pool = self._pool()
        if thin_id in self.thins:
            raise error_for(E.EBUSY, f"a device named thin{thin_id} exists")
        self.thins[thin_id] = pool.activate(thin_id, length_sectors * SECTOR_SIZE)
        return []

    def remove_thin(self, *, thin_id: int) -> list[str]:
        self._thin(thin_id).deactivate()
        del self.thins[thin_id]
        return []

    def suspend_thin(self, *, thin_id: int) -> list[str]:
        self._thin(thin_id).suspend()
        return []

    def resume_thin(self, *, thin_id: int) -> list[str]:
        self._thin(thin_id).resume()
        return []

    # -- I/O ------------------------------------------------------------------------------

    def _write(self, thin_id: int, offset: int, length: int, seed: int) -> Thin:
        thin = self._thin(thin_id)
        for pos, n in self._requests(offset, length):
            thin.write(pos, pattern(seed, pos, n))  # the first failure ends the op
        return thin

    def write(self, *, thin_id: int, offset: int, length: int, seed: int) -> list[str]:
        self._write(thin_id, offset, length, seed).flush()
        return []

    def write_nosync(self, *, thin_id: int, offset: int, length: int, seed: int) -> list[str]:
        self._write(thin_id, offset, length, seed)
        return []

    def read(self, *, thin_id: int, offset: int, length: int) -> list[str]:
        thin = self._thin(thin_id)
        digest = hashlib.md5()
        for pos, n in self._requests(offset, length):
            digest.update(thin.read(pos, n))
        return [f"md5 {digest.hexdigest()}"]

    def discard(self, *, thin_id: int, offset: int, length: int) -> list[str]:
        self._thin(thin_id).discard(offset, length)
        return []

    def flush(self, *, thin_id: int) -> list[str]:
        self._thin(thin_id).flush()
        return []

    # -- observation ----------------------------------------------------------------------

    def status(self) -> list[str]:
        return [self._pool().status()]

    def status_noflush(self) -> list[str]:
        return [self._pool().status(noflush=True)]

    def thin_status(self, *, thin_id: int) -> list[str]:
        return [self._thin(thin_id).status()]

    def table(self) -> list[str]:
        return [self._pool().table()]

    def thin_table(self, *, thin_id: int) -> list[str]:
        return [self._thin(thin_id).table()]

    def events(self) -> list[str]:
        return [f"event_nr {self._pool().event_nr}"]

    def dump(self) -> list[str]:
        return self._pool().metadata_dump().splitlines()

    def du(self) -> list[str]:
        pool = self.pool_dev or self.last_pool
        return [f"allocated {pool.allocated_bytes() if pool is not None else 0}"]

    # -- bookkeeping ----------------------------------------------------------------------

    def log_lines(self) -> list[str]:
        return self.machine.log_lines()

    def close(self) -> None:
        """Remove the thins, the pool and everything the machine made (a pool's close
        removes its thins, resuming what is suspended)."""
        self.thins.clear()
        if self.pool_dev is not None:
            self.pool_dev.close()
            self.pool_dev = None
        self.machine.close()
