"""thin_repair and thin_dump --repair (thin_repair.cc, metadata_dumper.cc: metadata_repair):
the trees from the superblock's roots, or from a superblock rebuilt out of the command
line's overrides when it is unreadable."""

from __future__ import annotations

from .common import VERSION, Files, Output, ToolError
from .dump import Emitter, metadata_dump
from .getopt import NO_ARGUMENT, REQUIRED_ARGUMENT, LongOption, getopt_long
from .metadata import BlockManager, Metadata, Superblock, read_superblock, visit_values
from .open import open_bm, parse_uint64
from .restore import (
    U32,
    OverrideError,
    Overrides,
    check_output_file_requirements,
    write_restored,
)

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


def _trees_readable(bm: BlockManager, sb: Superblock) -> bool:
    """get_dev_ids and get_map_ids: both trees walk without damage."""

    def fail(_d) -> None:
        raise ToolError("damaged")

    try:
        visit_values(bm, sb.device_details_root, 1, 24, lambda p, v: None, fail)
        visit_values(bm, sb.data_mapping_root, 2, 8, lambda p, v: None, fail)
    except ToolError:
        return False
    return True


def metadata_repair(bm: BlockManager, e: Emitter, overrides: Overrides | None = None) -> None:
    """thin_provisioning::metadata_repair."""
    overrides = overrides or Overrides()
    try:
        if not bm.nr_blocks:
            raise ToolError("Metadata is not large enough for superblock.")
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
        if not _trees_readable(bm, sb):
            raise ToolError(
                "thinsim: finding the best roots in damaged metadata (find_better_roots_) "
                "is not simulated"
            )
        from .restore import OverrideEmitter

        metadata_dump(Metadata(bm, sb), OverrideEmitter(e, overrides), repair=True)
    except OverrideError as err:
        raise ToolError(
            "The following field needs to be provided on the command line due to corruption "
            f"in the superblock: {err}"
        ) from None


def repair(files: Files, old: str, new: str, overrides: Overrides | None = None,
           err=None) -> None:  # fmt: skip
    """thin_repair -i OLD -o NEW (raises ToolError as the tool fails)."""
    overrides = overrides or Overrides()

    def source(begin) -> None:
        try:
            files.stat(old)
        except OSError:
            raise ToolError("Couldn't stat file") from None
        e = begin()
        old_bm = open_bm(files, old, excl=True)
        try:
            metadata_repair(old_bm, e, overrides)
        finally:
            old_bm.handle.close()

    write_restored(files, new, source, overrides, err or (lambda t: None))


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
