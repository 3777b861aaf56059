"""Metadata blocks, shadowing and commit (persistent-data/dm-transaction-manager.c).

The block manager is a dict from metadata block number to the block's in-core object (a
btree ``Node``, or the superblock's marker).  Bitmaps and index blocks have no entry: their
contents are their space map's.  A block
allocated or shadowed in the current transaction is in the shadow set and is written in
place until the next commit; any other block is copied to a freshly allocated one first.

Where the metadata is on a device (a file the commits are written to), the dict is a
``BlockCache``, as dm-bufio is the kernel's: a clean node -- one as the last commit wrote
it, neither shadowed nor written since -- may be dropped from memory, and is read back
from the device and parsed the next time it is touched, so memory follows the cache's
size, not the metadata's.  Dirty and shadowed nodes stay until the commit has written them,
or, where the cache is told it may (``TransactionManager.at_rest``), are written to the device
before it, as dm-bufio writes dirty buffers back when its cache is full: a day of copy-on-write
on a 1 TiB thin with snapshots shadows some 130k nodes in one transaction, half a GiB here.
A block so written is in ``tm.spilled`` until the commit, which does not write it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# nodes a BlockCache keeps before it drops clean ones: 64 MiB of metadata, 40-70 MiB here
# (dm-bufio's default cache is 2% of the machine's memory).  A node read back costs
# about 2 us (pread, crc32c, parse: disk.py's _disk.c; 6 us in Python), what one 4 KiB
# write and its encoding cost.
DEFAULT_CACHE_NODES = 1 << 14


class BlockCache(dict):
    """Block number -> in-core block, with clean btree nodes read on demand.

    ``load(b)`` reads block ``b`` from the device and returns its node, or None when the
    block there is no btree node (a bitmap, an index block); a miss on such a block is a
    KeyError.  A block that fails its checks raises disk.CorruptMetadata.  A miss loads only a
    block that holds what the last commit wrote: not one shadowed or written since (its
    contents are in memory or nowhere) -- ``tm.shadows`` and ``tm.dirty`` say which.
    When more than ``limit`` blocks are held, the oldest clean nodes are dropped.

    ``save(nodes)`` writes ``(block, node)`` pairs of the transaction to the device (False
    when it could not): set, the oldest dirty nodes are written and dropped too, at the
    points ``TransactionManager.at_rest`` marks, and read back like the others."""

    def __init__(
        self,
        tm: TransactionManager,
        load: Callable[[int], Any],
        limit: int,
        save: Callable[[list], bool] | None = None,
    ) -> None:
        super().__init__(tm.blocks)
        self.tm = tm
        self.load = load
        self.save = save
        self.limit = limit
        self.loads = 0  # blocks read back (for tests and benchmarks)
        self.saved = 0  # dirty nodes written before their commit (for benchmarks)

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, n: int) -> None:
        self._limit = n
        # a miss evicts above ``_evict_at``, at_rest above ``_spill_at``: the limit, or a
        # quarter more than what the last eviction could not drop (or write early)
        self._evict_at = self._spill_at = n

    def __missing__(self, b: int):
        tm = self.tm
        # without write tracking nothing says what the device holds
        if tm.dirty is None:
            raise KeyError(b)
        if b in tm.shadows or b in tm.dirty:
            spilled = tm.spilled
            if b not in spilled:
                raise KeyError(b)
            # held again: the commit writes it from memory (it may change in place)
            spilled.discard(b)
        node = self.load(b)
        if node is None:  # not a node: its space map keeps the block
            raise KeyError(b)
        self.loads += 1
        self[b] = node
        if len(self) > self._evict_at:
            self.evict()
        return node

    def __reduce__(self):
        """A pickle carries every node, as a plain dict: those not held are read from the
        device (the host's per-command path, THINSIM_SERVER=0, pickles its pools whole;
        host/state.py).  Every block live now or at the last commit (an abort goes back
        to it) that is not held is clean or written early (``tm.spilled``), so its node is
        the device's."""
        full = dict(self)
        tm = self.tm
        ll = tm.sm.ll
        live = set(ll.counts())
        live.update(b for b, c in ll.old.items() if c)
        for b in sorted(live):
            if b not in full and tm.dirty is not None and (b not in tm.dirty or b in tm.spilled):
                node = self.load(b)
                if node is not None:  # not a bitmap, an index block, a superblock
                    full[b] = node
        return dict, (full,)

    def pop(self, b, *default):
        # a block dropped from the transaction (its number reused for a bitmap, say): what
        # was written of it is no longer its contents
        self.tm.spilled.discard(b)
        return super().pop(b, *default)

    def evict(self, spill: bool = False) -> None:
        """Drop the oldest clean nodes until a quarter of the room is free again; with
        ``spill`` (no one holds a node now) write the oldest dirty ones and drop them
        too, if that is not enough."""
        from .btree import Node

        tm = self.tm
        shadows = tm.shadows
        dirty = tm.dirty
        if dirty is None:
            return
        target = self.limit - self.limit // 4
        excess = len(self) - target
        if excess > 0:
            drop = []
            for b, obj in self.items():
                if type(obj) is Node and b not in shadows and b not in dirty:
                    drop.append(b)
                    if len(drop) >= excess:
                        break
            for b in drop:
                del self[b]
            excess -= len(drop)
        if excess > 0 and spill and self.save is not None:
            out = []
            for b, obj in self.items():
                # the data space map's index leaves are encoded from its bitmaps at the
                # commit: they stay
                if type(obj) is Node and (obj.value_size != 16 or not obj.leaf):
                    out.append((b, obj))
                    if len(out) >= excess:
                        break
            if out and self.save(out):
                spilled = tm.spilled
                for b, _obj in out:
                    del self[b]
                    spilled.add(b)
                self.saved += len(out)
        # what is dirty stays: look again once the cache has grown by a quarter more
        self._evict_at = max(self.limit, len(self) + self.limit // 4)
        if len(self) <= self.limit:
            self._spill_at = self.limit
        elif spill:
            # nothing more to write early (the data space map's index leaves, a failed
            # write): at_rest would scan the whole cache again at every bio
            self._spill_at = self._evict_at


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
        # every block not in ``dirty`` holds on the device what it holds here: tracked
        # since the metadata was formatted, written whole, or read from the device.  Only
        # then may nodes be read back from it (BlockCache)
        self.device_complete = False
        # dirty nodes written to the device before their commit and dropped (BlockCache)
        self.spilled: set[int] = set()

    def __setstate__(self, state: dict) -> None:
        state.setdefault("spilled", set())
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"TransactionManager(blocks={len(self.blocks)})"

    def read(self, b: int):
        return self.blocks[b]

    def node(self, b: int):
        """Block ``b``'s in-core object, or None where there is none (a bitmap's block)."""
        try:
            return self.blocks[b]
        except KeyError:
            return None

    def read_on_demand(
        self,
        load: Callable[[int], Any],
        limit: int | None = None,
        save: Callable[[list], bool] | None = None,
    ):
        """From now on clean nodes may be dropped and read back with ``load`` (see
        BlockCache), and dirty ones written with ``save`` first where given; the blocks
        held are kept."""
        if isinstance(self.blocks, BlockCache):
            self.blocks.load = load
            self.blocks.save = save
        else:
            limit = DEFAULT_CACHE_NODES if limit is None else limit
            self.blocks = BlockCache(self, load, limit, save)

    def at_rest(self) -> None:
        """Say that no one holds a node now (between two bios, say): a cache over its size
        may write dirty nodes to the device and drop them (BlockCache.evict).  Nodes are
        changed in place while held, so only such a point is safe."""
        blocks = self.blocks
        if type(blocks) is BlockCache and len(blocks) > blocks._spill_at:
            blocks.evict(spill=True)

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
        if obj is None and type(self.blocks) is not dict:
            obj = self.node(orig)  # a node the cache dropped, read back
        blocks = self.blocks
        if obj is not None:
            if (type(blocks) is BlockCache and self.dirty is not None and orig not in self.dirty
                    and len(blocks) > blocks.limit // 2):  # fmt: skip
                # a clean node the live tree no longer uses (snapshots may): a full
                # cache makes room for the copy first, not for the next node read back.
                # The node itself becomes the copy (no arrays copied): the device holds
                # the original, read back if a snapshot's walk or an abort needs it
                dict.pop(blocks, orig, None)
                blocks[new] = obj
            else:
                blocks[new] = obj.copy()
        else:
            blocks.pop(new, None)
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
        if isinstance(blocks, BlockCache) and len(blocks) > blocks.limit:
            # what the commit wrote is clean now (a commit not written stays dirty)
            blocks.evict()

    def rollback(self, changed) -> None:
        """After the space map went back to its last commit: forget the shadows and the
        blocks that exist only in the aborted transaction."""
        self.shadows.clear()
        self.spilled.clear()
        get = self.sm.get_count
        nr = self.sm.nr_blocks
        blocks = self.blocks
        for b in changed:
            if b in blocks and (b >= nr or get(b) == 0):
                del blocks[b]
