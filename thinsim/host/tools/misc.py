"""dmesg, sync and udevadm settle."""

from __future__ import annotations

import os

from ..state import HostState
from .common import IO, unsupported


def dmesg(state: HostState, argv: list[str], io: IO) -> int:
    if argv and argv not in (["-t"], ["--notime"]):
        return unsupported(io, "dmesg", " ".join(argv))
    state.stamp_log()
    for line, t in zip(state.log.lines, state.log_times):
        if argv:
            io.out(line + "\n")
        else:
            io.out(f"[{t:12.6f}] {line}\n")
    return 0


def sync(state: HostState, argv: list[str], io: IO) -> int:
    # with the machine let go: the writeback of a file system on a simulated device (a
    # real loop device over thinsim/host/fuse.py) goes through the model
    from ..command import unlocked

    with unlocked():
        os.sync()
    return 0


def udevadm(state: HostState, argv: list[str], io: IO) -> int:
    if argv[:1] == ["settle"]:
        return 0
    return unsupported(io, "udevadm", " ".join(argv[:1]) or "without a command")
