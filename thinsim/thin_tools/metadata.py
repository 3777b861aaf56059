"""Reading dm-thin metadata as thin-provisioning-tools 0.9.0 reads it.

A port of the parts of persistent-data/ and thin-provisioning/ the tools use to read:
the block manager with its validators (block.cc, validators.cc, superblock.cc,
space-maps/disk.cc), btree nodes and the depth-first walk (btree.tcc), the damage visitor
that turns bad nodes into lost key ranges (btree_damage_visitor.h/.cc), the node checker
(btree_node_checker.cc), and the space maps' reference counts.  Error texts are the C++
ones, since the tools print them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..constants import (
    BITMAP_CSUM_XOR,
    BTREE_CSUM_XOR,
    INDEX_CSUM_XOR,
    INTERNAL_NODE,
    LEAF_NODE,
    SUPERBLOCK_CSUM_XOR,
)
from ..constants import THIN_SUPERBLOCK_LOCATION as SUPERBLOCK_LOCATION
from ..constants import THIN_SUPERBLOCK_MAGIC as SUPERBLOCK_MAGIC
from ..model.disk import bm_checksum
from .common import MD_BLOCK_SIZE, Handle, ToolError

NODE_HEADER_SIZE = 32
DEVICE_DETAILS_SIZE = 24


class ChecksumError(ToolError):
    """persistent-data's checksum_error."""


class BlockManager:
    """block_manager: reads 4 KiB blocks of a metadata device, checking each with a
    validator.  ``nr_blocks`` is the device size in whole blocks."""

    def __init__(self, handle: Handle, nr_blocks: int) -> None:
        self.handle = handle
        self.nr_blocks = nr_blocks
        self._cache: dict[int, bytes] = {}

    def raw(self, b: int) -> bytes:
        data = self._cache.get(b)
        if data is None:
            if b >= self.nr_blocks:
                # block_cache::get
                raise ToolError(f"block out of bounds ({b} >= {self.nr_blocks})\n")
            data = self.handle.pread(b * MD_BLOCK_SIZE, MD_BLOCK_SIZE)
            self._cache[b] = data
        return data

    def read(self, b: int, validator=None) -> bytes:
        data = self.raw(b)
        if validator is not None:
            validator(data, b)
        return data


def superblock_validator(data: bytes, b: int) -> None:
    want = bm_checksum(data[4:], SUPERBLOCK_CSUM_XOR)
    if want != struct.unpack_from("<I", data, 0)[0]:
        raise ChecksumError(f"bad checksum in superblock, wanted {want}")


def superblock_ok(data: bytes) -> bool:
    return bm_checksum(data[4:], SUPERBLOCK_CSUM_XOR) == struct.unpack_from("<I", data, 0)[0]


def btree_node_validator(data: bytes, b: int) -> None:
    csum, _flags, blocknr = struct.unpack_from("<IIQ", data, 0)
    if bm_checksum(data[4:], BTREE_CSUM_XOR) != csum:
        raise ChecksumError(f"bad checksum in btree node (block {b})")
    if blocknr != b:
        raise ChecksumError(f"bad block nr in btree node (block = {b})")


def btree_node_ok(data: bytes, b: int) -> bool:
    try:
        btree_node_validator(data, b)
    except ChecksumError:
        return False
    return True


def bitmap_validator(data: bytes, b: int) -> None:
    csum, _nf, blocknr = struct.unpack_from("<IIQ", data, 0)
    if bm_checksum(data[4:], BITMAP_CSUM_XOR) != csum:
        raise ChecksumError(f"bad checksum in space map bitmap (block {b})")
    if blocknr != b:
        raise ChecksumError(f"bad block nr in space map bitmap (block {b})")


def index_validator(data: bytes, b: int) -> None:
    csum, _pad, blocknr = struct.unpack_from("<IIQ", data, 0)
    if bm_checksum(data[4:], INDEX_CSUM_XOR) != csum:
        raise ChecksumError(f"bad checksum in metadata index block (block {b})")
    if blocknr != b:
        raise ChecksumError(f"bad block nr in metadata index block (block {b})")


# -- the superblock -----------------------------------------------------------------------


@dataclass
class SmRoot:
    """struct disk_sm_root."""

    nr_blocks: int
    nr_allocated: int
    bitmap_root: int
    ref_count_root: int

    @classmethod
    def unpack(cls, raw: bytes) -> SmRoot:
        return cls(*struct.unpack_from("<QQQQ", raw, 0))

    def pack(self) -> bytes:
        data = struct.pack(
            "<QQQQ", self.nr_blocks, self.nr_allocated, self.bitmap_root, self.ref_count_root
        )
        return data + bytes(128 - len(data))


@dataclass
class Superblock:
    """struct thin_disk_superblock (superblock.h), unpacked."""

    flags: int = 0
    blocknr: int = 0
    uuid: bytes = bytes(16)
    magic: int = SUPERBLOCK_MAGIC
    version: int = 2
    time: int = 0
    trans_id: int = 0
    metadata_snap: int = 0
    data_space_map_root: bytes = bytes(128)
    metadata_space_map_root: bytes = bytes(128)
    data_mapping_root: int = 0
    device_details_root: int = 0
    data_block_size: int = 0
    metadata_block_size: int = 8
    metadata_nr_blocks: int = 0
    compat_flags: int = 0
    compat_ro_flags: int = 0
    incompat_flags: int = 0

    @classmethod
    def unpack(cls, data: bytes) -> Superblock:
        flags, blocknr = struct.unpack_from("<IQ", data, 4)
        magic, version, time, trans_id, snap = struct.unpack_from("<QIIQQ", data, 32)
        (root, details, dbs, mbs, mnr, compat, compat_ro, incompat) = struct.unpack_from(
            "<QQIIQIII", data, 320
        )
        return cls(
            flags, blocknr, bytes(data[16:32]), magic, version, time, trans_id, snap,
            bytes(data[64:192]), bytes(data[192:320]), root, details, dbs, mbs, mnr,
            compat, compat_ro, incompat,
        )  # fmt: skip

    def pack(self, base: bytes | None = None) -> bytes:
        """The block with its checksum (sb_validator::prepare), over ``base`` (the block
        as read: write_superblock keeps the bytes past the structure)."""
        buf = bytearray(base if base is not None else MD_BLOCK_SIZE)
        struct.pack_into("<IQ", buf, 4, self.flags, self.blocknr)
        buf[16:32] = self.uuid
        struct.pack_into(
            "<QIIQQ", buf, 32, self.magic, self.version, self.time, self.trans_id,
            self.metadata_snap,
        )  # fmt: skip
        buf[64:192] = self.data_space_map_root
        buf[192:320] = self.metadata_space_map_root
        struct.pack_into(
            "<QQIIQIII", buf, 320, self.data_mapping_root, self.device_details_root,
            self.data_block_size, self.metadata_block_size, self.metadata_nr_blocks,
            self.compat_flags, self.compat_ro_flags, self.incompat_flags,
        )  # fmt: skip
        struct.pack_into("<I", buf, 0, bm_checksum(bytes(buf[4:]), SUPERBLOCK_CSUM_XOR))
        return bytes(buf)

    @property
    def needs_check(self) -> bool:
        return bool(self.flags & 1)


def read_superblock(bm: BlockManager, location: int = SUPERBLOCK_LOCATION) -> Superblock:
    return Superblock.unpack(bm.read(location, superblock_validator))


# -- btree nodes --------------------------------------------------------------------------


class Node:
    """node_ref: a btree node as read, values left packed."""

    __slots__ = ("blocknr", "data", "flags", "location", "max_entries", "nr_entries", "value_size")

    def __init__(self, location: int, data: bytes) -> None:
        self.location = location
        self.data = data
        (self.flags, self.blocknr, self.nr_entries, self.max_entries, self.value_size) = (
            struct.unpack_from("<IQIII", data, 4)
        )

    def node_type(self) -> str:
        if self.flags & INTERNAL_NODE:
            if self.flags & LEAF_NODE:
                raise ToolError(f"btree node is both internal and leaf (block {self.location})")
            return "internal"
        if self.flags & LEAF_NODE:
            return "leaf"
        raise ToolError(f"unknown node type (block {self.location})")

    def _check_fits(self, value_size: int) -> None:
        # node_ref::check_fits_within_block
        if self.value_size != value_size:
            raise ToolError(
                f"value size mismatch: expected {value_size}, but got {self.value_size} "
                f"(block {self.location}).\n"
            )
        # node_ref::calc_max_entries: rounded down to a multiple of 3
        max_entries = 3 * ((MD_BLOCK_SIZE - NODE_HEADER_SIZE) // (8 + value_size) // 3)
        if max_entries < self.nr_entries:
            raise ToolError(
                f"Bad nr of elements: max per block = {max_entries}, actual = "
                f"{self.nr_entries} (block {self.location})\n"
            )

    def keys(self) -> tuple[int, ...]:
        n = min(self.nr_entries, (MD_BLOCK_SIZE - NODE_HEADER_SIZE) // 8)
        return struct.unpack_from(f"<{n}Q", self.data, NODE_HEADER_SIZE)

    def key_at(self, i: int) -> int:
        return struct.unpack_from("<Q", self.data, NODE_HEADER_SIZE + 8 * i)[0]

    def values(self, value_size: int) -> list:
        """The values as ints (8-byte and 4-byte values) or raw slices (others)."""
        self._check_fits(value_size)
        at = NODE_HEADER_SIZE + 8 * self.max_entries
        n = self.nr_entries
        if value_size == 8:
            return list(struct.unpack_from(f"<{n}Q", self.data, at))
        if value_size == 4:
            return list(struct.unpack_from(f"<{n}I", self.data, at))
        return [self.data[at + value_size * i : at + value_size * (i + 1)] for i in range(n)]


def read_node(bm: BlockManager, b: int) -> Node:
    return Node(b, bm.read(b, btree_node_validator))


class NodeChecker:
    """btree_node_checker: the structural checks, with the C++ messages."""

    def __init__(self) -> None:
        self.error = ""

    def check_block_nr(self, n: Node) -> bool:
        if n.location != n.blocknr:
            self.error = f"block number mismatch: actually {n.location}, claims {n.blocknr}"
            return False
        return True

    def check_value_size(self, n: Node, value_size: int) -> bool:
        if n.value_size != value_size:
            self.error = (
                f"value size mismatch: expected {value_size}, but got {n.value_size} "
                f"(block {n.location})."
            )
            return False
        return True

    def check_max_entries(self, n: Node) -> bool:
        if (8 + n.value_size) * n.max_entries + NODE_HEADER_SIZE > MD_BLOCK_SIZE:
            self.error = f"max entries too large: {n.max_entries} (block {n.location})"
            return False
        if n.max_entries % 3:
            self.error = f"max entries is not divisible by 3: {n.max_entries} (block {n.location})"
            return False
        return True

    def check_nr_entries(self, n: Node, is_root: bool) -> bool:
        if n.nr_entries > n.max_entries:
            self.error = f"bad nr_entries: {n.nr_entries} < {n.max_entries} (block {n.location})"
            return False
        if not is_root and n.nr_entries < n.max_entries // 3:
            self.error = (
                f"too few entries in btree_node: {n.nr_entries}, expected at least "
                f"{n.max_entries // 3} (block {n.location}, max_entries = {n.max_entries})"
            )
            return False
        return True

    def check_ordered_keys(self, n: Node) -> bool:
        keys = n.keys()
        for i in range(1, len(keys)):
            if keys[i] <= keys[i - 1]:
                self.error = (
                    f"keys are out of order, {keys[i]} <= {keys[i - 1]} (block {n.location})"
                )
                return False
        return True

    def check_parent_key(self, n: Node, key: int | None) -> bool:
        if key is None:
            return True
        first = n.key_at(0)
        if key > first:
            self.error = (
                f"parent key mismatch: parent was {key}, but lowest in node was {first} "
                f"(block {n.location})"
            )
            return False
        return True

    def check_leaf_key(self, n: Node, key: int | None) -> bool:
        if n.nr_entries == 0:
            return True
        first = n.key_at(0)
        if key is not None and key >= first:
            self.error = (
                f"the last key of the previous leaf was {key} and the first key of this "
                f"leaf is {first} (block {n.location})"
            )
            return False
        return True


@dataclass
class Location:
    """btree_detail::node_location."""

    path: tuple = ()
    depth: int = 0
    key: int | None = None

    def is_sub_root(self) -> bool:
        return self.depth == 0

    def level(self) -> int:
        return len(self.path)


def walk(bm: BlockManager, root: int, levels: int, value_size: int, visitor) -> None:
    """btree::visit_depth_first: the visitor's visit_internal / visit_internal_leaf /
    visit_leaf say whether to go below a node; errors reading one go to its
    error_accessing_node, which may re-raise."""
    _walk(bm, Location(), root, levels, value_size, visitor)
    visitor.visit_complete()


def _walk(bm, loc: Location, b: int, levels: int, value_size: int, v) -> None:
    try:
        n = read_node(bm, b)
        kind = n.node_type()
        if kind == "internal":
            if v.visit_internal(loc, n):
                n._check_fits(8)
                children = n.values(8)
                keys = n.keys()
                for i, child in enumerate(children):
                    _walk(bm, Location(loc.path, loc.depth + 1, keys[i]), child, levels,
                          value_size, v)  # fmt: skip
        elif len(loc.path) < levels - 1:
            if v.visit_internal_leaf(loc, n):
                children = n.values(8)
                keys = n.keys()
                for i, child in enumerate(children):
                    _walk(bm, Location(loc.path + (keys[i],), 0, None), child, levels,
                          value_size, v)  # fmt: skip
        else:
            v.visit_leaf(loc, n)
    except ToolError as e:
        if not v.error_accessing_node(loc, b, str(e)):
            raise


def run_text(begin: int | None, end: int | None) -> str:
    """base/run.h operator<<: ``[b, e]`` with ``-`` for an open end."""
    return f"[{'-' if begin is None else begin}, {'-' if end is None else end}]"


@dataclass
class Damage:
    """btree_detail::damage: the lost key range and why."""

    path: tuple
    begin: int | None
    end: int | None
    desc: str

    @property
    def keys(self) -> str:
        return run_text(self.begin, self.end)


class DamageVisitor:
    """btree_damage_visitor: checks every node, visits the values of good leaves, and
    reports the key ranges lost under bad nodes (``on_damage(Damage)``)."""

    def __init__(self, levels, value_size, on_value, on_damage, ignore_non_fatal=False):
        self.levels = levels
        self.value_size = value_size
        self.on_value = on_value
        self.on_damage = on_damage
        self.ignore_non_fatal = ignore_non_fatal
        self.checker = NodeChecker()
        self.seen: set[int] = set()
        self.last_leaf_key: dict[int, int | None] = {}
        self.reasons: list[str] = []
        # damage_tracker and path_tracker
        self.damaged = False
        self.damage_begin = 0
        self.paths: list[tuple] = [()]

    # visitor interface
    def visit_internal(self, loc: Location, n: Node) -> bool:
        self._update_path(loc.path)
        return self._check(loc, n, 8, leaf=False)

    def visit_internal_leaf(self, loc: Location, n: Node) -> bool:
        self._update_path(loc.path)
        return self._check(loc, n, 8, leaf=True)

    def visit_leaf(self, loc: Location, n: Node) -> bool:
        self._update_path(loc.path)
        if not self._check(loc, n, self.value_size, leaf=True):
            return False
        keys = n.keys()
        for k, value in zip(keys, n.values(self.value_size)):
            self.on_value(loc.path + (k,), value)
        return True

    def visit_complete(self) -> None:
        self._maybe_issue(self.paths[-1])

    def error_accessing_node(self, loc: Location, b: int, what: str) -> bool:
        self._update_path(loc.path)
        self._report(what)
        return True

    # checks
    def _check(self, loc: Location, n: Node, value_size: int, *, leaf: bool) -> bool:
        if loc.is_sub_root():
            self.last_leaf_key[loc.level()] = None
        if n.location in self.seen:
            return False
        self.seen.add(n.location)
        c = self.checker
        ok = (
            c.check_block_nr(n)
            and c.check_value_size(n, value_size)
            and c.check_max_entries(n)
            and (self.ignore_non_fatal or c.check_nr_entries(n, loc.is_sub_root()))
            and c.check_ordered_keys(n)
            and c.check_parent_key(n, None if loc.is_sub_root() else loc.key)
            and (not leaf or c.check_leaf_key(n, self.last_leaf_key.get(loc.level())))
        )
        if not ok:
            self._report(c.error)
            return False
        if not leaf:
            self._good(n.key_at(0), n.key_at(0), internal=True)
        elif n.nr_entries > 0:
            last = n.key_at(n.nr_entries - 1)
            self.last_leaf_key[loc.level()] = last
            self._good(n.key_at(0), last + 1, internal=False)
        return True

    def _report(self, desc: str) -> None:
        self.reasons.append(desc)
        self.damaged = True

    def _good(self, begin: int, end: int, *, internal: bool) -> None:
        if self.damaged:
            self.damaged = False
            self._issue(self.paths[-1], self.damage_begin, begin)
        self.damage_begin = begin if internal else end

    def _issue(self, path, begin, end) -> None:
        desc = "".join(self.reasons)
        self.reasons = []
        self.on_damage(Damage(path, begin, end, desc))

    def _maybe_issue(self, path) -> None:
        damaged, begin = self.damaged, self.damage_begin
        self.damaged = False
        self.damage_begin = 0
        if damaged:
            self._issue(path, begin, None)

    def _update_path(self, path: tuple) -> None:
        if path != self.paths[-1]:
            if len(self.paths) == 2:
                self.paths.pop(0)
            self.paths.append(path)
            self._maybe_issue(self.paths[0])


def visit_values(bm, root, levels, value_size, on_value, on_damage, ignore_non_fatal=False):
    """btree_visit_values."""
    walk(bm, root, levels, value_size,
         DamageVisitor(levels, value_size, on_value, on_damage, ignore_non_fatal))  # fmt: skip


# -- values -------------------------------------------------------------------------------


@dataclass
class DeviceDetails:
    """struct disk_device_details."""

    mapped_blocks: int
    transaction_id: int
    creation_time: int
    snapshotted_time: int

    @classmethod
    def unpack(cls, raw: bytes) -> DeviceDetails:
        return cls(*struct.unpack("<QQII", raw))

    def pack(self) -> bytes:
        return struct.pack(
            "<QQII", self.mapped_blocks, self.transaction_id, self.creation_time,
            self.snapshotted_time,
        )  # fmt: skip


def block_time(value: int) -> tuple[int, int]:
    """mapping_tree_detail::block_time: (data block, time) from a mapping value."""
    return value >> 24, value & 0xFFFFFF


def lookup(bm: BlockManager, root: int, key: int, value_size: int):
    """btree::lookup in a one-level tree (lookup_raw with exact search), or None."""
    b = root
    while True:
        n = read_node(bm, b)
        keys = n.keys()
        if n.node_type() == "leaf":
            # exact_search
            lo = _lower_bound(keys, key)
            if lo < 0 or keys[lo] != key:
                return None
            return n.values(value_size)[lo]
        lo = _lower_bound(keys, key)
        if lo < 0:
            return None
        b = n.values(8)[lo]


def _lower_bound(keys, key) -> int:
    # node_ref::lower_bound: the index of the last key <= key, -1 if none (binary search)
    lo, hi = -1, len(keys)
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        if keys[mid] == key:
            return mid
        if keys[mid] < key:
            lo = mid
        else:
            hi = mid
    return lo


# -- the metadata as the tools open it ----------------------------------------------------


@dataclass
class Metadata:
    """thin_provisioning::metadata opened read-only: the superblock (the held snapshot's
    when opened through it) and, when the space maps were opened, the data device size."""

    bm: BlockManager
    sb: Superblock
    nr_data_blocks: int | None = None  # None: the data space map was not opened
    details: dict = field(default_factory=dict)

    def device_details(self, on_damage, ignore_non_fatal=False) -> dict[int, DeviceDetails]:
        out: dict[int, DeviceDetails] = {}

        def value(path, raw):
            out[path[0]] = DeviceDetails.unpack(raw)

        visit_values(self.bm, self.sb.device_details_root, 1, DEVICE_DETAILS_SIZE, value,
                     on_damage, ignore_non_fatal)  # fmt: skip
        return out

    def device_roots(self, on_damage) -> dict[int, int]:
        """The top level of the mapping tree: thin id -> root of its mappings."""
        out: dict[int, int] = {}

        def value(path, root):
            out[path[0]] = root

        visit_values(self.bm, self.sb.data_mapping_root, 1, 8, value, on_damage)
        return out

    def mappings(self, root: int, on_value, on_damage, ignore_non_fatal=False) -> None:
        """Every mapping of one device: ``on_value((virtual block,), value)``."""
        visit_values(self.bm, root, 1, 8, on_value, on_damage, ignore_non_fatal)

    def lookup_device(self, dev_id: int) -> int | None:
        return lookup(self.bm, self.sb.data_mapping_root, dev_id, 8)


def open_metadata(bm: BlockManager, *, read_space_maps: bool = True) -> Metadata:
    """metadata(bm[, read_space_maps]): the live superblock."""
    if not bm.nr_blocks:
        raise ToolError("Metadata is not large enough for superblock.")
    sb = read_superblock(bm)
    md = Metadata(bm, sb)
    if read_space_maps:
        # open_metadata_sm reads the index block; open_disk_sm only the root
        md_root = SmRoot.unpack(sb.metadata_space_map_root)
        bm.read(md_root.bitmap_root, index_validator)
        md.nr_data_blocks = SmRoot.unpack(sb.data_space_map_root).nr_blocks
    return md


def open_metadata_snap(bm: BlockManager, location: int | None = None) -> Metadata:
    """metadata(bm, optional<block_address>): through the held metadata snapshot."""
    if not bm.nr_blocks:
        raise ToolError("Metadata is not large enough for superblock.")
    actual = read_superblock(bm)
    if not actual.metadata_snap:
        raise ToolError("no current metadata snap")
    if location is not None and location != actual.metadata_snap:
        raise ToolError("metadata snapshot does not match that in superblock")
    return Metadata(bm, read_superblock(bm, actual.metadata_snap))


def dump_nr_data_blocks(md: Metadata) -> int:
    """metadata_dumper.cc: get_nr_blocks."""
    if md.nr_data_blocks is not None:
        return md.nr_data_blocks
    if md.sb.blocknr == SUPERBLOCK_LOCATION:
        return SmRoot.unpack(md.sb.data_space_map_root).nr_blocks
    return 0
