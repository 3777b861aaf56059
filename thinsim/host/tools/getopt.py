"""GNU getopt_long as glibc 2.36 does it: argument permutation, long-option prefixes,
optional arguments, and its error messages (the real tools print them unchanged)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

NO, REQUIRED, OPTIONAL = 0, 1, 2


@dataclass(frozen=True)
class Long:
    """One ``struct option``: a long name, whether it takes an argument, the value it
    returns (a short option letter or any other key)."""

    name: str
    has_arg: int
    val: object


class GetoptError(Exception):
    """getopt printed MESSAGE (without the program name) and returned '?'."""


def _short_table(shortopts: str) -> dict[str, int]:
    table = {}
    i = 0
    while i < len(shortopts):
        c = shortopts[i]
        n = 0
        while shortopts[i + 1 + n : i + 2 + n] == ":":
            n += 1
        table[c] = {0: NO, 1: REQUIRED}.get(n, OPTIONAL)
        i += 1 + n
    return table


def getopt_long(
    argv: list[str], shortopts: str, longopts: list[Long], operands: list[str]
) -> Iterator[tuple[object, str | None]]:
    """Yield (val, optarg) for every option in order, as getopt_long returns them; append
    the operands (arguments that are not options, permuted to the end) to ``operands``.
    Raises GetoptError at the option getopt rejects, after yielding the ones before it."""
    short = _short_table(shortopts.lstrip("+-"))
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            operands.extend(argv[i:])
            return
        if not a.startswith("-") or a == "-":
            operands.append(a)
            continue
        if a.startswith("--"):
            body = a[2:]
            name, eq, value = body.partition("=")
            exact = [o for o in longopts if o.name == name]
            matches = exact or [o for o in longopts if o.name.startswith(name)]
            if not matches:
                raise GetoptError(f"unrecognized option '--{body}'")
            if len(matches) > 1 and any(
                (o.has_arg, o.val) != (matches[0].has_arg, matches[0].val) for o in matches
            ):
                names = "".join(f" '--{o.name}'" for o in matches)
                raise GetoptError(f"option '--{body}' is ambiguous; possibilities:{names}")
            opt = matches[0]
            if eq:
                if opt.has_arg == NO:
                    raise GetoptError(f"option '--{opt.name}' doesn't allow an argument")
                yield opt.val, value
            elif opt.has_arg == REQUIRED:
                if i >= len(argv):
                    raise GetoptError(f"option '--{opt.name}' requires an argument")
                yield opt.val, argv[i]
                i += 1
            else:
                yield opt.val, None
            continue
        j = 1
        while j < len(a):
            c = a[j]
            j += 1
            if c not in short or c == ":":
                raise GetoptError(f"invalid option -- '{c}'")
            kind = short[c]
            if kind == NO:
                yield c, None
                continue
            if j < len(a):
                yield c, a[j:]
            elif kind == REQUIRED:
                if i >= len(argv):
                    raise GetoptError(f"option requires an argument -- '{c}'")
                yield c, argv[i]
                i += 1
            else:
                yield c, None
            break
