"""thin_metadata_size (thin-provisioning-tools 0.9.0, thin_metadata_size.cc): the metadata
device size a pool needs, and the command line around it, quirks included."""

from __future__ import annotations

import math
import os

from ..getopt import NO_ARGUMENT, OPTIONAL_ARGUMENT, REQUIRED_ARGUMENT, LongOption, getopt_long
from .common import VERSION, Output

U64 = (1 << 64) - 1
LLONG_MAX = (1 << 63) - 1

UNIT_CHARS = "bskKmMgGtTpPeEzZyY"
UNIT_STRINGS = (
    "bytes", "sectors",
    "kibibytes", "kilobytes", "mebibytes", "megabytes",
    "gibibytes", "gigabytes", "tebibytes", "terabytes",
    "pebibytes", "petabytes", "ebibytes", "exabytes",
    "zebibytes", "zetabytes", "yobibytes", "yottabytes",
)  # fmt: skip


def _factors() -> list[int]:
    # init_prg: each binary/decimal unit is the one before times 1024/1000, in unsigned
    # long long, so zebibytes and beyond wrap (2^70 mod 2^64 is 0)
    f = [1, 512, 1024, 1000] + [0] * (len(UNIT_STRINGS) - 4)
    for u in range(4, len(UNIT_STRINGS), 2):
        f[u] = (f[u - 2] * f[2]) & U64
        f[u + 1] = (f[u - 1] * f[3]) & U64
    return f


UNIT_FACTORS = _factors()
SECTORS = 1
# (4096 - 64) / 16: the estimate's mapping entries per btree node
MAPPINGS_PER_BLOCK = (4096 - 64) // 16

LONGOPTS = [
    LongOption("block-size", REQUIRED_ARGUMENT, "b"),
    LongOption("pool-size", REQUIRED_ARGUMENT, "s"),
    LongOption("max-thins", REQUIRED_ARGUMENT, "m"),
    LongOption("unit", REQUIRED_ARGUMENT, "u"),
    LongOption("numeric-only", OPTIONAL_ARGUMENT, "n"),
    LongOption("help", NO_ARGUMENT, "h"),
    LongOption("version", NO_ARGUMENT, "V"),
]


def unit_index(unit: str | None) -> int:
    """The unit a suffix names: one of UNIT_CHARS, or a prefix of a unit's name; -1 if none."""
    if unit is None:
        return SECTORS
    if len(unit) == 1:
        i = UNIT_CHARS.find(unit)
        return i
    for i, s in enumerate(UNIT_STRINGS):
        if s.startswith(unit):
            return i
    return -1


def estimate_bytes(block_size_sectors: int, pool_size_sectors: int, max_thins: int) -> float:
    """print_estimated_result: bytes of metadata for a pool, as a double.

    Twice the mapping nodes a full pool needs (nodes are half full on average) plus one
    block per thin device, plus the superblock, in 4 KiB blocks.

    >>> estimate_bytes(128, 209715200, 1000)
    53702656.0
    """
    n = ((2 * pool_size_sectors) & U64) // block_size_sectors // MAPPINGS_PER_BLOCK
    r = 1.0 + float((n + max_thins) & U64)
    return r * 8 * 512


class _Abort(Exception):
    pass


def _atoll(digits: str) -> int:
    return min(int(digits), LLONG_MAX) if digits else 0


def main(prog: str, argv: list[str], out: Output) -> int:
    """``thin_metadata_size ARGV``: prints to ``out``; returns the exit status."""
    name = os.path.basename(prog)
    state = {"unit": SECTORS, "n": {}, "s": {}, "numeric": 0}

    def abort(msg: str):
        out.err(f"{name} - {msg}\n")
        raise _Abort

    def check_size(o: str, arg: str) -> None:
        if state["n"].get(o):
            abort("option already given!")
        digits_end = len(arg) - len(arg.lstrip("0123456789"))
        digits, suffix = arg[:digits_end], arg[digits_end:]
        if suffix:
            idx = unit_index(suffix)
            if idx < 0:
                abort("Invalid unit specifier!")
            valid = True
        else:
            idx, valid = SECTORS, False
        r = (_atoll(digits) * UNIT_FACTORS[idx]) & U64
        if not valid or o != "m":
            r //= UNIT_FACTORS[SECTORS]
        state["n"][o] = r
        if not valid:
            idx = state["unit"]
        state["s"][o] = digits + (UNIT_STRINGS[idx] if o != "m" or valid else "")

    try:
        opts, _operands = getopt_long(prog, argv, "b:s:m:u:n::hV", LONGOPTS)
        for c, arg in opts:
            if c in "bsm":
                check_size(c, arg)
            elif c == "u":
                idx = unit_index(arg)
                if idx < 0:
                    abort("output unit specifier invalid!")
                state["unit"] = idx
            elif c == "n":
                if state["numeric"]:
                    abort("-n already given!")
                state["numeric"] = 1
                if arg is not None:
                    unit_long = "long".startswith(arg)
                    if not arg or (not "short".startswith(arg) and not unit_long):
                        abort("-n invalid option argument")
                    state["numeric"] = 3 if unit_long else 2
            elif c == "h":
                _help(name, out)
                return 0
            elif c == "V":
                out.out(f"{VERSION}\n")
                return 0
            else:
                out.err(f"{arg}\n")
                return 1
        n = state["n"]
        if not n.get("b"):
            abort("block size required!")
        elif not n.get("s"):
            abort("pool size required!")
        elif not n.get("m"):
            abort("max thins required!")
        elif n["b"] & (n["b"] - 1):
            abort("block size must be 2^^N")
        elif n["s"] <= n["b"]:
            abort("pool size must be larger than block size")
    except _Abort:
        return 1
    r = estimate_bytes(n["b"], n["s"], n["m"])
    factor = UNIT_FACTORS[state["unit"]]
    r = r / factor if factor else math.inf
    out.out(_precision(name, r, state["unit"], state["numeric"], state["s"]))
    return 0


def _ull(r: float) -> int:
    # gcc's double to unsigned long long on x86-64: values from 2^63 up go through
    # cvttsd2si(r - 2^63), which gives 2^63 for anything out of range (inf too)
    if r < 2.0**63:
        return int(r)
    big = r - 2.0**63
    low = int(big) if big < 2.0**63 else 1 << 63
    return (low ^ (1 << 63)) & U64


def _precision(name, r: float, idx: int, numeric: int, strings) -> str:
    full = numeric == 0
    text = f"{name} - " if full else ""
    trunc = math.floor(r) if math.isfinite(r) else r
    if r == trunc:
        text += str(_ull(r))
    else:
        text += ("%0.2e" if r - trunc < 1e-2 else "%0.2f") % r
    if full:
        text += f" {UNIT_STRINGS[idx]}"
    elif numeric == 2:
        text += UNIT_CHARS[idx]
    elif numeric == 3:
        text += UNIT_STRINGS[idx]
    if full:
        text += (
            f' estimated metadata area size for "--block-size={strings["b"]} '
            f'--pool-size={strings["s"]} --max-thins={strings["m"]}"'
        )
    return text + "\n"


def _aligned(a: str, b: str, c: str, units: bool, mandatory: bool) -> str:
    if units:
        b += ("{" if mandatory else "[") + UNIT_CHARS + ("}" if mandatory else "]")
    return f"\t{a:<4}{b:<44}{c}\n"


def _help(name: str, out: Output) -> None:
    out.out(
        "Thin Provisioning Metadata Device Size Calculator.\n"
        f"Usage: {name} [options]\n"
        + _aligned("-b", "--block-size BLOCKSIZE", "Block size of thin provisioned devices.", True, False)
        + _aligned("-s", "--pool-size SIZE", "Size of pool device.", True, False)
        + _aligned("-m", "--max-thins #MAXTHINS", "Maximum sum of all thin devices and snapshots.", True, False)
        + _aligned("-u", "--unit ", "Output unit specifier.", True, True)
        + _aligned("-n", "--numeric-only [short|long]", "Output numeric value only (optionally with short/long unit identifier).", False, False)
        + _aligned("-h", "--help", "This help.", False, False)
        + _aligned("-V", "--version", "Print thin provisioning tools version.", False, False)
    )  # fmt: skip
