"""The thin target (drivers/md/dm-thin.c: thin_ctr, thin_map, thin_status).

I/O arrives in bytes; it is cut at data-block boundaries (``max_io_len`` is the block
size, so the kernel splits every bio there) and each piece goes through the pool.
"""

from __future__ import annotations

import errno as E

from ..constants import DM_MAJOR
from ..errors import error_for
from .disk import CorruptNode
from .metadata import MAX_DEV_ID
from .pool import PM_FAIL, SECTOR, Pool, TableError, kstrtoull


def discard_bios(sector: int, nr_sects: int, granularity_sectors: int):
    """block/blk-lib.c: __blkdev_issue_discard -- the bios a BLKDISCARD becomes.

    A thin's discard granularity is its pool's block size.  The first bio runs to the next
    granularity boundary as round_up() computes it, which assumes a power of two: for
    block sizes like 384 sectors it stops mid-block, so that block is not discarded (seen
    on Debian's 6.1).  Later bios are cut at round_down(UINT_MAX, granularity).
    """
    mask = granularity_sectors - 1
    limit = (0xFFFFFFFF & ~(granularity_sectors * SECTOR - 1)) >> 9
    u64 = (1 << 64) - 1
    while nr_sects:
        aligned = ((((sector - 1) & u64) | mask) + 1) & u64
        req = aligned - sector if aligned != sector else limit
        req = min(nr_sects, req)
        yield sector, req
        sector += req
        nr_sects -= req


class Thin:
    """One active thin device: ``dev_id`` in ``pool``, ``length_sectors`` long."""

    def __init__(
        self, pool: Pool, dev_id: int, length_sectors: int, pool_dev: str = f"{DM_MAJOR}:0"
    ):
        self.pool = pool
        self.dev_id = dev_id
        self.length_sectors = length_sectors
        self.pool_dev = pool_dev
        try:
            self.td = pool.pmd.open_device(dev_id)
        except KeyError:
            raise TableError("Couldn't open thin internal device", E.ENODATA) from None
        except CorruptNode as e:
            e.log(pool.log)
            raise TableError("Couldn't open thin internal device", e.errno) from None
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
        """Write ``data`` at byte ``offset``: provisions, breaks sharing or overwrites.

        As on a block device, a write that starts at or past the end fails with ENOSPC and
        one that runs past it is cut short (block/fops.c: blkdev_write_iter).
        """
        if offset < 0:
            raise error_for(E.EINVAL)
        size = self.length_sectors * SECTOR
        if offset >= size and data:
            raise error_for(E.ENOSPC)
        if offset + len(data) > size:
            data = data[: size - offset]
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
        """Read ``length`` bytes; unmapped blocks read as zeros and allocate nothing.

        Reads stop at the end of the device, as on a block device."""
        if offset < 0 or length < 0:
            raise error_for(E.EINVAL)
        length = max(0, min(length, self.size - offset))
        out = bytearray()
        for _start, vblock, within, n in self._pieces(offset, length):
            out += self.pool.read_block(self.td, vblock, within, n)
        return bytes(out)

    def discard(self, offset: int, length: int) -> None:
        """BLKDISCARD of a byte range: only whole blocks inside each discard bio are
        unmapped.  EOPNOTSUPP when the pool ignores discards; EINVAL when not sector
        aligned or past the end."""
        pool = self.pool
        if not pool.pf.discard_enabled:
            raise error_for(E.EOPNOTSUPP)
        if offset % SECTOR or length % SECTOR or offset < 0 or length < 0:
            raise error_for(E.EINVAL)
        if offset + length > self.size:
            raise error_for(E.EINVAL)
        if not length:
            return
        spb = pool.sectors_per_block
        for sector, nr in discard_bios(offset // SECTOR, length // SECTOR, spb):
            begin = -(-sector // spb)
            end = (sector + nr) // spb
            pool.discard_blocks(self.td, begin, end)

    def flush(self) -> None:
        self.pool.flush(self.td)

    def status(self) -> str:
        """thin_status STATUSTYPE_INFO: mapped sectors, then the highest mapped sector."""
        pool = self.pool
        if pool.mode == PM_FAIL:
            return "Fail"
        spb = pool.sectors_per_block
        try:
            highest = pool.pmd.highest_mapped(self.td)
        except CorruptNode as e:
            # a node read from the metadata device fails its checks: thin_status logs it
            # and says Error
            e.log(pool.log)
            pool.log.emit("thin", f"dm_thin_get_highest_mapped_block returned -{e.errno}")
            return "Error"
        tail = "-" if highest is None else str((highest + 1) * spb - 1)
        return f"{self.td.mapped_blocks * spb} {tail}"

    def table_params(self) -> str:
        return f"{self.pool_dev} {self.dev_id}"
