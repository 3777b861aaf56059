"""The persistent-data copy-on-write btree (persistent-data/dm-btree.c, dm-btree-remove.c).

Nodes live in the transaction manager under their metadata block number.  Every
mutation walks a *shadow spine* from the root down: each node on the path is shadowed
(copied to a new block unless it was already shadowed in this transaction and is not
shared), exactly as the kernel does, so the number of metadata blocks a tree uses, and
which ones, follow the kernel's.

Keys are u64.  Values are u64 for the mapping, top-level, internal and reference-count
trees (kept in ``array('Q')``, 8 bytes an entry), and Python objects for trees with
wider values (device details, space-map index entries).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from typing import Any

from ..constants import METADATA_BLOCK_SIZE

NODE_HEADER_SIZE = 32


def calc_max_entries(value_size: int, block_size: int = METADATA_BLOCK_SIZE) -> int:
    """dm-btree.c: calc_max_entries -- the largest multiple of 3 that fits a block."""
    total = (block_size - NODE_HEADER_SIZE) // (8 + value_size)
    return 3 * (total // 3)


INTERNAL_MAX_ENTRIES = calc_max_entries(8)  # 252


class Node:
    """One btree node (struct btree_node).  ``values`` is an ``array('Q')`` for u64 values."""

    __slots__ = ("keys", "leaf", "max_entries", "value_size", "values")

    def __init__(self, leaf: bool, max_entries: int, value_size: int, keys=None, values=None):
        self.leaf = leaf
        self.max_entries = max_entries
        self.value_size = value_size
        self.keys = keys if keys is not None else array("Q")
        if values is None:
            # u64 values (and the index tree's, whose 16-byte entries the model keeps as
            # the bitmap's block number) in an array; device details as tuples
            values = array("Q") if (value_size != 24 or not leaf) else []
        self.values = values

    def copy(self) -> Node:
        # a slice copies an array('Q') (or a list) whole, keeping its type
        return Node(self.leaf, self.max_entries, self.value_size, self.keys[:], self.values[:])

    @property
    def nr_entries(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        kind = "leaf" if self.leaf else "internal"
        return f"Node({kind}, nr_entries={len(self.keys)}, max_entries={self.max_entries})"


def lower_bound(keys, key: int) -> int:
    """dm-btree.c: lower_bound -- index of the largest key <= ``key``, or -1."""
    return bisect_right(keys, key) - 1


class ValueType:
    """struct dm_btree_value_type: how a tree's leaf values are reference counted.

    ``inc(values)`` and ``dec(values)`` take a sequence of values; ``equal`` tells an
    overwrite that changes nothing (then the old value is not decremented).
    """

    __slots__ = ("dec", "equal", "inc", "size")

    def __init__(
        self,
        size: int,
        inc: Callable[[Any], None] | None = None,
        dec: Callable[[Any], None] | None = None,
        equal: Callable[[Any, Any], bool] | None = None,
    ) -> None:
        self.size = size
        self.inc = inc
        self.dec = dec
        self.equal = equal


class BTreeInfo:
    """struct dm_btree_info: a tree family of ``levels`` levels sharing one value type.

    ``reshapes`` counts the changes to the tree's shape (a split, a rebalance, a removal):
    the leaves a caller found with ``leaf_in_place`` keep their key ranges and stay in place
    while it is unchanged, and the transaction is (an insert that only shadows nodes on its
    way down leaves the other leaves' paths as they were)."""

    reshapes = 0  # a tree pickled before the count has none
    disturbed = None  # (remove)
    _dist = None  # remove's ranges as it goes (None: none kept)
    _dist_hi = 0  # (_remove_raw: the end of the current node's range)

    def __init__(self, tm, levels: int, value_type: ValueType) -> None:
        self.tm = tm
        self.levels = levels
        self.value_type = value_type
        self.leaf_max_entries = calc_max_entries(value_type.size)
        # dm-btree.c: init_le64_type -- values of the upper levels are subtree roots.
        self.le64_type = ValueType(8, tm.inc_many, tm.dec_many)

    # -- creation and deletion ---------------------------------------------------

    def empty(self) -> int:
        """dm_btree_empty: a new, empty leaf; returns its block."""
        node = Node(True, self.leaf_max_entries, self.value_type.size)
        return self.tm.new_block(node)

    def delete(self, root: int) -> None:
        """dm_btree_del: drop a reference to a whole tree.

        Walks depth first with the kernel's explicit stack: a shared node is only
        decremented when pushed; an unshared one is decremented after its children (or, for
        a bottom leaf, its values) have been released.
        """
        tm = self.tm
        last = self.levels - 1
        vt_dec = self.value_type.dec
        stack: list[list] = []

        def push(b: int, level: int) -> None:
            if tm.ref(b) > 1:
                tm.dec(b)
            else:
                stack.append([b, tm.read(b), level, 0])

        push(root, 0)
        while stack:
            f = stack[-1]
            b, node, level, cur = f
            if cur >= len(node.keys):
                stack.pop()
                tm.dec(b)
            elif not node.leaf:
                f[3] = cur + 1
                push(node.values[cur], level)
            elif level < last:
                f[3] = cur + 1
                push(node.values[cur], level + 1)
            else:
                if vt_dec is not None:
                    vt_dec(node.values)
                stack.pop()
                tm.dec(b)

    # -- lookups ---------------------------------------------------------------

    def lookup(self, root: int, keys) -> Any:
        """dm_btree_lookup: the value under ``keys`` (one key a level), or KeyError."""
        value = self.get(root, keys)
        if value is None:
            raise KeyError(keys)
        return value

    def get(self, root: int, keys) -> Any:
        """``lookup``, with None for a missing key (no exception: a write to an unmapped
        block looks up a missing key every time)."""
        blocks = self.tm.blocks
        value = root
        for key in keys:
            node = blocks[value]
            while True:
                nkeys = node.keys
                i = bisect_right(nkeys, key) - 1
                if i < 0:
                    return None
                if node.leaf:
                    if nkeys[i] != key:
                        return None
                    value = node.values[i]
                    break
                node = blocks[node.values[i]]
        return value

    def lookup_next_single(self, root: int, key: int):
        """dm-btree.c: dm_btree_lookup_next_single -- first entry with key >= ``key``."""
        return _next_single(self.tm.blocks, root, key)

    def leaf_runs(self, root: int, key: int) -> Iterator[tuple[Any, Any, int]]:
        """For a single-level tree: (keys, values, first index) of each leaf from the one
        ``key`` would be in, in key order; the first index is that of the first key >=
        ``key`` (0 in the leaves after).  Reads only; the tree must not change meanwhile."""
        tm = self.tm
        stack: list[list] = []  # [internal node, index of the next child to visit]
        node = tm.read(root)
        while not node.leaf:
            i = max(bisect_right(node.keys, key) - 1, 0)
            stack.append([node, i + 1])
            node = tm.read(node.values[i])
        yield node.keys, node.values, bisect_left(node.keys, key)
        while stack:
            f = stack[-1]
            parent, i = f
            if i >= len(parent.keys):
                stack.pop()
                continue
            f[1] = i + 1
            node = tm.read(parent.values[i])
            while not node.leaf:
                stack.append([node, 1])
                node = tm.read(node.values[0])
            yield node.keys, node.values, 0

    def find_highest_key(self, root: int) -> int | None:
        """dm_btree_find_highest_key for a single level; None for an empty tree."""
        node = self.tm.read(root)
        while True:
            if not node.keys:
                return None
            if node.leaf:
                return node.keys[-1]
            node = self.tm.read(node.values[-1])

    def items(self, root: int) -> Iterator[tuple[int, Any]]:
        """All (key, value) pairs of a single-level tree, in key order."""
        tm = self.tm
        stack = [root]
        while stack:
            node = tm.read(stack.pop())
            if node.leaf:
                yield from zip(node.keys, node.values)
            else:
                stack.extend(reversed(node.values))

    def leaves(self, root: int) -> Iterator[tuple[int, Node]]:
        """Every leaf block of a single-level tree, in key order."""
        tm = self.tm
        stack = [root]
        while stack:
            b = stack.pop()
            node = tm.read(b)
            if node.leaf:
                yield b, node
            else:
                stack.extend(reversed(node.values))

    def node_blocks(self, root: int) -> Iterator[int]:
        """Every block of a single-level tree (internal and leaf)."""
        tm = self.tm
        stack = [root]
        while stack:
            b = stack.pop()
            yield b
            node = tm.read(b)
            if not node.leaf:
                stack.extend(node.values)

    # -- the shadow spine ------------------------------------------------------------

    def _shadow(self, b: int, vt: ValueType) -> tuple[int, Node]:
        """dm-btree-spine.c: bn_shadow -- shadow a node, raising its children if shared."""
        tm = self.tm
        if b in tm.shadows and tm.unshared(b):
            return b, tm.blocks[b]
        nb, inc = tm.shadow_block(b)
        node = self.tm.read(nb)
        if inc:
            self._inc_children(node, vt)
        return nb, node

    def _inc_children(self, node: Node, vt: ValueType) -> None:
        """dm-btree.c: inc_children."""
        if not node.keys:
            return
        if not node.leaf:
            self.tm.inc_many(node.values)
        elif vt.inc is not None:
            vt.inc(node.values)

    def _shadow_child(self, parent: Node, index: int, vt: ValueType) -> tuple[int, Node]:
        """dm-btree.c: shadow_child -- shadow parent's child ``index`` and repoint it."""
        b = parent.values[index]
        tm = self.tm
        if b in tm.shadows:
            # _shadow's in-place case (tm.unshared, inline: every removal walk runs this)
            sm = tm.sm
            ll = sm.ll
            m = ll.maps[b // ll.ENTRIES_PER_BITMAP]
            if m is not None and m[b % ll.ENTRIES_PER_BITMAP] == 1 and not sm._bops:
                return b, tm.blocks[b]
        nb, node = self._shadow(b, vt)
        parent.values[index] = nb
        return nb, node

    # -- insertion ---------------------------------------------------------------

    def insert(self, root: int, keys, value) -> tuple[int, bool]:
        """dm_btree_insert_notify: insert or overwrite; returns (new root, inserted)."""
        fast = self._insert_in_place(root, keys, value)
        if fast is not None:
            return root, fast
        last = self.levels - 1
        spine = _Spine()
        block = root
        index = -1
        for level in range(last):
            index = self._insert_raw(spine, block, self.le64_type, keys[level], index)
            node = spine.node
            if index >= len(node.keys) or node.keys[index] != keys[level]:
                new_tree = self.empty()
                node.keys.insert(index, keys[level])
                node.values.insert(index, new_tree)
            block = node.values[index]
        index = self._insert_raw(spine, block, self.value_type, keys[last], index)
        node = spine.node
        key = keys[last]
        if index >= len(node.keys) or node.keys[index] != key:
            node.keys.insert(index, key)
            node.values.insert(index, value)
            inserted = True
        else:
            inserted = False
            vt = self.value_type
            old = node.values[index]
            if vt.dec is not None and (vt.equal is None or not vt.equal(old, value)):
                vt.dec((old,))
            node.values[index] = value
        return spine.root, inserted

    def _insert_in_place(self, root: int, keys, value):
        """The common case of ``insert``, when it would change nothing but one leaf: every
        node on the path is already shadowed and unshared, no node needs room, and the
        upper levels' keys exist.  Returns ``inserted``, or None to take the full path."""
        tm = self.tm
        shadows = tm.shadows
        blocks = tm.blocks
        ll = tm.sm.ll
        maps, entries = ll.maps, ll.ENTRIES_PER_BITMAP
        if tm.sm._bops:
            return None
        last = self.levels - 1
        b = root
        level = 0
        key = keys[0]
        while True:
            if b not in shadows:
                return None
            # the count is 1 (ll.get_count, inline: this runs for every insert)
            m = maps[b // entries]
            if m is None or m[b % entries] != 1:
                return None
            node = blocks[b]
            nkeys = node.keys
            i = bisect_right(nkeys, key) - 1
            if not node.leaf:
                if len(nkeys) == node.max_entries or i < 0:
                    return None
                b = node.values[i]
                continue
            present = i >= 0 and nkeys[i] == key
            if level < last:
                if not present:
                    return None
                b = node.values[i]
                level += 1
                key = keys[level]
                continue
            if present:
                vt = self.value_type
                old = node.values[i]
                if vt.dec is not None and (vt.equal is None or not vt.equal(old, value)):
                    vt.dec((old,))
                node.values[i] = value
                return False
            if len(nkeys) == node.max_entries:
                return None
            nkeys.insert(i + 1, key)
            node.values.insert(i + 1, value)
            return True

    def leaf_in_place(self, root: int, key: int):
        """For a single-level tree: the leaf ``_insert_in_place`` would put ``key`` in, if
        it would (every node on the path shadowed and unshared, no internal node full), as
        (leaf, lo, hi, its block): every key in [lo, hi) takes the same path while the tree
        changes only in that leaf (or, within the transaction, until ``reshapes`` changes).
        None otherwise (the caller checks ``tm.sm._bops``)."""
        tm = self.tm
        shadows = tm.shadows
        blocks = tm.blocks
        ll = tm.sm.ll
        maps, entries = ll.maps, ll.ENTRIES_PER_BITMAP
        b = root
        lo, hi = 0, 1 << 64
        while True:
            if b not in shadows:
                return None
            m = maps[b // entries]
            if m is None or m[b % entries] != 1:
                return None
            node = blocks[b]
            nkeys = node.keys
            if node.leaf:
                return node, lo, hi, b
            i = bisect_right(nkeys, key) - 1
            if len(nkeys) == node.max_entries or i < 0:
                return None
            lo = nkeys[i]  # a child's keys are at least its parent's key for it
            if i + 1 < len(nkeys) and nkeys[i + 1] < hi:
                hi = nkeys[i + 1]
            b = node.values[i]

    def rightmost_leaf_in_place(self, root: int) -> Node | None:
        """The rightmost leaf of a single-level tree if a key above all its keys would go
        into it in place (``_insert_in_place``'s conditions: every node on the path
        shadowed and unshared, no internal node full); None otherwise."""
        tm = self.tm
        shadows = tm.shadows
        count = tm.sm.ll.get_count
        if tm.sm._bops:
            return None
        b = root
        while True:
            if b not in shadows or count(b) != 1:
                return None
            node = tm.blocks[b]
            if node.leaf:
                return node
            if len(node.keys) == node.max_entries or not node.keys:
                return None
            b = node.values[-1]

    def _insert_raw(self, spine: _Spine, root: int, vt: ValueType, key: int, i: int) -> int:
        """dm-btree.c: btree_insert_raw -- walk one level, making room on the way down.

        ``_shadow``'s in-place case and ``spine.step`` are inline (every insert that
        ``_insert_in_place`` does not take walks here); the spine is written back before
        a node must make room, whose helpers read and move it."""
        tm = self.tm
        shadows = tm.shadows
        blocks = tm.blocks
        sm = tm.sm
        ll = sm.ll
        maps = ll.maps
        entries = ll.ENTRIES_PER_BITMAP
        shadow = self._shadow
        top = True
        while True:
            if root in shadows and not sm._bops:
                m = maps[root // entries]
                if m is not None and m[root % entries] == 1:
                    b, node = root, blocks[root]
                else:
                    b, node = shadow(root, vt)
            else:
                b, node = shadow(root, vt)
            # spine.step
            if spine.root is None:
                spine.root = b
                parent = None
            else:
                parent = spine.parent = spine.node
                spine.parent_block = spine.block
                if i >= 0:
                    parent.values[i] = b
            spine.block = b
            spine.node = node
            nkeys = node.keys
            if len(nkeys) == node.max_entries and not (node.leaf and _contains(nkeys, key)):
                self.reshapes += 1
                if top:
                    self._split_beneath(spine, vt)
                else:
                    self._rebalance_or_split(spine, vt, i, key)
                node = spine.node
                nkeys = node.keys
            i = bisect_right(nkeys, key) - 1
            if node.leaf:
                break
            if i < 0:
                nkeys[0] = key
                i = 0
            root = node.values[i]
            top = False
        if i < 0 or nkeys[i] != key:
            i += 1
        return i

    def _split_beneath(self, spine: _Spine, vt: ValueType) -> None:
        """dm-btree.c: btree_split_beneath -- the root keeps its block, gains two children."""
        pn = spine.node
        nr_left = len(pn.keys) // 2
        left = Node(pn.leaf, pn.max_entries, pn.value_size, pn.keys[:nr_left], pn.values[:nr_left])
        right = Node(pn.leaf, pn.max_entries, pn.value_size, pn.keys[nr_left:], pn.values[nr_left:])
        lb = self.tm.new_block(left)
        rb = self.tm.new_block(right)
        pn.leaf = False
        pn.max_entries = INTERNAL_MAX_ENTRIES
        pn.value_size = 8
        pn.keys = array("Q", (left.keys[0], right.keys[0]))
        pn.values = array("Q", (lb, rb))

    def _rebalance_or_split(self, spine: _Spine, vt: ValueType, pi: int, key: int) -> None:
        """dm-btree.c: rebalance_or_split (SPACE_THRESHOLD = 8)."""
        tm = self.tm
        parent = spine.parent
        nr_parent = len(parent.keys)
        left_shared = right_shared = False
        if pi > 0:
            lb = parent.values[pi - 1]
            left_shared = tm.ref(lb) > 1
            if not left_shared:
                ln = tm.read(lb)
                if ln.max_entries - len(ln.keys) >= 8:
                    return self._rebalance_left(spine, vt, pi, key)
        if pi < nr_parent - 1:
            rb = parent.values[pi + 1]
            right_shared = tm.ref(rb) > 1
            if not right_shared:
                rn = tm.read(rb)
                if rn.max_entries - len(rn.keys) >= 8:
                    return self._rebalance_right(spine, vt, pi, key)
        if left_shared or right_shared or nr_parent <= 2 or pi == 0 or pi + 1 == nr_parent:
            return self._split_one_into_two(spine, pi, key)
        return self._split_two_into_three(spine, vt, pi, key)

    def _rebalance_left(self, spine, vt, pi, key) -> None:
        parent = spine.parent
        sb, left = self._shadow_child(parent, pi - 1, vt)
        right = spine.node
        _redistribute2(left, right)
        parent.keys[pi] = right.keys[0]
        if key < right.keys[0]:
            spine.replace(sb, left)

    def _rebalance_right(self, spine, vt, pi, key) -> None:
        parent = spine.parent
        sb, right = self._shadow_child(parent, pi + 1, vt)
        left = spine.node
        _redistribute2(left, right)
        parent.keys[pi + 1] = right.keys[0]
        if key >= right.keys[0]:
            spine.replace(sb, right)

    def _split_one_into_two(self, spine, pi, key) -> None:
        left = spine.node
        right = Node(left.leaf, left.max_entries, left.value_size)
        rb = self.tm.new_block(right)
        _redistribute2(left, right)
        parent = spine.parent
        parent.keys.insert(pi + 1, right.keys[0])
        parent.values.insert(pi + 1, rb)
        if key >= right.keys[0]:
            spine.replace(rb, right)

    def _split_two_into_three(self, spine, vt, pi, key) -> None:
        parent = spine.parent
        if pi == 0:
            middle_index = 1
            lb, left = spine.block, spine.node
            rb, right = self._shadow_child(parent, pi + 1, vt)
        else:
            middle_index = pi
            rb, right = spine.block, spine.node
            lb, left = self._shadow_child(parent, pi - 1, vt)
        middle = Node(left.leaf, left.max_entries, left.value_size)
        mb = self.tm.new_block(middle)
        _redistribute3(left, middle, right)
        parent.keys[middle_index] = right.keys[0]
        parent.keys.insert(middle_index, middle.keys[0])
        parent.values.insert(middle_index, mb)
        if key < middle.keys[0]:
            spine.replace(lb, left)
        elif key < right.keys[0]:
            spine.replace(mb, middle)
        else:
            spine.replace(rb, right)

    def append_run(self, root: int, dev: int, first_key: int, values) -> int:
        """Insert keys ``first_key, first_key + 1, ...`` (all above every key of ``dev``'s
        tree) with ``values`` into this two-level tree, leaving exactly what one
        ``insert`` a key would leave: whenever an insert could only go straight into the
        rightmost leaf (every node on its path already shadowed, unshared and with room)
        the keys are appended in one step; any other insert takes the ordinary path.
        Returns the new root."""
        n = len(values)
        i = 0
        while i < n:
            leaf = self._appendable_leaf(root, dev, first_key + i)
            if leaf is None:
                root, _ = self.insert(root, (dev, first_key + i), values[i])
                i += 1
                continue
            k = min(leaf.max_entries - len(leaf.keys), n - i)
            leaf.keys.extend(range(first_key + i, first_key + i + k))
            leaf.values.extend(values[i : i + k])
            i += k
        return root

    def _appendable_leaf(self, root: int, dev: int, key: int):
        tm = self.tm
        shadows = tm.shadows
        sm = tm.sm
        if sm._bops or sm._bootstrap:
            count = sm.get_count  # counts queued or not kept yet: the space map's own
        else:
            ll = sm.ll
            maps, entries = ll.maps, ll.ENTRIES_PER_BITMAP

            def count(b: int) -> int:  # ll.get_count's 0, 1, 2 or "3 and more"
                m = maps[b // entries]
                return 0 if m is None else m[b % entries]

        # the top level: the walk to dev's entry must change nothing
        b = root
        while True:
            if b not in shadows or count(b) > 1:
                return None
            node = tm.blocks[b]
            if node.leaf:
                i = bisect_right(node.keys, dev) - 1
                if i < 0 or node.keys[i] != dev:
                    return None
                b = node.values[i]
                break
            if len(node.keys) == node.max_entries:
                return None
            i = bisect_right(node.keys, dev) - 1
            if i < 0:
                return None
            b = node.values[i]
        # the bottom level: down the rightmost edge
        while True:
            if b not in shadows or count(b) > 1:
                return None
            node = tm.blocks[b]
            nr = len(node.keys)
            if nr == node.max_entries:
                return None
            if node.leaf:
                if nr and node.keys[-1] >= key:
                    return None
                return node
            if not nr or node.keys[-1] > key:
                return None
            b = node.values[-1]

    # -- removal -----------------------------------------------------------------

    def remove(self, root: int, keys) -> int:
        """dm_btree_remove: remove ``keys``; returns the new root.  KeyError if absent.

        In a single-level tree it leaves in ``disturbed`` the key ranges of the leaves it
        changed, as [lo, hi) pairs: those its rebalances reshaped (the leaves beside the
        key's own among them), and every leaf below an internal node a rebalance left
        full.  Another leaf found with ``leaf_in_place`` before keeps its range and stays
        in place: a rebalance above the leaves moves them between parents but not their
        keys' paths (a child's range is its own key to the next one's), and a node's
        shadow leaves it in place.  None where that is not known: a tree of more levels,
        a root that took its only child's place, a removal that raised."""
        self.reshapes += 1
        self.disturbed = None
        last = self.levels - 1
        spine = _Spine()
        index = 0
        self._dist = [] if last == 0 else None
        try:
            for level in range(self.levels):
                vt = self.value_type if level == last else self.le64_type
                index = self._remove_raw(spine, root, vt, keys[level], index)
                node = spine.node
                if level != last:
                    root = node.values[index]
                    continue
                if self.value_type.dec is not None:
                    self.value_type.dec((node.values[index],))
                del node.keys[index]
                del node.values[index]
            self.disturbed = self._dist
        finally:
            self._dist = None
        return spine.root

    def _remove_raw(self, spine, root, vt, key, i) -> int:
        """dm-btree-remove.c: remove_raw (``_shadow``'s in-place case and ``spine.step``
        inline, as in ``_insert_raw``).  The end of the current node's key range is kept
        in ``_dist_hi`` for ``_rebalance_children``."""
        tm = self.tm
        shadows = tm.shadows
        blocks = tm.blocks
        sm = tm.sm
        ll = sm.ll
        maps = ll.maps
        entries = ll.ENTRIES_PER_BITMAP
        self._dist_hi = _KEY_END
        while True:
            if root in shadows and not sm._bops:
                m = maps[root // entries]
                if m is not None and m[root % entries] == 1:
                    b, node = root, blocks[root]
                else:
                    b, node = self._shadow(root, vt)
            else:
                b, node = self._shadow(root, vt)
            # spine.step
            if spine.root is None:
                spine.root = b
            else:
                parent = spine.parent = spine.node
                spine.parent_block = spine.block
                parent.values[i] = b
            spine.block = b
            spine.node = node
            if node.leaf:
                return _do_leaf(node, key)
            self._rebalance_children(spine, vt, key)
            if node.leaf:
                return _do_leaf(node, key)
            nkeys = node.keys
            i = bisect_right(nkeys, key) - 1
            if i + 1 < len(nkeys):
                self._dist_hi = nkeys[i + 1]
            root = node.values[i]

    def _remove_nearest(self, spine, root, vt, key, i) -> int:
        """dm-btree-remove.c: remove_nearest."""
        while True:
            b, node = self._shadow(root, vt)
            spine.step(b, node)
            if spine.parent is not None:
                spine.parent.values[i] = b
            if node.leaf:
                return bisect_right(node.keys, key) - 1
            self._rebalance_children(spine, vt, key)
            node = spine.node
            if node.leaf:
                return bisect_right(node.keys, key) - 1
            i = bisect_right(node.keys, key) - 1
            root = node.values[i]

    def remove_leaves(self, root: int, first_key: int, end_key: int) -> tuple[int, int, int]:
        """dm_btree_remove_leaves (single level): remove the run of keys from ``first_key``.

        Stops at the first key not present.  Returns (new root, next key, removed).  As
        the kernel does it: a walk from the root for each key (remove_one ->
        remove_nearest, rebalancing the children at each level on the way down), and one
        more that finds the key after the run; each walk is ``_remove_nearest`` inline
        (a node shadowed and unshared already is used in place, as ``_shadow`` would)."""
        self.reshapes += 1
        removed = 0
        key = first_key
        vt = self.value_type
        dec = vt.dec
        # keys at the tree's left edge (a whole device discarded from its start): the
        # walks of as many as ``leftmost_pair`` allows in one step, then one the ordinary
        # way (a merge, a rebalance above the leaves), and so on; where one step cannot be
        # taken, the next few walks go the ordinary way before it is tried again
        try_in = 0 if end_key - key >= 4 else -1
        tm = self.tm
        shadows = tm.shadows
        sm = tm.sm
        ll = sm.ll
        maps = ll.maps
        entries = ll.ENTRIES_PER_BITMAP
        shadow = self._shadow
        rebalance = self._rebalance_children
        spine = _Spine()  # _rebalance_children reads only its ``node``
        while True:
            if not try_in:
                found = self.leftmost_pair(root, key)
                m = last = 0
                if found is not None:
                    ukeys, uvalues = leftmost_entries(found)
                    m = last = bisect_left(ukeys, end_key)
                    if found[0] is not None:
                        m = min(m, len(ukeys) - found[3] + 1)
                if m > 0:
                    gone = uvalues[:m]
                    key = ukeys[m - 1] + 1
                    take_leftmost(found, ukeys, uvalues, m, False)
                    if dec is not None:
                        dec(gone)
                    removed += m
                    # the next walk merges (and then another step may follow), or ends
                    try_in = 1 if m < last else -1
                else:
                    try_in = 4
            elif try_in > 0:
                try_in -= 1
            # remove_nearest
            b = root
            parent = None
            i = 0
            while True:
                m = maps[b // entries] if b in shadows else None
                if m is not None and m[b % entries] == 1 and not sm._bops:
                    node = tm.blocks[b]
                else:
                    b, node = shadow(b, vt)
                if parent is None:
                    root = b
                else:
                    parent.values[i] = b
                if node.leaf:
                    break
                spine.node = node
                rebalance(spine, vt, key)
                if node.leaf:
                    break
                i = bisect_right(node.keys, key) - 1
                parent = node
                b = node.values[i]
            keys = node.keys
            index = bisect_right(keys, key) - 1
            index = max(index, 0)
            if index >= len(keys):
                break
            k = keys[index]
            if key <= k < end_key:
                if dec is not None:
                    dec((node.values[index],))
                del keys[index]
                del node.values[index]
                key = k + 1
                removed += 1
            else:
                break
        return root, key, removed

    def leftmost_pair(self, root: int, key: int):
        """For a single-level tree with no key below ``key``: where the next removal walks
        (``remove_leaves``'s, each for the smallest key left, or a key below it) would
        change nothing but the two leftmost leaves, in a way ``take_leftmost`` reproduces:

        - every node on the leftmost path, and the second child of each internal one, is
          a shadow of this transaction with one reference (each walk's ``_shadow`` and
          ``_shadow_child`` use them in place: nothing is allocated or counted);
        - each internal node on the path has two children or more (no root collapses)
          and its first key is at most ``key`` (the walk finds a child);
        - above the leaves' parent, the first two children already hold what
          ``__rebalance2`` leaves them (as many entries as it would give the left one,
          no merge, the parent's key for the second child its first key): each walk's
          rebalance there changes nothing.

        Then each walk rebalances the two leftmost leaves (``__rebalance2``: a merge, or
        an even split) and goes down into the first.  Returns (parent of the leaves,
        first leaf, second leaf, the merge threshold), or (None, the root, None, 0) where
        the root is a leaf; None otherwise (the walks take their ordinary path)."""
        tm = self.tm
        sm = tm.sm
        if sm._bops:
            return None
        shadows = tm.shadows
        blocks = tm.blocks
        ll = sm.ll
        maps = ll.maps
        entries = ll.ENTRIES_PER_BITMAP

        def in_place(b: int) -> bool:
            if b not in shadows:
                return False
            m = maps[b // entries]
            return m is not None and m[b % entries] == 1

        if not in_place(root):
            return None
        node = blocks[root]
        if node.leaf:
            keys = node.keys
            if keys and keys[0] < key:
                return None
            return None, node, None, 0
        while True:
            keys = node.keys
            if len(keys) < 2 or keys[0] > key:
                return None
            b0, b1 = node.values[0], node.values[1]
            if not in_place(b0) or not in_place(b1):
                return None
            left, right = blocks[b0], blocks[b1]
            nl, nr = len(left.keys), len(right.keys)
            threshold = 2 * (left.max_entries // 3 + 1)
            if left.leaf:
                if not right.leaf or not nl or left.keys[0] < key:
                    return None
                return node, left, right, threshold
            if nl + nr < threshold or nl != (nl + nr) // 2 or keys[1] != right.keys[0]:
                return None
            node = left

    def _rebalance_children(self, spine, vt, key) -> None:
        """dm-btree-remove.c: rebalance_children (rebalance2's shadows, with
        ``_shadow_child``'s in-place case inline: every removal walk runs this at each
        internal level)."""
        tm = self.tm
        n = spine.node
        nkeys = n.keys
        if len(nkeys) == 1:
            cb = n.values[0]
            child = tm.read(cb)
            n.leaf = child.leaf
            n.max_entries = child.max_entries
            n.value_size = child.value_size
            n.keys = array("Q", child.keys)
            vals = child.values
            n.values = array("Q", vals) if type(vals) is array else list(vals)
            tm.dec(cb)
            self._dist = None  # a leaf may have moved to its parent's block
            return
        i = bisect_right(nkeys, key) - 1
        if i < 0:
            raise KeyError(key)
        dist = self._dist
        if dist is not None:
            # the children it rebalances: their keys' range (the keys after them keep
            # their places), and their number, to find those a merge leaves
            li = i - 1 if i else 0
            nr = 3 if 0 < i < len(nkeys) - 1 else 2
            lo = nkeys[li]
            hi = nkeys[li + nr] if li + nr < len(nkeys) else self._dist_hi
            before = len(nkeys)
        if 0 < i < len(nkeys) - 1:
            self._rebalance3(n, vt, i - 1)
        else:
            self._rebalance2_children(n, vt, i)
        if dist is not None:
            blocks = tm.blocks
            values = n.values
            for j in range(li, li + nr - (before - len(n.keys))):
                child = blocks.get(values[j])
                if child is None or child.leaf or len(child.keys) == child.max_entries:
                    dist.append((lo, hi))
                    break

    def _rebalance2_children(self, n, vt, i: int) -> None:
        """rebalance_children's rebalance2 of child ``i`` of ``n`` (the first or the last)
        and its one sibling."""
        tm = self.tm
        li = i - 1 if i else 0
        values = n.values
        shadows = tm.shadows
        sm = tm.sm
        ll = sm.ll
        maps = ll.maps
        entries = ll.ENTRIES_PER_BITMAP
        blocks = tm.blocks
        # (shadowing the left child may queue metadata counts: each child looks at _bops)
        b = values[li]
        m = maps[b // entries] if b in shadows and not sm._bops else None
        if m is not None and m[b % entries] == 1:
            left = blocks[b]
        else:
            _, left = self._shadow_child(n, li, vt)
        rb = values[li + 1]
        m = maps[rb // entries] if rb in shadows and not sm._bops else None
        if m is not None and m[rb % entries] == 1:
            right = blocks[rb]
        else:
            rb, right = self._shadow_child(n, li + 1, vt)
        self.__rebalance2(n, left, right, li + 1, rb)

    def __rebalance2(self, parent, left, right, r_index, rb) -> None:
        nr_left, nr_right = len(left.keys), len(right.keys)
        # 6.1: each child keeps at least max_entries / 3 + 1 entries
        threshold = 2 * (left.max_entries // 3 + 1)
        if nr_left + nr_right < threshold:
            left.keys.extend(right.keys)
            left.values.extend(right.values)
            del parent.keys[r_index]
            del parent.values[r_index]
            self.tm.dec(rb)
        else:
            target_left = (nr_left + nr_right) // 2
            _shift(left, right, nr_left - target_left)
            parent.keys[r_index] = right.keys[0]

    def _rebalance3(self, parent: Node, vt, li: int) -> None:
        _, left = self._shadow_child(parent, li, vt)
        cb, center = self._shadow_child(parent, li + 1, vt)
        rb, right = self._shadow_child(parent, li + 2, vt)
        nr_left, nr_center, nr_right = len(left.keys), len(center.keys), len(right.keys)
        threshold = (left.max_entries // 3) * 4 + 1
        if nr_left + nr_center + nr_right < threshold:
            # delete_center_node
            shift = min(left.max_entries - nr_left, nr_center)
            left.keys.extend(center.keys[:shift])
            left.values.extend(center.values[:shift])
            if shift != nr_center:
                rest = nr_center - shift
                right.keys[0:0] = center.keys[shift : shift + rest]
                right.values[0:0] = center.values[shift : shift + rest]
            r_index = li + 2
            parent.keys[r_index] = right.keys[0]
            del parent.keys[li + 1]
            del parent.values[li + 1]
            self.tm.dec(cb)
            self.__rebalance2(parent, left, right, li + 1, rb)
        else:
            _redistribute3_remove(left, center, right)
            parent.keys[li + 1] = center.keys[0]
            parent.keys[li + 2] = right.keys[0]


class _Spine:
    """struct shadow_spine: the last two nodes of a walk, and the root it started from."""

    __slots__ = ("block", "node", "parent", "parent_block", "root")

    def __init__(self) -> None:
        self.root = None
        self.block = None
        self.node = None
        self.parent_block = None
        self.parent = None

    def step(self, b: int, node: Node) -> None:
        if self.root is None:
            self.root = b
        else:
            self.parent_block, self.parent = self.block, self.node
        self.block, self.node = b, node

    def replace(self, b: int, node: Node) -> None:
        self.block, self.node = b, node


def _next_single(blocks, b: int, key: int):
    """dm_btree_lookup_next_single's recursion: in an internal node the child ``key``
    falls in, then (only) the one after it."""
    node = blocks[b]
    keys = node.keys
    if not node.leaf:
        i = bisect_right(keys, key) - 1
        i = max(i, 0)
        if i >= len(keys):
            return None
        r = _next_single(blocks, node.values[i], key)
        if r is None and i < len(keys) - 1:
            r = _next_single(blocks, node.values[i + 1], key)
        return r
    i = bisect_left(keys, key)
    if i >= len(keys):
        return None
    return keys[i], node.values[i]


def _contains(keys, key) -> bool:
    i = bisect_right(keys, key) - 1
    return i >= 0 and keys[i] == key


_KEY_END = 1 << 64  # the end of the keys' range: no key is above it


def _do_leaf(node: Node, key: int) -> int:
    i = bisect_right(node.keys, key) - 1
    if i < 0 or node.keys[i] != key:
        raise KeyError(key)
    return i


def leftmost_entries(found):
    """The keys and values of ``leftmost_pair``'s leaves, in order, as arrays."""
    _parent, left, right, _threshold = found
    if right is None:
        return left.keys, left.values
    return left.keys + right.keys, left.values + right.values


def take_leftmost(found, keys, values, m: int, extra: bool) -> None:
    """What ``m`` removal walks at the left edge of the tree ``leftmost_pair`` found
    leave, each rebalancing the two leftmost leaves and then removing the smallest key,
    and, with ``extra``, one more walk that rebalances and removes nothing (the walk that
    ends a run); ``keys`` and ``values`` are ``leftmost_entries``.  Every walk must
    rebalance without a merge: ``len(keys) - m - extra + 1`` at least the threshold.

    A rebalance of two leaves with n entries between them gives the first n // 2, so
    after the walks the first leaf holds the (n - m) // 2 smallest keys left (without
    ``extra``: (n - m + 1) // 2 - 1, the last walk having removed one after its
    rebalance) and the second the rest; the parent's key for the second is its first."""
    parent, left, right, threshold = found
    if parent is None:
        del left.keys[:m]
        del left.values[:m]
        return
    n = len(keys)
    assert n - m - extra + 1 >= threshold
    n0 = (n - m) // 2 if extra else (n - m + 1) // 2 - 1
    split = m + n0
    left.keys, left.values = keys[m:split], values[m:split]
    right.keys, right.values = keys[split:], values[split:]
    parent.keys[1] = right.keys[0]


def _redistribute2(left: Node, right: Node) -> None:
    """dm-btree.c: redistribute2 -- left gets total // 2."""
    nr_left = len(left.keys)
    total = nr_left + len(right.keys)
    target_left = total // 2
    if nr_left < target_left:
        delta = target_left - nr_left
        left.keys.extend(right.keys[:delta])
        left.values.extend(right.values[:delta])
        del right.keys[:delta]
        del right.values[:delta]
        _trim(right)
    elif nr_left > target_left:
        right.keys[0:0] = left.keys[target_left:]
        right.values[0:0] = left.values[target_left:]
        del left.keys[target_left:]
        del left.values[target_left:]
        _trim(left)


def _trim(node: Node) -> None:
    """Give a node that lost entries arrays of exactly its length: an array keeps the room
    it grew to (a sequential fill's closed leaves held 248 entries in arrays with room for
    268 and more); the node that gained them keeps its room for the entries to come."""
    node.keys = array("Q", node.keys)
    vals = node.values
    node.values = array("Q", vals) if type(vals) is array else list(vals)


def _redistribute3(left: Node, middle: Node, right: Node) -> None:
    """dm-btree.c: redistribute3 -- spread left and right over three nodes (middle empty)."""
    keys = left.keys + right.keys
    values = left.values + right.values
    total = len(keys)
    tl = total // 3
    tc = (total - tl) // 2
    left.keys, left.values = keys[:tl], values[:tl]
    middle.keys, middle.values = keys[tl : tl + tc], values[tl : tl + tc]
    right.keys, right.values = keys[tl + tc :], values[tl + tc :]


def _redistribute3_remove(left: Node, center: Node, right: Node) -> None:
    """dm-btree-remove.c: redistribute3 -- right gets total // 3, left the remainder."""
    keys = left.keys + center.keys + right.keys
    values = left.values + center.values + right.values
    total = len(keys)
    tr = total // 3
    tl = tr + (1 if tr * 3 != total else 0)
    tc = total - tl - tr
    left.keys, left.values = keys[:tl], values[:tl]
    center.keys, center.values = keys[tl : tl + tc], values[tl : tl + tc]
    right.keys, right.values = keys[tl + tc :], values[tl + tc :]


def _shift(left: Node, right: Node, count: int) -> None:
    """dm-btree-remove.c: shift -- move ``count`` entries left->right (negative: back)."""
    if count > 0:
        right.keys[0:0] = left.keys[-count:]
        right.values[0:0] = left.values[-count:]
        del left.keys[-count:]
        del left.values[-count:]
    elif count < 0:
        count = -count
        left.keys.extend(right.keys[:count])
        left.values.extend(right.values[:count])
        del right.keys[:count]
        del right.values[:count]
