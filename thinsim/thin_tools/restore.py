"""thin_restore (thin_restore.cc, restore_emitter.cc, xml_format.cc, base/xml_utils.cc):
metadata from thin_dump's XML, written onto a file or device.

The XML is parsed with expat (pyexpat is the same library the C++ links), attributes are
fetched in the order gcc evaluates the C++ call's arguments (right to left), so a broken
file fails with the same message.  The metadata itself is built with the model
(thinsim.model), the kernel's own btrees and space maps, so a kernel opens it as it opens
what it wrote.
"""

from __future__ import annotations

import os
from xml.parsers import expat

from ..getopt import NO_ARGUMENT, REQUIRED_ARGUMENT, LongOption, getopt_long
from .common import MD_BLOCK_SIZE, VERSION, Abort, Crash, Files, Output, ToolError, terminate
from .emitter import Emitter, OverrideEmitter, Overrides
from .open import check_file_exists, get_file_length, lexical_uint64, open_bm, parse_uint64

MAX_METADATA_BLOCKS = 255 * ((MD_BLOCK_SIZE - 16) * 4)
U32 = (1 << 32) - 1
BAD_CAST = "bad lexical cast: source type value could not be interpreted as target"

USAGE = (
    "Usage: {prog} [options]\n"
    "Options:\n"
    "  {{-h|--help}}\n"
    "  {{-i|--input}} <input xml file>\n"
    "  {{-o|--output}} <output device or file>\n"
    "  {{--transaction-id}} <natural>\n"
    "  {{--data-block-size}} <natural>\n"
    "  {{--nr-data-blocks}} <natural>\n"
    "  {{-q|--quiet}}\n"
    "  {{-V|--version}}\n"
)

LONGOPTS = [
    LongOption("help", NO_ARGUMENT, "h"),
    LongOption("input", REQUIRED_ARGUMENT, "i"),
    LongOption("output", REQUIRED_ARGUMENT, "o"),
    LongOption("transaction-id", REQUIRED_ARGUMENT, 1),
    LongOption("data-block-size", REQUIRED_ARGUMENT, 2),
    LongOption("nr-data-blocks", REQUIRED_ARGUMENT, 3),
    LongOption("quiet", NO_ARGUMENT, "q"),
    LongOption("version", NO_ARGUMENT, "V"),
]

EXPLAIN = (
    "The output file should either be a block device,\n"
    "or an existing file.  The file needs to be large\n"
    "enough to hold the metadata."
)


class Restorer(Emitter):
    """restore_emitter.cc: builds the metadata as the events come (writer.py, the C++'s
    own layout); ``end_superblock`` commits."""

    def __init__(self, nr_metadata_blocks: int, warn=None, prog: str = "thin_restore",
                 traced: bool = False) -> None:  # fmt: skip
        self.prog = prog
        self.md = None
        self.empty_mapping = None
        self.create(nr_metadata_blocks, warn, traced)

    def create(self, nr_metadata_blocks: int, warn=None, traced: bool = False) -> None:
        """metadata(bm, CREATE), then the restorer's own empty mapping tree.  Where that
        runs out (a 32 KiB output) ``self.md`` holds what was made, which the block cache
        still writes back as the metadata is destroyed."""
        from .writer import MetadataWriter

        if nr_metadata_blocks > MAX_METADATA_BLOCKS:
            if warn is not None:
                warn(f"truncating metadata device to {MAX_METADATA_BLOCKS} 4k blocks\n")
            nr_metadata_blocks = MAX_METADATA_BLOCKS
        self.md = MetadataWriter(nr_metadata_blocks, traced)
        self.in_superblock = False
        self.committed = False
        self.nr_data_blocks = 0
        self.device = None
        self.details = None
        self.mapping = None
        # the restorer's empty mapping tree, cloned for every device
        from .writer import BTree

        self.empty_mapping = BTree(self.md.tm, 8)

    def begin_superblock(self, uuid, time, trans_id, flags, version, data_block_size,
                         nr_data_blocks, metadata_snap) -> None:  # fmt: skip
        self.in_superblock = True
        self.nr_data_blocks = nr_data_blocks
        sb = self.md.sb
        sb.uuid = uuid.encode()[:16].ljust(16, b"\0")
        sb.time = time & U32
        sb.trans_id = trans_id
        sb.flags = flags or 0
        sb.version = version if version is not None else 1
        sb.data_block_size = data_block_size
        sb.metadata_snap = metadata_snap or 0
        self.md.data_sm.extend(nr_data_blocks)

    def end_superblock(self) -> None:
        if not self.in_superblock:
            raise ToolError("missing superblock")
        self.md.commit()
        self.committed = True
        self.in_superblock = False

    def begin_device(self, dev_id, mapped_blocks, trans_id, creation_time, snap_time):
        from .writer import BTree

        if not self.in_superblock:
            raise ToolError("missing superblock")
        if self.md.details.lookup(dev_id) is not None:
            raise ToolError("Device already exists")
        self.details = [0, trans_id, creation_time & U32, snap_time & U32]
        # single_mapping_tree::clone: the empty root gains a reference
        self.md.tm.sm.inc(self.empty_mapping.root)
        self.mapping = BTree(self.md.tm, 8, self.empty_mapping.root)
        self.device = dev_id

    def end_device(self) -> None:
        import struct

        key = self.device
        if key is None:
            # *current_device_ on an empty boost::optional: a </device> closing a device
            # nested in another, whose own </device> came first
            raise Abort(
                f"{self.prog}: /usr/include/boost/optional/optional.hpp:1212: "
                "boost::optional<T>::reference_type boost::optional<T>::get() [with T = "
                "unsigned int; boost::optional<T>::reference_type = unsigned int&]: "
                "Assertion `this->is_initialized()' failed.\n"
            )
        self.md.details.insert(key, struct.pack("<QQII", *self.details))
        self.md.mappings.insert(key, struct.pack("<Q", self.mapping.root))
        self.device = None

    def range_map(self, origin_begin, data_begin, time, length) -> None:
        for i in range(length):
            self.single_map(origin_begin + i, data_begin + i, time)

    def single_map(self, origin_block, data_block, time) -> None:
        import struct

        if self.device is None:
            raise ToolError("not in device")
        if data_block >= self.nr_data_blocks:
            raise ToolError(
                f"mapping beyond end of data device ({data_block} >= {self.nr_data_blocks})"
            )
        value = struct.pack("<Q", ((data_block << 24) | (time & 0xFFFFFF)) & ((1 << 64) - 1))
        if self.mapping.insert(origin_block, value):
            self.details[0] += 1
        self.md.data_sm.inc(data_block)

    def finish(self) -> None:
        """~restorer: the empty tree's own reference goes, after the commit."""
        self.md.tm.sm.dec(self.empty_mapping.root)

    def blocks(self) -> dict[int, bytes]:
        """The blocks written, by block number."""
        return self.md.blocks()


def _attr(attrs: dict, key: str, kind: str):
    if key not in attrs:
        raise ToolError(f"could not find attribute: {key}")
    return _cast(attrs[key], kind)


def _opt_attr(attrs: dict, key: str, kind: str):
    return _cast(attrs[key], kind) if key in attrs else None


def _cast(text: str, kind: str):
    if kind == "str":
        return text
    v = lexical_uint64(text)
    if kind == "u32":
        # lexical_cast<uint32_t>: a minus wraps within 32 bits; above 2^32 - 1 fails
        s = text[1:] if text[:1] in "+-" else text
        if v is None or not s or int(s) > U32:
            raise ToolError(BAD_CAST)
        return (-int(s)) & U32 if text[:1] == "-" else int(s)
    if v is None:
        raise ToolError(BAD_CAST)
    return v


def parse_xml(data: bytes, e: Emitter) -> None:
    """tp::parse_xml: expat over the file in 4 KiB reads, tags to emitter events."""

    def start(name, attrs) -> None:
        if name == "superblock":
            # gcc evaluates the arguments right to left
            snap = _opt_attr(attrs, "metadata_snap", "u64")
            nr = _attr(attrs, "nr_data_blocks", "u64")
            dbs = _attr(attrs, "data_block_size", "u32")
            version = _opt_attr(attrs, "version", "u32")
            flags = _opt_attr(attrs, "flags", "u32")
            trans = _attr(attrs, "transaction", "u64")
            time = _attr(attrs, "time", "u64")
            uuid = _attr(attrs, "uuid", "str")
            e.begin_superblock(uuid, time, trans, flags, version, dbs, nr, snap)
        elif name == "device":
            snap_time = _attr(attrs, "snap_time", "u64")
            ctime = _attr(attrs, "creation_time", "u64")
            trans = _attr(attrs, "transaction", "u64")
            mapped = _attr(attrs, "mapped_blocks", "u64")
            dev = _attr(attrs, "dev_id", "u32")
            e.begin_device(dev, mapped, trans, ctime, snap_time)
        elif name == "range_mapping":
            length = _attr(attrs, "length", "u64")
            time = _attr(attrs, "time", "u32")
            data = _attr(attrs, "data_begin", "u64")
            origin = _attr(attrs, "origin_begin", "u64")
            e.range_map(origin, data, time, length)
        elif name == "single_mapping":
            time = _attr(attrs, "time", "u32")
            data = _attr(attrs, "data_block", "u64")
            origin = _attr(attrs, "origin_block", "u64")
            e.single_map(origin, data, time)
        else:
            raise ToolError("unknown tag type")

    def end(name) -> None:
        if name == "superblock":
            e.end_superblock()
        elif name == "device":
            e.end_device()
        elif name not in ("range_mapping", "single_mapping"):
            raise ToolError("unknown tag close")

    p = expat.ParserCreate()
    p.StartElementHandler = start
    p.EndElementHandler = end
    pos = 0
    while True:
        chunk = data[pos : pos + 4096]
        pos += len(chunk)
        done = len(chunk) < 4096
        try:
            p.Parse(chunk, done)
        except expat.ExpatError as err:
            raise ToolError(
                f"Parse error at line {p.CurrentLineNumber}:\n{expat.ErrorString(err.code)}\n"
            ) from None
        if done:
            break


def check_output_file_requirements(files: Files, path: str, err) -> None:
    """base::check_output_file_requirements: an existing file of at least 32 KiB (any
    size for a block device)."""
    try:
        info = files.stat(path)
    except OSError:
        err("Output file does not exist.\n\n")
        raise ToolError(EXPLAIN) from None
    if info.kind == "reg":
        if not info.size:
            err("Zero size output file.\n\n")
            raise ToolError(EXPLAIN)
        if info.size < 32 * 1024:
            err("Output file too small.\n\n")
            raise ToolError(EXPLAIN)


def write_restored(files: Files, dev: str, source, overrides: Overrides, err,
                   prog: str = "thin_restore") -> None:  # fmt: skip
    """restore / repair: open the output, run ``source(emitter)``, write the blocks; on a
    failure after the output was touched its superblock is zeroed, as the C++ does.

    An abort (:class:`Abort`: thin_repair onto an output too small, whose last run of
    mappings is emitted from a destructor) leaves the output as the C++ block cache had
    written it back: the tool dies with its cache unflushed, no superblock written and
    none zeroed, but the cache (block-cache/block_cache.cc) wrote back blocks on the way,
    as its lists and every read_lock, write_lock and release of the transaction manager,
    space maps and btrees decided (measured: deep.md onto 64 KiB writes blocks 2 1 5 6 7
    8).  Those locks cost time the ordinary run need not spend, so a run that aborts is run
    again with them traced through a port of the cache (block_cache.py, writer.py), and
    the blocks it had written back when it dies are written.  An exception that leaves a
    noexcept destructor unwinds the frames below it first (gcc's landing pad there calls
    std::terminate), so the locks the failed insert held are released, and may write
    back, before the abort (measured: kernel-basic with a damaged leaf onto 64 KiB writes
    6 blocks more after the failure).  Where Debian's file depends on
    when the kernel completes the cache's AIO writes (io_getevents takes what is done),
    thinsim's is the one where every write waited for has completed."""
    bm = open_bm(files, dev, write=True)
    touched = False
    restorer = None
    traced = False
    try:

        def begin():
            nonlocal touched, restorer
            touched = True
            if not bm.nr_blocks:
                raise ToolError("Metadata is not large enough for superblock.")
            restorer = Restorer.__new__(Restorer)
            restorer.__init__(bm.nr_blocks, err, prog, traced)
            return OverrideEmitter(restorer, overrides)

        try:
            source(begin)
        except (Abort, Crash):
            if restorer is None or restorer.md is None:
                raise
            # the run again, its locks through the C++'s block cache (block_cache.py):
            # what it has written back when it dies (abort or segfault) is all the
            # output gets
            traced = True
            restorer = None
            try:
                source(begin)
            except (Abort, Crash) as death:
                cache = restorer.md.tm.cache
                for b, block in cache.writes:
                    bm.handle.pwrite(b * MD_BLOCK_SIZE, block)
                raise death from None
            raise AssertionError("thinsim: a restore died once and not again") from None
    except ToolError:
        if restorer is not None and restorer.md is not None:
            # the block cache writes back what the transaction touched (the restorer's
            # destructor has run); zero_superblock then wipes the superblock.  The
            # destructor's own exception would leave it during the unwinding: terminate
            if restorer.empty_mapping is not None:
                try:
                    restorer.finish()
                except ToolError as e:
                    raise terminate(str(e)) from None
            _write_blocks(bm, restorer.blocks(), skip_superblock=True)
        if touched:
            bm.handle.pwrite(0, bytes(MD_BLOCK_SIZE))
        raise
    else:
        if restorer is not None:
            restorer.finish()
            _write_blocks(bm, restorer.blocks(), skip_superblock=not restorer.committed)
    finally:
        bm.handle.close()


def _write_blocks(bm, blocks: dict[int, bytes], *, skip_superblock: bool) -> None:
    for b, block in sorted(blocks.items()):
        if b == 0 and skip_superblock:
            continue
        bm.handle.pwrite(b * MD_BLOCK_SIZE, block)


def restore(files: Files, xml_path: str, dev: str, overrides: Overrides | None = None,
            err=None) -> None:  # fmt: skip
    """thin_restore -i XML_PATH -o DEV (raises ToolError as the tool fails)."""

    def source(begin) -> None:
        # thin_restore.cc: restore checks the input before metadata_touched is set
        check_file_exists(files, xml_path)
        try:
            text = files.read_text(xml_path)
        except OSError as e:
            # xml_parser::parse reads an ifstream that failed to open until it reaches
            # eof, which it never does: Debian's thin_restore spins for ever there, with
            # the output not yet written.  thinsim says so and leaves the output as it is.
            raise ToolError(
                f"thinsim: thin_restore: {xml_path}: {os.strerror(e.errno)}: Debian's "
                "thin_restore loops for ever on an input it cannot read (not simulated)"
            ) from None
        e = begin()
        get_file_length(files, xml_path)
        parse_xml(text, e)

    write_restored(files, dev, source, overrides or Overrides(), err or (lambda t: None))


def main(prog: str, argv: list[str], io: Output, files: Files) -> int:
    """``thin_restore ARGV``."""
    usage = USAGE.format(prog="thin_restore")
    inp = outp = ""
    ov = Overrides()
    opts, operands = getopt_long(prog, argv, "hi:o:qV", LONGOPTS)
    try:
        for c, arg in opts:
            if c == "h":
                io.out(usage)
                return 0
            if c == "i":
                inp = arg
            elif c == "o":
                outp = arg
            elif c == 1:
                ov.transaction_id = parse_uint64(arg, "transaction id")
            elif c == 2:
                ov.data_block_size = parse_uint64(arg, "data block size") & U32
            elif c == 3:
                ov.nr_data_blocks = parse_uint64(arg, "nr data blocks")
            elif c == "q":
                pass
            elif c == "V":
                io.out(f"{VERSION}\n")
                return 0
            else:
                io.err(f"{arg}\n{usage}")
                return 1
    except ToolError as e:
        io.err(f"{e}\n{usage}")
        return 1
    if operands:
        io.err(usage)
        return 1
    if not inp:
        io.err("No input file provided.\n\n" + usage)
        return 1
    if not outp:
        io.err("No output file provided.\n\n" + usage)
        return 1
    try:
        check_output_file_requirements(files, outp, io.err)
        restore(files, inp, outp, ov, io.err)
    except ToolError as e:
        io.err(f"{e}\n")
        return 1
    return 0
