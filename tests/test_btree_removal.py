"""What a removal from a single-level btree tells its caller it changed
(``BTreeInfo.remove``'s ``disturbed``): the leaves the space map keeps in place across a
removal (``LowLevel._ref_remove``) must be those whose key range and path it left as
they were.  A leaf ``leaf_in_place`` found before a removal is found again after it, the
same node with the same range, unless its range meets a disturbed one."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinsim.model.btree import INTERNAL_MAX_ENTRIES, BTreeInfo, Node, ValueType
from thinsim.model.metadata import PoolMetadata


def _tree():
    pmd = PoolMetadata(4096, 128)
    pmd.commit()
    info = BTreeInfo(pmd.tm, 1, ValueType(4))
    return info, info.empty()


def _in_place(info: BTreeInfo, root: int, keys) -> dict:
    """Each key's leaf in place, where there is one: key -> (node, lo, hi, block)."""
    found = {}
    for k in keys:
        leaf = info.leaf_in_place(root, k)
        if leaf is not None:
            found[k] = leaf
    return found


def _undisturbed_leaves_stay(info: BTreeInfo, before: dict, root: int) -> int:
    """Every leaf found before that no disturbed range meets is found again alike; returns
    how many such keys there were."""
    dist = info.disturbed
    assert dist is not None
    kept = 0
    for k, (node, lo, hi, block) in before.items():
        if any(dlo < hi and lo < dhi for dlo, dhi in dist):
            continue
        assert info.leaf_in_place(root, k) == (node, lo, hi, block), k
        kept += 1
    return kept


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nkeys=st.integers(1500, 5000),
    stride=st.sampled_from([1, 3, 17]),
    removals=st.lists(st.integers(0, 10**6), min_size=1, max_size=40),
)
def test_a_removal_disturbs_every_leaf_whose_range_or_path_it_changed(nkeys, stride, removals):
    info, root = _tree()
    keys = [k * stride for k in range(nkeys)]
    for k in keys:
        root, _ = info.insert(root, (k,), 3)
    present = list(keys)
    probes = keys[:: max(1, nkeys // 200)]
    kept = 0
    for r in removals:
        if not present:
            break
        key = present.pop(r % len(present))
        before = _in_place(info, root, probes)
        new_root = info.remove(root, (key,))
        if info.disturbed is None:
            root = new_root  # the root took its only child's place: nothing is known
            continue
        assert new_root == root
        kept += _undisturbed_leaves_stay(info, before, root)
        with pytest.raises(KeyError):
            info.lookup(root, (key,))
    assert kept  # (nine leaves and more: a removal rebalances three at most)


def test_a_removal_that_leaves_an_internal_node_full_disturbs_every_leaf_below_it():
    """Two internal nodes of 252 and 251 leaves: a removal below the second rebalances
    them to 251 and 252, and the second is full (its leaves, of 150 keys, are not merged
    below it).  An insert into any leaf below it would split it first
    (btree_insert_raw), so no leaf below it is in place any more, however far from the
    key removed: remove says so."""
    info, _ = _tree()
    tm = info.tm
    leaves = []
    for j in range(2 * INTERNAL_MAX_ENTRIES - 1):
        leaf = Node(True, info.leaf_max_entries, 4)
        leaf.keys.extend(range(1000 * j, 1000 * j + 150))
        leaf.values.extend([3] * 150)
        leaves.append(tm.new_block(leaf))
    halves = []
    for part in (leaves[:INTERNAL_MAX_ENTRIES], leaves[INTERNAL_MAX_ENTRIES:]):
        node = Node(False, INTERNAL_MAX_ENTRIES, 8)
        for b in part:
            node.keys.append(tm.blocks[b].keys[0])
            node.values.append(b)
        halves.append(node)
    root_node = Node(False, INTERNAL_MAX_ENTRIES, 8)
    for node in halves:
        root_node.keys.append(node.keys[0])
        root_node.values.append(tm.new_block(node))
    root = tm.new_block(root_node)
    far = 1000 * (2 * INTERNAL_MAX_ENTRIES - 3)  # a leaf near the end, below the second
    assert info.leaf_in_place(root, far) is not None
    removed = 1000 * (INTERNAL_MAX_ENTRIES + 100) + 7
    assert info.remove(root, (removed,)) == root
    assert len(tm.blocks[root_node.values[1]].keys) == INTERNAL_MAX_ENTRIES
    assert info.leaf_in_place(root, far) is None
    assert any(lo <= far < hi for lo, hi in info.disturbed)
