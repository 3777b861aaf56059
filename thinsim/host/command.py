"""The command a thread of the host's process runs (thinsim/host/server.py): its standard
streams and environment, and the machine's lock it holds.

A module of its own, importing nothing of thinsim's, so that what runs commands (the host's
tools, the thin tools' port) can let the machine go around a wait without importing the
process that serves them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading

#: per thread: ``env`` and ``std`` of its command, the machine ``lock`` and whether ``held``
_local = threading.local()


@contextlib.contextmanager
def unlocked():
    """Around a wait on a pipe, a terminal or a file of the real host: the command lets
    the machine go meanwhile, as a process blocked in read(2) holds no device's lock."""
    lock = getattr(_local, "lock", None)
    if lock is None or not getattr(_local, "held", False):
        yield
        return
    lock.mutex.release()
    _local.held = False
    try:
        yield
    finally:
        lock.mutex.acquire()
        _local.held = True


def command_streams() -> dict:
    """subprocess's keywords for a child of the command this thread runs: its streams and
    environment (none outside the host's process: the child inherits the process's)."""
    streams = getattr(_local, "std", None)
    if streams is None:
        return {}
    kw = {"env": dict(os.environ)}
    for key in ("stdin", "stdout", "stderr"):
        try:
            kw[key] = streams[key].fileno()
        except (AttributeError, OSError, ValueError):  # closed: a StringIO
            kw[key] = subprocess.DEVNULL
    return kw
