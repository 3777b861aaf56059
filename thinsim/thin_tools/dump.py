"""thin_dump (thin_dump.cc, xml_format.cc, human_readable_format.cc): the metadata as XML or
the human readable form, from a file, a device or the held metadata snapshot (the events
come from metadata_dumper.py)."""

from __future__ import annotations

import io as _io

from ..getopt import NO_ARGUMENT, OPTIONAL_ARGUMENT, REQUIRED_ARGUMENT, LongOption, getopt_long
from .common import VERSION, Files, OFStream, Output, ToolError
from .emitter import Emitter, OverrideEmitter, Overrides
from .metadata import open_metadata, open_metadata_snap
from .metadata_dumper import metadata_dump, metadata_repair
from .open import open_bm, parse_uint64

# -- emitters -----------------------------------------------------------------------------


class XmlEmitter(Emitter):
    """xml_format.cc: xml_emitter, indented two spaces a level."""

    def __init__(self, write) -> None:
        self.write = write
        self.indent = 0

    def _line(self, text: str) -> None:
        self.write(" " * self.indent + text + "\n")

    def begin_superblock(self, uuid, time, trans_id, flags, version, data_block_size,
                         nr_data_blocks, metadata_snap) -> None:  # fmt: skip
        snap = f'" metadata_snap="{metadata_snap}' if metadata_snap is not None else ""
        self._line(
            f'<superblock uuid="{uuid}" time="{time}" transaction="{trans_id}" '
            f'flags="{flags if flags is not None else 0}" '
            f'version="{version if version is not None else 1}" '
            f'data_block_size="{data_block_size}" nr_data_blocks="{nr_data_blocks}{snap}">'
        )
        self.indent += 2

    def end_superblock(self) -> None:
        self.indent -= 2
        self._line("</superblock>")

    def begin_device(self, dev_id, mapped_blocks, trans_id, creation_time, snap_time):
        self._line(
            f'<device dev_id="{dev_id}" mapped_blocks="{mapped_blocks}" '
            f'transaction="{trans_id}" creation_time="{creation_time}" '
            f'snap_time="{snap_time}">'
        )
        self.indent += 2

    def end_device(self) -> None:
        self.indent -= 2
        self._line("</device>")

    def range_map(self, origin_begin, data_begin, time, length) -> None:
        self._line(
            f'<range_mapping origin_begin="{origin_begin}" data_begin="{data_begin}" '
            f'length="{length}" time="{time}"/>'
        )

    def single_map(self, origin_block, data_block, time) -> None:
        self._line(
            f'<single_mapping origin_block="{origin_block}" data_block="{data_block}" '
            f'time="{time}"/>'
        )


class HumanReadableEmitter(Emitter):
    """human_readable_format.cc: hr_emitter."""

    def __init__(self, write) -> None:
        self.write = write

    def begin_superblock(self, uuid, time, trans_id, flags, version, data_block_size,
                         nr_data_blocks, metadata_snap) -> None:  # fmt: skip
        snap = f", {metadata_snap}" if metadata_snap is not None else ""
        self.write(
            f'begin superblock: "{uuid}", {time}, {trans_id}, '
            f"{flags if flags is not None else 0}, {version if version is not None else 1}, "
            f"{data_block_size}, {nr_data_blocks}{snap}\n"
        )

    def end_superblock(self) -> None:
        self.write("end superblock\n")

    def begin_device(self, dev_id, mapped_blocks, trans_id, creation_time, snap_time):
        self.write(
            f"device: {dev_id}\nmapped_blocks: {mapped_blocks}\ntransaction: {trans_id}\n"
            f"creation time: {creation_time}\nsnap time: {snap_time}\n"
        )

    def end_device(self) -> None:
        self.write("\n")

    def range_map(self, origin_begin, data_begin, time, length) -> None:
        self.write(
            f"    ({origin_begin}..{origin_begin + length - 1}) -> "
            f"({data_begin}..{data_begin + length - 1}), {time}\n"
        )

    def single_map(self, origin_block, data_block, time) -> None:
        self.write(f"    {origin_block} -> {data_block}, {time}\n")


def create_emitter(fmt: str, write) -> Emitter:
    if fmt == "xml":
        return XmlEmitter(write)
    if fmt == "human_readable":
        return HumanReadableEmitter(write)
    if fmt.startswith("custom="):
        raise Unsupported("custom emitters (--format custom=LIB)")
    raise ToolError(f"unknown format '{fmt}'")


class Unsupported(Exception):
    """Something thin_dump does that the simulator does not."""


def dump_text(files: Files, path: str, *, fmt: str = "xml", metadata_snap=False,
              snap_location: int | None = None, dev_ids=None, skip_mappings=False,
              repair=False) -> str:  # fmt: skip
    """What ``thin_dump`` prints for ``path`` (raises ToolError as the tool fails)."""
    buf = _io.StringIO()
    _dump(files, path, buf.write, fmt, metadata_snap, snap_location, dev_ids, skip_mappings,
          repair, None)  # fmt: skip
    return buf.getvalue()


def _dump(files, path, write, fmt, metadata_snap, snap_location, dev_ids, skip_mappings,
          repair, errors, overrides=None) -> None:  # fmt: skip
    overrides = overrides or Overrides()
    e = OverrideEmitter(create_emitter(fmt, write), overrides)
    if repair:
        bm = open_bm(files, path, excl=True)
        try:
            metadata_repair(bm, e, overrides)
        finally:
            bm.handle.close()
        return
    bm = open_bm(files, path, excl=not metadata_snap)
    try:
        if metadata_snap:
            md = open_metadata_snap(bm, snap_location)
        else:
            md = open_metadata(bm, read_space_maps=False)
        metadata_dump(md, e, dev_ids=dev_ids, skip_mappings=skip_mappings, errors=errors)
    finally:
        bm.handle.close()


USAGE = (
    "Usage: {prog} [options] {{device|file}}\n"
    "Options:\n"
    "  {{-h|--help}}\n"
    "  {{-f|--format}} {{xml|human_readable|custom}}\n"
    "  {{-r|--repair}}\n"
    "  {{-m|--metadata-snap}} [block#]\n"
    "  {{-o <xml file>}}\n"
    "  {{--dev-id}} <dev-id>\n"
    "  {{--skip-mappings}}\n"
    "  {{-V|--version}}\n"
)

LONGOPTS = [
    LongOption("help", NO_ARGUMENT, "h"),
    LongOption("metadata-snap", OPTIONAL_ARGUMENT, "m"),
    LongOption("output", REQUIRED_ARGUMENT, "o"),
    LongOption("format", REQUIRED_ARGUMENT, "f"),
    LongOption("repair", NO_ARGUMENT, "r"),
    LongOption("dev-id", REQUIRED_ARGUMENT, 1),
    LongOption("skip-mappings", NO_ARGUMENT, 2),
    LongOption("transaction-id", REQUIRED_ARGUMENT, 3),
    LongOption("data-block-size", REQUIRED_ARGUMENT, 4),
    LongOption("nr-data-blocks", REQUIRED_ARGUMENT, 5),
    LongOption("version", NO_ARGUMENT, "V"),
]


def strtoull(text: str) -> int | None:
    """strtoull(text, &end, 10), or None when nothing was parsed (end == text)."""
    s = text.lstrip(" \t\n\v\f\r")
    neg = s[:1] == "-"
    if s[:1] in "+-" and s:
        s = s[1:]
    digits = len(s) - len(s.lstrip("0123456789"))
    if not digits:
        return None
    v = int(s[:digits])
    if v > (1 << 64) - 1:
        return (1 << 64) - 1  # ERANGE: strtoull saturates
    return (-v) & ((1 << 64) - 1) if neg else v


def main(prog: str, argv: list[str], out: Output, files: Files) -> int:
    """``thin_dump ARGV``."""

    name = "thin_dump"
    usage = USAGE.format(prog=name)
    fmt, repair, use_snap, snap_location = "xml", False, False, None
    output = None
    dev_ids: set[int] | None = None
    skip_mappings = False
    overrides = {}
    names = {3: "transaction_id", 4: "data_block_size", 5: "nr_data_blocks"}
    opts, operands = getopt_long(prog, argv, "hm::o:f:rV", LONGOPTS)
    try:
        for c, arg in opts:
            if c == "h":
                out.out(usage)
                return 0
            if c == "f":
                fmt = arg
            elif c == "r":
                repair = True
            elif c == "m":
                use_snap = True
                if arg is not None:
                    snap_location = strtoull(arg)
                    if snap_location is None:
                        out.err("couldn't parse <metadata-snap>\n" + usage)
                        return 1
            elif c == "o":
                output = arg
            elif c == 1:
                dev = strtoull(arg)
                if dev is None:
                    out.err("couldn't parse <dev-id>\n" + usage)
                    return 1
                dev_ids = (dev_ids or set()) | {dev}
            elif c == 2:
                skip_mappings = True
            elif c in (3, 4, 5):
                what = {3: "transaction id", 4: "data block size", 5: "nr data blocks"}[c]
                overrides[names[c]] = parse_uint64(arg, what) & (0xFFFFFFFF if c == 4 else ~0)
            elif c == "V":
                out.out(f"{VERSION}\n")
                return 0
            else:
                out.err(f"{arg}\n{usage}")
                return 1
    except ToolError as e:
        # command::die
        out.err(f"{e}\n{usage}")
        return 1
    if not operands:
        out.err("No input file provided.\n" + usage)
        return 1
    sink = None
    if output is not None:
        # std::ofstream: one that failed to open, or to write (a full disk), drops the text
        sink = OFStream(files.create_text(output))
        write = sink.write
    else:
        write = out.endl  # xml_format.cc, human_readable_format.cc: each line ends in endl
    try:
        _dump(files, operands[0], write, fmt, use_snap, snap_location, dev_ids, skip_mappings,
              repair, out.err, Overrides(**overrides))  # fmt: skip
    except Unsupported as e:
        out.err(f"thinsim: {name}: {e} is not simulated\n")
        return 1
    except ToolError as e:
        out.err(f"{e}\n")
        return 1
    finally:
        if sink is not None:
            sink.close()
    return 0
