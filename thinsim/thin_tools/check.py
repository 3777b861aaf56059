"""thin_check (thin_check.cc, metadata_checker.cc, metadata_counter.cc): walks the
superblock, the device details tree, the mapping trees and the metadata space map, and
says what it finds the way the C++ does."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..constants import BITMAP_CSUM_XOR, ENTRIES_PER_BITMAP, INDEX_CSUM_XOR
from ..getopt import NO_ARGUMENT, REQUIRED_ARGUMENT, LongOption, getopt_long
from ..model.disk import bm_checksum
from .common import MD_BLOCK_SIZE, VERSION, Files, Output, ToolError
from .metadata import (
    DEVICE_DETAILS_SIZE,
    BlockManager,
    Location,
    NodeChecker,
    SmRoot,
    Superblock,
    bitmap_validator,
    index_validator,
    read_superblock,
    superblock_validator,
    visit_values,
    walk,
)
from .open import get_file_length, lexical_uint64, open_bm

NO_ERROR, NON_FATAL, FATAL = 0, 1, 2

USAGE = (
    "Usage: {prog} [options] {{device|file}}\n"
    "Options:\n"
    "  {{-q|--quiet}}\n"
    "  {{-h|--help}}\n"
    "  {{-V|--version}}\n"
    "  {{-m|--metadata-snap}}\n"
    "  {{--auto-repair}}\n"
    "  {{--override-mapping-root}}\n"
    "  {{--clear-needs-check-flag}}\n"
    "  {{--ignore-non-fatal-errors}}\n"
    "  {{--skip-mappings}}\n"
    "  {{--super-block-only}}\n"
)

LONGOPTS = [
    LongOption("quiet", NO_ARGUMENT, "q"),
    LongOption("help", NO_ARGUMENT, "h"),
    LongOption("version", NO_ARGUMENT, "V"),
    LongOption("metadata-snap", NO_ARGUMENT, "m"),
    LongOption("super-block-only", NO_ARGUMENT, 1),
    LongOption("skip-mappings", NO_ARGUMENT, 2),
    LongOption("ignore-non-fatal-errors", NO_ARGUMENT, 3),
    LongOption("clear-needs-check-flag", NO_ARGUMENT, 4),
    LongOption("override-mapping-root", REQUIRED_ARGUMENT, 5),
    LongOption("auto-repair", NO_ARGUMENT, 6),
]


@dataclass
class CheckOptions:
    """check_options."""

    use_metadata_snap: bool = False
    data_mapping: int = 2  # DATA_MAPPING_NONE 0, LEVEL1 1, LEVEL2 2
    space_map_full: bool = True
    ignore_non_fatal: bool = False
    fix_metadata_leaks: bool = False
    clear_needs_check: bool = False
    override_mapping_root: int | None = None

    def conformance_error(self) -> str | None:
        if self.fix_metadata_leaks or self.clear_needs_check:
            if self.ignore_non_fatal:
                return "cannot perform fix by ignoring non-fatal errors"
            if self.use_metadata_snap:
                return "cannot perform fix within metadata snap"
            if self.override_mapping_root is not None:
                return "cannot perform fix with an overridden mapping root"
            if self.data_mapping != 2 or not self.space_map_full:
                return "cannot perform fix without a full examination"
        return None


class Nested:
    """base/nested_output.h: lines indented by the nesting level."""

    def __init__(self, write, step: int, enabled: bool = True) -> None:
        self.write = write
        self.step = step
        self.indent = 0
        self.enabled = enabled

    def line(self, text: str) -> None:
        if self.enabled:
            self.write(" " * self.indent + text + "\n")

    def push(self) -> Nested:
        self.indent += self.step
        return self

    def pop(self) -> None:
        self.indent -= self.step

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.pop()


class Counter:
    """block_counter."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def inc(self, b: int) -> None:
        self.counts[b] = self.counts.get(b, 0) + 1

    def get(self, b: int) -> int:
        return self.counts.get(b, 0)


class _CountingVisitor:
    """btree_count_detail::counting_visitor: counts each node once, descending only the
    first time; a failed node check stops there; errors reading re-raise."""

    def __init__(self, bc: Counter, levels: int, value_size: int, on_value=None) -> None:
        self.bc = bc
        self.levels = levels
        self.value_size = value_size
        self.on_value = on_value
        self.checker = NodeChecker()
        self.last_leaf_key: dict[int, int | None] = {}

    def _check(self, loc: Location, n, value_size: int, leaf: bool) -> bool:
        if loc.is_sub_root():
            self.last_leaf_key[loc.level()] = None
        c = self.checker
        ok = (
            c.check_block_nr(n)
            and c.check_value_size(n, value_size)
            and c.check_max_entries(n)
            and c.check_nr_entries(n, loc.is_sub_root())
            and c.check_ordered_keys(n)
            and c.check_parent_key(n, None if loc.is_sub_root() else loc.key)
            and (not leaf or c.check_leaf_key(n, self.last_leaf_key.get(loc.level())))
        )
        if not ok:
            return False
        if leaf and n.nr_entries > 0:
            self.last_leaf_key[loc.level()] = n.key_at(n.nr_entries - 1)
        return True

    def _visit_node(self, n) -> bool:
        seen = self.bc.get(n.location)
        self.bc.inc(n.location)
        return not seen

    def visit_internal(self, loc, n) -> bool:
        return self._check(loc, n, 8, False) and self._visit_node(n)

    def visit_internal_leaf(self, loc, n) -> bool:
        return self._check(loc, n, 8, True) and self._visit_node(n)

    def visit_leaf(self, loc, n) -> bool:
        if self._check(loc, n, self.value_size, True) and self._visit_node(n):
            if self.on_value is not None:
                for k, v in zip(n.keys(), n.values(self.value_size)):
                    self.on_value(loc.path + (k,), v)
            return True
        return False

    def visit_complete(self) -> None:
        pass

    def error_accessing_node(self, loc, b, what) -> bool:
        return False  # RETHROW_EXCEPTION: the counter stops on the first error


def count_btree_blocks(bm, root, levels, value_size, bc: Counter, on_value=None) -> None:
    walk(bm, root, levels, value_size, _CountingVisitor(bc, levels, value_size, on_value))


def count_metadata(bm: BlockManager, sb: Superblock, bc: Counter, err_line) -> bool:
    """metadata_counter.cc: count_metadata."""
    ok = True
    bc.inc(0)
    _count_trees(bm, sb, bc)
    if sb.metadata_snap:
        bc.inc(sb.metadata_snap)
        snap = read_superblock(bm, sb.metadata_snap)
        _count_trees(bm, snap, bc)
    try:
        MetadataSpaceMap(bm, sb.metadata_space_map_root).count_metadata(bc)
    except ToolError as e:
        err_line(str(e))
        ok = False
    try:
        root = SmRoot.unpack(sb.data_space_map_root)

        def index_entry(_path, raw) -> None:
            blocknr = int.from_bytes(raw[:8], "little")
            if blocknr:
                bm.read(blocknr, bitmap_validator)
                bc.inc(blocknr)

        count_btree_blocks(bm, root.bitmap_root, 1, 16, bc, index_entry)
        count_btree_blocks(bm, root.ref_count_root, 1, 4, bc)
    except ToolError as e:
        err_line(str(e))
        ok = False
    return ok


def _count_trees(bm, sb: Superblock, bc: Counter) -> None:
    count_btree_blocks(bm, sb.device_details_root, 1, DEVICE_DETAILS_SIZE, bc)
    count_btree_blocks(bm, sb.data_mapping_root, 2, 8, bc)


class MetadataSpaceMap:
    """The metadata space map opened from its root (open_metadata_sm): the index block,
    its bitmaps and the reference count tree for counts above two."""

    def __init__(self, bm: BlockManager, raw_root: bytes) -> None:
        self.bm = bm
        self.root = SmRoot.unpack(raw_root)
        index = bm.read(self.root.bitmap_root, index_validator)
        n = -(-self.root.nr_blocks // ENTRIES_PER_BITMAP)
        self.entries = [int.from_bytes(index[16 + 16 * i : 24 + 16 * i], "little")
                        for i in range(n)]  # fmt: skip
        self._overflow: dict[int, int] | None = None

    @property
    def nr_blocks(self) -> int:
        return self.root.nr_blocks

    def count_metadata(self, bc: Counter) -> None:
        bc.inc(self.root.bitmap_root)
        for b in self.entries:
            if b:
                self.bm.read(b, bitmap_validator)
                bc.inc(b)
        count_btree_blocks(self.bm, self.root.ref_count_root, 1, 4, bc)

    def counts(self) -> list[int]:
        """Every block's reference count."""
        out = []
        for i, b in enumerate(self.entries):
            data = self.bm.read(b, bitmap_validator)
            n = min(ENTRIES_PER_BITMAP, self.root.nr_blocks - i * ENTRIES_PER_BITMAP)
            for e in range(n):
                bit = 2 * e
                hi = (data[16 + (bit >> 3)] >> (bit & 7)) & 1
                lo = (data[16 + ((bit + 1) >> 3)] >> ((bit + 1) & 7)) & 1
                v = (hi << 1) | lo
                if v == 3:
                    v = self._overflow_count(i * ENTRIES_PER_BITMAP + e)
                out.append(v)
        return out

    def _overflow_count(self, b: int) -> int:
        if self._overflow is None:
            self._overflow = {}

            def value(path, v) -> None:
                self._overflow[path[0]] = v

            visit_values(self.bm, self.root.ref_count_root, 1, 4, value, lambda d: None)
        if b not in self._overflow:
            raise ToolError("ref count not in tree")
        return self._overflow[b]


def _examine_superblock(bm, location, out: Nested) -> int:
    out.line("examining superblock")
    with out.push():
        try:
            bm.read(location, superblock_validator)
        except ToolError as e:
            out.line("superblock is corrupt")
            with out.push():
                out.line(str(e))
            return FATAL
    return NO_ERROR


def _examine_devices_tree(bm, sb, out: Nested, ignore_non_fatal) -> int:
    out.line("examining devices tree")
    err = NO_ERROR
    with out.push():

        def damage(d) -> None:
            nonlocal err
            out.line(f"missing devices: {d.keys}")
            with out.push():
                out.line(d.desc)
            err = FATAL

        visit_values(bm, sb.device_details_root, 1, DEVICE_DETAILS_SIZE, lambda p, v: None,
                     damage, ignore_non_fatal)  # fmt: skip
    return err


def _mapping_damage(out: Nested, state: list):
    def damage(d) -> None:
        if len(d.path) == 0:
            out.line(f"missing all mappings for devices: {d.keys}")
        else:
            out.line(f"thin device {d.path[0]} is missing mappings {d.keys}")
        with out.push():
            out.line(d.desc)
        state[0] = FATAL

    return damage


def _examine_mapping_tree(bm, sb, out: Nested, ignore_non_fatal, levels: int) -> int:
    out.line("examining mapping tree" if levels == 2 else "examining top level of mapping tree")
    state = [NO_ERROR]
    with out.push():
        visit_values(bm, sb.data_mapping_root, levels, 8, lambda p, v: None,
                     _mapping_damage(out, state), ignore_non_fatal)  # fmt: skip
    return state[0]


def check_metadata(files: Files, path: str, opts: CheckOptions, quiet: bool, io: Output) -> bool:
    """thin_provisioning::check_metadata: True when the metadata passes."""
    out = Nested(io.err, 2, not quiet)
    info = Nested(io.out, 0, not quiet)
    sb_location = 0
    if opts.use_metadata_snap:
        bm = open_bm(files, path, excl=False)
        try:
            sb_location = read_superblock(bm).metadata_snap
        finally:
            bm.handle.close()
        if sb_location == 0:
            raise ToolError("No metadata snapshot found.")
    bm = open_bm(files, path, excl=not opts.use_metadata_snap)
    try:
        err, expected = _check(bm, sb_location, opts, out, info)
    finally:
        bm.handle.close()
    counted = expected is not None and bool(expected.counts)
    if opts.fix_metadata_leaks:
        if not counted:
            out.line("metadata has not been fully examined")
        elif err == NON_FATAL:
            err = _fix_leaks(files, path, expected, out)
    if opts.fix_metadata_leaks or opts.clear_needs_check:
        if not counted:
            out.line("metadata has not been fully examined")
        elif err == NO_ERROR:
            _clear_needs_check(files, path, out)
    if opts.ignore_non_fatal:
        return err != FATAL
    return err == NO_ERROR


def _check(bm, sb_location, opts: CheckOptions, out: Nested, info: Nested):
    err = _examine_superblock(bm, sb_location, out)
    if err == FATAL:
        head = bm.raw(0)
        if head.startswith((b"<superblock", b"<?xml", b"<!DOCTYPE")):
            out.line("This looks like XML.  thin_check only checks the binary metadata format.")
        return err, None
    sb = read_superblock(bm, sb_location)
    if opts.override_mapping_root is not None:
        sb.data_mapping_root = opts.override_mapping_root
    info.line(f"TRANSACTION_ID={sb.trans_id}\nMETADATA_FREE_BLOCKS={bm.nr_blocks - 1}")
    if not opts.space_map_full:
        return max(err, _examine_data_mappings(bm, sb, opts, out)), None
    # the data space map is opened (its root only) before the walk
    err = max(err, _examine_data_mappings(bm, sb, opts, out))
    if err == FATAL:
        return err, None
    out.line("checking space map counts")
    with out.push():
        bc = Counter()
        if not count_metadata(bm, sb, bc, lambda text: out.write(text + "\n")):
            return FATAL, bc
        sm = MetadataSpaceMap(bm, sb.metadata_space_map_root)
        for b, actual in enumerate(sm.counts()):
            expected = bc.get(b)
            if actual != expected:
                out.line(
                    f"metadata reference counts differ for block {b}, expected {expected}, "
                    f"but got {actual}"
                )
                err = max(err, NON_FATAL if actual > expected else FATAL)
    return err, bc


def _fix_leaks(files: Files, path: str, expected: Counter, out: Nested) -> int:
    """metadata_checker::fix_metadata_leaks: blocks the space map counts once or twice
    that nothing references are freed in place (the space map's own blocks are marked
    shadowed), the index and the superblock's root follow; anything else is left."""
    bm = open_bm(files, path, write=True)
    try:
        sb_raw = bm.read(0, superblock_validator)
        sb = Superblock.unpack(sb_raw)
        sm = MetadataSpaceMap(bm, sb.metadata_space_map_root)
        err = NO_ERROR
        leaked = []
        for b, actual in enumerate(sm.counts()):
            want = expected.get(b)
            if actual == want:
                continue
            if actual < want:
                err = FATAL
                break
            if want or actual >= 3:
                err = max(err, NON_FATAL)
            elif actual > 0:
                leaked.append(b)
        if err != NO_ERROR:
            return err
        bitmaps: dict[int, bytearray] = {}
        index = bytearray(bm.read(sm.root.bitmap_root, index_validator))
        for b in leaked:
            i, bit = divmod(b, ENTRIES_PER_BITMAP)
            blocknr = sm.entries[i]
            data = bitmaps.setdefault(blocknr, bytearray(bm.read(blocknr, bitmap_validator)))
            data[16 + (2 * bit >> 3)] &= ~(1 << (2 * bit & 7))
            data[16 + ((2 * bit + 1) >> 3)] &= ~(1 << ((2 * bit + 1) & 7))
            # bitmap::insert: a block freed
            nr_free, nfb = struct.unpack_from("<II", index, 16 + 16 * i + 8)
            struct.pack_into("<II", index, 16 + 16 * i + 8, nr_free + 1, min(nfb, bit))
        for blocknr, data in bitmaps.items():
            struct.pack_into("<I", data, 0, bm_checksum(bytes(data[4:]), BITMAP_CSUM_XOR))
            bm.handle.pwrite(blocknr * MD_BLOCK_SIZE, bytes(data))
        struct.pack_into("<I", index, 0, bm_checksum(bytes(index[4:]), INDEX_CSUM_XOR))
        bm.handle.pwrite(sm.root.bitmap_root * MD_BLOCK_SIZE, bytes(index))
        sm.root.nr_allocated -= len(leaked)
        sb.metadata_space_map_root = sm.root.pack()
        bm.handle.pwrite(0, sb.pack(sb_raw))
    finally:
        bm.handle.close()
    out.line("fixed metadata leaks")
    return NO_ERROR


def _examine_data_mappings(bm, sb, opts: CheckOptions, out: Nested) -> int:
    if opts.data_mapping == 0:
        return NO_ERROR
    err = _examine_devices_tree(bm, sb, out, opts.ignore_non_fatal)
    return max(err, _examine_mapping_tree(bm, sb, out, opts.ignore_non_fatal,
                                          opts.data_mapping))  # fmt: skip


def _clear_needs_check(files: Files, path: str, out: Nested) -> None:
    bm = open_bm(files, path, write=True)
    try:
        sb = read_superblock(bm)
        if not sb.needs_check:
            return
        sb.flags &= ~1
        bm.handle.pwrite(0, sb.pack(bm.raw(0)))
    finally:
        bm.handle.close()
    out.line("cleared needs_check flag")


def main(prog: str, argv: list[str], io: Output, files: Files) -> int:
    """``thin_check ARGV``."""
    usage = USAGE.format(prog="thin_check")
    opts = CheckOptions()
    quiet = False
    parsed, operands = getopt_long(prog, argv, "qhVm", LONGOPTS)
    for c, arg in parsed:
        if c == "h":
            io.out(usage)
            return 0
        if c == "q":
            quiet = True
        elif c == "V":
            io.out(f"{VERSION}\n")
            return 0
        elif c == "m":
            opts.use_metadata_snap = True
            opts.space_map_full = False
        elif c == 1:
            opts.data_mapping, opts.space_map_full = 0, False
        elif c == 2:
            opts.data_mapping, opts.space_map_full = 1, False
        elif c == 3:
            opts.ignore_non_fatal = True
        elif c == 4:
            opts.clear_needs_check = True
        elif c == 5:
            root = lexical_uint64(arg)
            if root is None or arg.startswith(("+", "-")):
                io.err("bad lexical cast: source type value could not be interpreted as target\n")
                return 1
            opts.override_mapping_root = root
        elif c == 6:
            opts.fix_metadata_leaks = True
        else:
            io.err(f"{arg}\n{usage}")
            return 1
    problem = opts.conformance_error()
    if problem:
        io.err(f"{problem}\n{usage}")
        return 1
    if not operands:
        if not quiet:
            io.err("No input file provided.\n" + usage)
        return 1
    path = operands[0]
    try:
        if get_file_length(files, path) < 4096:
            io.err("Metadata device/file too small.  Is this binary metadata?\n")
            return 1
        ok = check_metadata(files, path, opts, quiet, io)
    except ToolError as e:
        if not quiet:
            io.err(f"{e}\n")
        return 1
    return 0 if ok else 1
