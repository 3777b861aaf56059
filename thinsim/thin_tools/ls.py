"""thin_ls (thin_ls.cc, base/grid_layout.cc, base/disk_units.cc): a table of the thin
devices, with how many of their blocks are shared."""

from __future__ import annotations

from ..getopt import NO_ARGUMENT, OPTIONAL_ARGUMENT, REQUIRED_ARGUMENT, LongOption, getopt_long
from .common import VERSION, Files, Output, ToolError
from .metadata import Metadata, block_time, open_metadata, open_metadata_snap
from .open import open_bm

FIELDS = (
    "DEV",
    "MAPPED_BLOCKS",
    "EXCLUSIVE_BLOCKS",
    "SHARED_BLOCKS",
    "MAPPED_SECTORS",
    "EXCLUSIVE_SECTORS",
    "SHARED_SECTORS",
    "MAPPED_BYTES",
    "EXCLUSIVE_BYTES",
    "SHARED_BYTES",
    "MAPPED",
    "EXCLUSIVE",
    "SHARED",
    "TRANSACTION",
    "CREATE_TIME",
    "SNAP_TIME",
)
DEFAULT_FIELDS = ("DEV", "MAPPED", "CREATE_TIME", "SNAP_TIME")
_EXCLUSIVE = {f for f in FIELDS if f.startswith(("EXCLUSIVE", "SHARED"))}

USAGE = (
    "Usage: {prog} [options] {{metadata device}}\n"
    "Options:\n"
    "  {{-h|--help}}\n"
    "  {{-m|--metadata-snap}}\n"
    "  {{--no-headers}}\n"
    "  {{-o|--format <fields>}}\n"
    "  {{-V|--version}}\n\n"
    "where <fields> is a comma separated list from:\n"
) + "".join(f"  {f}\n" for f in FIELDS)

LONGOPTS = [
    LongOption("help", NO_ARGUMENT, "h"),
    LongOption("metadata-snap", NO_ARGUMENT, "m"),
    LongOption("version", NO_ARGUMENT, "V"),
    LongOption("format", REQUIRED_ARGUMENT, "o"),
    LongOption("no-headers", NO_ARGUMENT, 1),
]
_ = OPTIONAL_ARGUMENT


def parse_fields(text: str) -> list[str]:
    """parse_fields: getline on ',' (a trailing comma adds nothing, ``a,,b`` fails)."""
    items = text.split(",")
    if items and items[-1] == "":
        items.pop()
    for item in items:
        if item not in FIELDS:
            raise ToolError("unknown field")
    return items


def format_disk_unit(sectors: int) -> str:
    """base::format_disk_unit(n, UNIT_SECTOR)."""
    n = (sectors * 512) & ((1 << 64) - 1)
    i = 0
    while n > 1024 * 1024:
        n //= 1024
        i += 1
    if n > 8 * 1024:
        # round_ull: round(double(n) / 1024), halves away from zero
        q, r = divmod(n, 1024)
        n = q + (1 if r >= 512 else 0)
        i += 1
    return f"{n}{['', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'][i]}"


def _damage(_d) -> None:
    raise ToolError("metadata contains errors (run thin_check for details).")


def rows(md: Metadata, fields: list[str]) -> list[list[str]]:
    """The table's rows (without the header)."""
    details = md.device_details(_damage)
    block_size = md.sb.data_block_size
    counts: dict[int, int] = {}

    def device_mappings(dev_id: int):
        root = md.lookup_device(dev_id)
        if root is None:
            raise ToolError("couldn't find mapping tree root")
        out = []
        md.mappings(root, lambda p, v: out.append(block_time(v)[0]), _damage)
        return out

    need = any(f in _EXCLUSIVE for f in fields)
    per_dev = {}
    if need:
        for dev_id in sorted(details):
            blocks = device_mappings(dev_id)
            per_dev[dev_id] = blocks
            for b in blocks:
                counts[b] = min(2, counts.get(b, 0) + 1)
    out = []
    for dev_id in sorted(details):
        d = details[dev_id]
        exclusive = 0
        if need:
            exclusive = sum(1 for b in per_dev[dev_id] if counts[b] == 1)
        mapped = d.mapped_blocks
        shared = (mapped - exclusive) & ((1 << 64) - 1)
        values = {
            "DEV": dev_id,
            "MAPPED_BLOCKS": mapped,
            "EXCLUSIVE_BLOCKS": exclusive,
            "SHARED_BLOCKS": shared,
            "MAPPED_SECTORS": mapped * block_size,
            "EXCLUSIVE_SECTORS": exclusive * block_size,
            "SHARED_SECTORS": shared * block_size,
            "MAPPED_BYTES": mapped * block_size * 512,
            "EXCLUSIVE_BYTES": exclusive * block_size * 512,
            "SHARED_BYTES": shared * block_size * 512,
            "MAPPED": format_disk_unit(mapped * block_size),
            "EXCLUSIVE": format_disk_unit(exclusive * block_size),
            "SHARED": format_disk_unit(shared * block_size),
            "TRANSACTION": d.transaction_id,
            "CREATE_TIME": d.creation_time,
            "SNAP_TIME": d.snapshotted_time,
        }
        out.append([str(values[f] if isinstance(values[f], str) else values[f] & ((1 << 64) - 1))
                    for f in fields])  # fmt: skip
    return out


def render(grid: list[list[str]]) -> str:
    """grid_layout::render: right-justified columns, a space after every field."""
    widths: list[int] = []
    for row in grid:
        for i, cell in enumerate(row):
            if i >= len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    text = []
    newline_needed = False
    for row in grid:
        if newline_needed:
            text.append("\n")
            newline_needed = False
        for i, cell in enumerate(row):
            text.append(cell.rjust(widths[i]) + " ")
            newline_needed = True
    if newline_needed:
        text.append("\n")
    return "".join(text)


def ls_text(files: Files, path: str, fields=DEFAULT_FIELDS, *, headers=True,
            metadata_snap=False) -> str:  # fmt: skip
    """What ``thin_ls`` prints for ``path`` (raises ToolError as the tool fails)."""
    fields = list(fields)
    bm = open_bm(files, path, excl=not metadata_snap)
    try:
        md = open_metadata_snap(bm) if metadata_snap else open_metadata(bm)
        grid = ([list(fields)] if headers else []) + rows(md, fields)
    finally:
        bm.handle.close()
    return render(grid)


def main(prog: str, argv: list[str], io: Output, files: Files) -> int:
    """``thin_ls ARGV``."""
    usage = USAGE.format(prog="thin_ls")
    fields = list(DEFAULT_FIELDS)
    headers, use_snap = True, False
    opts, operands = getopt_long(prog, argv, "ho:m::V", LONGOPTS)
    for c, arg in opts:
        if c == "h":
            io.out(usage)
            return 0
        if c == "m":
            use_snap = True
        elif c == "o":
            try:
                fields = parse_fields(arg)
            except ToolError as e:
                io.err(f"{e}\n")
                return 1
        elif c == "V":
            io.out(f"{VERSION}\n")
            return 0
        elif c == 1:
            headers = False
        else:
            io.err(f"{arg}\n{usage}")
            return 1
    if not operands:
        io.err("No input file provided.\n" + usage)
        return 1
    try:
        io.out(ls_text(files, operands[0], fields, headers=headers, metadata_snap=use_snap))
    except ToolError as e:
        io.err(f"{e}\n")
        return 1
    return 0
