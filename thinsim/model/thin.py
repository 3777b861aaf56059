"""The thin target (drivers/md/dm-thin.c: thin_ctr, thin_map, thin_status).

I/O arrives in bytes; it is cut at data-block boundaries (``max_io_len`` is the block
size, so the kernel splits every bio there) and each piece goes through the pool.
"""

from __future__ import annotations

import errno as E

from ..errors import error_for
from .metadata import MAX_DEV_ID
from .pool import PM_FAIL, SECTOR, Pool, TableError, kstrtoull


class Thin:
    """One active thin device: ``dev_id`` in ``pool``, ``length_sectors`` long."""

    def __init__(self, pool: Pool, dev_id: int, length_sectors: int, pool_dev: str = "254:0"):
        self.pool = pool
        self.dev_id = dev_id
        self.length_sectors = length_sectors
        self.pool_dev = pool_dev
        try:
            self.td = pool.pmd.open_device(dev_id)
        except KeyError:
            raise TableError("Couldn't open thin internal device", E.ENODATA) from None
        pool.thins[dev_id] = self

    def __repr__(self) -> str:
        return f"Thin(dev_id={self.dev_id}, length_sectors={self.length_sectors})"

    @staticmethod
    def parse(argv: list[str]) -> int:
        """thin_ctr's argument checks; returns the device id."""
        if len(argv) not in (2, 3):
            raise TableError("Invalid argument count")
        if len(argv) == 3 and argv[2] == argv[0]:
            raise TableError("Error setting origin device")
        dev = kstrtoull(argv[1])
        if dev is None or dev > MAX_DEV_ID:
            raise TableError("Invalid device id")
        return dev

    def close(self) -> None:
        """thin_dtr."""
        if self.pool.thins.get(self.dev_id) is self:
            del self.pool.thins[self.dev_id]
        self.pool.pmd.close_device(self.td)

    @property
    def size(self) -> int:
        return self.length_sectors * SECTOR

    def _pieces(self, offset: int, length: int):
        bb = self.pool.block_bytes
        end = offset + length
        pos = offset
        while pos < end:
            vblock, within = divmod(pos, bb)
            n = min(bb - within, end - pos)
            yield pos - offset, vblock, within, n
            pos += n

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise error_for(E.EIO, "beyond the end of the device")

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at byte ``offset``: provisions, breaks sharing or overwrites."""
        self._check(offset, len(data))
        pool = self.pool
        bb = pool.block_bytes
        vblock, within = divmod(offset, bb)
        if within + len(data) <= bb:
            pool.write_block(self.td, vblock, within, data)
            return
        view = memoryview(data)
        pieces = self._pieces(offset, len(data))
        for start, vblock, within, n in pieces:
            if within == 0 and n == bb and len(data) - start >= 2 * bb:
                whole = (len(data) - start) // bb
                pool.write_whole_blocks(self.td, vblock, view[start : start + whole * bb])
                rest = start + whole * bb
                if rest < len(data):
                    pool.write_block(self.td, vblock + whole, 0, bytes(view[rest:]))
                return
            pool.write_block(self.td, vblock, within, bytes(view[start : start + n]))

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes; unmapped blocks read as zeros and allocate nothing."""
        self._check(offset, length)
        out = bytearray()
        for _start, vblock, within, n in self._pieces(offset, length):
            out += self.pool.read_block(self.td, vblock, within, n)
        return bytes(out)

    def discard(self, offset: int, length: int) -> None:
        """Discard a byte range: only whole blocks inside it are unmapped."""
        pool = self.pool
        if not pool.pf.discard_enabled:
            raise error_for(E.EOPNOTSUPP)
        if offset % SECTOR or length % SECTOR:
            raise error_for(E.EINVAL)
        self._check(offset, length)
        bb = pool.block_bytes
        begin = -(-offset // bb)
        end = (offset + length) // bb
        pool.discard_blocks(self.td, begin, end)

    def flush(self) -> None:
        self.pool.flush(self.td)

    def status(self) -> str:
        """thin_status STATUSTYPE_INFO: mapped sectors, then the highest mapped sector."""
        pool = self.pool
        if pool.mode == PM_FAIL:
            return "Fail"
        spb = pool.sectors_per_block
        highest = pool.pmd.highest_mapped(self.td)
        tail = "-" if highest is None else str((highest + 1) * spb - 1)
        return f"{self.td.mapped_blocks * spb} {tail}"

    def table_params(self) -> str:
        return f"{self.pool_dev} {self.dev_id}"
