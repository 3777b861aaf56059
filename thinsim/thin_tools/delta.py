"""thin_delta (thin_delta.cc): what differs between the mappings of two thin devices."""

from __future__ import annotations

from ..getopt import NO_ARGUMENT, OPTIONAL_ARGUMENT, REQUIRED_ARGUMENT, LongOption, getopt_long
from .common import VERSION, Files, Output, ToolError
from .metadata import block_time, open_metadata, open_metadata_snap
from .open import lexical_uint64, open_bm

USAGE = (
    "Usage: {prog} [options] <device or file>\n"
    "Options:\n"
    "  {{--thin1, --snap1}}\n"
    "  {{--thin2, --snap2}}\n"
    "  {{-m, --metadata-snap}} [block#]\n"
    "  {{--verbose}}\n"
    "  {{-h|--help}}\n"
    "  {{-V|--version}}\n"
)

LONGOPTS = [
    LongOption("help", NO_ARGUMENT, "h"),
    LongOption("version", NO_ARGUMENT, "V"),
    LongOption("thin1", REQUIRED_ARGUMENT, 1),
    LongOption("snap1", REQUIRED_ARGUMENT, 1),
    LongOption("thin2", REQUIRED_ARGUMENT, 2),
    LongOption("snap2", REQUIRED_ARGUMENT, 2),
    LongOption("metadata-snap", OPTIONAL_ARGUMENT, "m"),
    LongOption("verbose", NO_ARGUMENT, 4),
]


class Die(Exception):
    """application::die: the message, then the usage, exit 1."""


def _runs(mappings: list[tuple[int, int]]) -> list[list[int]]:
    """mapping_recorder: runs contiguous in virtual and data blocks (times ignored)."""
    out: list[list[int]] = []
    for o, d in mappings:
        if out and out[-1][0] + out[-1][2] == o and out[-1][1] + out[-1][2] == d:
            out[-1][2] += 1
        else:
            out.append([o, d, 1])
    return out


def diff(left: list[list[int]], right: list[list[int]]):
    """dump_diff: (kind, vbegin, left dbegin, right dbegin, length) pieces in order."""
    left = [list(m) for m in left]
    right = [list(m) for m in right]
    li = ri = 0
    out = []

    def consume(ms, i, delta):
        m = ms[i]
        if delta == m[2]:
            return i + 1
        m[0] += delta
        m[1] += delta
        m[2] -= delta
        return i

    while li < len(left) and ri < len(right):
        lm, rm = left[li], right[ri]
        if lm[0] < rm[0]:
            delta = min(lm[2], rm[0] - lm[0])
            out.append(("left_only", lm[0], lm[1], None, delta))
            li = consume(left, li, delta)
        elif lm[0] > rm[0]:
            delta = min(rm[2], lm[0] - rm[0])
            out.append(("right_only", rm[0], None, rm[1], delta))
            ri = consume(right, ri, delta)
        else:
            delta = min(lm[2], rm[2])
            kind = "different" if lm[1] != rm[1] else "same"
            out.append((kind, lm[0], lm[1], rm[1], delta))
            li = consume(left, li, delta)
            ri = consume(right, ri, delta)
    for m in left[li:]:
        out.append(("left_only", m[0], m[1], None, m[2]))
    for m in right[ri:]:
        out.append(("right_only", m[0], None, m[1], m[2]))
    return out


def _simple(pieces) -> list[str]:
    lines = []
    cur = None  # [kind, begin, end]
    for kind, v, _l, _r, n in pieces:
        if cur is not None and cur[0] == kind and v == cur[2]:
            cur[2] += n
            continue
        if cur is not None:
            lines.append(f'    <{cur[0]} begin="{cur[1]}" length="{cur[2] - cur[1]}"/>')
        cur = [kind, v, v + n]
    if cur is not None:
        lines.append(f'    <{cur[0]} begin="{cur[1]}" length="{cur[2] - cur[1]}"/>')
    return lines


def _verbose(pieces) -> list[str]:
    lines = []
    cur = None
    for kind, v, ld, rd, n in pieces:
        if cur != kind:
            if cur is not None:
                lines.append(f"    </{cur}>")
            lines.append(f"    <{kind}>")
            cur = kind
        if kind == "different":
            lines.append(f'      <range begin="{v}" left_data_begin="{ld}" '
                         f'right_data_begin="{rd}" length="{n}"/>')  # fmt: skip
        else:
            d = ld if kind != "right_only" else rd
            lines.append(f'      <range begin="{v}" data_begin="{d}" length="{n}"/>')
    if cur is not None:
        lines.append(f"    </{cur}>")
    return lines


def delta_text(files: Files, path: str, snap1: int, snap2: int, *, verbose=False,
               metadata_snap=False, snap_location: int | None = None) -> str:  # fmt: skip
    """What ``thin_delta`` prints (raises Die or ToolError as the tool fails)."""
    bm = open_bm(files, path, excl=not metadata_snap)
    try:
        md = open_metadata_snap(bm, snap_location) if metadata_snap else open_metadata(bm)
        sb = md.sb
        root1 = md.lookup_device(snap1)
        if root1 is None:
            raise Die(f"Unable to find mapping tree for snap1 ({snap1})")
        root2 = md.lookup_device(snap2)
        if root2 is None:
            raise Die(f"Unable to find mapping tree for snap2 ({snap2})")

        def damage(_d) -> None:
            raise ToolError("damage in mapping tree, please run thin_check")

        maps = []
        for root in (root1, root2):
            got: list[tuple[int, int]] = []
            md.mappings(root, lambda p, v, got=got: got.append((p[0], block_time(v)[0])),
                        damage)  # fmt: skip
            maps.append(_runs(got))
        nr_data_blocks = md.nr_data_blocks or 0
    finally:
        bm.handle.close()
    snap = f'" metadata_snap="{sb.metadata_snap}' if sb.metadata_snap else ""
    lines = [
        (
            f'<superblock uuid="" time="{sb.time}" transaction="{sb.trans_id}" '
            f'data_block_size="{sb.data_block_size}" nr_data_blocks="{nr_data_blocks}{snap}">'
        ),
        f'  <diff left="{snap1}" right="{snap2}">',
    ]
    pieces = diff(maps[0], maps[1])
    lines += _verbose(pieces) if verbose else _simple(pieces)
    lines += ["  </diff>", "</superblock>"]
    return "\n".join(lines) + "\n"


def main(prog: str, argv: list[str], io: Output, files: Files) -> int:
    """``thin_delta ARGV``."""
    usage = USAGE.format(prog=prog.rsplit("/", 1)[-1])
    snaps: dict[int, int] = {}
    verbose, use_snap, snap_location = False, False, None
    opts, operands = getopt_long(prog, argv, "hVm::", LONGOPTS)
    try:
        for c, arg in opts:
            if c == "h":
                io.out(usage)
                return 0
            if c == "V":
                io.out(f"{VERSION}\n")
                return 0
            if c in (1, 2):
                v = lexical_uint64(arg)
                if v is None:
                    raise Die(f"Couldn't parse thin id {c}: '{arg}'")
                snaps[c] = v
            elif c == "m":
                use_snap = True
                if arg is not None:
                    snap_location = lexical_uint64(arg)
                    if snap_location is None:
                        raise Die(f"Couldn't parse metadata snapshot block: '{arg}'")
            elif c == 4:
                verbose = True
            else:
                io.err(f"{arg}\n{usage}")
                return 1
        if not operands:
            raise Die("No input device provided.")
        if 1 not in snaps:
            raise Die("--snap1 not specified.")
        if 2 not in snaps:
            raise Die("--snap2 not specified.")
        io.out(delta_text(files, operands[0], snaps[1], snaps[2], verbose=verbose,
                          metadata_snap=use_snap, snap_location=snap_location))  # fmt: skip
    except (Die, ToolError) as e:
        io.err(f"{e}\n{usage}")
        return 1
    return 0
