"""thin_repair (thin_repair.cc): a damaged metadata device written anew from the trees
metadata_repair (metadata_dumper.py) finds, from the superblock's roots or from a
superblock rebuilt out of the command line's overrides when it is unreadable."""

from __future__ import annotations

from ..getopt import NO_ARGUMENT, REQUIRED_ARGUMENT, LongOption, getopt_long
from .common import VERSION, Files, Output, ToolError
from .emitter import Overrides
from .metadata_dumper import metadata_repair
from .open import check_file_exists, open_bm, parse_uint64
from .restore import U32, check_output_file_requirements, write_restored

USAGE = (
    "Usage: {prog} [options] {{device|file}}\n"
    "Options:\n"
    "  {{-h|--help}}\n"
    "  {{-i|--input}} <input metadata (binary format)>\n"
    "  {{-o|--output}} <output metadata (binary format)>\n"
    "  {{--transaction-id}} <natural>\n"
    "  {{--data-block-size}} <natural>\n"
    "  {{--nr-data-blocks}} <natural>\n"
    "  {{-V|--version}}\n"
)

LONGOPTS = [
    LongOption("help", NO_ARGUMENT, "h"),
    LongOption("input", REQUIRED_ARGUMENT, "i"),
    LongOption("output", REQUIRED_ARGUMENT, "o"),
    LongOption("transaction-id", REQUIRED_ARGUMENT, 1),
    LongOption("data-block-size", REQUIRED_ARGUMENT, 2),
    LongOption("nr-data-blocks", REQUIRED_ARGUMENT, 3),
    LongOption("version", NO_ARGUMENT, "V"),
]


def repair(files: Files, old: str, new: str, overrides: Overrides | None = None,
           err=None) -> None:  # fmt: skip
    """thin_repair -i OLD -o NEW (raises ToolError as the tool fails)."""
    overrides = overrides or Overrides()

    def source(begin) -> None:
        check_file_exists(files, old, must_be_regular_file=False)
        e = begin()
        old_bm = open_bm(files, old, excl=True)
        try:
            metadata_repair(old_bm, e, overrides)
        finally:
            old_bm.handle.close()

    write_restored(files, new, source, overrides, err or (lambda t: None), "thin_repair")


def main(prog: str, argv: list[str], io: Output, files: Files) -> int:
    """``thin_repair ARGV``."""
    usage = USAGE.format(prog="thin_repair")
    inp = outp = None
    ov = Overrides()
    opts, _operands = getopt_long(prog, argv, "hi:o:V", LONGOPTS)
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
            elif c == "V":
                io.out(f"{VERSION}\n")
                return 0
            else:
                io.err(f"{arg}\n{usage}")
                return 1
    except ToolError as e:
        io.err(f"{e}\n{usage}")
        return 1
    if inp is None:
        io.err("no input file provided\n" + usage)
        return 1
    if outp is None:
        io.err("No output file provided.\n" + usage)
        return 1
    try:
        check_output_file_requirements(files, outp, io.err)
        repair(files, inp, outp, ov, io.err)
    except ToolError as e:
        io.err(f"{e}\n")
        return 1
    return 0
