"""Reference counts and allocation (persistent-data/dm-space-map-common.c, -disk.c, -metadata.c).

Both space maps keep, as the kernel does, two bits a block in bitmap blocks of 16,320
entries (0, 1, 2, or 3 meaning "look in the reference-count btree"), an index of the
bitmaps, and a btree of the counts of 3 and more.  In core each bitmap's entries are a
``bytearray`` of 16,320 bytes (one byte a block, so free blocks are found with
``bytearray.find``), made only once the bitmap holds a non-zero entry and dropped at a
commit that leaves it all zero: a bitmap whose ``LowLevel.maps`` entry is None is all
free, so the counts take memory in proportion to the bitmaps in use, not to the device (the
kernel keeps them on disk and reads them through the block manager).  The big counts
(``BigCounts``) and the last commit's counts of the blocks changed since (``OldCounts``)
are kept a bitmap at a time too, in arrays, not in dicts of millions of entries.  The bitmap, index and btree *blocks* are real metadata blocks, shadowed and
allocated exactly when the kernel shadows and allocates them, so that the metadata space
they take is the kernel's.

Allocation is next-fit from a cursor that is never reset by a commit
(``sm_ll_find_common_free_block``): a block is free only if its count is zero now and was
zero at the last commit, so blocks freed in a transaction are reusable after it commits.
"""

from __future__ import annotations

import errno as E
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import MutableMapping

import numpy as np

from ..constants import ENTRIES_PER_BITMAP
from . import native
from .btree import BTreeInfo, ValueType

MAX_METADATA_BITMAPS = 255
MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP  # DM_SM_METADATA_MAX_BLOCKS
IE_CACHE_SIZE = 64
# add_many's common cases in C (None: the Python loop; THINSIM_NO_C=1 asks for it)
_C = native.space_map()
_C_RUN = _C.run if _C is not None else None


def ie_slot(index: int) -> int:
    """The index-entry cache's slot for bitmap INDEX (dm-space-map-common.c: hash_index,
    the 32-bit golden-ratio prime hash)."""
    return ((index * 4294967291) & 0xFFFFFFFF) & (IE_CACHE_SIZE - 1)


_ALL_FREE = bytes(ENTRIES_PER_BITMAP)
_NO_COUNTS = array("I", bytes(4 * ENTRIES_PER_BITMAP))  # copied: 6x faster than making one


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


class BigCounts(MutableMapping):
    """The counts of 3 and more (block -> count): for each bitmap that has held one, an
    ``array('I')`` of its 16,320 counts, 0 where the count is below 3.  Four bytes a
    block of such a bitmap, where a dict took about 74 a count: after months of daily
    snapshots nearly every data block is shared three times or more (a 1 TiB thin's 16M
    blocks and the copies its writes made since), and the kernel keeps them on disk."""

    __slots__ = ("arrays", "n")

    def __init__(self, items=()) -> None:
        self.arrays: dict[int, array] = {}  # bitmap index -> its counts
        self.n = 0
        for b, c in dict(items).items():
            self[b] = c

    def __repr__(self) -> str:
        return f"BigCounts({len(self)} counts)"

    def array_for(self, index: int) -> array:
        a = self.arrays.get(index)
        if a is None:
            a = self.arrays[index] = _NO_COUNTS[:]
        return a

    def __getitem__(self, b: int) -> int:
        a = self.arrays.get(b // ENTRIES_PER_BITMAP)
        c = a[b % ENTRIES_PER_BITMAP] if a is not None else 0
        if not c:
            raise KeyError(b)
        return c

    def get(self, b: int, default=None):
        a = self.arrays.get(b // ENTRIES_PER_BITMAP)
        c = a[b % ENTRIES_PER_BITMAP] if a is not None else 0
        return c if c else default

    def __contains__(self, b) -> bool:
        a = self.arrays.get(b // ENTRIES_PER_BITMAP)
        return a is not None and a[b % ENTRIES_PER_BITMAP] != 0

    def __setitem__(self, b: int, c: int) -> None:
        index, e = divmod(b, ENTRIES_PER_BITMAP)
        a = self.array_for(index)
        if not a[e]:
            self.n += 1
        a[e] = c

    def __delitem__(self, b: int) -> None:
        index, e = divmod(b, ENTRIES_PER_BITMAP)
        a = self.arrays.get(index)
        if a is None or not a[e]:
            raise KeyError(b)
        a[e] = 0
        self.n -= 1

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import numpy as np

        for index in sorted(self.arrays):
            nz = np.flatnonzero(np.frombuffer(self.arrays[index], dtype=np.uint32))
            yield from (nz + index * ENTRIES_PER_BITMAP).tolist()

    def clear(self) -> None:
        self.arrays.clear()
        self.n = 0

    def drop_from(self, nr_blocks: int) -> None:
        """Forget the counts of blocks ``nr_blocks`` and above (a rollback of an extension)."""
        for index in [i for i in self.arrays if (i + 1) * ENTRIES_PER_BITMAP > nr_blocks]:
            a = self.arrays[index]
            for e in range(max(0, nr_blocks - index * ENTRIES_PER_BITMAP), ENTRIES_PER_BITMAP):
                if a[e]:
                    a[e] = 0
                    self.n -= 1


class OldCounts(MutableMapping):
    """The count at the last commit of each block changed since (block -> count): for
    each bitmap with such a block, a ``bytearray`` of 16,320 codes -- 0 for a block not
    changed, c + 1 for a count c below 254, 255 for one kept in ``over`` -- one byte a
    block of a bitmap changed in the transaction, where a dict took about 100 a block: a
    day of copy-on-write on a 1 TiB thin with snapshots changes the count of nearly every
    one of its 16M data blocks in one transaction.  A block was in use at the last commit
    exactly when its code is above 1."""

    __slots__ = ("codes", "n", "over")

    def __init__(self) -> None:
        self.codes: dict[int, bytearray] = {}  # bitmap index -> its blocks' codes
        self.over: dict[int, int] = {}  # block -> count, for counts of 254 and more
        self.n = 0

    def __repr__(self) -> str:
        return f"OldCounts({len(self)} counts)"

    def for_bitmap(self, index: int) -> bytearray:
        codes = self.codes.get(index)
        if codes is None:
            codes = self.codes[index] = bytearray(ENTRIES_PER_BITMAP)
        return codes

    def keep(self, codes: bytearray, b: int, e: int, c: int) -> None:
        """Keep count ``c`` of block ``b`` (entry ``e`` of ``codes``), not kept yet."""
        self.n += 1
        if c < 254:
            codes[e] = c + 1
        else:
            codes[e] = 255
            self.over[b] = c

    def __getitem__(self, b: int) -> int:
        index, e = divmod(b, ENTRIES_PER_BITMAP)
        codes = self.codes.get(index)
        c = codes[e] if codes is not None else 0
        if not c:
            raise KeyError(b)
        return self.over[b] if c == 255 else c - 1

    def get(self, b: int, default=None):
        index, e = divmod(b, ENTRIES_PER_BITMAP)
        codes = self.codes.get(index)
        c = codes[e] if codes is not None else 0
        if not c:
            return default
        return self.over[b] if c == 255 else c - 1

    def __contains__(self, b) -> bool:
        index, e = divmod(b, ENTRIES_PER_BITMAP)
        codes = self.codes.get(index)
        return codes is not None and codes[e] != 0

    def __setitem__(self, b: int, c: int) -> None:
        index, e = divmod(b, ENTRIES_PER_BITMAP)
        codes = self.for_bitmap(index)
        if codes[e]:
            self.n -= 1
            self.over.pop(b, None)
        self.keep(codes, b, e, c)

    def setdefault(self, b: int, c: int) -> int:
        if b not in self:
            self[b] = c
        return self[b]

    def __delitem__(self, b: int) -> None:
        index, e = divmod(b, ENTRIES_PER_BITMAP)
        codes = self.codes.get(index)
        if codes is None or not codes[e]:
            raise KeyError(b)
        codes[e] = 0
        self.over.pop(b, None)
        self.n -= 1
        if not any(codes):
            del self.codes[index]

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import numpy as np

        for index in sorted(self.codes):
            nz = np.flatnonzero(np.frombuffer(self.codes[index], dtype=np.uint8))
            yield from (nz + index * ENTRIES_PER_BITMAP).tolist()

    def items(self):
        import numpy as np

        over = self.over
        for index in sorted(self.codes):
            codes = np.frombuffer(self.codes[index], dtype=np.uint8)
            nz = np.flatnonzero(codes)
            blocks = (nz + index * ENTRIES_PER_BITMAP).tolist()
            for b, c in zip(blocks, codes[nz].tolist()):
                yield b, over[b] if c == 255 else c - 1

    def bitmaps(self) -> set[int]:
        """The bitmaps with a block changed."""
        return set(self.codes)

    def clear(self) -> None:
        self.codes.clear()
        self.over.clear()
        self.n = 0


class LowLevel:
    """struct ll_disk: counts, bitmap blocks and the overflow btree of one space map."""

    ENTRIES_PER_BITMAP = ENTRIES_PER_BITMAP  # for the hot paths that read ``maps`` inline

    def __init__(self, tm) -> None:
        self.tm = tm
        self.nr_blocks = 0
        self.nr_allocated = 0
        # for each bitmap, min(count, 3) of its 16,320 blocks, one byte a block; None for
        # a bitmap with no non-zero entry (now or at the last commit)
        self.maps: list[bytearray | None] = []
        self.big = BigCounts()  # counts >= 3, mirrored in the ref-count btree
        self.old = OldCounts()  # count at the last commit of blocks changed since
        self._committed = None
        self.bitmap_index_changed = False
        self.bitmaps = array("Q")  # metadata block of each bitmap
        self.ref_info = BTreeInfo(tm, 1, ValueType(4))
        self.ref_root = 0
        self._no_ref_leaves()
        self._no_writebacks()
        self._new_hand()

    def _new_hand(self) -> None:
        # add_many's C keeps the bitmaps it met from one call to the next in the
        # transaction ``_gen`` counts (a commit or a rollback ends it)
        self._at_hand = _C.at_hand() if _C is not None else None
        self._gen = 0

    def _no_ref_leaves(self) -> None:
        # reference-count leaves found in place (BTreeInfo.leaf_in_place) this transaction,
        # by the lowest key of their range: [leaf, lo, hi, block, at, at_b] (at: the index
        # of key at_b, the last one add_many set there); keys in [lo, hi) go to
        # the leaf in place while the tree's shape (ref_info.reshapes) and root are those of
        # ``_ref_at`` and the leaf is still the block's node (add_many)
        self._ref_los: list[int] = []
        self._ref_leaves: list[tuple] = []
        self._ref_at = None
        # the times the table was emptied (add_many's C lets go of the leaves it keeps at
        # hand when this changes)
        self._ref_gen = 0

    def _no_writebacks(self) -> None:
        # the data ll's index entries known to be in the index btree already, set in place
        # this transaction: bitmap index -> the bitmap block its entry holds.  While the
        # tree's shape and root are those of ``_wb_at`` and no metadata count is queued,
        # writing such an entry back again (``_writeback``) would set the value its leaf
        # holds, in place: nothing changes, and it is not walked again
        self._wb_same: dict[int, int] = {}
        self._wb_at = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in (
            "_ref_los",
            "_ref_leaves",
            "_ref_at",
            "_ref_gen",
            "_wb_same",
            "_wb_at",
            "_at_hand",
        ):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self._no_ref_leaves()
        self._no_writebacks()
        self._new_hand()
        # a host state pickled before the counts were kept a bitmap at a time
        bits = state.pop("bits", None)
        runs = state.pop("old_runs", ())  # ... and before a run's blocks were kept in ``old``
        self.__dict__.update(state)
        if type(self.big) is dict:  # a host state pickled before BigCounts
            self.big = BigCounts(self.big)
        if type(self.old) is dict:  # ... and before OldCounts
            old, self.old = self.old, OldCounts()
            for b, c in old.items():
                self.old[b] = c
        for b, n in runs:
            self._keep_free(*divmod(b, ENTRIES_PER_BITMAP), n)
        if bits is not None:
            self.bitmaps = array("Q", self.bitmaps)
            self.maps = [None] * len(self.bitmaps)
            for i in range(0, len(bits), ENTRIES_PER_BITMAP):
                chunk = bits[i : i + ENTRIES_PER_BITMAP]
                if chunk.count(0) != len(chunk):
                    self.maps[i // ENTRIES_PER_BITMAP] = chunk + bytes(
                        ENTRIES_PER_BITMAP - len(chunk)
                    )

    def get_count(self, b: int, _entries: int = ENTRIES_PER_BITMAP) -> int:
        """sm_ll_lookup: O(1)."""
        index = b // _entries
        m = self.maps[index]
        if m is None:
            return 0
        e = b - index * _entries
        c = m[e]
        return self.big.arrays[index][e] if c == 3 else c

    def _map(self, index: int) -> bytearray:
        m = self.maps[index]
        if m is None:
            m = self.maps[index] = bytearray(ENTRIES_PER_BITMAP)
        return m

    def counts(self) -> dict[int, int]:
        """Every block with a non-zero count, with its count, in block order: O(bitmaps
        in use x 16,320), in C."""
        import numpy as np

        out: dict[int, int] = {}
        big = self.big
        for index, m in enumerate(self.maps):
            if m is None:
                continue
            m = np.frombuffer(m, dtype=np.uint8)
            nz = np.flatnonzero(m)
            base = index * ENTRIES_PER_BITMAP
            for e, c in zip(nz.tolist(), m[nz].tolist()):
                b = base + e
                out[b] = big[b] if c == 3 else c
        return out

    def extend(self, extra: int) -> None:
        """sm_ll_extend: grow, allocating a new bitmap block for each 16,320 blocks."""
        old_blocks = self.nr_blocks
        new_blocks = old_blocks + extra
        nr_indexes = -(-new_blocks // ENTRIES_PER_BITMAP)
        self.nr_blocks = new_blocks
        bitmaps = self.bitmaps
        new_block = self.tm.new_block
        for _ in range(len(bitmaps), nr_indexes):
            # the bitmap's contents live in ``maps``: no in-core block object
            bitmaps.append(new_block(None))
            self.maps.append(None)
            self._index_changed(len(bitmaps) - 1)

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

    def set_count(self, b: int, new: int, _entries: int = ENTRIES_PER_BITMAP) -> None:
        """sm_ll_mutate for one block: shadow its bitmap, then set the count."""
        index = b // _entries
        e = b - index * _entries
        if self.bitmaps[index] in self.tm.shadows:
            self._index_changed(index)  # shadow_bitmap of a bitmap shadowed already
        else:
            self.shadow_bitmap(index)
        m = self.maps[index]
        if m is None:
            m = self.maps[index] = bytearray(_entries)
        c = m[e]
        big = self.big
        old = big.arrays[index][e] if c == 3 else c
        codes = self.old.for_bitmap(index)
        if not codes[e]:
            self.old.keep(codes, b, e, old)
        if new > 2:
            m[e] = 3
            if old < 3:
                big.n += 1
            big.array_for(index)[e] = new
            leaf = self._ref_leaf(b) if self._ref_los else None
            if leaf is not None:
                # what ``_insert_in_place`` does in the leaf add_many found it would go to
                keys = leaf.keys
                i = bisect_right(keys, b) - 1
                if i >= 0 and keys[i] == b:
                    leaf.values[i] = new
                elif len(keys) < leaf.max_entries:
                    keys.insert(i + 1, b)
                    leaf.values.insert(i + 1, new)
                else:
                    leaf = None
            if leaf is None:
                info = self.ref_info
                reshapes = info.reshapes
                self.ref_root, _ = info.insert(self.ref_root, (b,), new)
                if info.reshapes != reshapes:
                    self._forget_ref_leaves()
        else:
            m[e] = new
            if old > 2:
                big.arrays[index][e] = 0
                big.n -= 1
                self._ref_remove(b)
        if old == 0 and new:
            self.nr_allocated += 1
        elif new == 0 and old:
            self.nr_allocated -= 1

    def add_many(self, blocks, delta: int, shift: int = 0) -> None:
        """``set_count(b, get_count(b) + delta)`` for each of ``blocks`` in turn, leaving
        exactly what those calls leave (a failure too stops where they would).  With
        ``shift``, each item shifted right by it is the block: a mapping leaf's values,
        an ``array('Q')``, which C reads as they are (a shared leaf shadowed counts its
        whole leaf, 67k times a day on a 1 TiB thin: no array of blocks is made).

        The data ll's blocks (a list) go through the C routine (``_space_map.c``: run)
        where it is built (``native``): it does a block's common cases (a bitmap
        shadowed already and in its ie-cache slot, counts set in the bitmap or, of 3 and
        more, in a reference-count leaf in place, found by its own walk) and stops at
        the first block that needs more.  Python does the step C stopped at as
        ``_add_many``, the reference, would: the ie-cache slot taken back
        (``_index_changed``) or the leaf found by Python's walk (``_kept_ref_leaf``),
        then C takes the same block again; the key's ``BTreeInfo.insert``
        (``_insert_big``), or anything else (``_add_many`` on that one block), then C
        goes on from the next block."""
        run = _C_RUN
        dirty = getattr(self, "dirty", None)
        hand = self._at_hand
        if type(blocks) is array:
            # a leaf's values: C reads them as they are
            if run is None or dirty is None or hand is None or self.tm.sm._bops:
                self._add_many([v >> shift for v in blocks], delta)
                return
        elif (
            run is None
            or dirty is None
            or hand is None
            or type(blocks) is not list
            or self.tm.sm._bops
        ):
            self._add_many(blocks if not shift else [v >> shift for v in blocks], delta)
            return
        info = self.ref_info
        los = self._ref_los
        if los and self._ref_at != (info.reshapes, self.ref_root):
            self._forget_ref_leaves()  # as ``_add_many`` drops them at its start
        n = len(blocks)
        i = 0
        again = -1
        while True:
            # looked up again after each block ``_add_many`` did (it replaces none of
            # them now: C must never write to an object Python has let go)
            tm, old, big = self.tm, self.old, self.big
            i, why, old_n, big_n, allocated, kept, error = run(
                i,
                blocks,
                delta,
                self.maps,
                self.bitmaps,
                tm.shadows,
                dirty,
                old.codes,
                big.arrays,
                los,
                self._ref_leaves,
                tm.blocks,
                tm.sm.ll.maps,
                self.ref_root,
                # the entries whose writeback changes nothing, where that holds now
                (
                    self._wb_same
                    if self._wb_at == (self.index_info.reshapes, self.index_root)
                    else None
                ),
                self._shadow_ref_node,
                hand,
                self._gen,
                self._ref_gen,
                shift,
            )
            if kept:  # as ``_kept_ref_leaf`` does after a walk
                self._ref_at = (info.reshapes, self.ref_root)
            old.n += old_n
            big.n += big_n
            self.nr_allocated += allocated
            if error is not None:
                raise error  # a node's shadow raised (why 5), where _insert_big's insert would
            if i >= n:
                return
            b = int(blocks[i]) >> shift
            if i != again:  # (once a block: C must not stop there twice)
                again = i
                # what ``_add_many`` would do first for the block; then C takes it again
                if why == 1:
                    # its bitmap, shadowed, lost its ie-cache slot to another
                    self._index_changed(b // ENTRIES_PER_BITMAP)
                    continue
                if why == 2 and self._kept_ref_leaf(b) is not None:
                    continue  # its ref-count leaf was not kept yet
            if why == 4:
                self._insert_big(b, delta)
                i += 1
                los = self._ref_los
                continue
            self._add_many([b], delta)
            i += 1
            los = self._ref_los

    def _add_many(self, blocks, delta: int, _entries: int = ENTRIES_PER_BITMAP) -> None:
        """``add_many`` in Python (the reference; the C routine's fallback), faster than
        ``set_count`` for each block:

        - a bitmap is shadowed (and its index entry dirtied) once for a run of blocks in
          it: the calls after the first change nothing (its block is a shadow of this
          transaction, and the ie cache's slot already holds it); a bitmap met again later
          in the call is only put back in its ie cache slot if another took it;
        - a count of 3 or more is set in the reference-count btree's leaf in place, as
          ``BTreeInfo._insert_in_place`` would set it, in the leaves ``_ref_leaf`` keeps
          (a key inside the key range a walk went down lands in the same leaf)."""
        maps, big, old = self.maps, self.big, self.old
        bigs = big.arrays
        tm = self.tm
        shadows = tm.shadows
        info = self.ref_info
        ie = getattr(self, "dirty", None)  # the data ll's ie cache (slot -> bitmap index)
        # queued metadata counts (left by a failure) keep every insert off the in-place
        # path (``_insert_in_place``); between the calls below there are none
        cache = not tm.sm._bops
        los = self._ref_los
        if los and (not cache or self._ref_at != (info.reshapes, self.ref_root)):
            self._forget_ref_leaves()
        last = -1
        m = bm = oc = None
        base = slot = 0
        st: list = []
        seen: dict[int, list] = {}  # bitmap index -> [map, big counts, old codes, base, slot]
        node = keys = values = None
        lo = hi = nkeys = 0
        # where the last key set in place was in each leaf kept: its index and the key
        # (``cur``, the entry of ``node``, has them while it is the leaf in use)
        cur = None
        at, at_b = 0, -1
        for b in blocks:
            index = b // _entries
            if index != last:
                if last >= 0:
                    st[1] = bm  # it may have been made since
                st = seen.get(index)
                if st is None:
                    if self.bitmaps[index] in shadows:
                        self._index_changed(index)
                    else:
                        self.shadow_bitmap(index)
                    m = maps[index]
                    if m is None:
                        m = maps[index] = bytearray(_entries)
                    slot = ie_slot(index)
                    st = seen[index] = [m, bigs.get(index), old.for_bitmap(index), 0, slot]
                    st[3] = index * _entries
                elif ie is None or ie.get(st[4]) != index:
                    self._index_changed(index)  # its bitmap is a shadow already
                m, bm, oc, base = st[0], st[1], st[2], st[3]
                last = index
            e = b - base
            c = m[e]
            o = bm[e] if c == 3 else c
            if not oc[e]:
                if o < 254:
                    oc[e] = o + 1
                    old.n += 1
                else:
                    old.keep(oc, b, e, o)
            n = o + delta
            if n > 2:
                m[e] = 3
                if o < 3:
                    if bm is None:
                        bm = big.array_for(index)
                    big.n += 1
                bm[e] = n
                if lo <= b < hi:
                    # the blocks of a leaf come in runs of consecutive blocks, most of
                    # them with counts of 3 and more: consecutive keys of the ref-count
                    # leaf, so the key is usually where the last one was, plus the gap
                    # (keys are distinct: a key equal to b, at any index, is b's entry)
                    i = at + b - at_b
                    if -nkeys <= i < nkeys and keys[i] == b:
                        at, at_b = i, b
                        values[i] = n
                        continue  # o > 2: nr_allocated unchanged
                if cache:
                    if not (lo <= b < hi):
                        if cur is not None:
                            cur[4] = at
                            cur[5] = at_b
                        cur = self._kept_ref_leaf(b)
                        if cur is not None:
                            node, lo, hi, _, at, at_b = cur
                            keys, values = node.keys, node.values
                            nkeys = len(keys)
                        else:
                            node = None
                            lo = hi = 0
                    if lo <= b < hi:
                        i = at + b - at_b
                        if -nkeys <= i < nkeys and keys[i] == b:
                            at, at_b = i, b
                            values[i] = n
                            continue  # o > 2: nr_allocated unchanged
                        i = bisect_right(keys, b) - 1
                        if i >= 0 and keys[i] == b:
                            at, at_b = i, b
                            values[i] = n
                            continue  # o > 2: nr_allocated unchanged
                        if nkeys < node.max_entries:
                            keys.insert(i + 1, b)
                            values.insert(i + 1, n)
                            nkeys += 1
                            at, at_b = i + 1, b
                            if not o:  # a delta of 3 or more from a free block
                                self.nr_allocated += 1
                            continue  # o < 3
                reshapes = info.reshapes
                self.ref_root, _ = info.insert(self.ref_root, (b,), n)
                if info.reshapes != reshapes:
                    self._forget_ref_leaves()
                else:
                    # only shadows on the way down: the leaves kept keep their places
                    self._ref_at = (reshapes, self.ref_root)
                node = cur = None
                lo = hi = 0
            else:
                m[e] = n
                if o > 2:
                    bm[e] = 0
                    big.n -= 1
                    node = cur = None
                    lo = hi = 0
                    self._ref_remove(b)
            if o == 0:
                if n:
                    self.nr_allocated += 1
            elif n == 0:
                self.nr_allocated -= 1

    def _insert_big(self, b: int, delta: int, _entries: int = ENTRIES_PER_BITMAP) -> None:
        """What ``_add_many`` does for block ``b`` whose count goes to 3 or more where C
        found (``_space_map.c``: STOP_INSERT) that the key goes through
        ``BTreeInfo.insert`` (no leaf in place, or a full one), and that nothing else of
        it needs Python: its bitmap a shadow in its ie-cache slot, its entries, old codes
        and big counts made, an old count to keep below 254 (the same steps, in order:
        a failure stops where ``_add_many``'s would)."""
        index = b // _entries
        e = b - index * _entries
        m, bm, oc = self.maps[index], self.big.arrays[index], self.old.codes[index]
        c = m[e]
        o = bm[e] if c == 3 else c
        if not oc[e]:
            self.old.keep(oc, b, e, o)
        n = o + delta
        m[e] = 3
        if o < 3:
            self.big.n += 1
        bm[e] = n
        info = self.ref_info
        reshapes = info.reshapes
        self.ref_root, _ = info.insert(self.ref_root, (b,), n)
        if info.reshapes != reshapes:
            self._forget_ref_leaves()
        else:
            # only shadows on the way down: the leaves kept keep their places
            self._ref_at = (reshapes, self.ref_root)
        if o == 0:
            self.nr_allocated += 1

    def _shadow_ref_node(self, b: int) -> int | None:
        """For add_many's C walk down the reference-count tree to a key's leaf: node ``b``,
        not shadowed in this transaction, below a parent shadowed in place, shadowed as
        ``BTreeInfo.insert``'s walk (btree_insert_raw) shadows it first for that key
        (``_shadow``: a block allocated, the original dropped); C repoints the parent.
        Returns the new block, or None where it declines and the key's insert takes it
        (Python's walk): where the allocation could queue counts, fire the metadata
        threshold or find no block."""
        sm = self.tm.sm
        if sm._bops or sm._recursing or sm._bootstrap:
            return None
        free = sm.nr_free()
        t = sm.threshold
        if free < 64 or (sm.threshold_pending() and free - t < 64):
            return None
        info = self.ref_info
        return info._shadow(b, info.value_type)[0]

    def _kept_ref_leaf(self, b: int):
        """The reference-count leaf key ``b`` goes to in place, as its entry in the
        table ``add_many`` keeps (``_no_ref_leaves``): found there, or by a walk down
        the tree (``BTreeInfo.leaf_in_place``), then kept; None where b's insert goes
        through ``BTreeInfo.insert``.  The caller checked the table is of this tree's
        shape and root, and that no metadata counts are queued."""
        los, leaves = self._ref_los, self._ref_leaves
        j = bisect_right(los, b) - 1
        if j >= 0 and b < leaves[j][2] and self.tm.blocks.get(leaves[j][3]) is leaves[j][0]:
            return leaves[j]
        info = self.ref_info
        found = info.leaf_in_place(self.ref_root, b)
        if found is None:
            return None
        cur = [*found, 0, -1]
        if j >= 0 and b < leaves[j][2]:
            # a leaf read back since: the walk found it again
            los[j] = found[1]
            leaves[j] = cur
        else:
            los.insert(j + 1, found[1])
            leaves.insert(j + 1, cur)
        self._ref_at = (info.reshapes, self.ref_root)
        return cur

    def _ref_leaf(self, b: int):
        """The reference-count leaf kept by ``add_many`` that key ``b`` goes to in place,
        if there is one still valid; else None."""
        info = self.ref_info
        if self._ref_at != (info.reshapes, self.ref_root) or self.tm.sm._bops:
            return None
        los = self._ref_los
        j = bisect_right(los, b) - 1
        if j < 0:
            return None
        leaf, _lo, hi, block = self._ref_leaves[j][:4]
        if b >= hi or self.tm.blocks.get(block) is not leaf:
            return None
        return leaf

    def _ref_remove(self, b: int) -> None:
        """The reference-count btree's removal of key ``b`` (dm_btree_remove), and of the
        leaves kept in place (``_no_ref_leaves``, and those add_many's C keeps at hand)
        those it changed: ``BTreeInfo.remove``'s ``disturbed``, where the root stays.  The
        others keep their ranges and stay in place.  All are dropped where that is not
        known, or where the removal raised (the tree may be left half changed)."""
        info = self.ref_info
        root = self.ref_root
        kept = self._ref_los and self._ref_at == (info.reshapes, root)
        try:
            self.ref_root = info.remove(root, (b,))
        except BaseException:
            self._forget_ref_leaves()
            raise
        dist = info.disturbed
        if not kept or dist is None or self.ref_root != root:
            self._forget_ref_leaves()
            return
        los, leaves = self._ref_los, self._ref_leaves
        hand = self._at_hand
        for lo, hi in dist:
            j = bisect_right(los, lo) - 1
            if j < 0 or leaves[j][2] <= lo:
                j += 1
            k = bisect_left(los, hi, j)
            del los[j:k], leaves[j:k]
            if hand is not None:
                _C.hand_drop(hand, lo, hi)
        self._ref_at = (info.reshapes, root)

    def _forget_ref_leaves(self) -> None:
        """The reference-count leaves ``add_many`` keeps between calls, dropped: at a commit
        or a rollback (they are no longer shadows of the transaction), and where the tree
        changed shape or its root (a split, a rebalance, a removal).  ``_ref_gen`` counts
        the times, for the leaves C keeps at hand."""
        self._ref_los.clear()
        self._ref_leaves.clear()
        self._ref_gen += 1

    def find_common_free(self, begin: int, _entries: int = ENTRIES_PER_BITMAP) -> int:
        """sm_ll_find_common_free_block from ``begin``; NoSpace when none is left.

        Bitmap by bitmap, as the kernel searches (sm_ll_find_free_block): a bitmap
        without entries is free from its first block; O(bitmaps searched), each one a
        ``bytearray.find``."""
        maps, old = self.maps, self.old
        nr = self.nr_blocks
        entries = _entries
        while begin < nr:
            index = begin // entries
            m = maps[index]
            if m is None:
                # all zero now, and at the last commit (a change would have made it)
                return begin
            start = index * entries
            hi = nr - start  # find stops at the bitmap's end by itself
            e = m.find(0, begin - start, hi)
            oc = old.codes.get(index)
            while e >= 0:
                if oc is None or oc[e] <= 1:  # not kept, or 0 at the last commit
                    return start + e
                e = m.find(0, e + 1, hi)
            begin = start + entries
        raise NoSpace

    def alloc_run(self, begin: int, limit: int, first: int | None = None) -> tuple[int, int]:
        """Allocate up to ``limit`` blocks as next fit would one by one: the first free
        block from ``begin`` (wrapping), then the free blocks right after it, stopping at a
        used block or a bitmap boundary.  Returns (first block, count).  ``first``: that
        first free block, where the caller has just found it (``find_common_free(begin)``,
        nothing changed since)."""
        if first is not None:
            b = first
        else:
            try:
                b = self.find_common_free(begin)
            except NoSpace:
                b = self.find_common_free(0)
        index, lo = divmod(b, ENTRIES_PER_BITMAP)
        hi = min(lo + limit, ENTRIES_PER_BITMAP, self.nr_blocks - b + lo)
        m = self.maps[index]
        if m is not None:
            # up to the first block in use (entries after ``lo`` that are not 0)
            hi -= len(m[lo:hi].lstrip(b"\x00"))
        oc = self.old.codes.get(index)
        if oc is not None:
            # ... and to the first that was in use at the last commit (a code above 1)
            seg = oc[lo:hi].translate(_KEPT_IN_USE).lstrip(b"\x00")
            hi -= len(seg)
        n = hi - lo
        self.shadow_bitmap(index)
        self._map(index)[lo : lo + n] = b"\x01" * n
        self.nr_allocated += n
        self._keep_free(index, lo, n)
        return b, n

    def _keep_free(self, index: int, lo: int, n: int) -> None:
        """Keep count 0 as the last-commit count of the ``n`` blocks from entry ``lo`` of
        bitmap ``index``, a run just allocated, as set_count keeps a block's: a block of
        the run whose count changes again in this transaction (a discard, an overwrite)
        must not keep the run's count as its old one, or an abort would leave it in use."""
        codes = self.old.for_bitmap(index)
        seg = codes[lo : lo + n]
        fresh = seg.count(0)
        if fresh:
            codes[lo : lo + n] = seg.replace(b"\x00", b"\x01")
            self.old.n += fresh

    def _touched(self) -> set[int]:
        """The bitmaps changed since the last commit."""
        return self.old.bitmaps()

    def commit(self) -> None:
        maps = self.maps
        for index in self._touched():
            if maps[index] == _ALL_FREE:
                maps[index] = None  # all free now and at this commit
        self.old.clear()
        self._forget_ref_leaves()
        self._gen += 1
        self._committed = self._header()

    def _header(self):
        return (self.nr_blocks, self.nr_allocated, array("Q", self.bitmaps), self.ref_root)

    def rollback(self) -> list[int]:
        """Back to the last commit (dm_pool_abort_metadata re-reads it from disk).
        Returns the blocks whose count changed."""
        nr_blocks, nr_allocated, bitmaps, ref_root = self._committed[:4]
        big = self.big
        touched = self._touched()
        for b, c in self.old.items():
            index, e = divmod(b, ENTRIES_PER_BITMAP)
            m = self._map(index)
            if c > 2:
                m[e] = 3
                big[b] = c
            else:
                m[e] = c
                big.pop(b, None)
        changed = list(self.old)
        maps = self.maps
        del maps[len(bitmaps) :]
        for index in touched:
            if index < len(maps) and maps[index] == _ALL_FREE:
                maps[index] = None
        big.drop_from(nr_blocks)
        self.nr_blocks = nr_blocks
        self.nr_allocated = nr_allocated
        self.bitmaps = array("Q", bitmaps)  # the committed copy stays as it is
        self.ref_root = ref_root
        self.old.clear()
        self._forget_ref_leaves()
        self._gen += 1
        return changed


# an OldCounts code -> 1 where the block was in use at the last commit (a code above 1)
_KEPT_IN_USE = bytes(0 if c <= 1 else 1 for c in range(256))

# a bitmap entry -> 1 where the block's count is at most 1 (entries are 0, 1, 2, or 3
# for a count of 3 or more)
_AT_MOST_ONE = bytes.maketrans(b"\x00\x01\x02\x03", b"\x01\x01\x00\x00")


class _DiskLowLevel(LowLevel):
    """The data device's ll (sm_ll_new_disk): its index is a btree, written at commit."""

    def __init__(self, tm) -> None:
        super().__init__(tm)
        self.index_info = BTreeInfo(tm, 1, ValueType(16))
        self.index_root = self.index_info.empty()
        self.ref_root = self.ref_info.empty()
        self.dirty: dict[int, int] = {}  # ie cache slot -> bitmap index

    def extend(self, extra: int) -> None:
        """sm_ll_extend: a new bitmap block for each 16,320 blocks, each entered in the
        index (a PiB of 64 KiB blocks takes a million).  Runs of new bitmaps that change
        nothing but their own metadata block, the metadata bitmap already shadowed, and
        the rightmost index leaf (``_new_bitmaps``) are made in one step; any other takes
        the ordinary path."""
        new_blocks = self.nr_blocks + extra
        nr_indexes = -(-new_blocks // ENTRIES_PER_BITMAP)
        self.nr_blocks = new_blocks
        bitmaps = self.bitmaps
        new_block = self.tm.new_block
        while len(bitmaps) < nr_indexes:
            if not self._new_bitmaps(nr_indexes - len(bitmaps)):
                bitmaps.append(new_block(None))
                self.maps.append(None)
                self._index_changed(len(bitmaps) - 1)

    def _new_bitmaps(self, limit: int) -> int:
        """Up to ``limit`` new bitmaps, leaving exactly what one ``tm.new_block`` and one
        ``_index_changed`` a bitmap leave, as long as each of them would: take the next
        free metadata block after the last (in a metadata bitmap already shadowed, with
        the low-water threshold not crossed) and write back at most an ie-cache entry
        that appends to the index tree's rightmost leaf without shadowing or splitting.
        Returns how many it made (0: let the ordinary path take the next one)."""
        tm = self.tm
        sm = tm.sm
        if sm._bootstrap or sm._recursing or sm._bops:
            return 0
        mll = sm.ll
        try:
            b0 = mll.find_common_free(sm.begin)
        except NoSpace:
            return 0
        mindex, lo = divmod(b0, ENTRIES_PER_BITMAP)
        if mll.bitmaps[mindex] not in tm.shadows:
            return 0
        limit = min(limit, ENTRIES_PER_BITMAP - lo, mll.nr_blocks - b0)
        t = sm.threshold
        if sm.threshold_pending():
            # check_threshold fires where free metadata falls to the threshold: leave that
            # allocation to the ordinary path
            limit = min(limit, sm.nr_free() - t - 1)
        leaf = self.index_info.rightmost_leaf_in_place(self.index_root)
        if leaf is None:
            return 0
        keys, values = leaf.keys, leaf.values
        room = leaf.max_entries - len(keys)
        # each new bitmap fills an empty cache slot or writes one entry back
        limit = min(limit, room + IE_CACHE_SIZE - len(self.dirty))
        m = mll.maps[mindex]
        old = mll.old
        k = 0
        while k < limit and (m is None or not m[lo + k]) and not old.get(b0 + k):
            k += 1
        if not k:
            return 0
        last = keys[-1] if keys else -1
        bitmaps, dirty = self.bitmaps, self.dirty
        index = len(bitmaps)
        n = 0
        while n < k:
            slot = ie_slot(index)
            held = dirty.get(slot)
            if held is not None:
                if not room or held <= last:
                    break
                keys.append(held)  # disk_ll_save_ie's writeback, in place
                values.append(bitmaps[held])
                last = held
                room -= 1
            dirty[slot] = index
            bitmaps.append(b0 + n)
            index += 1
            n += 1
        self.maps.extend([None] * n)
        if not n:
            return 0
        # sm_metadata_new_block for blocks b0 .. b0 + n - 1, as n calls would leave it
        end = b0 + n
        mll._map(mindex)[lo : lo + n] = b"\x01" * n
        for b in range(b0, end):
            old.setdefault(b, 0)
        mll.nr_allocated += n
        mll.bitmap_index_changed = True
        sm.begin = end
        sm.allocated_this_transaction += n
        if t is not None:
            sm._value = sm.nr_free()
        # dm_tm_new_block
        blocks = tm.blocks
        for b in range(b0, end):
            blocks.pop(b, None)
        tm.shadows.update(range(b0, end))
        if tm.dirty is not None:
            tm.dirty.update(range(b0, end))
        return n

    def _index_changed(self, index: int) -> None:
        # dm-space-map-common.c: disk_ll_save_ie -- into a 64-slot cache; a slot holding
        # another dirty entry is written back first.
        slot = ie_slot(index)
        held = self.dirty.get(slot)
        if held is not None and held != index:
            self._writeback(held)
        self.dirty[slot] = index

    def new_in_place(self, begin: int, _entries: int = ENTRIES_PER_BITMAP) -> int | None:
        """``find_common_free(begin)`` then ``set_count(b, 1)`` for the block it finds,
        where that block is in ``begin``'s bitmap and the bitmap a shadow of this
        transaction whose index entry the ie cache holds (``set_count``'s
        ``_index_changed`` then changes nothing): the count set and the last commit's
        count 0 kept, as those calls do.  Returns the block, or None with nothing done
        (the caller takes those calls)."""
        index = begin // _entries
        if begin >= self.nr_blocks:
            return None
        m = self.maps[index]
        if (
            m is None
            or self.bitmaps[index] not in self.tm.shadows
            or self.dirty.get(ie_slot(index)) != index
        ):
            return None
        old = self.old
        codes = old.codes.get(index)
        if codes is None:
            return None
        start = index * _entries
        hi = self.nr_blocks - start
        e = m.find(0, begin - start, hi)
        while e >= 0 and codes[e] > 1:  # in use at the last commit
            e = m.find(0, e + 1, hi)
        if e < 0:
            return None
        if not codes[e]:
            codes[e] = 1  # OldCounts.keep of count 0
            old.n += 1
        m[e] = 1
        self.nr_allocated += 1
        return start + e

    def runs_at_most_one(self, b: int, e: int, _entries: int = ENTRIES_PER_BITMAP) -> list:
        """The maximal runs of blocks in [b, e) whose count is at most 1, in order, as
        (begin, end): what ``get_count`` block by block tells (a bitmap entry of 2 or 3
        is a count above 1), read a bitmap's stretch at a time."""
        out: list = []
        maps = self.maps
        while b < e:
            index = b // _entries
            start = index * _entries
            lo = b - start
            hi = min(e - start, _entries)
            m = maps[index]
            if m is None:
                found = [(b, start + hi)]
            else:
                t = m[lo:hi].translate(_AT_MOST_ONE)
                found = []
                i = t.find(1)
                while i >= 0:
                    j = t.find(0, i)
                    if j < 0:
                        j = len(t)
                    found.append((b + i, b + j))
                    i = t.find(1, j)
            for r in found:
                if out and out[-1][1] == r[0]:
                    out[-1] = (out[-1][0], r[1])  # a run on over the bitmap's end
                else:
                    out.append(r)
            b = start + hi
        return out

    def dec_inc_runs_in_place(self, runs, start: int, _entries: int = ENTRIES_PER_BITMAP) -> int:
        """For each of ``runs[start:]`` ((virt_begin, virt_end, data_begin, shared), a
        discard's runs) in turn, ``set_count(x, c - 1)`` then ``set_count(x, c)`` for each
        of its blocks (the run's removal, then its pin), where that changes nothing but
        the last commit's count kept for a block not kept yet: the run's blocks in one
        bitmap, a shadow of this transaction whose index entry the ie cache holds (each
        ``shadow_bitmap`` changes nothing), every count 1 or 2 (none goes through the
        reference-count btree).  Stops at the first run where that does not hold, with
        nothing of it done, and returns its index (``len(runs)`` for none)."""
        maps, bitmaps, shadows, dirty = self.maps, self.bitmaps, self.tm.shadows, self.dirty
        old = self.old
        fresh = 0
        index_ok = -1  # the bitmap last found to meet the conditions
        codes = None
        try:
            for k in range(start, len(runs)):
                vb, ve, db, _ = runs[k]
                n = ve - vb
                index = db // _entries
                e = db - index * _entries
                end = e + n
                m = maps[index]
                if index != index_ok:
                    if (
                        m is None
                        or bitmaps[index] not in shadows
                        or dirty.get(ie_slot(index)) != index
                    ):
                        return k
                    index_ok = index
                    codes = None
                if end > _entries:
                    return k
                if n == 1:
                    c = m[e]
                    if c != 1 and c != 2:
                        return k
                    if codes is None:
                        codes = old.for_bitmap(index)
                    if not codes[e]:
                        codes[e] = c + 1
                        fresh += 1
                    continue
                seg = m[e:end]
                if seg.count(1) + seg.count(2) != n:
                    return k
                if codes is None:
                    codes = old.for_bitmap(index)
                for i in range(e, end):
                    if not codes[i]:
                        codes[i] = m[i] + 1
                        fresh += 1
            return len(runs)
        finally:
            old.n += fresh

    def _writeback(self, index: int) -> None:
        """ie_cache_writeback: the entry inserted into the index btree.  Each bitmap's
        entry is written back many times a transaction where bitmaps that share an
        ie-cache slot take turns (a mapping leaf's blocks, after weeks of snapshots, lie in
        as many bitmaps as days).  Once an insert of it went in place (``_insert_in_place``:
        every node on its path a shadow of this transaction, unshared, no internal node
        full), the same insert again changes nothing while the tree keeps its shape and
        root (``reshapes``: splits and rebalances are what fill an internal node) and no
        metadata count is queued; the shadows last until the commit or rollback, which
        forget these entries (``_wb_same``)."""
        value = self.bitmaps[index]
        info = self.index_info
        same = self._wb_same
        if self.tm.sm._bops:
            self.index_root, _ = info.insert(self.index_root, (index,), value)
            return
        at = (info.reshapes, self.index_root)
        if self._wb_at != at:
            same.clear()
            self._wb_at = at
        elif same.get(index) == value:
            return
        if info._insert_in_place(self.index_root, (index,), value) is not None:
            same[index] = value
        else:
            same.pop(index, None)
            self.index_root, _ = info.insert(self.index_root, (index,), value)

    def writeback(self) -> None:
        """dm-space-map-common.c: ie_cache_writeback, slot order (NoSpace if the index
        btree cannot grow; the entries stay cached)."""
        dirty = self.dirty
        for slot in sorted(dirty):
            self._writeback(dirty[slot])
        dirty.clear()

    def commit(self) -> None:
        self.writeback()
        self._no_writebacks()
        super().commit()

    def _header(self):
        return super()._header() + (self.index_root,)

    def rollback(self) -> list[int]:
        index_root = self._committed[4]
        changed = super().rollback()
        self.index_root = index_root
        self.dirty.clear()
        self._no_writebacks()
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
        b = ll.new_in_place(self.begin)
        if b is not None:
            self.begin = b + 1
            return b
        try:
            b = ll.find_common_free(self.begin)
        except NoSpace:
            b = ll.find_common_free(0)
        self.begin = b + 1
        ll.set_count(b, 1)
        return b

    def new_run(self, limit: int, first: int | None = None) -> tuple[int, int]:
        """``new_block`` up to ``limit`` times at once, as long as the blocks it would give
        are consecutive within one bitmap.  Returns (first block, count).  ``first``: the
        first free block from the cursor, where the caller has just found it
        (``ll.find_common_free(begin)``, nothing changed since)."""
        b, n = self.ll.alloc_run(self.begin, limit, first)
        self.begin = b + n
        return b, n

    def inc(self, b: int) -> None:
        self.ll.set_count(b, self.ll.get_count(b) + 1)

    def dec(self, b: int) -> None:
        self.ll.set_count(b, self.ll.get_count(b) - 1)

    def inc_many(self, blocks, shift: int = 0) -> None:
        """``inc`` each block in turn (each item shifted right by ``shift``)."""
        self.ll.add_many(blocks, 1, shift)

    def dec_many(self, blocks, shift: int = 0) -> None:
        """``dec`` each block in turn (each item shifted right by ``shift``)."""
        self.ll.add_many(blocks, -1, shift)

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
        self.index_block = tm.new_block(None)  # metadata_ll_init_index
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

    def threshold_pending(self) -> bool:
        """Whether a threshold is registered that has not fired yet (``_check_threshold``
        fires it when free metadata falls to it)."""
        t = self.threshold
        return t is not None and not (self._value is not None and self._value <= t)

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

    def _mutate(self, b: int, delta: int, _entries: int = ENTRIES_PER_BITMAP) -> None:
        if self._recursing or self._bootstrap:
            self._bops.append((b, delta))
            return
        # the common case (every shadow allocates a block and drops one): a count going
        # between 0, 1 and 2 in a bitmap shadowed already -- what ``set_count`` does then
        # (the bitmap's shadow_bitmap changes nothing but the index flag; no recursion)
        ll = self.ll
        index = b // _entries
        m = ll.maps[index]
        if m is not None and not self._bops and ll.bitmaps[index] in self.tm.shadows:
            e = b - index * _entries
            c = m[e]
            new = c + delta
            old = ll.old
            if c < 3 and 0 <= new < 3 and type(ll) is LowLevel and type(old) is OldCounts:
                ll.bitmap_index_changed = True
                codes = old.codes.get(index)
                if codes is None:
                    codes = old.codes[index] = bytearray(_entries)
                if not codes[e]:
                    codes[e] = c + 1  # OldCounts.keep of a count below 254
                    old.n += 1
                m[e] = new
                if not c:
                    ll.nr_allocated += 1
                elif not new:
                    ll.nr_allocated -= 1
                    self.zeroed.append(b)
                return
        self._recursing = True
        try:
            # _apply, inline (every metadata count change runs this)
            ll = self.ll
            new = ll.get_count(b) + delta
            ll.set_count(b, new)
            if new == 0:
                self.zeroed.append(b)
            if self._bops:
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
