"""GNU getopt_long as glibc 2.36 runs it: the thin tools' option parsing and its messages.

thin-provisioning-tools parses every command line with getopt_long(3), so its quirks are
part of what a user sees: arguments are permuted (options may follow the file name), long
options may be abbreviated to any unambiguous prefix, an optional argument (``-m[N]``,
``--metadata-snap[=N]``) must be attached, and errors are printed by glibc itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

NO_ARGUMENT, REQUIRED_ARGUMENT, OPTIONAL_ARGUMENT = 0, 1, 2


@dataclass(frozen=True)
class LongOption:
    """One ``struct option``: the name, whether it takes an argument, the value returned."""

    name: str
    has_arg: int
    val: int | str


class GetoptError(Exception):
    """getopt_long returned '?': the message glibc printed is ``str(self)``."""


def getopt_long(
    prog: str, argv: list[str], shortopts: str, longopts: list[LongOption]
) -> tuple[list[tuple[int | str, str | None]], list[str]]:
    """Parse ``argv`` (without the program name) as getopt_long does.

    Returns ``(options, operands)``: ``options`` is the sequence getopt_long returns, each
    with its optarg, where ``'?'`` (an error) carries instead the line glibc writes to
    stderr at that point; ``operands`` are the non-option arguments in order (what
    ``argv[optind:]`` holds after the permutation).  With POSIXLY_CORRECT in the
    environment (any value) or a ``+`` leading ``shortopts``, glibc does not permute: the
    first operand ends the options, and everything after it is an operand.
    """
    in_order = shortopts.startswith("+") or "POSIXLY_CORRECT" in os.environ
    shorts: dict[str, int] = {}
    i = 0
    spec = shortopts.lstrip("+-:")
    while i < len(spec):
        c = spec[i]
        kind = NO_ARGUMENT
        if spec[i + 1 : i + 3] == "::":
            kind, i = OPTIONAL_ARGUMENT, i + 2
        elif spec[i + 1 : i + 2] == ":":
            kind, i = REQUIRED_ARGUMENT, i + 1
        shorts[c] = kind
        i += 1
    out: list[tuple[int | str, str | None]] = []
    operands: list[str] = []
    k = 0
    while k < len(argv):
        arg = argv[k]
        k += 1
        if arg == "--":
            operands.extend(argv[k:])
            break
        if not arg.startswith("-") or arg == "-":
            if in_order:
                operands.extend(argv[k - 1 :])
                break
            operands.append(arg)
            continue
        if arg.startswith("--"):
            k = _long(prog, arg[2:], argv, k, longopts, out)
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c not in shorts or c == ":":
                out.append(("?", f"{prog}: invalid option -- '{c}'"))
                continue
            kind = shorts[c]
            if kind == NO_ARGUMENT:
                out.append((c, None))
                continue
            if j < len(arg):
                out.append((c, arg[j:]))
            elif kind == OPTIONAL_ARGUMENT:
                out.append((c, None))
            elif k < len(argv):
                out.append((c, argv[k]))
                k += 1
            else:
                out.append(("?", f"{prog}: option requires an argument -- '{c}'"))
            break
    return out, operands


def _long(prog, text, argv, k, longopts, out) -> int:
    name, eq, value = text.partition("=")
    exact = [o for o in longopts if o.name == name]
    if exact:
        found = exact[0]
    else:
        matches = [o for o in longopts if o.name.startswith(name)]
        if not matches:
            out.append(("?", f"{prog}: unrecognized option '--{text}'"))
            return k
        first = matches[0]
        if any((o.has_arg, o.val) != (first.has_arg, first.val) for o in matches[1:]):
            names = "".join(f" '--{o.name}'" for o in matches)
            out.append(("?", f"{prog}: option '--{text}' is ambiguous; possibilities:{names}"))
            return k
        found = first
    if eq:
        if found.has_arg == NO_ARGUMENT:
            out.append(("?", f"{prog}: option '--{found.name}' doesn't allow an argument"))
            return k
        out.append((found.val, value))
        return k
    if found.has_arg == REQUIRED_ARGUMENT:
        if k < len(argv):
            out.append((found.val, argv[k]))
            return k + 1
        out.append(("?", f"{prog}: option '--{found.name}' requires an argument"))
        return k
    out.append((found.val, None))
    return k
