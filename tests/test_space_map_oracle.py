"""The reference counts kept a bitmap at a time give what e4b6105's one byte a block gave:
the same counts, the same blocks allocated in the same order (next fit from the cursor,
bitmap by bitmap), the same metadata blocks, on random workloads.

The oracle is e4b6105's LowLevel, kept here verbatim (a ``bytearray`` the size of the
device) but for one fix: its rollback made the committed list of bitmap blocks the live
one, so a second abort without a commit between went back to bitmaps shadowed in the
aborted transaction (the kernel re-reads the last commit: see the last test).  A
PoolMetadata built with it (and without the bulk path that extends the data space map a
run of bitmaps at a time) must agree with one built with the model's.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinsim.model import space_map
from thinsim.model.btree import BTreeInfo, Node, ValueType
from thinsim.model.metadata import PoolMetadata
from thinsim.model.space_map import ENTRIES_PER_BITMAP, IE_CACHE_SIZE, NoSpace, _Block

# add_many in C and in Python (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("add_many_both_ways")

# -- e4b6105's space map low level, verbatim but for the names -------------------------


class OldLowLevel:
    """e4b6105's struct ll_disk: one byte a block in one bytearray for the whole device."""

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

    def counts(self) -> dict[int, int]:
        return {b: self.get_count(b) for b, c in enumerate(self.bits) if c}

    def add_many(self, blocks, delta: int, shift: int = 0) -> None:
        """e4b6105's DiskSpaceMap.inc_many and dec_many: one set_count a block (each
        item shifted right by ``shift``: a mapping leaf's values)."""
        for v in blocks:
            b = int(v) >> shift
            self.set_count(b, self.get_count(b) + delta)

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

    def alloc_run(self, begin: int, limit: int, first: int | None = None) -> tuple[int, int]:
        """Allocate up to ``limit`` blocks as next fit would one by one: the first free
        block from ``begin`` (wrapping; ``first`` where the caller found it), then the free
        blocks right after it, stopping at a used block or a bitmap boundary.  Returns
        (first block, count)."""
        if first is not None:
            b = first
        else:
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
        for k in range(b, end):
            self.old.setdefault(k, 0)  # free at the last commit, whatever comes next
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
        self.bitmaps = list(bitmaps)  # (the one change: see below)
        self.ref_root = ref_root
        self.old.clear()
        self.old_runs.clear()
        return changed


class OldDiskLowLevel(OldLowLevel):
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

    def new_in_place(self, begin: int) -> None:
        # the one-step allocation (DiskSpaceMap.new_block's fast case) is the new code's:
        # the oracle always takes find_common_free and set_count
        return None

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


# The btree reads a count of 1 inline from ``ll.maps`` (one bytearray a bitmap): the
# oracle's one bytearray is its only "bitmap".
OldLowLevel.ENTRIES_PER_BITMAP = 1 << 62
OldLowLevel.maps = property(lambda self: [self.bits])


# -- the differential ---------------------------------------------------------------------


def _metadata(oracle: bool, nr_md_blocks: int, nr_data_blocks: int) -> PoolMetadata:
    with pytest.MonkeyPatch.context() as mp:
        if oracle:
            mp.setattr(space_map, "LowLevel", OldLowLevel)
            mp.setattr(space_map, "_DiskLowLevel", OldDiskLowLevel)
        pmd = PoolMetadata(nr_md_blocks, 128)
        pmd.resize_data_dev(nr_data_blocks)
        for dev in (0, 1):
            pmd.create_thin(dev)
        pmd.commit()
    assert isinstance(pmd.data_sm.ll, OldDiskLowLevel) == oracle
    return pmd


def _apply(pmd: PoolMetadata, op: tuple):
    """One operation; returns what it gave (blocks allocated, or the exception's type)."""
    kind, a, b = op
    try:
        if kind == "run":
            td = pmd.open_device(a % 2)
            try:
                highest = pmd.highest_mapped(td)
                first, n = pmd.data_sm.new_run(b)
                pmd.append_blocks(td, 0 if highest is None else highest + 1, first, n)
                return first, n
            finally:
                pmd.close_device(td)
        if kind == "one":
            td = pmd.open_device(a % 2)
            try:
                block = pmd.alloc_data_block()
                pmd.insert_block(td, b % 50_000, block)
                return block
            finally:
                pmd.close_device(td)
        if kind == "sweep":
            # copy-on-write over a device's mapped blocks in ascending order, as a day of
            # the capacity planner's churn writes them: each shared leaf shadowed counts
            # its data blocks (add_many), each write drops its old block's count
            td = pmd.open_device(a % 2)
            try:
                highest = pmd.highest_mapped(td)
                step = 1 + b % 7
                out = []
                for vb in range(b % step, -1 if highest is None else highest + 1, step):
                    block = pmd.alloc_data_block()
                    pmd.insert_block(td, vb, block)
                    out.append(block)
                return out
            finally:
                pmd.close_device(td)
        if kind == "snap":
            pmd.create_snap(2 + a % 6, b % 8)
            pmd.commit()  # pool_message commits after each message that succeeds
        elif kind == "delete":
            pmd.delete_thin(a % 8)
            pmd.commit()
        elif kind == "discard":
            td = pmd.open_device(a % 2)
            try:
                return pmd.remove_range(td, b % 50_000, b % 50_000 + 1 + b % 3000)
            finally:
                pmd.close_device(td)
        elif kind == "commit":
            pmd.commit()
        elif kind == "abort":
            pmd.abort()
        elif kind == "cursor":
            pmd.data_sm.begin = b % pmd.data_sm.nr_blocks
        elif kind == "grow":
            pmd.resize_data_dev(pmd.data_sm.nr_blocks + b)
        return None
    except NoSpace:
        # metadata_operation_failed: the transaction is aborted
        pmd.abort()
        return NoSpace
    except (KeyError, FileExistsError, BlockingIOError) as e:
        return type(e)


def _state(pmd: PoolMetadata):
    tm = pmd.tm
    nodes = sorted(
        (b, n.leaf, tuple(n.keys), tuple(n.values))
        for b, n in tm.blocks.items()
        if isinstance(n, Node)
    )
    sm, dsm = pmd.metadata_sm, pmd.data_sm
    return (
        sm.ll.counts(),
        dsm.ll.counts(),
        sm.ll.nr_allocated,
        dsm.ll.nr_allocated,
        list(sm.ll.bitmaps),
        list(dsm.ll.bitmaps),
        sm.index_block,
        dsm.ll.index_root,
        dsm.ll.ref_root,
        sm.ll.ref_root,
        dict(dsm.ll.dirty),
        sm.begin,
        dsm.begin,
        pmd.free_metadata_blocks(),
        pmd.free_data_blocks(),
        pmd.root,
        pmd.details_root,
        nodes,
    )


_ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["run", "run", "one", "one", "snap", "delete", "discard", "commit", "abort"]
            + ["cursor", "grow"]
        ),
        st.integers(0, 7),
        st.integers(1, 40_000),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nr_md_blocks=st.sampled_from([48, 100, 400, 4096]),
    nr_data_blocks=st.sampled_from([1, 1000, ENTRIES_PER_BITMAP, ENTRIES_PER_BITMAP + 1, 40_000]),
    ops=_ops,
)
def test_counts_and_allocation_order_equal_the_one_byte_a_block_implementations(
    nr_md_blocks, nr_data_blocks, ops
):
    pmds = [_metadata(o, nr_md_blocks, nr_data_blocks) for o in (True, False)]
    assert _state(pmds[0]) == _state(pmds[1])
    aborted = False
    for op in ops:
        results = [_apply(pmd, op) for pmd in pmds]
        assert results[0] == results[1], op
        assert _state(pmds[0]) == _state(pmds[1]), op
        aborted |= op[0] == "abort" or results[0] is NoSpace
    if not aborted:
        # (an abort leaves the in-core thin devices as they were, as the kernel does)
        pmds[1]._check()


@settings(max_examples=15, deadline=None)
@given(
    nr_data_blocks=st.integers(1, 600 * ENTRIES_PER_BITMAP),
    grow=st.integers(0, 300 * ENTRIES_PER_BITMAP),
    nr_md_blocks=st.sampled_from([2000, 20_000, 100_000]),
)
def test_a_data_device_extended_a_run_of_bitmaps_at_a_time_is_the_one_extended_one_by_one(
    nr_data_blocks, grow, nr_md_blocks
):
    """The bulk path of _DiskLowLevel.extend against e4b6105's bitmap-by-bitmap loop, up
    to 900 bitmaps (index leaves split and rebalance, metadata bitmaps are crossed, a
    small metadata device runs out)."""
    pmds = []
    for oracle in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            if oracle:
                mp.setattr(space_map, "LowLevel", OldLowLevel)
                mp.setattr(space_map, "_DiskLowLevel", OldDiskLowLevel)
            pmd = PoolMetadata(nr_md_blocks, 128)
        outcome = []
        for n in (nr_data_blocks, nr_data_blocks + grow):
            try:
                pmd.resize_data_dev(n)
                pmd.commit()
                outcome.append(None)
            except NoSpace:
                pmd.abort()
                outcome.append(NoSpace)
        pmds.append((pmd, outcome))
    (old, old_outcome), (new, new_outcome) = pmds
    assert old_outcome == new_outcome
    assert _state(old) == _state(new)
    new._check()


_sweeps = st.lists(
    st.tuples(
        st.sampled_from(["sweep", "sweep", "snap", "snap", "run", "delete", "commit", "abort"]),
        st.integers(0, 7),
        st.integers(1, 12_000),
    ),
    max_size=14,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nr_md_blocks=st.sampled_from([300, 1000, 4096]), ops=_sweeps)
def test_copy_on_write_sweeps_over_many_snapshots_count_as_one_set_count_a_block(nr_md_blocks, ops):
    """Counts of 3 and more in a reference-count btree of many leaves, set by add_many in
    the leaves it keeps from one call to the next (and by set_count there), while other
    writes split, rebalance and remove in the same tree: what e4b6105's one set_count a
    block leaves, metadata running out mid-sweep included."""
    pmds = [_metadata(o, nr_md_blocks, 8 * ENTRIES_PER_BITMAP) for o in (True, False)]
    # three snapshots of a filled device, each followed by a sweep over it: counts of 3
    # and more in a tree of tens of leaves, splitting as its keys come
    prefix = [("run", 0, 12_000)]
    for i in range(4):  # every 7th block written after each snapshot
        prefix += [("snap", i, 0), ("sweep", 0, 6)]
    assert _state(pmds[0]) == _state(pmds[1])
    for op in prefix + ops:
        results = [_apply(pmd, op) for pmd in pmds]
        assert results[0] == results[1], op
        assert _state(pmds[0]) == _state(pmds[1]), op


def test_a_second_abort_without_a_commit_between_goes_back_to_the_last_commit():
    """dm_pool_abort_metadata re-opens the metadata from its superblock each time: the
    bitmaps are where the last commit put them, however many aborts came since."""
    pmd = PoolMetadata(400, 128)
    pmd.resize_data_dev(100)
    pmd.commit()
    ll = pmd.metadata_sm.ll

    def state():
        return list(ll.bitmaps), [ll.get_count(b) for b in range(ll.nr_blocks)]

    committed = state()
    for dev in (1, 2, 3):
        pmd.create_thin(dev)  # shadows the metadata bitmap, among others
        assert list(ll.bitmaps) != committed[0]
        pmd.abort()
        assert state() == committed, f"after abort {dev}"


_keys = st.integers(0, 3 * ENTRIES_PER_BITMAP + 5)
_map_ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["set", "del", "setdefault", "get", "contains", "pop", "drop_from", "clear"]
        ),
        _keys,
        st.integers(0, (1 << 32) - 1),
    ),
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(ops=_map_ops)
def test_counts_kept_in_per_bitmap_arrays_behave_as_the_dicts_they_replace(ops):
    """BigCounts (counts of 3 and more, never 0) and OldCounts (any count, 0 included)
    against a dict: the same answers, keys, items and length after any sequence."""
    for cls, low in ((space_map.BigCounts, 3), (space_map.OldCounts, 0)):
        ref: dict[int, int] = {}
        kept = cls()
        for op, b, c in ops:
            c = max(c, low)
            if op == "set":
                ref[b] = kept[b] = c
            elif op == "del":
                assert (b in ref) == (b in kept)
                if b in ref:
                    del ref[b], kept[b]
            elif op == "setdefault":
                assert kept.setdefault(b, c) == ref.setdefault(b, c)
            elif op == "get":
                assert kept.get(b) == ref.get(b)
            elif op == "contains":
                assert (b in kept) == (b in ref)
            elif op == "pop":
                assert kept.pop(b, None) == ref.pop(b, None)
            elif op == "drop_from" and cls is space_map.BigCounts:
                kept.drop_from(b)
                ref = {k: v for k, v in ref.items() if k < b}
            elif op == "clear":
                kept.clear()
                ref.clear()
            assert len(kept) == len(ref)
        assert list(kept) == sorted(ref)
        assert list(kept.items()) == sorted(ref.items())
        assert kept == ref
