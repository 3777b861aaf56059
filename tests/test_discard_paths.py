"""Discards take faster paths than the kernel's steps one at a time (reading a mapped run
from the leaves, the top-level tree's removal and re-insertion skipped where it changes
nothing but a value, each removal walk inline, a range's counts changed in one call); they
must leave exactly what those steps leave: every metadata block's bytes, the space maps'
counts, the data blocks given out later, the log."""

import contextlib
import hashlib

import pytest
from helpers import GiB, MiB, make_pool, make_thin
from hypothesis import given, settings
from hypothesis import strategies as st

from thinsim.errors import ThinsimError
from thinsim.model import pool
from thinsim.model.btree import BTreeInfo, _Spine
from thinsim.model.disk import metadata_blocks
from thinsim.model.metadata import TIME_BITS, TIME_MASK, PoolMetadata
from thinsim.model.store import AccountingStore
from thinsim.model.thin import Thin

# add_many in C and in Python (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("add_many_both_ways")

BLOCK = 64 * 1024


# -- the kernel's steps, one at a time (the model before the fast paths) ---------------------


def _remove_range(self, td, begin, end):
    """__remove_range: dm_tm_inc, dm_btree_remove, the leaves, dm_btree_insert."""
    self.in_service = True
    key = (td.id,)
    mapping_root = self.tl_info.lookup(self.root, key)
    self.tm.inc(mapping_root)
    self.root = self.tl_info.remove(self.root, key)
    total = 0
    bl = self.bl_info
    while begin < end:
        nxt = bl.lookup_next_single(mapping_root, begin)
        if nxt is None:
            break
        begin = nxt[0]
        if begin >= end:
            break
        mapping_root, begin, count = bl.remove_leaves(mapping_root, begin, end)
        total += count
    td.mapped_blocks -= total
    td.changed = True
    self.root, _ = self.tl_info.insert(self.root, key, mapping_root)
    return total


def _find_mapped_range(self, td, begin, end):
    """__find_mapped_range: __find_block for each next block."""
    root = self.tl_info.lookup(self.root, (td.id,))
    nxt = self.bl_info.lookup_next_single(root, begin)
    if nxt is None or nxt[0] >= end:
        return None
    begin, value = nxt
    data_begin = value >> TIME_BITS
    shared = td.snapshotted_time > (value & TIME_MASK)
    virt_end = begin + 1
    while virt_end < end:
        r = self.lookup(td, virt_end)
        if r is None or r[1] != shared or r[0] != data_begin + (virt_end - begin):
            break
        virt_end += 1
    return begin, virt_end, data_begin, shared


def _take_leftmost_runs(self, td, begin, end):
    return None


def _remove_leaves(self, root, first_key, end_key):
    """dm_btree_remove_leaves: remove_one (remove_nearest) for each key."""
    removed = 0
    key = first_key
    vt = self.value_type
    while True:
        spine = _Spine()
        index = self._remove_nearest(spine, root, vt, key, 0)
        root = spine.root
        node = spine.node
        index = max(index, 0)
        if index >= len(node.keys):
            break
        k = node.keys[index]
        if key <= k < end_key:
            if vt.dec is not None:
                vt.dec((node.values[index],))
            del node.keys[index]
            del node.values[index]
            key = k + 1
            removed += 1
        else:
            break
    return root, key, removed


def _shadow_child(self, parent, index, vt):
    nb, node = self._shadow(parent.values[index], vt)
    parent.values[index] = nb
    return nb, node


def _data_block_dec(self, values):
    self.data_sm.dec_many([v >> TIME_BITS for v in values])


def _discard_blocks(self, td, begin, end):
    """break_up_discard_bio and the passdown, a block's count at a time."""
    pmd = self.pmd
    if not self.pf.discard_passdown:
        pmd.remove_range(td, begin, end)
        return
    bb = self.block_bytes
    data_sm = pmd.data_sm
    pinned = []
    while begin < end:
        run = pmd.find_mapped_range(td, begin, end)
        if run is None:
            break
        vb, ve, db, maybe_shared = run
        de = db + (ve - vb)
        pmd.remove_range(td, vb, ve)
        for b in range(db, de):
            data_sm.inc(b)
        pinned.append((db, de))
        b = db
        while b < de:
            if maybe_shared:
                while b < de and data_sm.get_count(b) > 1:
                    b += 1
                if b == de:
                    break
                e = b + 1
                while e < de and data_sm.get_count(e) <= 1:
                    e += 1
            else:
                e = de
            self.store.discard(b * bb, (e - b) * bb)
            b = e
        begin = ve
    for db, de in pinned:
        for b in range(db, de):
            data_sm.dec(b)


@contextlib.contextmanager
def _one_at_a_time():
    saved = [
        (PoolMetadata, "remove_range", _remove_range),
        (PoolMetadata, "find_mapped_range", _find_mapped_range),
        (PoolMetadata, "_data_block_dec", _data_block_dec),
        (BTreeInfo, "remove_leaves", _remove_leaves),
        (BTreeInfo, "_shadow_child", _shadow_child),
        (pool.Pool, "_discard_blocks", _discard_blocks),
        (PoolMetadata, "take_leftmost_runs", _take_leftmost_runs),
    ]
    old = [(cls, name, cls.__dict__[name]) for cls, name, _ in saved]
    try:
        for cls, name, fn in saved:
            setattr(cls, name, fn)
        yield
    finally:
        for cls, name, fn in old:
            setattr(cls, name, fn)


# -- the comparison ---------------------------------------------------------------------------


def make_thin_open(p, dev, size=GiB):
    return Thin(p, dev, size // 512)


def _run(ops, features, data=512 * MiB, size=GiB):
    """The ops on a pool of ``data`` bytes, thins of ``size`` (a larger pool keeps no
    payload); everything a discard may change, as a tuple."""
    store = AccountingStore() if data > 512 * MiB else None
    p = make_pool(data=data, md=8 * MiB, features=features, store=store)
    nblocks = size // BLOCK
    discards = []
    real = p.store.discard
    p.store.discard = lambda off, n: (discards.append((off, n)), real(off, n))
    thins = {0: make_thin(p, 0, size)}
    outcome = []
    commits = []  # at each commit, what it wrote (a later change may hide it)
    for op in ops:
        kind = op[0]
        try:
            if kind == "write":
                _, dev, block, n, small = op
                th = thins[dev % len(thins)]
                if small:
                    for i in range(n):
                        th.write((block + 7 * i) % nblocks * BLOCK + 4096, b"\x01" * 4096)
                else:
                    th.write(block * BLOCK, bytes(n * BLOCK))
            elif kind == "snap":
                origin = sorted(thins)[op[1] % len(thins)]
                new = max(thins) + 1
                p.message(f"create_snap {new} {origin}")
                thins[new] = make_thin_open(p, new, size)
            elif kind == "thin":
                new = max(thins) + 1
                thins[new] = make_thin(p, new, size)
            elif kind == "discard":
                _, dev, block, n = op
                thins[dev % len(thins)].discard(block * BLOCK, n * BLOCK)
            else:
                commits.append(_kept(p))
                p.commit()
                commits.append(_digest(p))
            outcome.append(None)
        except ThinsimError as e:
            outcome.append(e.errno)
    commits.append(_kept(p))
    p.commit()
    nodes = sorted(
        (b, n.leaf, tuple(n.keys), tuple(n.values))
        for b, n in p.pmd.tm.blocks.items()
        if hasattr(n, "keys")
    )
    # the next data blocks given out: where the cursors and the counts left them
    after = make_thin_open(p, 0, size)
    try:
        after.write((nblocks - 1) * BLOCK, bytes(BLOCK))
    except ThinsimError:
        pass
    return (
        outcome,
        p.status(),
        metadata_blocks(p.pmd),
        nodes,
        p.pmd.metadata_sm.ll.counts(),
        p.pmd.data_sm.ll.counts(),
        p.pmd.lookup(after.td, nblocks - 1),
        discards,
        p.log.lines,
        commits,
    )


def _kept(p):
    """The last commit's counts kept for the blocks changed since (what an abort
    restores)."""
    return dict(p.pmd.data_sm.ll.old.items()), dict(p.pmd.metadata_sm.ll.old.items())


def _digest(p):
    blocks = metadata_blocks(p.pmd)
    return hashlib.sha256(b"".join(blocks[b] for b in sorted(blocks))).hexdigest()


_op = st.one_of(
    st.tuples(
        st.just("write"),
        st.integers(0, 7),
        st.integers(0, 16000),
        st.integers(1, 700),
        st.booleans(),
    ),
    st.tuples(st.just("snap"), st.integers(0, 7)),
    st.tuples(st.just("discard"), st.integers(0, 7), st.integers(0, 16000), st.integers(1, 4000)),
    st.tuples(st.just("thin")),
    st.tuples(st.just("commit")),
)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(_op, min_size=1, max_size=14),
    features=st.sampled_from([(), ("no_discard_passdown",), ("skip_block_zeroing",)]),
)
def test_discards_leave_the_metadata_and_block_numbers_the_kernels_steps_one_at_a_time_leave(
    ops, features
):
    fast = _run(ops, features)
    with _one_at_a_time():
        slow = _run(ops, features)
    assert fast == slow


def test_a_whole_thin_discarded_after_snapshots_matches_block_by_block_steps():
    """The Docker case: a device sharing long runs with its origin and holding many
    one-block runs of its own (random 4 KiB writes), discarded whole."""
    ops = [("write", 0, 0, 3600, False), ("snap", 0), ("commit",)]
    ops += [("write", 1, (i * 2654435761) % 16000, 40, True) for i in range(60)]
    ops += [("commit",), ("discard", 1, 0, 16384), ("commit",), ("discard", 0, 100, 3000)]
    fast = _run(ops, ())
    with _one_at_a_time():
        slow = _run(ops, ())
    assert fast == slow
    assert len(fast[7]) > 1000  # the one-block runs were passed down one by one


def test_a_discard_of_an_origin_whose_tree_a_snapshot_shares_matches_the_kernels_steps():
    """The top level already shadowed in the transaction (a write to another thin), the
    origin's mapping root still shared with its snapshot: the kernel's dm_tm_inc takes
    its count to 3, into the reference-count tree (shadowing it) and out again, so no
    step may be skipped."""
    ops = [("write", 0, 0, 600, False), ("snap", 0), ("thin",), ("commit",)]
    ops += [("write", 2, 9000, 1, True)]
    ops += [("discard", 0, 10, 300), ("discard", 0, 400, 20), ("commit",)]
    fast = _run(ops, ())
    with _one_at_a_time():
        slow = _run(ops, ())
    assert fast == slow


def test_the_reference_steps_are_the_ones_replaced():
    """The one-at-a-time functions stand in for exactly the model's functions they
    replace (a rename would leave the comparison comparing a path with itself)."""
    for cls, name in (
        (PoolMetadata, "remove_range"),
        (PoolMetadata, "find_mapped_range"),
        (PoolMetadata, "_data_block_dec"),
        (BTreeInfo, "remove_leaves"),
        (BTreeInfo, "_shadow_child"),
        (pool.Pool, "_discard_blocks"),
        (PoolMetadata, "take_leftmost_runs"),
    ):
        assert name in cls.__dict__


# -- whole devices discarded from their start (Docker's dm.blkdiscard) -------------------------


@contextlib.contextmanager
def _counting():
    """How many times the left-edge steps were taken (a comparison that never takes them
    compares nothing)."""
    taken = {"runs": 0, "walks": 0, "levels": 0}
    runs = PoolMetadata.take_leftmost_runs
    pair = BTreeInfo.leftmost_pair

    def count_runs(self, td, begin, end):
        r = runs(self, td, begin, end)
        taken["runs"] += r is not None
        return r

    def count_pairs(self, root, key):
        r = pair(self, root, key)
        if r is not None:
            taken["walks"] += 1
            node, levels = self.tm.read(root), 1
            while not node.leaf:
                node, levels = self.tm.read(node.values[0]), levels + 1
            taken["levels"] = max(taken["levels"], levels)
        return r

    PoolMetadata.take_leftmost_runs = count_runs
    BTreeInfo.leftmost_pair = count_pairs
    try:
        yield taken
    finally:
        PoolMetadata.take_leftmost_runs = runs
        BTreeInfo.leftmost_pair = pair


_from_start = st.one_of(
    st.tuples(
        st.just("write"),
        st.integers(0, 7),
        st.integers(0, 16000),
        st.integers(1, 900),
        st.booleans(),
    ),
    st.tuples(st.just("snap"), st.integers(0, 7)),
    st.tuples(
        st.just("discard"),
        st.integers(0, 7),
        st.sampled_from([0, 0, 0, 1, 2, 300]),
        st.integers(1, 16384),
    ),
    st.tuples(st.just("thin")),
    st.tuples(st.just("commit")),
)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(_from_start, min_size=1, max_size=16),
    features=st.sampled_from([(), ("no_discard_passdown",), ("skip_block_zeroing",)]),
)
def test_discards_from_a_devices_start_leave_what_the_kernels_steps_one_at_a_time_leave(
    ops, features
):
    """Discards from block 0 (or near it): the left-edge steps (several runs' walks at
    once, a run's walks at once, a run's decrements and pin in place) where they apply."""
    fast = _run(ops, features)
    with _one_at_a_time():
        slow = _run(ops, features)
    assert fast == slow


def test_a_docker_container_discarded_whole_takes_the_left_edge_steps_and_matches():
    """A snapshot with random 4 KiB writes of its own (one-block runs) among long runs it
    shares, discarded from its start after a commit and again within one transaction."""
    ops = [("write", 0, 0, 3000, False), ("snap", 0), ("commit",), ("snap", 1), ("commit",)]
    ops += [("write", 2, (i * 2654435761) % 16000, 50, True) for i in range(50)]
    # discards that end inside the leaves the last step took, after a commit and not
    ops += [("commit",), ("discard", 2, 0, 1234), ("commit",), ("discard", 2, 0, 2222)]
    for n in range(2300, 3000, 50):
        ops += [("discard", 2, 0, n), ("commit",)]
    ops += [("discard", 2, 0, 16384), ("discard", 1, 0, 16384), ("commit",)]
    ops += [("write", 0, 5000, 40, True), ("discard", 0, 0, 16384)]
    with _counting() as taken:
        fast = _run(ops, ())
    with _one_at_a_time():
        slow = _run(ops, ())
    assert fast == slow
    assert fast[0] == [None] * len(ops)
    assert taken["runs"] > 10 and taken["walks"] > 10


def test_a_three_level_mapping_tree_discarded_from_its_start_matches_the_kernels_steps():
    """More than 252 leaves (a 9 GiB thin written whole): the leftmost path has an
    internal node above the leaves' parent, whose rebalance must change nothing."""
    size = 9 * GiB
    blocks = size // BLOCK
    ops = [("write", 0, b, 2048, False) for b in range(0, blocks, 2048)]
    ops += [("snap", 0), ("commit",)]
    ops += [("write", 1, (i * 2654435761) % blocks, 40, True) for i in range(40)]
    ops += [("discard", 1, 0, blocks // 3), ("commit",), ("discard", 1, 0, blocks)]
    ops += [("commit",), ("discard", 0, 0, blocks // 2)]
    with _counting() as taken:
        fast = _run(ops, (), data=size + GiB, size=size)
    with _one_at_a_time():
        slow = _run(ops, (), data=size + GiB, size=size)
    assert fast == slow
    assert fast[0] == [None] * len(ops)  # every step done
    assert taken["runs"] > 10 and taken["walks"] > 10
    assert taken["levels"] == 3
