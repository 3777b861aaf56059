"""GNU getopt_long as glibc 2.36 runs it, once for every userspace port (the thin tools,
losetup, blockdev, blkdiscard, dmsetup): their option parsing and its messages.

The tools parse their command lines with getopt_long(3), so its quirks are part of what a
user sees: arguments are permuted (options may follow the operands), long options may be
abbreviated to any unambiguous prefix, an optional argument (``-m[N]``,
``--metadata-snap[=N]``) must be attached, and errors are printed by glibc itself
(``PROG: invalid option -- 'x'``).

:func:`parse` is the one parser: it yields what successive getopt_long calls return, an error
as ``('?', MESSAGE)`` (glibc's text without the ``PROG: `` prefix) and then goes on as glibc
does.  :func:`getopt_long` collects them the way the thin tools' ports use them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

NO_ARGUMENT, REQUIRED_ARGUMENT, OPTIONAL_ARGUMENT = 0, 1, 2


@dataclass(frozen=True)
class LongOption:
    """One ``struct option``: the name, whether it takes an argument, the value returned."""

    name: str
    has_arg: int
    val: object


class GetoptError(Exception):
    """getopt_long returned '?': the message glibc printed is ``str(self)``."""


def short_options(shortopts: str) -> dict[str, int]:
    """The short option letters of ``shortopts`` and whether each takes an argument
    (``x:`` required, ``x::`` optional); a leading ``+``, ``-`` or ``:`` is a mode, not a
    letter."""
    spec = shortopts.lstrip("+-:")
    table: dict[str, int] = {}
    i = 0
    while i < len(spec):
        c = spec[i]
        kind = NO_ARGUMENT
        if spec[i + 1 : i + 3] == "::":
            kind, i = OPTIONAL_ARGUMENT, i + 2
        elif spec[i + 1 : i + 2] == ":":
            kind, i = REQUIRED_ARGUMENT, i + 1
        table[c] = kind
        i += 1
    return table


def parse(
    argv: list[str],
    shortopts: str,
    longopts: list[LongOption],
    operands: list[str],
    *,
    in_order: bool = False,
) -> Iterator[tuple[object, str | None]]:
    """Yield ``(val, optarg)`` for each option of ``argv`` (without the program name) in
    order, ``('?', MESSAGE)`` where glibc prints MESSAGE (without ``PROG: ``) and returns
    '?'; append the operands to ``operands`` as they are met (what ``argv[optind:]`` holds
    after the permutation).  ``in_order`` (a ``+`` leading ``shortopts``, or
    POSIXLY_CORRECT) stops at the first operand: everything after it is an operand."""
    shorts = short_options(shortopts)
    k = 0
    while k < len(argv):
        arg = argv[k]
        k += 1
        if arg == "--":
            operands.extend(argv[k:])
            return
        if not arg.startswith("-") or arg == "-":
            if in_order:
                operands.extend(argv[k - 1 :])
                return
            operands.append(arg)
            continue
        if arg.startswith("--"):
            found, k = _long(arg[2:], argv, k, longopts)
            yield found
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c not in shorts or c == ":":
                yield "?", f"invalid option -- '{c}'"
                continue
            kind = shorts[c]
            if kind == NO_ARGUMENT:
                yield c, None
                continue
            if j < len(arg):
                yield c, arg[j:]
            elif kind == OPTIONAL_ARGUMENT:
                yield c, None
            elif k < len(argv):
                yield c, argv[k]
                k += 1
            else:
                yield "?", f"option requires an argument -- '{c}'"
            break


def _long(
    text: str, argv: list[str], k: int, longopts: list[LongOption]
) -> tuple[tuple[object, str | None], int]:
    """glibc's process_long_option for ``--TEXT``: what getopt_long returns, and the index
    of the next argument."""
    name, eq, value = text.partition("=")
    exact = [o for o in longopts if o.name == name]
    if exact:
        found = exact[0]
    else:
        matches = [o for o in longopts if o.name.startswith(name)]
        if not matches:
            return ("?", f"unrecognized option '--{text}'"), k
        first = matches[0]
        if any((o.has_arg, o.val) != (first.has_arg, first.val) for o in matches[1:]):
            names = "".join(f" '--{o.name}'" for o in matches)
            return ("?", f"option '--{text}' is ambiguous; possibilities:{names}"), k
        found = first
    if eq:
        if found.has_arg == NO_ARGUMENT:
            return ("?", f"option '--{found.name}' doesn't allow an argument"), k
        return (found.val, value), k
    if found.has_arg == REQUIRED_ARGUMENT:
        if k < len(argv):
            return (found.val, argv[k]), k + 1
        return ("?", f"option '--{found.name}' requires an argument"), k
    return (found.val, None), k


def getopt_long(
    prog: str, argv: list[str], shortopts: str, longopts: list[LongOption]
) -> tuple[list[tuple[object, str | None]], list[str]]:
    """Parse ``argv`` (without the program name) as getopt_long does.

    Returns ``(options, operands)``: ``options`` is the sequence getopt_long returns, each
    with its optarg, where ``'?'`` (an error) carries instead the line glibc writes to
    stderr at that point (``PROG: ...``); ``operands`` are the non-option arguments in
    order.  With POSIXLY_CORRECT in the environment (any value) or a ``+`` leading
    ``shortopts``, glibc does not permute: the first operand ends the options.
    """
    in_order = shortopts.startswith("+") or "POSIXLY_CORRECT" in os.environ
    operands: list[str] = []
    options = [
        (val, f"{prog}: {arg}" if val == "?" else arg)
        for val, arg in parse(argv, shortopts, longopts, operands, in_order=in_order)
    ]
    return options, operands
