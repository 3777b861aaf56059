"""add_many's C routine (thinsim/model/_space_map.c) leaves what its Python loop, the
reference, leaves: the same counts, old counts, bitmaps, ie cache, reference-count tree
and metadata blocks, and the same failures, for random calls on a data space map --
bitmaps met for the first time and ie-cache slots taken by another bitmap, counts going
1 <-> 2 <-> 3 and up (keys inserted, leaves split, keys removed), counts of 254 and
more, a count going negative, metadata running out mid-call, commits and aborts."""

from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinsim.model import native, space_map
from thinsim.model.btree import Node
from thinsim.model.metadata import TIME_BITS, PoolMetadata
from thinsim.model.space_map import ENTRIES_PER_BITMAP, NoSpace

pytestmark = pytest.mark.skipif(
    space_map._C_RUN is None and not native.disabled(), reason="no C compiler or Python headers"
)

# 70 bitmaps: bitmaps 64 apart share an ie-cache slot
NR_DATA = 70 * ENTRIES_PER_BITMAP


def _pool(nr_md_blocks: int) -> PoolMetadata:
    pmd = PoolMetadata(nr_md_blocks, 128)
    pmd.resize_data_dev(NR_DATA)
    pmd.commit()
    return pmd


def _blocks(runs) -> list[int]:
    """Runs of blocks (first, length, stride) one after the other, as a copied mapping
    leaf's blocks come: a run a day it was written."""
    out = []
    for first, n, stride in runs:
        out.extend((first + k * stride) % NR_DATA for k in range(n))
    return out


def _apply(pmd: PoolMetadata, op, arrays: bool = False) -> object:
    """``arrays``: the blocks given as a copied leaf's are, its values as they are (an
    ``array('Q')`` of block and time) with the shift that gives the blocks."""
    kind, runs, delta = op
    try:
        if kind == "add":
            blocks = _blocks(runs)
            if arrays:
                values = array("Q", ((b << TIME_BITS) | (b % 5) for b in blocks))
                pmd.data_sm.ll.add_many(values, delta, TIME_BITS)
            else:
                pmd.data_sm.ll.add_many(blocks, delta)
        elif kind == "commit":
            pmd.commit()
        elif kind == "abort":
            pmd.abort()
    except NoSpace:
        pmd.abort()
        return NoSpace
    except (ValueError, OverflowError) as e:
        return type(e)
    return None


def _state(pmd: PoolMetadata):
    ll = pmd.data_sm.ll
    tm = pmd.tm
    nodes = sorted(
        (b, n.leaf, tuple(n.keys), tuple(n.values))
        for b, n in tm.blocks.items()
        if isinstance(n, Node)
    )
    return (
        ll.counts(),
        dict(ll.old.items()),
        ll.old.n,
        {i: bytes(c) for i, c in ll.old.codes.items()},
        dict(ll.big),
        ll.big.n,
        ll.nr_allocated,
        list(ll.bitmaps),
        [m is None for m in ll.maps],
        dict(ll.dirty),
        ll.index_root,
        ll.ref_root,
        pmd.metadata_sm.ll.counts(),
        pmd.metadata_sm.begin,
        sorted(tm.shadows),
        nodes,
    )


def _ref_tree_holds_the_big_counts(pmd: PoolMetadata) -> None:
    """The reference-count btree holds exactly the counts of 3 and more, each key in
    the leaf its parents route it to (the walk's keys in order)."""
    ll = pmd.data_sm.ll
    items = list(ll.ref_info.items(ll.ref_root))
    keys = [k for k, _ in items]
    assert keys == sorted(set(keys))
    assert dict(items) == dict(ll.big)
    for k in keys[:: max(1, len(keys) // 50)]:
        assert ll.ref_info.lookup(ll.ref_root, (k,)) == ll.big[k]


def _c_and_python(nr_md_blocks: int) -> list[PoolMetadata]:
    """A pool whose add_many runs in C and one whose runs Python's loop, made alike."""
    pmds = []
    with pytest.MonkeyPatch.context() as mp:
        pmds.append(_pool(nr_md_blocks))
        mp.setattr(space_map, "_C_RUN", None)
        pmds.append(_pool(nr_md_blocks))
    return pmds


def _apply_both(pmds: list[PoolMetadata], op) -> object:
    """``op`` on the C pool and on the Python one: the same result and the same state."""
    results = []
    for k, pmd in enumerate(pmds):
        with pytest.MonkeyPatch.context() as mp:
            if k:
                mp.setattr(space_map, "_C_RUN", None)
            results.append(_apply(pmd, op))
    assert results[0] == results[1], op
    assert _state(pmds[0]) == _state(pmds[1]), op
    return results[0]


_run = st.tuples(
    st.integers(0, NR_DATA - 1),
    st.integers(1, 40),
    st.sampled_from([1, 1, 1, 2, 64 * ENTRIES_PER_BITMAP, ENTRIES_PER_BITMAP - 3]),
)
_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.lists(_run, min_size=1, max_size=8),
            st.sampled_from([1, 1, 1, -1, 2, 120]),
        ),
        st.tuples(st.sampled_from(["commit", "abort"]), st.just(()), st.just(0)),
    ),
    max_size=30,
)


@pytest.fixture(scope="module")
def both():
    """A pool with add_many in C and one with its Python loop, made alike."""
    if space_map._C_RUN is None:
        pytest.skip("THINSIM_NO_C: nothing to compare")
    return space_map._C_RUN


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nr_md_blocks=st.sampled_from([95, 110, 160, 400, 4096]), ops=_ops)
def test_add_many_in_c_leaves_what_the_python_loop_leaves(both, nr_md_blocks, ops):
    pmds = _c_and_python(nr_md_blocks)
    # a start every test shares: blocks in use, shared twice, then three times (counts
    # of 3 in a reference-count tree of several leaves)
    prefix = [("add", [(5, 3000, 1), (ENTRIES_PER_BITMAP * 64 + 7, 500, 1)], 1)]
    prefix += [("commit", (), 0), prefix[0], ("commit", (), 0), prefix[0]]
    for op in prefix + ops:
        _apply_both(pmds, op)
        _ref_tree_holds_the_big_counts(pmds[0])


def test_counts_of_254_and_more_and_a_negative_count_stop_c_where_python_takes_over(both):
    """The blocks C leaves to Python: a count kept in ``OldCounts.over``, a count going
    below 0 (the bytearray refuses it, after the old count was kept), a removal."""
    pmds = _c_and_python(4096)
    ops = [("add", [(100, 50, 1)], 300), ("commit", (), 0), ("add", [(90, 70, 1)], 1)]
    ops += [("add", [(90, 20, 1)], -1), ("add", [(95, 10, 1)], -1), ("add", [(100, 50, 1)], -299)]
    for op in ops:
        result = _apply_both(pmds, op)
    assert result is None
    assert pmds[0].data_sm.ll.get_count(120) == 2


def _writeback_always(self, index: int) -> None:
    """``_DiskLowLevel._writeback`` as the kernel's ie_cache_writeback is written: the
    index entry inserted every time (the reference for the entries known set in place)."""
    self.index_root, _ = self.index_info.insert(self.index_root, (index,), self.bitmaps[index])


def _same_ops(pmds, ops, patches):
    # the blocks Python's loop took from C, given lists and given a leaf's values (where
    # the first two pools are C's): the same
    python = [0, 0]
    loop = space_map.LowLevel._add_many
    for op in ops:
        results = []
        for k, (pmd, patch) in enumerate(zip(pmds, patches)):
            with pytest.MonkeyPatch.context() as mp:
                patch(mp)
                if k < 2:

                    def counted(self, blocks, delta, _k=k):
                        python[_k] += len(blocks)
                        return loop(self, blocks, delta)

                    mp.setattr(space_map.LowLevel, "_add_many", counted)
                results.append(_apply(pmd, op, arrays=k == 1))
        assert len(set(map(repr, results))) == 1, op
        states = [_state(pmd) for pmd in pmds]
        assert all(s == states[0] for s in states), op
        trees = [list(pmd.data_sm.ll.index_info.items(pmd.data_sm.ll.index_root)) for pmd in pmds]
        assert all(t == trees[0] for t in trees), op
        _ref_tree_holds_the_big_counts(pmds[0])
    if patches[:2] == [_c, _c]:
        assert python[1] == python[0]


def _c(mp):
    """add_many in C (where it is built)."""


def _python(mp):
    """add_many's Python loop."""
    mp.setattr(space_map, "_C_RUN", None)


def _patches():
    """C given lists, C given a leaf's values, Python, and Python with every writeback."""

    def reference(mp):
        _python(mp)
        mp.setattr(space_map._DiskLowLevel, "_writeback", _writeback_always)

    return [_c, _c, _python, reference]


def _pools(nr_md_blocks: int, patches) -> list[PoolMetadata]:
    pmds = []
    for patch in patches:
        with pytest.MonkeyPatch.context() as mp:
            patch(mp)
            pmds.append(_pool(nr_md_blocks))
    return pmds


def test_bitmaps_taking_turns_in_an_ie_cache_slot_leave_what_a_writeback_each_turn_leaves(both):
    """Bitmaps 1 and 65 share an ie-cache slot: a copied leaf whose blocks alternate
    between them writes each one's entry back at every turn (an insert into the index
    btree).  After the first in-place insert of an entry, C and Python take the slot
    without walking the tree again; the counts, the ie cache, the index btree and every
    metadata block are what an insert each time leaves, across commits and aborts."""
    patches = _patches()
    pmds = _pools(4096, patches)
    e = ENTRIES_PER_BITMAP
    turns = [(e + 10, 1, 1), (65 * e + 10, 1, 1)] * 40
    ops = [("add", turns, 1), ("add", turns, 1), ("commit", (), 0), ("add", turns, 1)]
    ops += [("add", [(e + 11, 30, 64 * e)], 1), ("abort", (), 0), ("add", turns, 1)]
    ops += [("add", turns, 2), ("commit", (), 0), ("add", turns, -1), ("add", turns, 1)]
    _same_ops(pmds, ops, patches)
    ll = pmds[0].data_sm.ll
    assert ll._wb_same, "no entry was found set in place"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nr_md_blocks=st.sampled_from([95, 110, 160, 400, 4096]), ops=_ops)
def test_index_entries_found_set_in_place_leave_what_an_insert_each_time_leaves(
    both, nr_md_blocks, ops
):
    patches = _patches()
    pmds = _pools(nr_md_blocks, patches)
    prefix = [("add", [(5, 3000, 1), (ENTRIES_PER_BITMAP * 64 + 7, 500, 1)], 1)]
    prefix += [("commit", (), 0), prefix[0], ("commit", (), 0), prefix[0]]
    _same_ops(pmds, prefix + ops, patches)


def test_a_reference_count_leaf_shadowed_in_c_leaves_what_the_insert_leaves_when_it_raises(both):
    """C's walk shadows a reference-count node below a parent in place itself (through
    ``_shadow_ref_node``), as the key's insert would first; where that shadow raises, the
    block's own changes made before it and the error are what ``_insert_big`` leaves."""
    from thinsim.model.btree import BTreeInfo

    real = BTreeInfo._shadow
    for nth in (1, 3, 5):
        pmds = _c_and_python(4096)
        prefix = [("add", [(5, 3000, 1), (ENTRIES_PER_BITMAP * 64 + 7, 500, 1)], 1)]
        prefix += [("commit", (), 0), prefix[0], ("commit", (), 0), prefix[0], ("commit", (), 0)]
        for op in prefix:
            assert _apply_both(pmds, op) is None
        errors = []
        for k, pmd in enumerate(pmds):
            calls = []

            def shadow(self, b, vt, _pmd=pmd, _calls=calls, _nth=nth):
                if self is _pmd.data_sm.ll.ref_info and b not in self.tm.shadows:
                    _calls.append(b)
                    if len(_calls) == _nth:
                        raise RuntimeError(f"shadow of {b}")
                return real(self, b, vt)

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(BTreeInfo, "_shadow", shadow)
                if k:
                    mp.setattr(space_map, "_C_RUN", None)
                with pytest.raises(RuntimeError) as e:
                    pmd.data_sm.ll.add_many(_blocks([(5, 3000, 1)]), 1)
                errors.append(str(e.value))
        assert errors[0] == errors[1]
        assert _state(pmds[0]) == _state(pmds[1])


def test_leaves_kept_at_hand_from_call_to_call_are_let_go_when_a_removal_reshapes_the_tree(both):
    """C keeps the reference-count leaves it met at hand from one call to the next, as
    long as the table of leaves kept in place holds.  Removals (counts going from 3 to
    2) merge and rebalance leaves between two calls, and in the middle of one; the
    calls after them find the keys where Python's loop finds them."""
    pmds = _c_and_python(4096)
    every = ("add", [(5, 3000, 1)], 1)
    prefix = [every, ("commit", (), 0), every, ("commit", (), 0), every, ("commit", (), 0)]
    ops = prefix + [every, ("add", [(1000, 400, 1)], -2), every, every]
    ops += [("add", [(2000, 300, 1)], -1), ("add", [(2100, 50, 1)], -2), every, every]
    for op in ops:
        assert _apply_both(pmds, op) is None, op
        _ref_tree_holds_the_big_counts(pmds[0])
    assert pmds[0].data_sm.ll.ref_info.reshapes > 0


def _forget_at_each_removal(self, b: int) -> None:
    """``LowLevel._ref_remove`` dropping every leaf kept, whatever the removal changed
    (the reference for the leaves kept across a removal)."""
    self._forget_ref_leaves()
    self.ref_root = self.ref_info.remove(self.ref_root, (b,))


def _removal_patches():
    """C, Python, and Python dropping every kept leaf at a removal."""

    def reference(mp):
        _python(mp)
        mp.setattr(space_map.LowLevel, "_ref_remove", _forget_at_each_removal)

    return [_c, _python, reference]


# counts of the blocks of a few reference-count leaves going up and down by one: keys
# removed (3 -> 2) and inserted again (2 -> 3), between them and set in place
_near_run = st.tuples(st.integers(0, 3100), st.integers(1, 60), st.sampled_from([1, 1, 2, 7]))
_removal_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.lists(_near_run, min_size=1, max_size=6),
            st.sampled_from([-1, -1, 1, 1, 2]),
        ),
        st.tuples(st.just("commit"), st.just(()), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nr_md_blocks=st.sampled_from([160, 400, 4096]), ops=_removal_ops)
def test_leaves_a_removal_did_not_change_stay_kept_and_leave_what_dropping_all_leaves(
    both, nr_md_blocks, ops
):
    """A removal from the reference-count tree rebalances the key's leaf with its
    siblings (and may leave an internal node full); the other leaves kept in place, in
    Python's table and at C's hand, stay kept.  Inserts and counts set in them after it
    leave what they leave when every kept leaf is dropped at each removal."""
    patches = _removal_patches()
    pmds = _pools(nr_md_blocks, patches)
    every = ("add", [(5, 3000, 1)], 1)
    prefix = [every, ("commit", (), 0), every, ("commit", (), 0), every]
    _same_ops(pmds, prefix + ops, patches)


def test_a_removal_drops_the_leaves_it_rebalanced_and_keeps_the_others(both):
    """After one removal in the middle of the reference-count tree, the leaves kept
    around the key are dropped from the table and those far from it are kept."""
    pmd = _pool(4096)
    ll = pmd.data_sm.ll
    every = [(5, 6000, 1)]
    for _ in range(3):  # counts of 3: the keys inserted, leaves split
        _apply(pmd, ("add", every, 1))
        _apply(pmd, ("commit", (), 0))
    _apply(pmd, ("add", every, 1))  # counts of 4: every leaf shadowed and kept
    los = list(ll._ref_los)
    assert len(los) > 10
    gen = ll._ref_gen
    _apply(pmd, ("add", [(3000, 1, 1)], -2))  # 4 -> 2: the key removed
    assert ll._ref_gen == gen, "the table was emptied"
    kept = set(ll._ref_los)
    assert los[0] in kept and los[-1] in kept
    assert not any(lo <= 3000 < hi for _, lo, hi, *_ in ll._ref_leaves)
    assert 1 <= len(set(los) - kept) <= 3
    _ref_tree_holds_the_big_counts(pmd)
