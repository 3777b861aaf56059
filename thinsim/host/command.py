"""The command a thread of the host's process runs (thinsim/host/server.py): its standard
streams and environment, the machine's lock it holds, and the simulated devices it has open.

A module of its own, importing nothing of thinsim's but the block layer's open counts, so
that what runs commands (the host's tools, the thin tools' port) can let the machine go
around a wait without importing the process that serves them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading

from ..model import devices

#: per thread: ``env`` and ``std`` of its command, the machine ``lock`` and whether ``held``
_local = threading.local()


@contextlib.contextmanager
def unlocked():
    """Around a wait on a pipe, a terminal or a file of the real host: the command lets
    the machine go meanwhile, as a process blocked in read(2) holds no device's lock (and
    counts as blocked: ``thinsim host stop`` does not wait for it)."""
    lock = getattr(_local, "lock", None)
    if lock is None or not getattr(_local, "held", False):
        yield
        return
    lock.changed.notify_all()  # what it did so far may be what a waiter waits for
    lock.mutex.release()
    _local.held = False
    with lock.guard:
        lock.blocked += 1
    try:
        yield
    finally:
        with lock.guard:
            lock.blocked -= 1
        lock.mutex.acquire()
        _local.held = True


def between_bios() -> bool:
    """Between two bios of a long transfer (each read(2) or write(2) dd makes on a
    simulated device, each block a thin tool reads): the machine goes to the commands
    waiting for it, if any, and comes back once they let it go, as the kernel serves other
    processes' ioctls and bios while one process's transfer goes on.  False when the
    machine's state is no longer the one this command holds (:func:`stale`): its I/O
    fails (EIO)."""
    if can_wait():
        _local.lock.mutex.handover()
    return not stale()


def stale() -> bool:
    """Whether the state this command took is no longer the machine's: the host's process
    loaded it again (another process on the host folder saved it, or a command failed
    halfway) while this one let the machine go.  Its devices are then another state's:
    it must not touch them any more."""
    lock = getattr(_local, "lock", None)
    return lock is not None and getattr(_local, "generation", lock.generation) != lock.generation


def can_wait() -> bool:
    """Whether this command runs in the host's process, holding the machine, so that
    others can run while it waits (:func:`wait_until`)."""
    return getattr(_local, "lock", None) is not None and getattr(_local, "held", False)


def wait_until(ready) -> bool:
    """Wait until READY() holds, the machine let go meanwhile: a bio sent to a suspended
    device waits there until the resume (dm.c: dm_submit_bio queues it while the device
    blocks I/O for its suspend), and the process blocked in it holds no lock, so other
    commands, the resume among them, run meanwhile.  Whether READY() holds: at once outside
    the host's process, where nothing else runs while a command does; False in it only when
    the machine's state was loaded again meanwhile (:func:`stale`), which leaves the
    caller's devices stale: its I/O fails."""
    if not can_wait() or ready():
        return ready()
    lock = _local.lock
    lock.waiting += 1
    try:
        while not ready():
            lock.changed.wait()  # releases the machine's mutex meanwhile
            if stale():
                return False
    finally:
        lock.waiting -= 1
    return True


def open_device(dev) -> None:
    """A command opens DEV (blkdev_get): it counts in the device's open count while the
    command has it open (dm_open_count), so that it is not removed under a command that
    waits with it open (dev_remove's EBUSY): a command that lets the machine go (a wait on
    a pipe or on a suspended device) still holds it."""
    devices.blkdev_get(dev)


def close_device(dev) -> None:
    devices.blkdev_put(dev)


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
