"""Reads, writes, discards and flushes on simulated block devices, at byte offsets."""

from __future__ import annotations

import errno as E
import os

from ..errors import error_for
from . import loopfile
from .devices import DmDevice, HostState, LoopDevice, lookup
from .dm import device_size, target_type


def lookup_path(state: HostState, path: str):
    """The simulated block device a file name opens (/dev/loopN, /dev/mapper/NAME,
    /dev/dm-N, relative names too), or None: devices.lookup."""
    return lookup(state, path)


def read_only(dev) -> bool:
    """bdev_read_only: BLKROSET's flag (blockdev --setro) or the disk's (a loop device
    set up with -r, a device-mapper device with a read-only table)."""
    return bool(getattr(dev, "bd_read_only", False) or getattr(dev, "read_only", False))


def suspended(dev) -> bool:
    """Whether I/O to the device would wait (a suspended dm device queues every bio)."""
    return isinstance(dev, DmDevice) and dev.suspended


def bio_waits(dev) -> bool:
    """Whether a bio to DEV would wait now: DEV suspended, by dmsetup or internally (a thin
    of a suspended pool), or a device one of its targets remaps the bio to (a linear
    target's: the bio waits there once remapped)."""
    if suspended(dev):
        return True
    for t in getattr(dev, "live", None) or []:
        if t.obj is not None and target_type(t).io_blocked(t):
            return True
        under = target_type(t).remaps_to(t) if t.obj is not None else None
        if under is not None and bio_waits(under[0]):
            return True
    return False


# dm-thin.c: COMMIT_PERIOD (one second).  The simulated host has no wall clock for the pool;
# it counts commands instead, as they ran in the VM the recordings come from (TCG): one
# command takes about half a second (dd 0.4 s, dmsetup 0.5 to 0.8 s), so the period has
# passed once a whole command has run since the pool's last periodic or flush commit, and
# not yet in the command right after it (a dd right after another dd's fsync).
COMMIT_PERIOD_COMMANDS = 2


def _period_passed(state: HostState, pool) -> bool:
    """need_commit_due_to_time: COMMIT_PERIOD has passed since last_commit_jiffies."""
    now = getattr(state, "command_seq", 0)
    return now - getattr(pool, "host_commit_seq", now) >= COMMIT_PERIOD_COMMANDS


def worker_committed(state: HostState, pool, before: int) -> None:
    """process_deferred_bios sets last_commit_jiffies after each commit it makes (for a
    flush or a FUA write, or for time); the other commits (messages, status, suspend,
    resize) leave it alone."""
    if pool.pmd.commit_count != before:
        pool.host_commit_seq = getattr(state, "command_seq", 0)


def worker_commit(state: HostState, pool) -> None:
    """process_deferred_bios: with no flush queued the worker still commits when the
    transaction changed and COMMIT_PERIOD has passed since its last commit (so the first
    provisioning write of a command commits right away when the pool has not committed for
    a while, later ones wait for a flush)."""
    if pool.suspended or not _period_passed(state, pool):
        return
    if any(td.changed for td in pool.pmd.devices.values()):
        pool.commit()
        pool.host_commit_seq = getattr(state, "command_seq", 0)


def new_command(state: HostState) -> None:
    """A command starts: the live targets' threads ran meanwhile (a pool's worker, woken
    every second by do_waker, committed a changed transaction once COMMIT_PERIOD had
    passed; a pool created since the last command set last_commit_jiffies then)."""
    state.command_seq = getattr(state, "command_seq", 0) + 1
    for dev in state.dm.values():
        for t in dev.live or []:
            target_type(t).worker(state, t)


def _loop_file(loop: LoopDevice) -> int:
    """The loop device's open backing file (EIO once it is lost): loopfile.py."""
    return loopfile.open_file(loop, write=not loop.read_only)


def read(state: HostState, dev, offset: int, length: int) -> bytes:
    size = device_size(state, dev)
    length = max(0, min(length, size - offset))
    if isinstance(dev, LoopDevice):
        if not length:
            return b""
        fd = _loop_file(dev)
        try:
            data = os.pread(fd, length, dev.offset + offset)
        except OSError:
            raise error_for(E.EIO) from None  # loop_handle_cmd: -EIO
        finally:
            os.close(fd)
        return data + bytes(length - len(data))
    return _dm_io(state, dev, offset, length, None)


def write(state: HostState, dev, offset: int, data: bytes) -> None:
    size = device_size(state, dev)
    if offset + len(data) > size:
        raise error_for(E.ENOSPC)
    if isinstance(dev, LoopDevice):
        if dev.read_only:
            raise error_for(E.EPERM)
        fd = _loop_file(dev)
        try:
            written = os.pwrite(fd, data, dev.offset + offset)
        except OSError:
            written = -1
        finally:
            os.close(fd)
        if written != len(data):
            # loop.c: lo_write_bvec -- a write the file system refuses (ENOSPC, EIO) or
            # takes only in part fails the request, which loop_handle_cmd ends with -EIO
            at = dev.offset + offset
            state.log.line(f"loop: Write error at byte offset {at}, length {min(len(data), 4096)}.")
            raise error_for(E.EIO)
        return
    _dm_io(state, dev, offset, len(data), data)


def _targets(dev: DmDevice):
    if dev.live is None:
        raise error_for(E.ENXIO)
    return dev.live


def _dm_io(state: HostState, dev: DmDevice, offset: int, length: int, data: bytes | None):
    """The bio split at target boundaries, each piece through its target's map."""
    out = bytearray()
    pos = offset
    end = offset + length
    for t in _targets(dev):
        t_start, t_end = t.start * 512, (t.start + t.length) * 512
        if pos >= t_end or pos >= end:
            continue
        n = min(end, t_end) - pos
        rel = pos - t_start
        if data is None:
            out += target_type(t).read(state, t, rel, n)
        else:
            target_type(t).write(state, t, rel, data[pos - offset : pos - offset + n])
        pos += n
    return bytes(out)


def discard(state: HostState, dev, offset: int, length: int) -> None:
    """BLKDISCARD (after blk_ioctl_discard's checks)."""
    if isinstance(dev, LoopDevice):
        from .store import _punch_hole

        if not dev.backing_file:
            return
        fd = _loop_file(dev)
        try:
            _punch_hole(fd, dev.offset + offset, length)
        finally:
            os.close(fd)
        return
    pos, end = offset, offset + length
    for t in _targets(dev):
        t_start, t_end = t.start * 512, (t.start + t.length) * 512
        if pos >= t_end or pos >= end:
            continue
        n = min(end, t_end) - pos
        target_type(t).discard(state, t, pos - t_start, n)
        pos += n


def flush(state: HostState, dev) -> None:
    """An empty flush bio (fsync of the device)."""
    if isinstance(dev, DmDevice):
        for t in dev.live or []:
            target_type(t).flush(state, t)


def io_min(state: HostState, dev) -> int | None:
    """The queue's minimum I/O size in bytes a target set (io_hints), or None."""
    if isinstance(dev, DmDevice):
        for t in dev.live or []:
            value = target_type(t).io_min(state, t)
            if value:
                return value
    return None


def discard_granularity(state: HostState, dev: DmDevice) -> int:
    """The discard granularity the targets' io_hints set: 0 (discards off) unless some
    target sets one and none turns discards off."""
    values = [target_type(t).discard_granularity(state, t) for t in dev.live or []]
    values = [v for v in values if v is not None]
    return values[0] if values and all(values) else 0


def supports_discard(state: HostState, dev) -> bool:
    """Whether the device's queue takes discards (max_discard_sectors != 0): a loop device
    on a file, a thin whose pool does not ignore discards, a linear device over either."""
    if isinstance(dev, LoopDevice):
        return True
    return bool(dev.live) and all(target_type(t).supports_discard(state, t) for t in dev.live)
