"""Pool metadata: superblock, device details, mapping trees, time, metadata snapshot.

Follows drivers/md/dm-thin-metadata.c.  The mapping tree has two levels: device id to the
root of that device's tree, then virtual block to ``(data_block << 24) | time``.
"""

from __future__ import annotations

import errno as E
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import numpy as np

from ..constants import (
    METADATA_BLOCK_SIZE,
    THIN_METADATA_MAX_SECTORS,  # noqa: F401  (pool.py takes it from here)
    THIN_SUPERBLOCK_LOCATION,
)
from .btree import BTreeInfo, ValueType, leftmost_entries, take_leftmost
from .space_map import (
    _C,
    DiskSpaceMap,
    FormatError,
    LogLines,
    MetadataSpaceMap,
    NoSpace,
    _Block,
)
from .transaction import TransactionManager

THIN_METADATA_BLOCK_SIZE = METADATA_BLOCK_SIZE
SECTORS_PER_MD_BLOCK = THIN_METADATA_BLOCK_SIZE // 512
MAX_DEV_ID = (1 << 24) - 1
TIME_BITS = 24
TIME_MASK = (1 << TIME_BITS) - 1
# overwrite_leaf's walk in C (None: the Python loop; THINSIM_NO_C=1 asks for it)
_C_WALK = _C.overwrite_walk if _C is not None else None


def pack_block_time(block: int, time: int) -> int:
    """dm-thin-metadata.c: pack_block_time (the time is not masked, as in the kernel)."""
    return (block << TIME_BITS) | time


@dataclass
class ThinDevice:
    """struct dm_thin_device: the in-core view of one thin's details."""

    id: int
    mapped_blocks: int
    transaction_id: int
    creation_time: int
    snapshotted_time: int
    open_count: int = 0
    changed: bool = False
    aborted_with_changes: bool = False

    def details(self) -> tuple[int, int, int, int]:
        return (self.mapped_blocks, self.transaction_id, self.creation_time, self.snapshotted_time)


def _data_blocks(values) -> tuple:
    """The data blocks of mapping values, for ``inc_many`` / ``dec_many``, as (items,
    shift): a leaf's ``array('Q')`` as it is, with TIME_BITS (``LowLevel.add_many``'s C
    reads it so: the values of a whole leaf are counted each time a shared leaf is
    shadowed); a list of blocks for a few."""
    if type(values) is array and len(values) > 8:
        return values, TIME_BITS
    return [v >> TIME_BITS for v in values], 0


def _data_block_equal(a: int, b: int) -> bool:
    """dm-thin-metadata.c: data_block_equal -- the same block, whatever the time."""
    return (a >> TIME_BITS) == (b >> TIME_BITS)


def _runs(keys, values, m: int, snapshotted: int):
    """The runs of the first ``m`` mappings of a leaf's (or two leaves') ``keys`` and
    ``values``, each contiguous in virtual and data blocks with one sharing state, as
    (virt_begin, virt_end, data_begin, shared) in order, with ``m``: found in C."""
    if not m:
        return [], 0
    k = np.frombuffer(array("Q", keys[:m]), dtype=np.uint64)
    v = np.frombuffer(array("Q", values[:m]), dtype=np.uint64)
    d = v >> np.uint64(TIME_BITS)
    shared = (v & np.uint64(TIME_MASK)) < snapshotted
    one = np.uint64(1)
    breaks = (k[1:] != k[:-1] + one) | (d[1:] != d[:-1] + one) | (shared[1:] != shared[:-1])
    ends = np.append(np.flatnonzero(breaks) + 1, m)  # each run's end, its start's index
    firsts = np.insert(ends[:-1], 0, 0)
    runs = list(
        zip(
            k[firsts].tolist(),
            (k[ends - 1] + one).tolist(),
            d[firsts].tolist(),
            shared[firsts].tolist(),
            strict=True,
        )
    )
    return runs, m


class MetadataNoSpace(Exception):
    """The metadata device has no free block (a real metadata operation failure)."""


class PoolMetadata:
    """struct dm_pool_metadata."""

    # the last ``lookup_for_write``'s walk, for the ``overwrite_in_place`` after it (None
    # between writes: a pickled state has none)
    _walk = None
    _new_at = None  # the last ``lookup_for_new``'s leaf, for ``insert_new_at``

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_walk", None)
        state.pop("_new_at", None)
        return state

    def __init__(
        self, nr_md_blocks: int, data_block_size: int, *, track_writes: bool = False
    ) -> None:
        self._track_writes = track_writes
        self.data_block_size = data_block_size
        self.time = 0
        self.trans_id = 0
        self.held_root = 0
        self.needs_check = False
        self.in_service = False
        self.commit_count = 0
        self.devices: dict[int, ThinDevice] = {}  # in-core tds, newest first on commit
        # where commits are written (a disk.MetadataDevice), if anywhere
        self.device = None
        self._format(nr_md_blocks)
        self._set_metadata_reserve()
        self._save_committed()

    def __repr__(self) -> str:
        return (
            f"PoolMetadata(nr_md_blocks={self.metadata_sm.nr_blocks}, "
            f"data_block_size={self.data_block_size})"
        )

    # dm-thin-metadata.c: __format_metadata
    def _format(self, nr_md_blocks: int) -> None:
        """Raises FormatError with the kernel's errno and log lines where the device is too
        small to format."""
        if not nr_md_blocks:
            # __superblock_all_zeroes: reading block 0 past the device's end fails
            raise FormatError(E.EIO, [])
        sm = MetadataSpaceMap()
        sm.log = log = LogLines()  # "unable to allocate new metadata block"
        tm = TransactionManager(sm)
        if self._track_writes:
            tm.dirty = set()
            tm.device_complete = True  # every block is dirty until a device has it
        self.tm = tm
        self.metadata_sm = sm
        tm.blocks[THIN_SUPERBLOCK_LOCATION] = _Block("superblock")
        try:
            sm.create(tm, nr_md_blocks, THIN_SUPERBLOCK_LOCATION)
        except (NoSpace, FormatError) as e:
            # dm-transaction-manager.c: dm_tm_create_internal
            raise FormatError(
                getattr(e, "errno", E.ENOSPC),
                [
                    *log.lines,
                    *getattr(e, "lines", ()),
                    ("transaction manager", "couldn't create metadata space map"),
                    ("thin metadata", "tm_create_with_sm failed"),
                ],
            ) from None
        steps = (
            ("sm_disk_create failed", lambda: setattr(self, "data_sm", DiskSpaceMap(tm, 0))),
            (None, self._setup_btree_details),
            (None, lambda: setattr(self, "root", self.info.empty())),
            (
                "couldn't create devices root",
                lambda: setattr(self, "details_root", self.details_info.empty()),
            ),
        )
        for error, step in steps:
            try:
                step()
            except NoSpace:
                tail = [("thin metadata", error)] if error else []
                raise FormatError(E.ENOSPC, [*log.lines, *tail]) from None
        # __write_initial_superblock
        self.data_sm.commit()
        sm.commit()
        tm.commit()
        self._sb_nr_blocks = nr_md_blocks

    def _setup_btree_details(self) -> None:
        tm = self.tm
        data_vt = ValueType(
            8, inc=self._data_block_inc, dec=self._data_block_dec, equal=_data_block_equal
        )
        self.info = BTreeInfo(tm, 2, data_vt)
        self.bl_info = BTreeInfo(tm, 1, data_vt)
        self.tl_info = BTreeInfo(
            tm,
            1,
            ValueType(8, inc=tm.inc_many, dec=self._subtree_dec),
        )
        self.details_info = BTreeInfo(tm, 1, ValueType(24))

    def _data_block_inc(self, values) -> None:
        """dm-thin-metadata.c: data_block_inc."""
        self.data_sm.inc_many(*_data_blocks(values))

    def _data_block_dec(self, values) -> None:
        """dm-thin-metadata.c: data_block_dec."""
        if len(values) == 1:  # a removal's one value: ``dec`` is what dec_many does for it
            self.data_sm.dec(values[0] >> TIME_BITS)
            return
        self.data_sm.dec_many(*_data_blocks(values))

    def _subtree_dec(self, roots) -> None:
        for root in roots:
            self.bl_info.delete(root)

    def _set_metadata_reserve(self) -> None:
        self.metadata_reserve = min(4096, self.metadata_sm.nr_blocks // 10)

    # -- counts --------------------------------------------------------------------

    def free_metadata_blocks(self) -> int:
        """dm_pool_get_free_metadata_block_count: free blocks less the reserve."""
        free = self.metadata_sm.nr_free()
        return 0 if free < self.metadata_reserve else free - self.metadata_reserve

    def metadata_dev_size(self) -> int:
        return self.metadata_sm.nr_blocks

    def free_data_blocks(self) -> int:
        return self.data_sm.nr_free()

    def data_dev_size(self) -> int:
        return self.data_sm.old_nr_blocks

    # -- devices -------------------------------------------------------------------

    def _details(self, dev: int):
        return self.details_info.get(self.details_root, (dev,))

    def device_exists(self, dev: int) -> bool:
        return dev in self.devices or self._details(dev) is not None

    def open_device(self, dev: int, create: bool = False, time: int | None = None) -> ThinDevice:
        """dm-thin-metadata.c: __open_device -- KeyError when it does not exist."""
        td = self.devices.get(dev)
        if td is not None:
            if create:
                raise FileExistsError(dev)
            td.open_count += 1
            return td
        details = self._details(dev)
        if details is None:
            if not create:
                raise KeyError(dev)
            t = self.time
            td = ThinDevice(dev, 0, self.trans_id, t, t, open_count=1, changed=True)
        else:
            if create:
                raise FileExistsError(dev)
            mapped, trans, ctime, stime = details
            td = ThinDevice(dev, mapped, trans, ctime, stime, open_count=1)
        # list_add: newest first
        self.devices = {dev: td, **self.devices}
        return td

    def close_device(self, td: ThinDevice) -> None:
        td.open_count -= 1

    def create_thin(self, dev: int) -> None:
        """__create_thin: EEXIST as FileExistsError."""
        self.in_service = True
        if self._details(dev) is not None:
            raise FileExistsError(dev)
        dev_root = self.bl_info.empty()
        self.root, _ = self.tl_info.insert(self.root, (dev,), dev_root)
        td = self.open_device(dev, create=True)
        self.close_device(td)

    def create_snap(self, dev: int, origin: int) -> None:
        """__create_snap: FileExistsError if ``dev`` exists, KeyError if ``origin`` doesn't."""
        self.in_service = True
        if self._details(dev) is not None:
            raise FileExistsError(dev)
        origin_root = self.tl_info.lookup(self.root, (origin,))
        self.tm.inc(origin_root)
        self.root, _ = self.tl_info.insert(self.root, (dev,), origin_root)
        self.time += 1
        try:
            td = self.open_device(dev, create=True)
        except FileExistsError:
            # bad: the new key taken out again.  Reached only when ``dev`` was made in this
            # transaction (its details not written yet), which pool_message's commit after
            # each message rules out; the kernel then leaves ``dev`` without a mapping tree.
            self.root = self.tl_info.remove(self.root, (dev,))
            raise
        # __set_snapshot_details
        otd = self.open_device(origin)
        otd.changed = True
        otd.snapshotted_time = self.time
        td.mapped_blocks = otd.mapped_blocks
        td.snapshotted_time = self.time
        self.close_device(otd)
        self.close_device(td)

    def delete_thin(self, dev: int) -> None:
        """__delete_device: KeyError if absent, BlockingIOError (EBUSY) if open."""
        self.in_service = True
        td = self.open_device(dev)
        if td.open_count > 1:
            self.close_device(td)
            raise BlockingIOError(dev)
        del self.devices[dev]
        self.details_root = self.details_info.remove(self.details_root, (dev,))
        self.root = self.tl_info.remove(self.root, (dev,))

    def set_transaction_id(self, current: int, new: int) -> None:
        self.in_service = True
        if self.trans_id != current:
            raise ValueError("mismatched transaction id")
        self.trans_id = new

    def reserve_metadata_snap(self) -> None:
        """__reserve_metadata_snap: BlockingIOError (EBUSY) if one is held already."""
        self.in_service = True
        self.commit()
        # Measured on Debian's 6.1 (tests/kernel/recorded/metadata_snap.txt): a second
        # reserve leaves no trace, not even the superblock copy the C source would make
        # and drop, so the held root is checked before anything is allocated.
        if self.held_root:
            raise BlockingIOError("held")
        tm = self.tm
        sm = self.metadata_sm
        sm.inc(THIN_SUPERBLOCK_LOCATION)
        copy, _ = tm.shadow_block(THIN_SUPERBLOCK_LOCATION)
        tm.inc(self.root)
        tm.inc(self.details_root)
        self._held = (self.root, self.details_root)
        self.held_superblock = (self.time, self.trans_id, 1 if self.needs_check else 0)
        self.held_root = copy

    def release_metadata_snap(self) -> None:
        """__release_metadata_snap: ValueError (EINVAL) if none is held."""
        self.in_service = True
        held = self.held_root
        self.held_root = 0
        if not held:
            raise ValueError("no metadata snapshot")
        root, details_root = self._held
        self.info.delete(root)
        self.details_info.delete(details_root)
        self.tm.dec(held)

    def held_snapshot(self):
        """(mapping root, details root) of the held metadata snapshot, or None."""
        return self._held if self.held_root else None

    # -- mappings ----------------------------------------------------------------------

    def lookup(self, td: ThinDevice, block: int):
        """dm_thin_find_block: (data_block, shared) or None when unmapped."""
        value = self.info.get(self.root, (td.id, block))
        if value is None:
            return None
        return value >> TIME_BITS, td.snapshotted_time > (value & TIME_MASK)

    def lookup_for_write(self, td: ThinDevice, block: int):
        """``lookup`` for a write: the same walk, which also keeps its path for
        ``overwrite_in_place`` (the insert that follows it goes down the same nodes), or,
        where the block is missing from a leaf of the device's tree, for
        ``insert_in_place`` (the value's index then that of the last key below it, -1 for
        none, and the value None).  A walk that stops before such a leaf (the device's
        tree missing, or an internal node whose first key is above the key: the insert
        changes that key) keeps nothing."""
        blocks = self.tm.blocks
        path = []
        b = self.root
        key = td.id
        value = None
        node = blocks[b]
        path.append(b)
        while True:  # the top level
            nkeys = node.keys
            i = bisect_right(nkeys, key) - 1
            if i < 0:
                self._walk = None
                return None
            if node.leaf:
                if nkeys[i] != key:
                    self._walk = None
                    return None
                b = node.values[i]
                break
            b = node.values[i]
            node = blocks[b]
            path.append(b)
        node = blocks[b]
        path.append(b)
        while True:  # the device's tree
            nkeys = node.keys
            i = bisect_right(nkeys, block) - 1
            if node.leaf:
                if i < 0 or nkeys[i] != block:
                    self._walk = (self.root, td.id, block, path, node, i, None)
                    return None
                value = node.values[i]
                break
            if i < 0:
                self._walk = None
                return None
            b = node.values[i]
            node = blocks[b]
            path.append(b)
        self._walk = (self.root, td.id, block, path, node, i, value)
        return value >> TIME_BITS, td.snapshotted_time > (value & TIME_MASK)

    def lookup_for_new(self, td: ThinDevice, block: int):
        """``lookup`` for ``Pool.write_each_fast``: the same walk, which, where the block
        is missing from a leaf of the device's tree and an insert there would change
        nothing but that leaf (``BTreeInfo._insert_in_place``'s conditions, checked on
        the way down: every node shadowed in this transaction with one reference, no
        internal node full, the leaf not full), keeps that leaf and the index of the
        last key below the block for ``insert_new_at``."""
        tm = self.tm
        blocks = tm.blocks
        shadows = tm.shadows
        ll = tm.sm.ll
        maps, entries = ll.maps, ll.ENTRIES_PER_BITMAP
        ok = not tm.sm._bops
        self._new_at = None
        self._walk = None
        b = self.root
        key = td.id
        node = blocks[b]
        while True:  # the top level
            if ok:
                m = maps[b // entries]
                ok = (
                    b in shadows
                    and m is not None
                    and m[b % entries] == 1
                    and (node.leaf or len(node.keys) < node.max_entries)
                )
            nkeys = node.keys
            i = bisect_right(nkeys, key) - 1
            if i < 0:
                return None
            b = node.values[i]
            if node.leaf:
                if nkeys[i] != key:
                    return None
                break
            node = blocks[b]
        node = blocks[b]
        while True:  # the device's tree
            if ok:
                m = maps[b // entries]
                ok = (
                    b in shadows
                    and m is not None
                    and m[b % entries] == 1
                    and len(node.keys) < node.max_entries
                )
            nkeys = node.keys
            i = bisect_right(nkeys, block) - 1
            if node.leaf:
                if i < 0 or nkeys[i] != block:
                    if ok:
                        self._new_at = (self.root, td.id, block, node, i)
                    return None
                value = node.values[i]
                return value >> TIME_BITS, td.snapshotted_time > (value & TIME_MASK)
            if i < 0:
                return None
            b = node.values[i]
            node = blocks[b]

    def insert_new_at(self, td: ThinDevice, block: int, data_block: int) -> bool:
        """``insert_block`` of the block ``lookup_for_new`` found missing, in the leaf it
        kept, where the caller knows the metadata unchanged since that lookup (nothing
        allocated, shadowed, counted or committed): key and value put after the last key
        below the block, the device's count raised, as the insert does.  False (nothing
        done) where that lookup kept nothing."""
        at = self._new_at
        self._new_at = None
        if at is None or at[0] != self.root or at[1] != td.id or at[2] != block:
            return False
        leaf = at[3]
        i = at[4] + 1
        self.in_service = True
        leaf.keys.insert(i, block)
        leaf.values.insert(i, (data_block << TIME_BITS) | self.time)
        td.changed = True
        td.mapped_blocks += 1
        return True

    def _path_in_place(self, path) -> bool:
        """Whether an insert down ``path`` (a walk's blocks, root first) would change
        nothing but its leaf: ``BTreeInfo._insert_in_place``'s conditions on the way down
        (every node shadowed in this transaction with one reference and still held, no
        internal node full, no space-map operation pending)."""
        tm = self.tm
        if tm.sm._bops:
            return False
        blocks = tm.blocks
        in_place = self._unshared_shadow
        for b in path:
            if not in_place(b):
                return False
            node = blocks.get(b)
            if node is None or (not node.leaf and len(node.keys) == node.max_entries):
                return False
        return True

    def _unshared_shadow(self, b: int) -> bool:
        """Whether block ``b`` is shadowed in this transaction with one reference: an
        insert's walk uses it in place."""
        tm = self.tm
        if b not in tm.shadows:
            return False
        ll = tm.sm.ll
        m = ll.maps[b // ll.ENTRIES_PER_BITMAP]
        return m is not None and m[b % ll.ENTRIES_PER_BITMAP] == 1

    def overwrite_in_place(self, td: ThinDevice, block: int, data_block: int) -> bool:
        """``insert_block`` of a block ``lookup_for_write`` found mapped, when the insert
        would change nothing but its leaf (``BTreeInfo._insert_in_place``'s case: every
        node on the walk's path shadowed in this transaction with one reference, no
        internal node full): the old value's data block is released and the value set,
        as that insert does, without walking down again.  False (nothing done) otherwise."""
        walk = self._walk
        self._walk = None
        if walk is None or walk[0] != self.root or walk[1] != td.id or walk[2] != block:
            return False
        _root, _dev, _block, path, leaf, i, old = walk
        if old is None or not self._path_in_place(path):
            return False
        if self.tm.blocks.get(path[-1]) is not leaf or leaf.values[i] != old:
            return False
        self.in_service = True
        value = pack_block_time(data_block, self.time)
        if (old >> TIME_BITS) != data_block:
            self._data_block_dec((old,))
        leaf.values[i] = value
        td.changed = True
        return True

    def insert_in_place(self, td: ThinDevice, block: int, data_block: int) -> bool:
        """``insert_block`` of a block ``lookup_for_write`` found missing from a leaf of
        the device's tree, when the insert would change nothing but that leaf
        (``BTreeInfo._insert_in_place``'s case: every node on the walk's path shadowed in
        this transaction with one reference, no internal node full, the leaf not full):
        the key and value are put in the leaf after the last key below the block, and the
        device's count raised, as that insert does, without walking down again.  Checked
        when called (the data block's allocation in between may commit, or shadow and
        allocate metadata blocks); False (nothing done) otherwise."""
        walk = self._walk
        self._walk = None
        if walk is None or walk[0] != self.root or walk[1] != td.id or walk[2] != block:
            return False
        _root, _dev, _block, path, leaf, i, old = walk
        keys = leaf.keys
        if old is not None or len(keys) == leaf.max_entries:
            return False
        if (i >= 0 and keys[i] >= block) or (i + 1 < len(keys) and keys[i + 1] <= block):
            return False  # not where the block goes (a leaf changed since: not expected)
        if not self._path_in_place(path) or self.tm.blocks.get(path[-1]) is not leaf:
            return False
        self.in_service = True
        keys.insert(i + 1, block)
        leaf.values.insert(i + 1, pack_block_time(data_block, self.time))
        td.changed = True
        td.mapped_blocks += 1
        return True

    def insert_block(self, td: ThinDevice, block: int, data_block: int) -> None:
        """dm_thin_insert_block."""
        self.in_service = True
        value = pack_block_time(data_block, self.time)
        self.root, inserted = self.info.insert(self.root, (td.id, block), value)
        td.changed = True
        if inserted:
            td.mapped_blocks += 1

    def append_blocks(self, td: ThinDevice, first_block: int, data_begin: int, n: int) -> None:
        """Map ``first_block + i`` to ``data_begin + i`` for i < n, every block above the
        device's highest mapped one: what n calls of ``insert_block`` leave, faster."""
        from array import array

        self.in_service = True
        t = self.time
        values = array(
            "Q",
            range(
                (data_begin << TIME_BITS) | t, ((data_begin + n) << TIME_BITS) | t, 1 << TIME_BITS
            ),
        )
        self.root = self.info.append_run(self.root, td.id, first_block, values)
        td.changed = True
        td.mapped_blocks += n

    def remove_range(self, td: ThinDevice, begin: int, end: int) -> int:
        """__remove_range: unmap every mapped block in [begin, end); returns the count.

        The kernel takes the mapping tree out of the top-level tree (a reference held
        over it: ``dm_tm_inc``, then ``dm_btree_remove``, whose ``subtree_dec`` drops that
        reference again), removes the leaves, and inserts the new root.  When the top
        level is one leaf and both it and the mapping root are shadows of this transaction
        with one reference (every call after the first of a discard), those steps change
        nothing but the leaf's value: the counts go 1 -> 2 -> 1 in bitmaps already
        shadowed, the key is deleted and inserted again in place.  ``_tl_in_place`` finds
        that case and the value is set directly; any other takes the kernel's steps."""
        self.in_service = True
        key = (td.id,)
        place = self._tl_in_place(td.id)
        if place is None:
            mapping_root = self.tl_info.lookup(self.root, key)
            self.tm.inc(mapping_root)
            self.root = self.tl_info.remove(self.root, key)
        else:
            leaf, i = place
            mapping_root = leaf.values[i]
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
        if place is None:
            self.root, _ = self.tl_info.insert(self.root, key, mapping_root)
        else:
            leaf.values[i] = mapping_root
        return total

    def take_leftmost_runs(self, td: ThinDevice, begin: int, end: int):
        """The runs ``find_mapped_range`` would give one after the other from ``begin``
        and ``remove_range`` would then remove, for as many of them as one step can take,
        as (virt_begin, virt_end, data_begin, shared) in order; the mapping tree and the
        device's count are left as those calls leave them, and the caller then does for
        each run, in order, what their calls' data-block decrements do
        (``_data_block_dec`` of the run's values, one at a time) and what it does after
        each ``remove_range`` (a discard's passdown).  None when no run can be taken so
        (the caller takes the ordinary path for the next one).

        Taken so when no key of the device is below ``begin`` (a device discarded from
        its start), ``remove_range`` would change nothing in the top level
        (``_tl_in_place``) and ``BTreeInfo.leftmost_pair`` finds every removal walk only
        rebalancing the two leftmost leaves: then, each run's walks being one a key and
        one more that removes nothing, the runs' walks leave what ``take_leftmost`` does
        for all their keys, if every walk's rebalance stays above the merge threshold and
        each run is known to end within the two leaves.  Those walks allocate and count
        nothing, so the data-block counts changed between them may change after them."""
        place = self._tl_in_place(td.id)
        if place is None:
            return None
        leaf, i = place
        bl = self.bl_info
        found = bl.leftmost_pair(leaf.values[i], begin)
        if found is None:
            return None
        keys, values = leftmost_entries(found)
        n = len(keys)
        limit = n if found[0] is None else n - found[3]  # keys the runs may take
        runs, s = _runs(keys, values, bisect_left(keys, end), td.snapshotted_time)
        # a merge on the way (a run past ``limit``), or the last run may go on in the
        # next leaf
        while runs and (s > limit or (s == n and runs[-1][1] < end and found[0] is not None)):
            vb, ve, _db, _shared = runs.pop()
            s -= ve - vb
        if not runs:
            return None
        self.in_service = True
        bl.reshapes += 1
        take_leftmost(found, keys, values, s, True)
        td.mapped_blocks -= s
        td.changed = True
        return runs

    def _tl_in_place(self, dev: int):
        """(top-level leaf, index of ``dev``) when ``remove_range``'s removal and
        re-insertion of ``dev``'s mapping tree would change nothing but that value (see
        there); else None."""
        tm = self.tm
        root = self.root
        if root not in tm.shadows or not tm.unshared(root):
            return None
        leaf = tm.blocks[root]
        if not leaf.leaf:
            return None
        keys = leaf.keys
        i = bisect_left(keys, dev)
        if i == len(keys) or keys[i] != dev:
            return None
        mapping_root = leaf.values[i]
        if mapping_root not in tm.shadows or not tm.unshared(mapping_root):
            return None
        return leaf, i

    def find_mapped_range(self, td: ThinDevice, begin: int, end: int):
        """dm_thin_find_mapped_range: the first run contiguous in both virtual and data
        blocks with one sharing state, as (virt_begin, virt_end, data_begin, shared);
        None when nothing in [begin, end) is mapped.  The kernel looks each next block up
        (``__find_block``); nothing changes in between, so the mappings are read here from
        the leaves in key order, with the same answers."""
        root = self.tl_info.lookup(self.root, (td.id,))
        nxt = self.bl_info.lookup_next_single(root, begin)
        if nxt is None or nxt[0] >= end:
            return None
        begin, value = nxt
        data_begin = value >> TIME_BITS
        snapshotted = td.snapshotted_time
        shared = snapshotted > (value & TIME_MASK)
        virt_end = begin + 1
        expect = data_begin + 1
        if virt_end < end:
            for keys, values, i in self.bl_info.leaf_runs(root, virt_end):
                n = len(keys)
                while i < n:
                    value = values[i]
                    if (
                        keys[i] != virt_end
                        or value >> TIME_BITS != expect
                        or (snapshotted > (value & TIME_MASK)) != shared
                    ):
                        return begin, virt_end, data_begin, shared
                    virt_end += 1
                    expect += 1
                    if virt_end == end:
                        return begin, virt_end, data_begin, shared
                    i += 1
        return begin, virt_end, data_begin, shared

    def overwrite_leaf(self, td: ThinDevice, block: int):
        """The mapping leaf where ``overwrite_in_place`` would set ``block``'s value after a
        ``lookup_for_write`` of it made now, as (leaf, index of ``block`` in it, the walk's
        nodes as (block number, node) pairs); None where it would not (``block``
        unmapped, a node on the walk not held in memory, not a shadow of this transaction
        with one reference, an internal node full, counts queued).  Nothing is read from
        the metadata device and nothing changes.

        While the transaction goes on and nothing but values in that leaf changes
        (``set_in_leaf``) and the walk's nodes stay held, the answer for another key
        found in the leaf is the same leaf: a key is in the one leaf its walk reaches.

        The walk is ``_space_map.c``'s overwrite_walk where it is built (``_C_WALK``),
        the loop here the reference (and the fallback where C declines a node)."""
        tm = self.tm
        if tm.sm._bops:
            return None
        if _C_WALK is not None:
            found = _C_WALK(self.root, td.id, block, tm.blocks, tm.shadows, tm.sm.ll.maps)
            if found is not NotImplemented:
                return found
        blocks = tm.blocks
        shadows = tm.shadows
        ll = tm.sm.ll
        maps, entries = ll.maps, ll.ENTRIES_PER_BITMAP
        nodes = []
        b = self.root
        key = td.id
        for level in (0, 1):
            while True:
                node = blocks.get(b)
                if node is None or b not in shadows:
                    return None
                m = maps[b // entries]
                if m is None or m[b % entries] != 1:
                    return None
                nodes.append((b, node))
                nkeys = node.keys
                i = bisect_right(nkeys, key) - 1
                if i < 0:
                    return None
                if node.leaf:
                    if nkeys[i] != key:
                        return None
                    break
                if len(nkeys) == node.max_entries:
                    return None
                b = node.values[i]
            if level == 0:
                b = node.values[i]
                key = block
        return node, i, nodes

    def shared_leaf(self, td: ThinDevice, block: int):
        """Where ``insert_block`` of ``block``, mapped, would shadow the block's leaf and
        change nothing else: every node above the leaf (the top level's leaf too)
        shadowed in this transaction with one reference and held, no internal node full,
        the leaf held but not such a shadow (the first write to it in the transaction,
        while a snapshot shares it).  As (parent, the leaf's index in it, the leaf's
        block, the leaf, the block's index in the leaf); None otherwise.  Nothing is read
        from the metadata device and nothing changes."""
        tm = self.tm
        if tm.sm._bops:
            return None
        blocks = tm.blocks
        unshared_shadow = self._unshared_shadow
        parent = None
        pi = -1
        b = self.root
        key = td.id
        for level in (0, 1):
            while True:
                node = blocks.get(b)
                if node is None:
                    return None
                in_place = unshared_shadow(b)
                nkeys = node.keys
                i = bisect_right(nkeys, key) - 1
                if level and node.leaf:
                    if in_place or i < 0 or nkeys[i] != key:
                        return None
                    return parent, pi, b, node, i
                if not in_place or i < 0:
                    return None
                parent, pi = node, i
                b = node.values[i]
                if node.leaf:
                    if nkeys[i] != key:
                        return None
                    break
                if len(nkeys) == node.max_entries:
                    return None
            key = block
        return None  # not reached

    def shadow_leaf(self, parent, pi: int, b: int):
        """The leaf at block ``b``, child ``pi`` of ``parent`` as ``shared_leaf`` found
        them, shadowed as ``insert_block``'s walk shadows it (bn_shadow: a block
        allocated, the original's count dropped, its values' data blocks raised where it
        was shared) and the parent pointed at the copy; returns the copy, the leaf in
        place now."""
        info = self.info
        nb, node = info._shadow(b, info.value_type)
        parent.values[pi] = nb
        return node

    def set_in_leaf(self, td: ThinDevice, leaf, i: int, data_block: int) -> None:
        """``overwrite_in_place``'s change, in the leaf ``overwrite_leaf`` found (its
        conditions holding still): the old value's data block released (NoSpace where
        that fails, the value unchanged), then the new value set."""
        self.in_service = True
        old = leaf.values[i]
        if (old >> TIME_BITS) != data_block:
            self._data_block_dec((old,))
        leaf.values[i] = pack_block_time(data_block, self.time)
        td.changed = True

    def set_run_in_leaf(self, td: ThinDevice, leaf, indexes, data_begin: int, olds) -> None:
        """``set_in_leaf`` for the entries ``indexes`` of ``leaf`` in turn, the i-th given
        data block ``data_begin + i`` (blocks just allocated, so each differs from the
        old one), with the old blocks ``olds`` (the data blocks the entries map now, as
        the caller read them) released together after the values are set (one
        ``data_block_dec`` of them, the same counts in the same order): for a caller that
        has made sure no release frees a block or changes what the others see (the
        writes of ``Pool._leaf_run``)."""
        self.in_service = True
        values = leaf.values
        t = self.time
        b = data_begin
        for i in indexes:
            values[i] = (b << TIME_BITS) | t  # pack_block_time
            b += 1
        td.changed = True
        if len(olds) == 1:  # _data_block_dec
            self.data_sm.dec(olds[0])
        else:
            self.data_sm.dec_many(olds)

    def highest_mapped(self, td: ThinDevice) -> int | None:
        root = self.tl_info.lookup(self.root, (td.id,))
        return self.bl_info.find_highest_key(root)

    def device_mappings(self, root: int):
        return self.bl_info.items(root)

    def thin_roots(self, root: int | None = None) -> dict[int, int]:
        return dict(self.tl_info.items(self.root if root is None else root))

    def all_details(self, details_root: int | None = None) -> dict[int, tuple]:
        return dict(
            self.details_info.items(self.details_root if details_root is None else details_root)
        )

    # -- data space --------------------------------------------------------------------

    def alloc_data_block(self) -> int:
        """dm_pool_alloc_data_block: NoSpace when no block is free."""
        self.in_service = True
        return self.data_sm.new_block()

    def resize_data_dev(self, new_count: int) -> None:
        """dm_pool_resize_data_dev: grow only (the caller has checked)."""
        self.in_service = True
        self.data_sm.extend(new_count - self.data_sm.nr_blocks)

    def resize_metadata_dev(self, new_count: int, log=None) -> None:
        """dm_pool_resize_metadata_dev: NoSpace when the extension cannot place its blocks."""
        self.in_service = True
        self.metadata_sm.extend(new_count - self.metadata_sm.nr_blocks, log)
        self._set_metadata_reserve()

    # -- commit ----------------------------------------------------------------------

    def commit(self) -> None:
        """__commit_transaction (nothing is written before the first change).

        NoSpace when a step that allocates metadata blocks fails (a details insert, the
        data space map's index writeback, the metadata index shadow).  The superblock is
        then not written, and the abort that follows re-opens the last commit that wrote
        it, even where the kernel had already run sm_disk_commit in core.  So here every
        step that can fail runs before either space map forgets its last commit.
        """
        if not self.in_service:
            return
        self._write_changed_details()
        self.data_sm.pre_commit()
        self.metadata_sm.pre_commit()
        # nothing below allocates: the transaction is written (dm_tm_pre_commit writes the
        # changed blocks and flushes, dm_tm_commit the superblock).  A failed write raises
        # before anything forgets the last commit, which is still the one on disk.
        if self.device is not None:
            self.device.write(self)
        self.data_sm.commit()
        self.metadata_sm.commit()
        self.tm.commit()
        self._save_committed()
        self.commit_count += 1

    def _save_committed(self) -> None:
        self._committed = (
            self.root,
            self.details_root,
            self.time,
            self.trans_id,
            self.held_root,
            getattr(self, "_held", None),
            getattr(self, "held_superblock", None),
        )

    def abort(self) -> None:
        """dm_pool_abort_metadata: drop the transaction, re-open the last commit.

        The in-core thin devices are kept as they are (the kernel keeps its td list).
        """
        if self.device is not None:
            self.device.drop_transaction(self)
        for td in self.devices.values():
            # __set_abort_with_changes_flags
            td.aborted_with_changes = td.changed
        changed = self.metadata_sm.rollback()
        self.data_sm.rollback()
        self.tm.rollback(changed)
        (
            self.root,
            self.details_root,
            self.time,
            self.trans_id,
            self.held_root,
            self._held,
            self.held_superblock,
        ) = self._committed

    def _write_changed_details(self) -> None:
        for dev, td in list(self.devices.items()):
            if td.changed:
                self.details_root, _ = self.details_info.insert(
                    self.details_root, (dev,), td.details()
                )
                td.changed = False
                if not td.open_count:
                    del self.devices[dev]

    # -- checks ----------------------------------------------------------------------

    def live_metadata_blocks(self) -> int:
        return self.metadata_sm.ll.nr_allocated


__all__ = ["MetadataNoSpace", "NoSpace", "PoolMetadata", "ThinDevice", "pack_block_time"]


def _check_metadata(pmd: PoolMetadata) -> None:
    """Assert the invariants: every reference count equals the references that exist."""
    from collections import Counter

    tm = pmd.tm
    md = Counter()
    data = Counter()
    visited: set[int] = set()

    def walk(root: int, levels: int, leaf_values_are_data: bool) -> None:
        md[root] += 1
        if root in visited:
            return
        visited.add(root)
        node = tm.read(root)
        assert len(node.keys) <= node.max_entries, (root, node)
        assert list(node.keys) == sorted(set(node.keys)), f"keys out of order in {root}"
        if not node.leaf:
            assert len(node.values) == len(node.keys)
            for i, child in enumerate(node.values):
                cn = tm.read(child)
                if cn.keys:
                    assert cn.keys[0] >= node.keys[i], (root, i)
                    if i + 1 < len(node.keys):
                        assert cn.keys[-1] < node.keys[i + 1], (root, i)
                walk(child, levels, leaf_values_are_data)
        elif levels > 1:
            for child in node.values:
                walk(child, levels - 1, leaf_values_are_data)
        elif leaf_values_are_data:
            for v in node.values:
                data[v >> TIME_BITS] += 1

    md[THIN_SUPERBLOCK_LOCATION] += 1
    sm = pmd.metadata_sm
    md[sm.index_block] += 1
    for b in sm.ll.bitmaps:
        md[b] += 1
    walk(sm.ll.ref_root, 1, False)
    dll = pmd.data_sm.ll
    for b in dll.bitmaps:
        md[b] += 1
    walk(dll.index_root, 1, False)
    walk(dll.ref_root, 1, False)
    walk(pmd.root, 2, True)
    walk(pmd.details_root, 1, False)
    if pmd.held_root:
        md[pmd.held_root] += 1
        root, details_root = pmd._held
        walk(root, 2, True)
        walk(details_root, 1, False)
    # every non-zero count, read from the bitmaps in use (O(what is in use), not O(device))
    assert sm.ll.counts() == {b: md[b] for b in sorted(md)}, "metadata reference counts"
    assert sm.ll.nr_allocated == len(md)
    assert dll.counts() == {b: data[b] for b in sorted(data)}, "data reference counts"
    assert dll.nr_allocated == len(data)
    for ll in (sm.ll, dll):
        assert set(ll.big) == {b for b, c in ll.counts().items() if c > 2}
        assert dict(ll.ref_info.items(ll.ref_root)) == ll.big
        assert len(ll.maps) == len(ll.bitmaps)
        touched = ll._touched()
        for i, m in enumerate(ll.maps):
            assert m is None or m.count(0) < len(m) or i in touched, f"bitmap {i} kept all zero"
    # device details agree with the trees
    roots = pmd.thin_roots()
    for dev, td in pmd.devices.items():
        assert dev in roots
        assert td.mapped_blocks == sum(1 for _ in pmd.device_mappings(roots[dev])), dev


PoolMetadata._check = _check_metadata
