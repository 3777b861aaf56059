"""getopt_long for the host's tools, over the one parser (thinsim/getopt.py): the same
glibc 2.36 behaviour, stopping at the first error as these tools do."""

from __future__ import annotations

from collections.abc import Iterator

from ...getopt import NO_ARGUMENT as NO
from ...getopt import OPTIONAL_ARGUMENT as OPTIONAL
from ...getopt import REQUIRED_ARGUMENT as REQUIRED
from ...getopt import GetoptError, parse
from ...getopt import LongOption as Long

__all__ = ["NO", "OPTIONAL", "REQUIRED", "GetoptError", "Long", "getopt_long"]


def getopt_long(
    argv: list[str], shortopts: str, longopts: list[Long], operands: list[str]
) -> Iterator[tuple[object, str | None]]:
    """Yield (val, optarg) for every option in order, as getopt_long returns them; append
    the operands (arguments that are not options, permuted to the end) to ``operands``.
    Raises GetoptError (glibc's message without the program name) at the option getopt
    rejects, after yielding the ones before it."""
    for val, optarg in parse(argv, shortopts, longopts, operands):
        if val == "?":
            raise GetoptError(optarg)
        yield val, optarg
