"""metadata_dumper.cc: metadata_dump, the events of a dump, and metadata_repair, the same
from the best roots a damaged metadata device still holds (thin_dump --repair, thin_repair)."""

from __future__ import annotations

import signal
import struct

from ..constants import BTREE_CSUM_XOR
from ..model.disk import bm_checksum
from .common import Crash, ToolError, terminate
from .emitter import Emitter, OverrideEmitter, OverrideError, Overrides
from .metadata import (
    BlockManager,
    Metadata,
    Node,
    Superblock,
    block_time,
    dump_nr_data_blocks,
    read_superblock,
    visit_values,
)


class _MappingRuns:
    """mapping_emit_visitor: runs contiguous in both block spaces with one time become a
    range_map, lone mappings a single_map."""

    def __init__(self, e: Emitter) -> None:
        self.e = e
        self.run = None  # [origin, data, time, length]

    def add(self, origin: int, data: int, time: int) -> None:
        r = self.run
        if r is not None and origin == r[0] + r[3] and data == r[1] + r[3] and time == r[2]:
            r[3] += 1
            return
        self.end()
        self.run = [origin, data, time, 1]

    def end(self) -> None:
        r = self.run
        if r is not None:
            if r[3] == 1:
                self.e.single_map(r[0], r[1], r[2])
            else:
                self.e.range_map(r[0], r[1], r[2], r[3])
            self.run = None


def _raise_damage(repair: bool):
    def visit(_damage) -> None:
        if not repair:
            raise ToolError(
                "metadata contains errors (run thin_check for details).\n"
                "perhaps you wanted to run with --repair"
            )

    return visit


def metadata_dump(
    md: Metadata,
    e: Emitter,
    *,
    dev_ids: set[int] | None = None,
    skip_mappings: bool = False,
    repair: bool = False,
    errors=None,
) -> None:
    """metadata_dump (and emit_trees_ with ``repair``): the events of a dump.

    ``dev_ids`` limits the devices (``--dev-id``); ``errors`` receives what the C++
    writes straight to cerr while dumping a device."""
    damage = _raise_damage(repair)
    details = {
        k: v for k, v in md.device_details(damage).items() if dev_ids is None or k in dev_ids
    }
    sb = md.sb
    e.begin_superblock("", sb.time, sb.trans_id, sb.flags, sb.version, sb.data_block_size,
                       dump_nr_data_blocks(md), None)  # fmt: skip

    def device(path, root) -> None:
        dev_id = path[0]
        if dev_ids is not None and dev_id not in dev_ids:
            return
        d = details.get(dev_id)
        if d is None:
            raise ToolError(
                f"mappings present for device {dev_id}, but it isn't present in device tree"
            )
        e.begin_device(dev_id, d.mapped_blocks, d.transaction_id, d.creation_time,
                       d.snapshotted_time)  # fmt: skip
        try:
            if not skip_mappings:
                runs = _MappingRuns(e)
                try:
                    # an emitter's exception (a restore's output full) is caught by the
                    # walk as damage to the node being visited (btree.tcc: walk_tree)
                    md.mappings(root, lambda p, v: runs.add(p[0], *block_time(v)), damage,
                                ignore_non_fatal=True)  # fmt: skip
                finally:
                    # ~mapping_emit_visitor emits the last run: an exception leaving that
                    # destructor (noexcept) is std::terminate
                    try:
                        runs.end()
                    except ToolError as exc:
                        raise terminate(str(exc)) from None
        except ToolError as exc:
            if errors is not None:
                errors(str(exc))
            e.end_device()
            raise
        e.end_device()

    visit_values(md.bm, sb.data_mapping_root, 1, 8, device, damage, ignore_non_fatal=True)
    e.end_superblock()


def _fail(_d) -> None:
    raise ToolError("metadata contains errors")


def get_dev_ids(bm: BlockManager, root: int) -> set[int] | None:
    """metadata_dumper.cc: get_dev_ids -- None when the walk meets damage."""
    ids: set[int] = set()
    try:
        visit_values(bm, root, 1, 24, lambda p, v: ids.add(p[0]), _fail, True)
    except (ToolError, struct.error, IndexError, ValueError):
        return None
    return ids


def get_map_ids(bm: BlockManager, root: int) -> set[int] | None:
    """metadata_dumper.cc: get_map_ids: a walk of the top level of the mapping tree only
    (a dev_tree), so a thin whose own mappings are damaged is still found."""
    ids: set[int] = set()
    try:
        visit_values(bm, root, 1, 8, lambda p, v: ids.add(p[0]), _fail, True)
    except (ToolError, struct.error, IndexError, ValueError):
        return None
    return ids


TOP_LEVEL, BOTTOM_LEVEL, DEVICE_DETAILS = 0, 1, 2


class NodeInfo:
    """metadata_dumper.cc: node_info."""

    __slots__ = (
        "age",
        "b",
        "key_high",
        "key_low",
        "nr_mappings",
        "time_counts",
        "type",
        "valid",
        "values",
    )  # fmt: skip

    def __init__(self, b: int = 0) -> None:
        self.valid = True
        self.type = TOP_LEVEL
        self.b = b
        self.values = 0
        self.key_low = 0
        self.key_high = 0
        self.age = 0
        self.time_counts: dict[int, int] = {}
        self.nr_mappings = 0


def _cmp_time_counts(lhs: NodeInfo, rhs: NodeInfo) -> bool:
    a = sorted(lhs.time_counts.items(), reverse=True)
    b = sorted(rhs.time_counts.items(), reverse=True)
    for lt, lc in a:
        for rt, rc in b:
            if lt > rt:
                return True
            if rt > lt:
                return False
            if lc > rc:
                return True
            if rc > lc:
                return False
    return True


class _PastTheEnd(Exception):
    """std::sort read outside the vector."""


def std_sort(a: list, less) -> None:
    """std::sort as libstdc++ (gcc 12) runs it: introsort down to runs of 16, heapsort past
    the depth limit, then an insertion sort; in place.

    The repair's comparator (cmp_time_counts) says true for equal elements, which std::sort
    does not allow.  Up to 16 elements that is harmless: the insertion sort stays within the
    vector, and typically reverses it (each element compares less than the first), so this
    port gives the C++'s order.  Longer, the unguarded partition can run past either end
    of the vector, an undefined read that Debian's thin_repair and thin_dump --repair die
    of (SIGSEGV, measured).  Where the port would read outside the list it raises
    :class:`Crash`, so thinsim dies as the measured tool does; where the C++ stays inside,
    the order is its own.
    """
    n = len(a)

    def at(i: int):
        if not 0 <= i < n:
            raise _PastTheEnd
        return a[i]

    def comp(i: int, j: int) -> bool:
        return less(at(i), at(j))

    def swap(i: int, j: int) -> None:
        a[i], a[j] = at(j), at(i)

    def introsort_loop(first: int, last: int, depth: int) -> None:
        while last - first > 16:
            if depth == 0:
                make_heap(first, last)
                while last - first > 1:  # __sort_heap
                    last -= 1
                    value = a[last]
                    a[last] = a[first]
                    adjust_heap(first, 0, last - first, value)
                return
            depth -= 1
            mid = first + (last - first) // 2
            move_median_to_first(first, first + 1, mid, last - 1)
            cut = unguarded_partition(first + 1, last, first)
            introsort_loop(cut, last, depth)
            last = cut

    def move_median_to_first(result: int, x: int, y: int, z: int) -> None:
        if comp(x, y):
            if comp(y, z):
                swap(result, y)
            elif comp(x, z):
                swap(result, z)
            else:
                swap(result, x)
        elif comp(x, z):
            swap(result, x)
        elif comp(y, z):
            swap(result, z)
        else:
            swap(result, y)

    def unguarded_partition(first: int, last: int, pivot: int) -> int:
        while True:
            while comp(first, pivot):
                first += 1
            last -= 1
            while comp(pivot, last):
                last -= 1
            if not first < last:
                return first
            swap(first, last)
            first += 1

    def make_heap(first: int, last: int) -> None:
        length = last - first
        if length < 2:
            return
        parent = (length - 2) // 2
        while True:
            adjust_heap(first, parent, length, a[first + parent])
            if parent == 0:
                return
            parent -= 1

    def adjust_heap(first: int, hole: int, length: int, value) -> None:
        top = hole
        child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if comp(first + child, first + child - 1):
                child -= 1
            a[first + hole] = a[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            a[first + hole] = a[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and less(at(first + parent), value):  # __push_heap
            a[first + hole] = a[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        a[first + hole] = value

    def unguarded_linear_insert(last: int) -> None:
        value = a[last]
        prev = last - 1
        while less(value, at(prev)):
            a[last] = a[prev]
            last = prev
            prev -= 1
        a[last] = value

    def insertion_sort(first: int, last: int) -> None:
        for i in range(first + 1, last):
            if comp(i, first):
                value = a[i]
                a[first + 1 : i + 1] = a[first:i]
                a[first] = value
            else:
                unguarded_linear_insert(i)

    if n < 2:
        return
    try:
        introsort_loop(0, n, 2 * (n.bit_length() - 1))
        if n > 16:  # __final_insertion_sort
            insertion_sort(0, 16)
            for i in range(16, n):
                unguarded_linear_insert(i)
        else:
            insertion_sort(0, n)
    except _PastTheEnd:
        raise Crash(signal.SIGSEGV) from None


class Gatherer:
    """metadata_dumper.cc: gatherer -- classifies every block that could be a btree node
    and picks the device details and mapping roots that agree best."""

    def __init__(self, bm: BlockManager) -> None:
        self.bm = bm
        self.nr_blocks = bm.nr_blocks
        self.referenced: set[int] = set()
        self.examined: set[int] = set()
        self.infos: dict[int, NodeInfo] = {}

    def find_best_roots(self):
        for b in range(self.nr_blocks):
            self.get_info(b)
        mapping_roots, device_roots = [], []
        for b in range(self.nr_blocks):
            if b in self.referenced:
                continue
            info = self.get_info(b)
            if info.valid:
                if info.type == TOP_LEVEL:
                    mapping_roots.append(info)
                elif info.type == DEVICE_DETAILS:
                    device_roots.append(info)
        pairs = self._compatible(device_roots, mapping_roots)
        if not pairs:
            return None
        d, m = pairs[0]
        return m, d, max(self._time(d), self._time(m))

    def _time(self, b: int) -> int:
        info = self.infos.get(b)
        return info.age if info is not None else 0

    def _compatible(self, device_roots, mapping_roots):
        pairs = [
            (di, mi)
            for di in device_roots
            for mi in mapping_roots
            if di.values == mi.values and di.nr_mappings == mi.nr_mappings
        ]
        # sort(pairs.begin(), pairs.end(), cmp_time_counts), run as libstdc++ runs it
        std_sort(pairs, lambda p, q: _cmp_time_counts(p[0], q[0]))
        ds = {b: get_dev_ids(self.bm, b) for b in sorted({p[0].b for p in pairs})}
        ms = {b: get_map_ids(self.bm, b) for b in sorted({p[1].b for p in pairs})}
        return [
            (p[0].b, p[1].b) for p in pairs if ds[p[0].b] is not None and ms[p[1].b] is not None
        ]

    def _is_node(self, b: int) -> bool:
        data = self.bm.raw(b)
        if not any(data):
            return False
        return bm_checksum(data[4:], BTREE_CSUM_XOR) == struct.unpack_from("<I", data, 0)[0]

    def get_info(self, b: int) -> NodeInfo:
        if b in self.examined:
            info = self.infos.get(b)
            if info is None:
                info = NodeInfo(b)
                info.valid = False
            return info
        self.examined.add(b)
        info = self._get_info(b)
        if info.valid:
            self.infos[b] = info
        return info

    def _get_info(self, b: int) -> NodeInfo:
        if b >= self.nr_blocks or not self._is_node(b):
            info = NodeInfo(b)
            info.valid = False
            return info
        data = self.bm.raw(b)
        flags, _blocknr, nr, max_entries, vsize = struct.unpack_from("<IQIII", data, 4)
        keys = [_u64(data, 32 + 8 * i) for i in range(nr)]
        if nr and (flags & 1 or vsize in (8, 24)):
            # to_node<...>(rr) then key_at / value_at: node_ref::check_fits_within_block,
            # whose exception nothing in the gatherer catches
            Node(b, data)._check_fits(8 if flags & 1 else vsize)
        if flags & 1:
            return self._internal(b, data, nr, max_entries, keys)
        return self._leaf(b, data, nr, max_entries, vsize, keys)

    def _internal(self, b, data, nr, max_entries, keys) -> NodeInfo:
        info = NodeInfo(b)
        key_low = 0
        values = 0
        children = [_u64(data, 32 + 8 * max_entries + 8 * i) for i in range(nr)]
        for i, c in enumerate(children):
            child = self.get_info(c)
            if not child.valid:
                info.valid = False
                break
            if i == 0:
                info.type = child.type
            elif info.type != child.type:
                info.valid = False
                break
            if key_low and child.key_low <= key_low:
                info.valid = False
                break
            key_low = child.key_high
            values += child.values
            _merge(info.time_counts, child.time_counts)
            info.age = max(info.age, child.age)
            info.nr_mappings += child.nr_mappings
        if info.valid:
            info.values = values
            self.referenced.update(children)
        return info

    def _leaf(self, b, data, nr, max_entries, vsize, keys) -> NodeInfo:
        info = NodeInfo(b)
        info.values = nr
        at = 32 + 8 * max_entries
        if vsize == 24:
            info.type = DEVICE_DETAILS
            if nr:
                info.key_low, info.key_high = keys[0], keys[-1]
            for i in range(nr):
                mapped, _trans, ctime, stime = struct.unpack_from(
                    "<QQII", _pad(data, at + 24 * i, 24)
                )
                info.age = max(info.age, ctime, stime)
                info.nr_mappings += mapped
        elif vsize == 8:
            values = [_u64(data, at + 8 * i) for i in range(nr)]
            if nr:
                info.key_low, info.key_high = keys[0], keys[-1]
            if all(v < self.nr_blocks for v in values):
                info.type = TOP_LEVEL
                for v in values:
                    child = self.get_info(v)
                    if not child.valid or child.type != BOTTOM_LEVEL:
                        info.valid = False
                        return info
                    info.age = max(info.age, child.age)
                    _merge(info.time_counts, child.time_counts)
                    info.nr_mappings += child.nr_mappings
                self.referenced.update(values)
            else:
                info.type = BOTTOM_LEVEL
                for v in values:
                    t = v & 0xFFFFFF
                    info.time_counts[t] = info.time_counts.get(t, 0) + 1
                    info.age = max(info.age, t)
                info.nr_mappings = nr
        return info


def _pad(data: bytes, at: int, n: int) -> bytes:
    return data[at : at + n].ljust(n, b"\0")


def _u64(data: bytes, at: int) -> int:
    return struct.unpack("<Q", _pad(data, at, 8))[0]


def _merge(lhs: dict, rhs: dict) -> None:
    for t, c in rhs.items():
        lhs[t] = lhs.get(t, 0) + c


def metadata_repair(bm: BlockManager, e: Emitter, overrides: Overrides | None = None) -> None:
    """thin_provisioning::metadata_repair."""
    overrides = overrides or Overrides()
    try:
        try:
            sb = read_superblock(bm)
        except ToolError:
            # recreate_superblock
            sb = Superblock(
                time=100000,
                trans_id=overrides.get("transaction_id"),
                data_block_size=overrides.get("data_block_size"),
            )
            overrides.get("nr_data_blocks")
        if not bm.nr_blocks:
            raise ToolError("Metadata is not large enough for superblock.")
        if get_dev_ids(bm, sb.device_details_root) is None or (
            get_map_ids(bm, sb.data_mapping_root) is None
        ):
            # find_better_roots_
            found = Gatherer(bm).find_best_roots()
            if found is not None:
                sb.metadata_snap = 0
                sb.data_mapping_root, sb.device_details_root, sb.time = found
                sb.metadata_nr_blocks = bm.nr_blocks
        metadata_dump(Metadata(bm, sb), OverrideEmitter(e, overrides), repair=True)
    except OverrideError as err:
        raise ToolError(
            "The following field needs to be provided on the command line due to corruption "
            f"in the superblock: {err}"
        ) from None
