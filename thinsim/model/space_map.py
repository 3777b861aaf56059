"""Reference counts and allocation (persistent-data/dm-space-map-common.c, -disk.c, -metadata.c).

Both space maps keep, as the kernel does, two bits a block in bitmap blocks of 16,320
entries (0, 1, 2, or 3 meaning "look in the reference-count btree"), an index of the
bitmaps, and a btree of the counts of 3 and more.  In core the two bits are a
``bytearray`` (one byte a block, so free blocks are found with ``bytearray.find``) and
the big counts a dict; the bitmap, index and btree *blocks* are real metadata blocks,
shadowed and allocated exactly when the kernel shadows and allocates them, so that the
metadata space they take is the kernel's.

Allocation is next-fit from a cursor that is never reset by a commit
(``sm_ll_find_common_free_block``): a block is free only if its count is zero now and was
zero at the last commit, so blocks freed in a transaction are reusable after it commits.
"""

from __future__ import annotations

import errno as E

from .btree import BTreeInfo, ValueType

ENTRIES_PER_BITMAP = (4096 - 16) * 4  # 16320, dm-space-map-common.c: sm_ll_init
MAX_METADATA_BITMAPS = 255
MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP  # DM_SM_METADATA_MAX_BLOCKS
IE_CACHE_SIZE = 64


class NoSpace(Exception):
    """-ENOSPC from a space map: no block is free in both the old and the current view."""


class FormatError(Exception):
    """Formatting metadata failed (dm-thin-metadata.c: __format_metadata): the kernel's
    errno, and the ``(prefix, text)`` log lines of every layer it went up through."""

    def __init__(self, errno: int, lines: list[tuple[str, str]]) -> None:
        super().__init__(errno, lines)
        self.errno = errno
        self.lines = lines


class LogLines:
    """A kernel log that keeps its lines, for a space map with no pool yet to log to."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def emit(self, prefix: str, text: str) -> None:
        self.lines.append((prefix, text))


class _Block:
    """A bitmap or index block: its contents live in the space map, not here."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def copy(self) -> _Block:
        return _Block(self.kind)

    def __repr__(self) -> str:
        return f"_Block({self.kind!r})"


class LowLevel:
    """struct ll_disk: counts, bitmap blocks and the overflow btree of one space map."""

    def __init__(self, tm) -> None:
        self.tm = tm
        self.nr_blocks = 0
        self.nr_allocated = 0
        self.bits = bytearray()  # min(count, 3), one byte a block
        self.big: dict[int, int] = {}  # counts >= 3, mirrored in the ref-count btree
        self.old: dict[int, int] = {}  # count at the last commit of blocks changed since
        self.old_runs: list[tuple[int, int]] = []  # runs allocated since, free at the commit
        self._committed = None
        self.bitmap_index_changed = False
        self.bitmaps: list[int] = []  # metadata block of each bitmap
        self.ref_info = BTreeInfo(tm, 1, ValueType(4))
        self.ref_root = 0

    def get_count(self, b: int) -> int:
        c = self.bits[b]
        return self.big[b] if c == 3 else c

    def extend(self, extra: int) -> None:
        """sm_ll_extend: grow, allocating a new bitmap block for each 16,320 blocks."""
        old_blocks = self.nr_blocks
        new_blocks = old_blocks + extra
        nr_indexes = -(-new_blocks // ENTRIES_PER_BITMAP)
        self.nr_blocks = new_blocks
        self.bits.extend(bytes(extra))
        for _ in range(len(self.bitmaps), nr_indexes):
            self.bitmaps.append(self.tm.new_block(_Block("bitmap")))
            self._index_changed(len(self.bitmaps) - 1)

    def shadow_bitmap(self, index: int) -> None:
        """dm-space-map-common.c: shadow_bitmap (and the index entry it dirties)."""
        tm = self.tm
        old = self.bitmaps[index]
        if old not in tm.shadows:
            new, _ = tm.shadow_block(old)
            self.bitmaps[index] = new
        self._index_changed(index)

    def _index_changed(self, index: int) -> None:
        # metadata_ll_save_ie: the index block is rewritten at the next commit
        self.bitmap_index_changed = True

    def set_count(self, b: int, new: int) -> None:
        """sm_ll_mutate for one block: shadow its bitmap, then set the count."""
        self.shadow_bitmap(b // ENTRIES_PER_BITMAP)
        bits = self.bits
        c = bits[b]
        old = self.big[b] if c == 3 else c
        if b not in self.old:
            self.old[b] = old
        if new > 2:
            bits[b] = 3
            self.big[b] = new
            self.ref_root, _ = self.ref_info.insert(self.ref_root, (b,), new)
        else:
            bits[b] = new
            if old > 2:
                del self.big[b]
                self.ref_root = self.ref_info.remove(self.ref_root, (b,))
        if old == 0 and new:
            self.nr_allocated += 1
        elif new == 0 and old:
            self.nr_allocated -= 1

    def find_common_free(self, begin: int) -> int:
        """sm_ll_find_common_free_block from ``begin``; NoSpace when none is left."""
        bits, old = self.bits, self.old
        nr = self.nr_blocks
        b = bits.find(0, begin, nr)
        while b >= 0:
            if not old.get(b):
                return b
            b = bits.find(0, b + 1, nr)
        raise NoSpace

    def alloc_run(self, begin: int, limit: int) -> tuple[int, int]:
        """Allocate up to ``limit`` blocks as next fit would one by one: the first free
        block from ``begin`` (wrapping), then the free blocks right after it, stopping at a
        used block or a bitmap boundary.  Returns (first block, count)."""
        try:
            b = self.find_common_free(begin)
        except NoSpace:
            b = self.find_common_free(0)
        end = min(b + limit, (b // ENTRIES_PER_BITMAP + 1) * ENTRIES_PER_BITMAP, self.nr_blocks)
        bits = self.bits
        used = [
            i for i in (bits.find(1, b, end), bits.find(2, b, end), bits.find(3, b, end)) if i >= 0
        ]
        if used:
            end = min(used)
        if self.old:
            for k in self.old:
                if b <= k < end and self.old[k]:
                    end = k
        n = end - b
        self.shadow_bitmap(b // ENTRIES_PER_BITMAP)
        bits[b:end] = b"\x01" * n
        self.nr_allocated += n
        self.old_runs.append((b, n))
        return b, n

    def commit(self) -> None:
        self.old.clear()
        self.old_runs.clear()
        self._committed = self._header()

    def _header(self):
        return (self.nr_blocks, self.nr_allocated, list(self.bitmaps), self.ref_root)

    def rollback(self) -> list[int]:
        """Back to the last commit (dm_pool_abort_metadata re-reads it from disk).
        Returns the blocks whose count changed."""
        nr_blocks, nr_allocated, bitmaps, ref_root = self._committed[:4]
        bits, big = self.bits, self.big
        for b, n in self.old_runs:
            bits[b : b + n] = bytes(n)
        for b, c in self.old.items():
            if c > 2:
                bits[b] = 3
                big[b] = c
            else:
                bits[b] = c
                big.pop(b, None)
        changed = list(self.old)
        for b, n in self.old_runs:
            changed.extend(range(b, b + n))
        del bits[nr_blocks:]
        for b in [b for b in big if b >= nr_blocks]:
            del big[b]
        self.nr_blocks = nr_blocks
        self.nr_allocated = nr_allocated
        self.bitmaps = bitmaps
        self.ref_root = ref_root
        self.old.clear()
        self.old_runs.clear()
        return changed


class _DiskLowLevel(LowLevel):
    """The data device's ll (sm_ll_new_disk): its index is a btree, written at commit."""

    def __init__(self, tm) -> None:
        super().__init__(tm)
        self.index_info = BTreeInfo(tm, 1, ValueType(16))
        self.index_root = self.index_info.empty()
        self.ref_root = self.ref_info.empty()
        self.dirty: dict[int, int] = {}  # ie cache slot -> bitmap index

    def _index_changed(self, index: int) -> None:
        # dm-space-map-common.c: disk_ll_save_ie -- into a 64-slot cache; a slot holding
        # another dirty entry is written back first.
        slot = ((index * 4294967291) & 0xFFFFFFFF) & (IE_CACHE_SIZE - 1)
        held = self.dirty.get(slot)
        if held is not None and held != index:
            self._writeback(held)
        self.dirty[slot] = index

    def _writeback(self, index: int) -> None:
        self.index_root, _ = self.index_info.insert(self.index_root, (index,), self.bitmaps[index])

    def writeback(self) -> None:
        """dm-space-map-common.c: ie_cache_writeback, slot order (NoSpace if the index
        btree cannot grow; the entries stay cached)."""
        dirty = self.dirty
        for slot in sorted(dirty):
            self._writeback(dirty[slot])
        dirty.clear()

    def commit(self) -> None:
        self.writeback()
        super().commit()

    def _header(self):
        return super()._header() + (self.index_root,)

    def rollback(self) -> list[int]:
        index_root = self._committed[4]
        changed = super().rollback()
        self.index_root = index_root
        self.dirty.clear()
        return changed


class DiskSpaceMap:
    """The data space map (dm-space-map-disk.c): data block reference counts."""

    def __init__(self, tm, nr_blocks: int = 0) -> None:
        self.ll = _DiskLowLevel(tm)
        self.ll.extend(nr_blocks)
        self.begin = 0
        self.old_nr_blocks = self.ll.nr_blocks
        self.commit()

    def __repr__(self) -> str:
        return f"DiskSpaceMap(nr_blocks={self.ll.nr_blocks}, allocated={self.ll.nr_allocated})"

    @property
    def nr_blocks(self) -> int:
        return self.ll.nr_blocks

    def nr_free(self) -> int:
        """sm_disk_get_nr_free: allocations and frees of this transaction count at once."""
        return self.old_nr_blocks - self.ll.nr_allocated

    def get_count(self, b: int) -> int:
        return self.ll.get_count(b)

    def new_block(self) -> int:
        """sm_disk_new_block: next fit from the cursor, then from the start."""
        ll = self.ll
        try:
            b = ll.find_common_free(self.begin)
        except NoSpace:
            b = ll.find_common_free(0)
        self.begin = b + 1
        ll.set_count(b, 1)
        return b

    def new_run(self, limit: int) -> tuple[int, int]:
        """``new_block`` up to ``limit`` times at once, as long as the blocks it would give
        are consecutive within one bitmap.  Returns (first block, count)."""
        b, n = self.ll.alloc_run(self.begin, limit)
        self.begin = b + n
        return b, n

    def inc(self, b: int) -> None:
        self.ll.set_count(b, self.ll.get_count(b) + 1)

    def dec(self, b: int) -> None:
        self.ll.set_count(b, self.ll.get_count(b) - 1)

    def inc_many(self, blocks) -> None:
        ll = self.ll
        for b in blocks:
            ll.set_count(b, ll.get_count(b) + 1)

    def dec_many(self, blocks) -> None:
        ll = self.ll
        for b in blocks:
            ll.set_count(b, ll.get_count(b) - 1)

    def extend(self, extra: int) -> None:
        self.ll.extend(extra)

    def pre_commit(self) -> None:
        """The part of sm_disk_commit that allocates (the index writeback), run before
        anything is committed so that a failure leaves the last commit to go back to."""
        self.ll.writeback()

    def commit(self) -> None:
        """sm_disk_commit: write the index back; the current view becomes the old one."""
        self.ll.commit()
        self.old_nr_blocks = self.ll.nr_blocks

    def rollback(self) -> None:
        """Re-open at the last commit (the cursor starts again at 0)."""
        self.ll.rollback()
        self.begin = 0
        self.old_nr_blocks = self.ll.nr_blocks


class MetadataSpaceMap:
    """The metadata space map (dm-space-map-metadata.c), which lives in the blocks it maps.

    Changes made while it is already changing itself (shadowing a bitmap allocates a
    block, which changes a bitmap...) are queued and applied when the outer change is
    done, as the kernel's ``recursion_count`` and ``uncommitted`` ops do.  While it is being
    created or extended it runs on the bootstrap allocator: blocks handed out in order from
    ``begin``, counts queued.
    """

    _allocating: int | None = None  # a state pickled before this field has none

    def __init__(self) -> None:
        self.tm = None
        self.ll: LowLevel | None = None
        self.begin = 0
        self.allocated_this_transaction = 0
        self.old_nr_allocated = 0
        self.old_nr_blocks = 0
        self.index_block = 0
        self._recursing = False
        self._bops: list[tuple[int, int]] = []
        self._bootstrap = False
        self._allocating: int | None = None  # the block new_block is counting
        self.zeroed: list[int] = []
        # struct threshold
        self.threshold: int | None = None
        self.threshold_fn = None
        self._value: int | None = None
        self._committed = None
        self.log = None  # where "unable to allocate new metadata block" goes

    def __repr__(self) -> str:
        ll = self.ll
        return f"MetadataSpaceMap(nr_blocks={ll.nr_blocks}, allocated={ll.nr_allocated})"

    # dm_sm_metadata_create
    def create(self, tm, nr_blocks: int, superblock: int = 0) -> None:
        """Format: index, ref-count root and bitmaps from the bootstrap allocator, then count them."""
        self.tm = tm
        self.begin = superblock + 1
        self._bootstrap = True
        nr_blocks = min(nr_blocks, MAX_METADATA_BLOCKS)
        ll = LowLevel(tm)
        self.ll = ll
        self.index_block = tm.new_block(_Block("index"))  # metadata_ll_init_index
        ll.ref_root = ll.ref_info.empty()
        ll.extend(nr_blocks)
        self._bootstrap = False
        if self.begin > ll.nr_blocks:
            # sm_bootstrap_new_block refuses only when begin == nr_blocks, so on a device of
            # one or two blocks the index, the ref-count root and the bitmap (blocks 1-3) run
            # past its end; the first count (apply_bops) shadows the bitmap, whose count
            # lookup is out of bounds (sm_ll_lookup_bitmap: -EINVAL)
            raise FormatError(
                E.EINVAL,
                [
                    ("space map common", "metadata block out of bounds"),
                    ("space map common", "dm_tm_shadow_block() failed"),
                    ("space map metadata", "dm_sm_metadata_create: apply_bops failed"),
                ],
            )
        self._bops.clear()
        self._mutate_range(superblock, self.begin, +1)
        self.commit()

    @property
    def nr_blocks(self) -> int:
        return self.ll.nr_blocks

    def nr_free(self) -> int:
        """sm_metadata_get_nr_free: frees of this transaction are not counted yet."""
        return self.old_nr_blocks - self.old_nr_allocated - self.allocated_this_transaction

    def get_count(self, b: int) -> int:
        if self._bootstrap:
            return 1 if b < self.begin else 0  # sm_bootstrap_get_count
        c = self.ll.get_count(b)
        if self._bops:
            for ob, delta in self._bops:
                if ob == b:
                    c += delta
        return c

    def new_block(self) -> int:
        """sm_metadata_new_block, then check_threshold."""
        if self._bootstrap:
            # dm-space-map-metadata.c: sm_bootstrap_new_block
            if self.begin == self.ll.nr_blocks:
                raise NoSpace
            b = self.begin
            self.begin += 1
            return b
        ll = self.ll
        try:
            try:
                b = ll.find_common_free(self.begin)
            except NoSpace:
                b = ll.find_common_free(0)
            if b == self._allocating:
                # an allocation inside another's count (shadowing the bitmap that counts
                # it) cannot take the block the outer one took and has not counted yet
                # (measured: a 9-block device fails the first data resize here)
                b = ll.find_common_free(b + 1)
        except NoSpace:
            if self.log is not None:
                self.log.emit("space map metadata", "unable to allocate new metadata block")
            raise
        self.begin = b + 1
        outer = self._allocating
        self._allocating = b
        try:
            self._mutate(b, +1)
        except NoSpace:
            # sm_ll_inc -> shadow_bitmap failed, then sm_metadata_new_block fails
            if self.log is not None:
                self.log.emit("space map common", "dm_tm_shadow_block() failed")
                self.log.emit("space map metadata", "unable to allocate new metadata block")
            raise
        finally:
            self._allocating = outer
        self.allocated_this_transaction += 1
        self._check_threshold(self.nr_free())
        return b

    def register_threshold(self, threshold: int, fn) -> None:
        """sm_metadata_register_threshold_callback."""
        self.threshold = threshold
        self.threshold_fn = fn

    def _check_threshold(self, value: int) -> None:
        """dm-space-map-metadata.c: check_threshold -- fires on crossing downwards."""
        t = self.threshold
        # the value is kept before a threshold is registered too: on a device so small that
        # formatting it left free no more than the threshold, the event has already fired
        already = t is not None and self._value is not None and self._value <= t
        self._value = value
        if t is not None and value <= t and not already and self.threshold_fn is not None:
            self.threshold_fn()

    def inc(self, b: int) -> None:
        self._mutate(b, +1)

    def dec(self, b: int) -> None:
        self._mutate(b, -1)

    def _mutate(self, b: int, delta: int) -> None:
        if self._recursing or self._bootstrap:
            self._bops.append((b, delta))
            return
        self._recursing = True
        try:
            self._apply(b, delta)
            self._apply_bops()
        finally:
            self._recursing = False

    def _mutate_range(self, b: int, e: int, delta: int) -> None:
        for x in range(b, e):
            self._mutate(x, delta)

    def _apply_bops(self) -> None:
        while self._bops:
            ob, od = self._bops.pop(0)
            self._apply(ob, od)

    def _apply(self, b: int, delta: int) -> None:
        ll = self.ll
        new = ll.get_count(b) + delta
        ll.set_count(b, new)
        if new == 0:
            self.zeroed.append(b)

    def extend(self, extra: int, log=None) -> None:
        """sm_metadata_extend: on the bootstrap allocator, every new block (new bitmaps,
        shadows) comes from the new area; NoSpace when it runs out."""
        ll = self.ll
        old_len = ll.nr_blocks
        self.begin = old_len
        self._bootstrap = True
        try:
            ll.extend(extra)
            while True:
                self._bops.extend((b, +1) for b in range(old_len, self.begin))
                old_len = self.begin
                self._recursing = True
                try:
                    self._apply_bops()
                except NoSpace:
                    if log is not None:
                        log.emit("space map common", "dm_tm_shadow_block() failed")
                        log.emit("space map metadata", "sm_metadata_extend: apply_bops failed")
                    raise
                finally:
                    self._recursing = False
                self._ll_commit()
                if old_len == self.begin:
                    break
        finally:
            self._bootstrap = False

    def _ll_commit(self) -> None:
        """sm_ll_commit -> metadata_ll_commit: shadow the index block, if an entry changed."""
        ll = self.ll
        if not ll.bitmap_index_changed:
            return
        tm = self.tm
        if self.index_block not in tm.shadows or self.get_count(self.index_block) > 1:
            self.index_block, _ = tm.shadow_block(self.index_block)
        ll.bitmap_index_changed = False

    def pre_commit(self) -> None:
        """The part of sm_metadata_commit that allocates (shadowing the index block)."""
        self._ll_commit()

    def commit(self) -> None:
        """sm_metadata_commit: shadow the index block, then the current view becomes old."""
        self._ll_commit()
        self.ll.commit()
        self.old_nr_allocated = self.ll.nr_allocated
        self.old_nr_blocks = self.ll.nr_blocks
        self.allocated_this_transaction = 0
        self._committed = (self.index_block,)

    def rollback(self) -> list[int]:
        """Re-open at the last commit: counts and index as committed, cursor at 0."""
        changed = self.ll.rollback()
        (self.index_block,) = self._committed
        self._bops.clear()
        self._recursing = False
        self._bootstrap = False
        self.allocated_this_transaction = 0
        self.begin = 0
        self.zeroed.clear()
        return changed
