"""Metadata blocks, shadowing and commit (persistent-data/dm-transaction-manager.c).

The block manager is a dict from metadata block number to the block's in-core object (a
btree ``Node``, or the superblock's marker).  Bitmaps and index blocks have no entry: their
contents are their space map's.  A block
allocated or shadowed in the current transaction is in the shadow set and is written in
place until the next commit; any other block is copied to a freshly allocated one first.
"""

from __future__ import annotations

from typing import Any


class TransactionManager:
    """struct dm_transaction_manager over a metadata space map."""

    def __init__(self, sm) -> None:
        self.sm = sm
        self.blocks: dict[int, Any] = {}
        self.shadows: set[int] = set()
        # blocks written since the metadata device was last written (dm-bufio writes every
        # dirty buffer, freed ones too, so they take space in a sparse metadata file);
        # kept only when someone writes the device (None: not tracked)
        self.dirty: set[int] | None = None

    def __repr__(self) -> str:
        return f"TransactionManager(blocks={len(self.blocks)})"

    def read(self, b: int):
        return self.blocks[b]

    def new_block(self, obj) -> int:
        """dm_tm_new_block: allocate a block, counted as a shadow of this transaction.
        ``obj`` None: a block whose contents its space map keeps (a bitmap, an index)."""
        b = self.sm.new_block()
        if obj is not None:
            self.blocks[b] = obj
        else:
            # a block freed and reused in one transaction may still hold a node's object
            self.blocks.pop(b, None)
        self.shadows.add(b)
        if self.dirty is not None:
            self.dirty.add(b)
        return b

    def shadow_block(self, orig: int) -> tuple[int, bool]:
        """dm_tm_shadow_block: returns (block to write, whether children need a reference).

        A block shared by more than one parent is always copied, and its children then
        gain a reference (``inc_children``); an unshared block already shadowed in this
        transaction is written in place.
        """
        sm = self.sm
        inc_children = sm.get_count(orig) > 1
        if not inc_children and orig in self.shadows:
            return orig, False
        # dm-transaction-manager.c: __shadow_block -- allocate first, then drop the original
        new = sm.new_block()
        sm.dec(orig)
        obj = self.blocks.get(orig)
        if obj is not None:
            self.blocks[new] = obj.copy()
        else:
            self.blocks.pop(new, None)
        self.shadows.add(new)
        if self.dirty is not None:
            self.dirty.add(new)
        return new, inc_children

    def unshared(self, b: int) -> bool:
        """Whether ``b`` has exactly one reference (the fast path of a shadow in place)."""
        sm = self.sm
        ll = sm.ll
        entries = ll.ENTRIES_PER_BITMAP
        m = ll.maps[b // entries]
        return m is not None and m[b % entries] == 1 and not sm._bops

    def ref(self, b: int) -> int:
        return self.sm.get_count(b)

    def inc(self, b: int) -> None:
        self.sm.inc(b)

    def dec(self, b: int) -> None:
        self.sm.dec(b)

    def inc_many(self, blocks) -> None:
        for b in blocks:
            self.sm.inc(b)

    def dec_many(self, blocks) -> None:
        for b in blocks:
            self.sm.dec(b)

    def commit(self) -> None:
        """dm_tm_commit: forget the shadows; drop the contents of blocks now free."""
        self.shadows.clear()
        get = self.sm.get_count
        blocks = self.blocks
        for b in self.sm.zeroed:
            if b in blocks and get(b) == 0:
                del blocks[b]
        self.sm.zeroed.clear()

    def rollback(self, changed) -> None:
        """After the space map went back to its last commit: forget the shadows and the
        blocks that exist only in the aborted transaction."""
        self.shadows.clear()
        get = self.sm.get_count
        nr = self.sm.nr_blocks
        blocks = self.blocks
        for b in changed:
            if b in blocks and (b >= nr or get(b) == 0):
                del blocks[b]
