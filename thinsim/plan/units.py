"""Sizes and durations as a workload file writes them: ``"100GiB"``, ``"64KiB"``, ``"5%"``,
``"6h"``, ``"1d"``.

Sizes: an int is bytes; a string is a number and a unit: ``B``, ``KiB`` ``MiB`` ``GiB``
``TiB`` ``PiB`` (powers of 1024; ``K`` ``M`` ``G`` ``T`` ``P`` and ``k`` mean the same, as
lvm and dmsetup take them), ``kB`` ``MB`` ``GB`` ``TB`` (powers of 1000), ``s`` (512-byte
sectors).  Durations: an int is seconds; a string is a number and ``s``, ``m``/``min``,
``h``, ``d`` or ``w``.  A fraction of a unit is allowed when the result is whole.
"""

from __future__ import annotations

import re
from fractions import Fraction

SIZE_UNITS = {
    "": 1,
    "b": 1,
    "s": 512,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
    "p": 1 << 50,
    "pib": 1 << 50,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
}
TIME_UNITS = {
    "": 1,
    "s": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


class UnitError(ValueError):
    """A value that is not a size or duration; its text says what was expected."""


def parse_size(value: object) -> int:
    """Bytes, from an int or a string such as ``"100GiB"``.

    >>> parse_size("64KiB"), parse_size("1.5GiB"), parse_size(4096)
    (65536, 1610612736, 4096)
    """
    if isinstance(value, bool):
        raise UnitError('must be a size such as "64KiB" or "100GiB"')
    if isinstance(value, int):
        if value < 0:
            raise UnitError("must not be negative")
        return value
    if not isinstance(value, str):
        raise UnitError('must be a size such as "64KiB" or "100GiB"')
    m = _NUMBER.match(value)
    unit = m.group(2) if m else None
    # "s" is sectors only in lower case; "S" is not a unit
    if unit is None or unit.lower() not in SIZE_UNITS or unit == "S":
        raise UnitError(f'{value!r} is not a size such as "64KiB" or "100GiB"')
    n = Fraction(m.group(1)) * SIZE_UNITS[unit.lower()]
    if n.denominator != 1:
        raise UnitError(f"{value!r} is not a whole number of bytes")
    return int(n)


def parse_duration(value: object) -> float:
    """Seconds, from an int or a string such as ``"6h"``.

    >>> parse_duration("1d"), parse_duration("90m"), parse_duration(30)
    (86400, 5400, 30)
    """
    if isinstance(value, bool):
        raise UnitError('must be a duration such as "6h" or "1d"')
    if isinstance(value, (int, float)):
        if value < 0:
            raise UnitError("must not be negative")
        return value
    if not isinstance(value, str):
        raise UnitError('must be a duration such as "6h" or "1d"')
    m = _NUMBER.match(value)
    if not m or m.group(2).lower() not in TIME_UNITS:
        raise UnitError(f'{value!r} is not a duration such as "6h" or "1d"')
    n = Fraction(m.group(1)) * TIME_UNITS[m.group(2).lower()]
    return int(n) if n.denominator == 1 else float(n)


def parse_share(value: object) -> Fraction | None:
    """A percentage (``"5%"``) as a fraction, or None when ``value`` is not one."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            f = Fraction(value.strip()[:-1].strip()) / 100
        except (ValueError, ZeroDivisionError):
            raise UnitError(f'{value!r} is not a percentage such as "5%"') from None
        if f < 0:
            raise UnitError("must not be negative")
        return f
    return None


def format_size(n: float) -> str:
    """A byte count for people: ``"1.5 GiB"``; exact below 1 KiB.

    >>> format_size(1610612736), format_size(512)
    ('1.50 GiB', '512 B')
    """
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:.2f} {unit}"
    raise AssertionError


def format_duration(seconds: float) -> str:
    """A simulated time for people: ``"day 58 02:00"`` style, or seconds below a minute.

    >>> format_duration(86400 * 58 + 7200), format_duration(30)
    ('58d 02:00:00', '30s')
    """
    if seconds < 60:
        return f"{seconds:g}s"
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}d {h:02}:{m:02}:{s:02}"
