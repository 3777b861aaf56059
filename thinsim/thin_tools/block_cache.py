"""block-cache/block_cache.cc: the C++ tools' block cache, as far as it decides which
blocks reach the output before the tool dies.

thin_restore and thin_repair write their metadata through this cache.  A run that ends
normally flushes it, so only the final blocks matter (writer.py builds those).  A run that
aborts (std::terminate from a destructor) leaves the blocks the cache had written back on
the way and nothing else: those are decided by the cache's lists, driven by every
``get`` (read_lock, write_lock, write_lock_zero) and every last ``put`` (the release of a
read_ref or write_ref) the transaction manager, space maps and btrees make, in order.
writer.py reports those to a :class:`BlockCache` when it is given one.

What the cache does, after block_cache.cc:

* it holds ``max(16, min(16 MiB, 4096 * blocks) // (4096 + 168))`` blocks (168 is
  sizeof(block_cache::block)); a block is free, clean, dirty or io-pending;
* ``get`` of a cached block moves it to the back of its list (clean or dirty), a write
  lock makes it dirty; of an uncached block takes a free one, else the first clean
  unheld one (which is forgotten), else writes back 16 dirty blocks (if no io is pending)
  and waits for the io;
* the last ``put`` of a dirty block writes back, when fewer than a third of the cache is
  available (``nr_cache - (nr_dirty - nr_io_pending)``: the C++'s counters, the pending
  ones counted twice), the least recently used unheld dirty blocks up to two thirds
  (preemptive_writeback);
* waiting for io completes every pending write, the completed blocks going clean in the
  order they were issued.  The C++'s io_getevents takes what the kernel has completed,
  usually all (strace shows the batches), but not always: kernel-many repaired onto
  256 KiB found 19 of 21 done in some runs, and with two writes still pending counted as
  available the cache wrote back 21 blocks fewer.  Debian's own output differs from run
  to run there; thinsim's is the one where every write waited for was done.

A write back is recorded with the block's bytes at the time it is issued (the validator's
prepare seals them then), from ``content(b)``.
"""

from __future__ import annotations

from collections import OrderedDict

from .common import ToolError

BLOCK_STRUCT_SIZE = 168  # sizeof(bcache::block_cache::block), gcc 12 on amd64
MIN_BLOCKS = 16
DEFAULT_CACHE_SIZE = 16 * 1024 * 1024
MD_BLOCK_SIZE = 4096

GF_READ, GF_DIRTY, GF_ZERO = 0, 1, 2


def nr_cache_blocks(nr_blocks: int) -> int:
    """block_manager::choose_cache_size, then block_cache::calc_nr_cache_blocks."""
    mem = min(DEFAULT_CACHE_SIZE, MD_BLOCK_SIZE * nr_blocks)
    return max(MIN_BLOCKS, mem // (MD_BLOCK_SIZE + BLOCK_STRUCT_SIZE))


class _Block:
    __slots__ = ("dirty", "index", "pending", "ref")

    def __init__(self, index: int) -> None:
        self.index = index
        self.ref = 0
        self.dirty = False
        self.pending = False


class BlockCache:
    """The cache's lists and counters; ``writes`` the blocks written back, in order, as
    (block, bytes)."""

    def __init__(self, nr_blocks: int, content) -> None:
        self.n = nr_cache_blocks(nr_blocks)
        self.nr_free = self.n
        self.content = content
        self.blocks: dict[int, _Block] = {}  # block_set_
        self.clean: OrderedDict[int, _Block] = OrderedDict()
        self.dirty: OrderedDict[int, _Block] = OrderedDict()
        self.io_pending: OrderedDict[int, _Block] = OrderedDict()
        self.nr_locked = 0
        self.nr_dirty = 0
        self.nr_io_pending = 0
        self.writes: list[tuple[int, bytes]] = []

    # -- the lists --------------------------------------------------------------------

    def _unlink(self, b: _Block) -> None:
        if b.pending:
            del self.io_pending[b.index]
        elif b.dirty:
            self.nr_dirty -= 1
            del self.dirty[b.index]
        else:
            self.clean.pop(b.index, None)

    def _link(self, b: _Block) -> None:
        if b.dirty:
            self.dirty[b.index] = b
            self.nr_dirty += 1
        else:
            self.clean[b.index] = b

    def _issue_write(self, b: _Block) -> None:
        self.writes.append((b.index, self.content(b.index)))
        self._unlink(b)
        b.pending = True
        self.nr_io_pending += 1
        self.io_pending[b.index] = b

    def _wait_io(self) -> None:
        pending = list(self.io_pending.values())
        self.io_pending.clear()
        for b in pending:
            b.pending = False
            self.nr_io_pending -= 1
            b.dirty = False
            self._link(b)

    def _writeback(self, count: int) -> int:
        actual = 0
        for b in list(self.dirty.values()):
            if actual == count:
                break
            if not b.ref:
                self._issue_write(b)
                actual += 1
        return actual

    def _new_block(self, index: int) -> _Block | None:
        b = None
        if self.nr_free:
            self.nr_free -= 1
            b = _Block(index)
        while b is None and self.nr_locked < self.n:
            for c in self.clean.values():
                if not c.ref:
                    del self.clean[c.index]
                    del self.blocks[c.index]
                    b = _Block(index)
                    break
            if b is None:
                if not self.io_pending:
                    self._writeback(16)
                self._wait_io()
        if b is not None:
            self.blocks[index] = b
        return b

    # -- what the block manager calls ---------------------------------------------------

    def get(self, index: int, flags: int = GF_READ) -> None:
        """block_cache::get (read_lock, write_lock, write_lock_zero)."""
        b = self.blocks.get(index)
        if b is not None:
            if b.ref and flags:
                raise ToolError(f"attempt to write lock block {index} concurrently")
            if b.pending:
                self._wait_io()
            else:
                self._unlink(b)
                self._link(b)
            self._unlink(b)
        else:
            b = self._new_block(index)
            if b is None:
                raise ToolError(f"couldn't get block {index}")
            if not flags & GF_ZERO:
                # issue_read, wait_specific: every pending io completes
                self.io_pending[index] = b
                b.pending = True
                self.nr_io_pending += 1
                self._wait_io()
                self._unlink(b)
        if flags:
            b.dirty = True
        self._link(b)
        if not b.ref:
            self.nr_locked += 1
        b.ref += 1

    def copy(self, index: int) -> None:
        """A read_ref or write_ref copied: block::get, a reference and nothing more."""
        self.blocks[index].ref += 1

    def put(self, index: int) -> None:
        """block::put: the last one releases the block."""
        b = self.blocks[index]
        b.ref -= 1
        if b.ref:
            return
        self.nr_locked -= 1
        if b.dirty:
            self._preemptive_writeback()

    def _preemptive_writeback(self) -> None:
        n = self.n
        available = n - (self.nr_dirty - self.nr_io_pending)
        if available < 33 * n // 100:
            self._writeback(66 * n // 100 - available)
