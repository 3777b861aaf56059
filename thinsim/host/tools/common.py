"""What every simulated command shares: where it reads and writes, and how it refuses."""

from __future__ import annotations

import sys


class IO:
    """Where a command reads and writes."""

    def __init__(self, stdin=None, stdout=None, stderr=None) -> None:
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def out(self, text: str) -> None:
        self.stdout.write(text)

    def err(self, text: str) -> None:
        self.stderr.write(text)


class Unsupported(Exception):
    """The simulator does not do this."""


def unsupported(io: IO, tool: str, what: str) -> int:
    io.err(f"thinsim: {tool}: {what} is not simulated\n")
    return 1
