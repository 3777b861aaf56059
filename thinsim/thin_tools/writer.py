"""Metadata written as thin-provisioning-tools 0.9.0 writes it (thin_restore, thin_repair):
one transaction, block for block.

A port of what a restore touches in persistent-data: the transaction manager's shadowing
(transaction_manager.cc), node_ref's byte moves and the insert with its pre-emptive
splits (btree.tcc: insert_location, split_beneath, split_sibling), the disk space map's
bitmaps and index entries (space-maps/disk.cc), the restore emitter's order
(restore_emitter.cc, metadata.cc: metadata::CREATE, commit).  Nodes are kept as the
4 KiB buffers the C++ edits, stale bytes included, so the file is the real tool's byte for
byte (tests/test_thin_tools.py compares them).
"""

from __future__ import annotations

import struct

from ..constants import (
    BITMAP_CSUM_XOR,
    BTREE_CSUM_XOR,
    INDEX_CSUM_XOR,
    INTERNAL_NODE,
    LEAF_NODE,
)
from ..model.disk import bm_checksum
from .common import MD_BLOCK_SIZE, ToolError
from .metadata import Superblock

ENTRIES_PER_BLOCK = (MD_BLOCK_SIZE - 16) * 4
MAX_METADATA_BLOCKS = 255 * ENTRIES_PER_BLOCK
U64 = (1 << 64) - 1


class Transaction:
    """transaction_manager with the space map it allocates from: blocks handed out lowest
    free first (a restore frees nothing, so that is the next one), the shadow set, and the
    metadata space map's counts."""

    def __init__(self, nr_blocks: int) -> None:
        self.nr_blocks = nr_blocks
        self.blocks: dict[int, bytearray] = {0: bytearray(MD_BLOCK_SIZE)}
        self.kinds: dict[int, str] = {0: "superblock"}
        self.shadows: set[int] = set()
        # the block cache the locks go through (block_cache.py), when its write backs
        # matter: a run that aborts
        self.cache = None
        self.sm = MetadataCounts(nr_blocks, self)
        self.sm.set(0, 1)

    def get(self, b: int, flags: int = 0) -> None:
        """block_manager::read_lock (0), write_lock (1), write_lock_zero (2)."""
        if self.cache is not None:
            self.cache.get(b, flags)

    def put(self, b: int) -> None:
        """The last reference to a read_ref or write_ref goes."""
        if self.cache is not None:
            self.cache.put(b)

    def new_block(self, kind: str) -> int:
        """transaction_manager::new_block: the block comes back write locked (``put`` it)."""
        b = self.sm.new_block()
        self.get(b, 2)
        self.blocks[b] = bytearray(MD_BLOCK_SIZE)
        self.kinds[b] = kind
        self.shadows.add(b)
        return b

    def shadow(self, b: int) -> tuple[int, bool]:
        """(the block to write, whether the children need an extra reference); the block
        comes back write locked (``put`` it)."""
        need_inc = self.sm.get(b) > 1
        if b in self.shadows and not need_inc:
            if self.cache is not None:
                self.cache.get(b, 1)
            return b, need_inc
        self.get(b)
        try:
            copy = self.sm.new_block("shadow")
        except ToolError:
            self.put(b)
            raise
        self.get(copy, 2)
        self.blocks[copy] = bytearray(self.blocks[b])
        self.kinds[copy] = self.kinds[b]
        self.sm.dec(b)
        self.shadows.add(copy)
        self.put(b)
        return copy, need_inc


class MetadataCounts:
    """The metadata space map (sm_disk over a metadata_index_store) as a restore drives it:
    two-bit counts in bitmaps, index entries with nr_free and none_free_before.

    ``disk`` is false while create_metadata_sm allocates from the core space map (no
    locks); ``tm_core`` while the transaction manager still counts with the core map (the
    shadowing of a bitmap then asks no bitmap)."""

    def __init__(self, nr_blocks: int, tm: Transaction | None = None) -> None:
        self.nr_blocks = nr_blocks
        self.tm = tm
        self.counts = bytearray(nr_blocks)
        self.nr_allocated = 0
        self.bitmaps: list[int] = []
        self.entries: list[list[int]] = []  # [nr_free, none_free_before] per bitmap
        self.big: dict[int, int] = {}
        self.ref_tree: BTree | None = None  # counts above two
        self.disk = False
        self.tm_core = True
        self.search_start = 0

    def _lookup_bitmap(self, b: int) -> None:
        # bitmap::lookup: a read lock of the bitmap, released
        bm = self.bitmaps[b // ENTRIES_PER_BLOCK]
        self.tm.get(bm)
        self.tm.put(bm)

    def get(self, b: int) -> int:
        c = self.counts[b]
        if self.disk and self.tm.cache is not None:
            self._lookup_bitmap(b)
            if c == 3:
                self.ref_tree.lookup(b)
        return self.big[b] if c == 3 else c

    def _insert_bitmap(self, b: int, c: int) -> None:
        # bitmap::insert: the bitmap shadowed (a shadow already: write locked), changed
        i, bit = divmod(b, ENTRIES_PER_BLOCK)
        tm = self.tm
        cache = tm.cache
        if cache is not None:
            bm = self.bitmaps[i]
            if not self.tm_core:
                self._lookup_bitmap(bm)
            cache.get(bm, 1)
        old = self.counts[b]
        old = (1 if old else 0) if old < 3 else 3
        _bitmap_ie(self.entries[i], bit, old, c)
        self.counts[b] = c
        if cache is not None:
            cache.put(bm)

    def set(self, b: int, c: int, delta: bool = False) -> None:
        """sm_disk::modify_count: set_count, or with ``delta`` inc and dec."""
        old = self.get(b)
        if delta:
            c += old
        if not self.entries:
            self.counts[b] = min(c, 3)
            if c > 2:
                self.big[b] = c
        elif c > 2:
            if old < 3:
                self._insert_bitmap(b, 3)
            self.big[b] = c
            if self.ref_tree is not None:
                self.ref_tree.insert(b, struct.pack("<I", c))
        else:
            if self.big.pop(b, None) is not None and self.ref_tree is not None:
                self.ref_tree.remove(b)
            self._insert_bitmap(b, c)
        if old == 0 and c:
            self.nr_allocated += 1
        elif c == 0 and old:
            self.nr_allocated -= 1
            self.search_start = min(self.search_start, b)

    def inc(self, b: int) -> None:
        if b == self.search_start:
            self.search_start += 1
        self.set(b, 1, True)

    def dec(self, b: int) -> None:
        self.set(b, -1, True)

    def new_block(self, caller: str = "new_block") -> int:
        b = self.counts.find(0)
        if self.disk:
            self._find_free(b)
        if b < 0:
            # transaction_manager::new_block or ::shadow
            raise ToolError(f"transaction_manager::{caller}() couldn't allocate new block")
        self.inc(b)
        return b

    def _find_free(self, found: int) -> None:
        """sm_disk::find_free from search_start: the bitmaps it reads (each one whose
        none_free_before leaves it something to search), up to the one with ``found``."""
        start = self.search_start
        nr = self.nr_blocks
        for i in range(start // ENTRIES_PER_BLOCK, -(-nr // ENTRIES_PER_BLOCK)):
            lo = start % ENTRIES_PER_BLOCK if i == start // ENTRIES_PER_BLOCK else 0
            hi = min(ENTRIES_PER_BLOCK, nr - ENTRIES_PER_BLOCK * i)
            if max(lo, self.entries[i][1]) < hi:
                bm = self.bitmaps[i]
                self.tm.get(bm)
                self.tm.put(bm)
                if found >= 0 and found // ENTRIES_PER_BLOCK == i:
                    break
        if found > 0:
            self.search_start = found - 1


def _bitmap_ie(ie: list[int], bit: int, old: int, new: int) -> None:
    # space-maps/disk.cc: bitmap::insert
    was_free = old == 0
    if was_free and new > 0:
        ie[0] -= 1
        if bit == ie[1]:
            ie[1] += 1
    if not was_free and new == 0:
        ie[0] += 1
        ie[1] = min(ie[1], bit)


def _max_entries(value_size: int) -> int:
    # node_ref::calc_max_entries
    n = (MD_BLOCK_SIZE - 32) // (8 + value_size)
    return 3 * (n // 3)


class NodeBuf:
    """node_ref over a block's buffer, with a value size fixed by the template."""

    def __init__(self, buf: bytearray, value_size: int) -> None:
        self.buf = buf
        self.vs = value_size

    flags = property(lambda s: struct.unpack_from("<I", s.buf, 4)[0])
    nr = property(lambda s: struct.unpack_from("<I", s.buf, 16)[0])
    max = property(lambda s: struct.unpack_from("<I", s.buf, 20)[0])

    def set_type(self, leaf: bool) -> None:
        struct.pack_into("<I", self.buf, 4, LEAF_NODE if leaf else INTERNAL_NODE)

    def is_leaf(self) -> bool:
        return not (self.flags & INTERNAL_NODE)

    def set_nr(self, n: int) -> None:
        struct.pack_into("<I", self.buf, 16, n)

    def set_max(self) -> None:
        struct.pack_into("<I", self.buf, 20, _max_entries(self.vs))

    def set_value_size(self) -> None:
        struct.pack_into("<I", self.buf, 24, self.vs)

    def kp(self, i: int) -> int:
        return 32 + 8 * i

    def vp(self, i: int) -> int:
        return 32 + 8 * self.max + self.vs * i

    def key(self, i: int) -> int:
        return struct.unpack_from("<Q", self.buf, self.kp(i))[0]

    def set_key(self, i: int, k: int) -> None:
        struct.pack_into("<Q", self.buf, self.kp(i), k)

    def value(self, i: int) -> bytes:
        return bytes(self.buf[self.vp(i) : self.vp(i) + self.vs])

    def overwrite(self, i: int, k: int, v: bytes) -> None:
        self.set_key(i, k)
        self.buf[self.vp(i) : self.vp(i) + self.vs] = v

    def insert_at(self, i: int, k: int, v: bytes) -> None:
        n = self.nr
        if n + 1 > self.max:
            raise ToolError("too many entries")
        self.set_nr(n + 1)
        b = self.buf
        b[self.kp(i + 1) : self.kp(n + 1)] = b[self.kp(i) : self.kp(n)]
        b[self.vp(i + 1) : self.vp(n + 1)] = b[self.vp(i) : self.vp(n)]
        self.overwrite(i, k, v)

    def copy_entries(self, src: NodeBuf, begin: int, end: int) -> None:
        count = end - begin
        n = self.nr
        if n + count > self.max:
            raise ToolError("too many entries")
        b = self.buf
        b[self.kp(n) : self.kp(n + count)] = src.buf[src.kp(begin) : src.kp(end)]
        b[self.vp(n) : self.vp(n + count)] = src.buf[src.vp(begin) : src.vp(end)]
        self.set_nr(n + count)

    def lower_bound(self, key: int) -> int:
        lo, hi = -1, self.nr
        while hi - lo > 1:
            mid = lo + (hi - lo) // 2
            k = self.key(mid)
            if k == key:
                return mid
            if k < key:
                lo = mid
            else:
                hi = mid
        return lo


class BTree:
    """A one-level persistent-data btree of ``value_size``-byte values.

    The locks are btree.tcc's: a lookup's ro_spine holds the last two nodes read, an
    insert's shadow_spine the last two shadowed, released front to back when it ends (or
    an exception leaves it)."""

    def __init__(self, tm: Transaction, value_size: int, root: int | None = None) -> None:
        self.tm = tm
        self.vs = value_size
        if root is None:
            root = tm.new_block("node")
            n = NodeBuf(tm.blocks[root], value_size)
            n.set_type(leaf=True)
            n.set_nr(0)
            n.set_max()
            n.set_value_size()
            tm.put(root)
        self.root = root

    def lookup(self, key: int) -> bytes | None:
        tm = self.tm
        if tm.cache is None:
            return self._lookup(key, None)
        spine: list[int] = []
        try:
            return self._lookup(key, spine)
        finally:
            for b in spine:
                tm.put(b)

    def _lookup(self, key: int, spine: list[int] | None) -> bytes | None:
        b = self.root
        while True:
            if spine is not None:
                # ro_spine::step
                self.tm.get(b)
                spine.append(b)
                if len(spine) > 2:
                    self.tm.put(spine.pop(0))
            n = NodeBuf(self.tm.blocks[b], self.vs)
            i = n.lower_bound(key)
            if n.is_leaf():
                return n.value(i) if i >= 0 and n.key(i) == key else None
            if i < 0:
                return None
            b = struct.unpack_from("<Q", n.buf, NodeBuf(n.buf, 8).vp(i))[0]

    def insert(self, key: int, value: bytes, on_shared_leaf=None) -> bool:
        """btree::insert: True when the key is new.  ``on_shared_leaf(values)`` takes the
        extra references a shared leaf's values need when it is copied (inc_children)."""
        tm = self.tm
        spine: list[int] = []  # shadow_spine: the path of shadowed blocks
        if tm.cache is None:
            return self._insert(key, value, on_shared_leaf, spine, None)
        held: list[int] = []  # its write_refs: the last two
        try:
            return self._insert(key, value, on_shared_leaf, spine, held)
        finally:
            for b in held:
                tm.put(b)

    def _step(self, held: list[int], b: int) -> None:
        # shadow_spine::step(write_ref): the spine keeps two references
        held.append(b)
        if len(held) > 2:
            self.tm.put(held.pop(0))

    def _insert(self, key, value, on_shared_leaf, spine, held) -> bool:
        tm = self.tm
        block = self.root
        top = True
        i = -1
        while True:
            b, inc = tm.shadow(block)
            spine.append(b)
            if held is not None:
                self._step(held, b)
            if inc:
                self._inc_children(b, on_shared_leaf)
            if len(spine) > 1:
                p = NodeBuf(tm.blocks[spine[-2]], 8)
                struct.pack_into("<Q", p.buf, p.vp(i), b)
            else:
                self.root = b
            node = NodeBuf(tm.blocks[b], 8)
            vs = 8 if not node.is_leaf() else self.vs
            if NodeBuf(tm.blocks[b], vs).nr == NodeBuf(tm.blocks[b], vs).max:
                if top:
                    self._split_beneath(spine, held, key, vs)
                else:
                    self._split_sibling(spine, held, i, key, vs)
            node = NodeBuf(tm.blocks[spine[-1]], 8)
            i = node.lower_bound(key)
            if node.is_leaf():
                break
            if i < 0:
                node.set_key(0, key)
                i = 0
            block = struct.unpack_from("<Q", node.buf, node.vp(i))[0]
            top = False
        leaf = NodeBuf(tm.blocks[spine[-1]], self.vs)
        if i < 0 or leaf.key(i) != key:
            i += 1
        if i >= leaf.nr or leaf.key(i) != key:
            leaf.insert_at(i, key, value)
            return True
        leaf.overwrite(i, key, value)
        return False

    def remove(self, key: int) -> None:
        """btree::remove, for a tree that is one leaf (all a restore's metadata reference
        count tree ever holds)."""
        b, _inc = self.tm.shadow(self.root)
        try:
            self.root = b
            leaf = NodeBuf(self.tm.blocks[b], self.vs)
            if not leaf.is_leaf():
                raise ToolError("thinsim: removing from a multi-level btree is not simulated")
            i = leaf.lower_bound(key)
            if i < 0 or leaf.key(i) != key:
                return
            n = leaf.nr
            buf = leaf.buf
            buf[leaf.kp(i) : leaf.kp(n - 1)] = buf[leaf.kp(i + 1) : leaf.kp(n)]
            buf[leaf.vp(i) : leaf.vp(n - 1)] = buf[leaf.vp(i + 1) : leaf.vp(n)]
            leaf.set_nr(n - 1)
        finally:
            self.tm.put(b)

    def _inc_children(self, b: int, on_shared_leaf) -> None:
        node = NodeBuf(self.tm.blocks[b], 8)
        if not node.is_leaf():
            for j in range(node.nr):
                self.tm.sm.inc(struct.unpack_from("<Q", node.buf, node.vp(j))[0])
        elif on_shared_leaf is not None:
            leaf = NodeBuf(self.tm.blocks[b], self.vs)
            on_shared_leaf([leaf.value(j) for j in range(leaf.nr)])

    def _split_beneath(self, spine: list[int], held: list[int], key: int, vs: int) -> None:
        tm = self.tm
        # btree.tcc: split_beneath sets each new node's header as it gets it, so a right
        # node the metadata has no room for leaves the left one's header written
        left = tm.new_block("node")
        try:
            l = NodeBuf(tm.blocks[left], vs)
            l.set_nr(0)
            l.set_max()
            l.set_value_size()
            right = tm.new_block("node")
        except ToolError:
            tm.put(left)
            raise
        r = NodeBuf(tm.blocks[right], vs)
        r.set_nr(0)
        r.set_max()
        r.set_value_size()
        p = NodeBuf(tm.blocks[spine[-1]], vs)
        nr_left = p.nr // 2
        nr_right = p.nr - nr_left
        leaf = p.is_leaf()
        l.set_type(leaf)
        l.copy_entries(p, 0, nr_left)
        r.set_type(leaf)
        r.copy_entries(p, nr_left, nr_left + nr_right)
        q = NodeBuf(tm.blocks[spine[-1]], 8)
        q.set_type(leaf=False)
        q.set_max()
        q.set_nr(2)
        q.set_value_size()
        q.overwrite(0, l.key(0), struct.pack("<Q", left))
        q.overwrite(1, r.key(0), struct.pack("<Q", right))
        child = left if key < r.key(0) else right
        spine.append(child)
        if held is not None:
            tm.cache.copy(child)
            self._step(held, child)
            tm.put(right)
            tm.put(left)

    def _split_sibling(self, spine, held, parent_index: int, key: int, vs: int) -> None:
        tm = self.tm
        left = spine[-1]
        l = NodeBuf(tm.blocks[left], vs)
        right = tm.new_block("node")
        r = NodeBuf(tm.blocks[right], vs)
        nr_left = l.nr // 2
        nr_right = l.nr - nr_left
        r.set_nr(0)
        r.set_max()
        r.set_type(l.is_leaf())
        r.set_value_size()
        r.copy_entries(l, nr_left, nr_left + nr_right)
        l.set_nr(nr_left)
        p = NodeBuf(tm.blocks[spine[-2]], 8)
        p.overwrite(parent_index, l.key(0), struct.pack("<Q", left))
        p.insert_at(parent_index + 1, r.key(0), struct.pack("<Q", right))
        if key >= r.key(0):
            spine.pop()
            spine.append(right)
            if held is not None:
                # spine.pop(), then step(right)
                tm.put(held.pop())
                tm.cache.copy(right)
                self._step(held, right)
        tm.put(right)


class DataSpaceMap:
    """sm_disk over a btree_index_store: the data device's counts."""

    def __init__(self, tm: Transaction) -> None:
        self.tm = tm
        self.index = BTree(tm, 16)
        self.ref_counts = BTree(tm, 4)
        self.nr_blocks = 0
        self.nr_allocated = 0
        # the counts of the blocks in use only: the data device may be any size (an XML's
        # nr_data_blocks="2000000000000" runs the metadata out while extending, as in C++)
        self.counts: dict[int, int] = {}
        self.ies: list[list[int]] = []  # [blocknr, nr_free, none_free_before]

    def extend(self, extra: int) -> None:
        nr_blocks = (self.nr_blocks + extra) & U64
        count = _div_up(nr_blocks, ENTRIES_PER_BLOCK)
        old = _div_up(self.nr_blocks, ENTRIES_PER_BLOCK)
        for i in range(old, count):
            b = self.tm.new_block("bitmap")
            try:
                nr_free = (nr_blocks - ENTRIES_PER_BLOCK * i if i == count - 1
                           else ENTRIES_PER_BLOCK)  # fmt: skip
                self.ies.append([b, nr_free, 0])
                self._save_ie(i)
            finally:
                # the bitmap's write_ref lives to the end of the iteration
                self.tm.put(b)
        self.nr_blocks = nr_blocks

    def _save_ie(self, i: int) -> None:
        self.index.insert(i, struct.pack("<QII", *self.ies[i]))

    def get(self, b: int) -> int:
        c = self.counts.get(b, 0)
        if c == 3:
            # sm_disk::lookup_ref_count: an insert that failed (the metadata ran out) left
            # the bitmap saying 3 with no count in the tree
            v = self.ref_counts.lookup(b)
            if v is None:
                raise ToolError("ref count not in tree")
            return struct.unpack("<I", v)[0]
        return c

    def _insert_bitmap(self, i: int, bit: int, old: int, c: int) -> None:
        # bitmap::insert: the bitmap shadowed (its own count asked of the metadata space
        # map), changed, released
        tm = self.tm
        bm = self.ies[i][0]
        if tm.cache is not None:
            tm.sm.get(bm)
            tm.cache.get(bm, 1)
        ie = self.ies[i][1:]
        _bitmap_ie(ie, bit, old, c)
        self.ies[i][1:] = ie
        if tm.cache is not None:
            tm.cache.put(bm)

    def inc(self, b: int) -> None:
        """sm_disk::inc through modify_count."""
        i, bit = divmod(b, ENTRIES_PER_BLOCK)
        if i >= len(self.ies):
            # btree_index_store::find_ie: a data device so large its bitmap count wrapped
            raise ToolError("Couldn't lookup bitmap")
        tm = self.tm
        if tm.cache is not None:
            # find_ie (a lookup in the index tree), then bitmap::lookup
            self.index.lookup(i)
            tm.get(self.ies[i][0])
            tm.put(self.ies[i][0])
        stored = self.counts.get(b, 0)
        old = self.get(b)
        c = old + 1
        if c > 2:
            if old < 3:
                self._insert_bitmap(i, bit, stored, 3)
                self.counts[b] = 3
                self._save_ie(i)
            self.ref_counts.insert(b, struct.pack("<I", c))
        else:
            self._insert_bitmap(i, bit, old, c)
            self.counts[b] = c
            self._save_ie(i)
        if old == 0:
            self.nr_allocated += 1

    def root(self) -> bytes:
        data = struct.pack(
            "<QQQQ", self.nr_blocks, self.nr_allocated, self.index.root, self.ref_counts.root
        )
        return data + bytes(128 - len(data))


def _div_up(n: int, d: int) -> int:
    # base/math_utils.h: div_up in uint64_t, whose n + d - 1 wraps: an XML's
    # nr_data_blocks="-1" (2^64 - 1) gets no bitmaps at all
    return ((n + d - 1) & U64) // d


def bitmap_block(counts, start: int, n: int) -> bytearray:
    buf = bytearray(MD_BLOCK_SIZE)
    for e in range(n):
        c = counts[start + e]
        if c:
            bit = 2 * e
            if c & 2:
                buf[16 + (bit >> 3)] |= 1 << (bit & 7)
            if c & 1:
                buf[16 + ((bit + 1) >> 3)] |= 1 << ((bit + 1) & 7)
    return buf


class MetadataWriter:
    """metadata(bm, CREATE) plus the restore emitter's edits; ``blocks()`` at the end."""

    def __init__(self, nr_blocks: int, traced: bool = False) -> None:
        tm = Transaction(nr_blocks)
        self.tm = tm
        self.data_sm = None
        if traced:
            from .block_cache import BlockCache

            tm.cache = BlockCache(nr_blocks, self.content)
        sm = tm.sm
        # create_metadata_sm: the index block, the ref count tree, then the bitmaps (all
        # allocated from the core space map, whose counts are then copied in)
        self.md_index = tm.new_block("index")
        tm.put(self.md_index)
        self.md_ref_counts = BTree(tm, 4)
        sm.ref_tree = self.md_ref_counts
        for i in range(-(-nr_blocks // ENTRIES_PER_BLOCK)):
            sm.bitmaps.append(tm.new_block("bitmap"))
            tm.put(sm.bitmaps[-1])
        sm.entries = []
        for i in range(len(sm.bitmaps)):
            last = i == len(sm.bitmaps) - 1
            sm.entries.append([nr_blocks - ENTRIES_PER_BLOCK * i if last else ENTRIES_PER_BLOCK, 0])
        # create_metadata_sm commits here: the index block holds these entries until the
        # restore's own commit
        self._commit_ies()
        self._superblock = None
        used = [b for b in range(nr_blocks) if sm.counts[b]]
        core = {b: sm.counts[b] for b in used}
        sm.counts = bytearray(nr_blocks)
        sm.nr_allocated = 0
        # copy_space_maps: the counts set through the disk space map (whose bitmaps the
        # transaction manager, still on the core map, shadows without asking it)
        sm.disk = True
        for b in used:
            sm.set(b, core[b])
        sm.tm_core = False
        self.data_sm = DataSpaceMap(tm)
        self.details = BTree(tm, 24)
        self.mappings = BTree(tm, 8)  # the top level: thin id -> mapping tree root
        self.sb = Superblock(version=1)
        self.sb.metadata_nr_blocks = nr_blocks
        self.sb.metadata_block_size = 8

    def commit(self) -> None:
        sb = self.sb
        sb.data_mapping_root = self.mappings.root
        sb.device_details_root = self.details.root
        sb.data_space_map_root = self.data_sm.root()
        sm = self.tm.sm
        root = struct.pack("<QQQQ", sm.nr_blocks, sm.nr_allocated, self.md_index,
                           self.md_ref_counts.root)  # fmt: skip
        sb.metadata_space_map_root = root + bytes(128 - len(root))
        self._commit_ies()
        self._superblock = sb.pack()

    def _commit_ies(self) -> None:
        """metadata_index_store::commit_ies: the index block shadowed (a shadow since it
        was made) and the entries written into it."""
        tm = self.tm
        tm.sm.get(self.md_index)
        tm.get(self.md_index, 1)
        self._index_entries = [list(e) for e in tm.sm.entries]
        tm.put(self.md_index)

    def content(self, b: int) -> bytes:
        """Block ``b`` as the C++ holds it now, sealed by its validator (what the block
        cache writes back)."""
        tm = self.tm
        kind = tm.kinds.get(b)
        if kind == "node":
            block = bytearray(tm.blocks[b])
            struct.pack_into("<Q", block, 8, b)
            struct.pack_into("<I", block, 0, bm_checksum(bytes(block[4:]), BTREE_CSUM_XOR))
            return bytes(block)
        sm = tm.sm
        if b in sm.bitmaps:
            i = sm.bitmaps.index(b)
            start = i * ENTRIES_PER_BLOCK
            n = min(ENTRIES_PER_BLOCK, sm.nr_blocks - start)
            return _seal(bitmap_block(sm.counts, start, n), b, BITMAP_CSUM_XOR)
        for i, ie in enumerate(self.data_sm.ies if self.data_sm is not None else ()):
            if ie[0] == b:
                d = self.data_sm
                start = i * ENTRIES_PER_BLOCK
                counts = bytearray(ENTRIES_PER_BLOCK)
                for k, c in d.counts.items():
                    if start <= k < start + ENTRIES_PER_BLOCK:
                        counts[k - start] = c
                n = min(ENTRIES_PER_BLOCK, d.nr_blocks - start)
                return _seal(bitmap_block(counts, 0, n), b, BITMAP_CSUM_XOR)
        if b == self.md_index:
            index = bytearray(MD_BLOCK_SIZE)
            for i, (nr_free, nfb) in enumerate(self._index_entries):
                struct.pack_into("<QII", index, 16 + 16 * i, sm.bitmaps[i], nr_free, nfb)
            return _seal(index, b, INDEX_CSUM_XOR)
        raise AssertionError(f"thinsim: no content for block {b} ({kind})")

    def blocks(self) -> dict[int, bytes]:
        """Every block the transaction wrote, sealed by its validator."""
        tm = self.tm
        sm = tm.sm
        out: dict[int, bytes] = {}
        for b, buf in tm.blocks.items():
            kind = tm.kinds[b]
            if kind == "node":
                block = bytearray(buf)
                struct.pack_into("<Q", block, 8, b)
                struct.pack_into("<I", block, 0, bm_checksum(bytes(block[4:]), BTREE_CSUM_XOR))
                out[b] = bytes(block)
        for i, b in enumerate(sm.bitmaps):
            start = i * ENTRIES_PER_BLOCK
            out[b] = _seal(bitmap_block(sm.counts, start, min(ENTRIES_PER_BLOCK,
                                                              sm.nr_blocks - start)),
                           b, BITMAP_CSUM_XOR)  # fmt: skip
        d = self.data_sm
        dense: dict[int, bytearray] = {}
        for b, c in d.counts.items():
            i, e = divmod(b, ENTRIES_PER_BLOCK)
            dense.setdefault(i, bytearray(ENTRIES_PER_BLOCK))[e] = c
        for i, ie in enumerate(d.ies):
            start = i * ENTRIES_PER_BLOCK
            counts = dense.get(i, bytes(ENTRIES_PER_BLOCK))
            out[ie[0]] = _seal(bitmap_block(counts, 0, min(ENTRIES_PER_BLOCK,
                                                           d.nr_blocks - start)),
                               ie[0], BITMAP_CSUM_XOR)  # fmt: skip
        index = bytearray(MD_BLOCK_SIZE)
        for i, (nr_free, nfb) in enumerate(self._index_entries):
            struct.pack_into("<QII", index, 16 + 16 * i, sm.bitmaps[i], nr_free, nfb)
        out[self.md_index] = _seal(index, self.md_index, INDEX_CSUM_XOR)
        if self._superblock is not None:
            out[0] = self._superblock
        return out


def _seal(buf: bytearray, b: int, xor: int) -> bytes:
    struct.pack_into("<Q", buf, 8, b)
    struct.pack_into("<I", buf, 0, bm_checksum(bytes(buf[4:]), xor))
    return bytes(buf)
