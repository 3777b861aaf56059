"""Reads, writes, discards and flushes on simulated block devices, at byte offsets."""

from __future__ import annotations

import errno as E
import os

from ..errors import error_for
from ..model.thin import Thin
from . import external_origin, loopfile
from .devices import DmDevice, HostState, LoopDevice, lookup
from .kernel import device_size, resolve_devno


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


def _worker_committed(state: HostState, pool, before: int) -> None:
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
    """A command starts.  A pool created since the last command set last_commit_jiffies
    then (pool_create); do_waker has woken the worker every second meanwhile, which
    committed any pool whose transaction changed if COMMIT_PERIOD had passed."""
    now = getattr(state, "command_seq", 0) + 1
    state.command_seq = now
    for dev in state.dm.values():
        for t in dev.live or []:
            pool = t.obj
            if t.type != "thin-pool" or pool is None:
                continue
            if not hasattr(pool, "host_commit_seq"):
                pool.host_commit_seq = now - 1
            if pool.pmd.device is not None:
                # the metadata loop device's file as it holds it now (loopfile.py): the
                # holder's fd, or None once the file is lost, when commits fail with EIO
                md = state.loops.get(t.md_loop)
                pool.pmd.device.path = loopfile.io_path(md) if md is not None else None
            worker_commit(state, pool)


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


def _origin_reader(state: HostState, t) -> external_origin.OriginReader:
    """The external origin of thin target ``t``: its size in bytes, and a read of it."""
    dev = resolve_devno(state, t.origin)
    size = device_size(state, dev) if dev is not None else 0
    return external_origin.OriginReader(size, lambda offset, n: read(state, dev, offset, n))


def _targets(dev: DmDevice):
    if dev.live is None:
        raise error_for(E.ENXIO)
    return dev.live


def _dm_io(state: HostState, dev: DmDevice, offset: int, length: int, data: bytes | None):
    out = bytearray()
    pos = offset
    end = offset + length
    for t in _targets(dev):
        t_start, t_end = t.start * 512, (t.start + t.length) * 512
        if pos >= t_end or pos >= end:
            continue
        n = min(end, t_end) - pos
        rel = pos - t_start
        piece = None if data is None else data[pos - offset : pos - offset + n]
        if t.type == "thin":
            thin: Thin = t.obj
            origin = getattr(t, "origin", None)
            if piece is None:
                out += (
                    external_origin.read(t, rel, n, _origin_reader(state, t))
                    if origin
                    else thin.read(rel, n)
                )
            else:
                before = thin.pool.pmd.commit_count
                try:
                    if origin:
                        external_origin.write(t, rel, piece, _origin_reader(state, t))
                    else:
                        thin.write(rel, piece)
                finally:
                    _worker_committed(state, thin.pool, before)
                    worker_commit(state, thin.pool)
        elif t.type == "thin-pool":
            # pool_map: I/O to the pool device goes straight to the data device
            under = resolve_devno(state, t.data_devno)
            if piece is None:
                out += read(state, under, rel, n)
            else:
                write(state, under, rel, piece)
        elif t.type == "linear":
            _, under, start = t.obj
            if piece is None:
                out += read(state, under, start * 512 + rel, n)
            else:
                write(state, under, start * 512 + rel, piece)
        else:
            raise error_for(E.EIO)
        pos += n
    return bytes(out)


def discard(state: HostState, dev, offset: int, length: int) -> None:
    """BLKDISCARD (after blk_ioctl_discard's checks)."""
    if isinstance(dev, LoopDevice):
        from ..model.store import _punch_hole

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
        if t.type == "thin":
            before = t.obj.pool.pmd.commit_count
            try:
                t.obj.discard(pos - t_start, n)
            finally:
                _worker_committed(state, t.obj.pool, before)
                worker_commit(state, t.obj.pool)
        elif t.type == "linear":
            _, under, start = t.obj
            discard(state, under, start * 512 + pos - t_start, n)
        else:
            raise error_for(E.EOPNOTSUPP)
        pos += n


def flush(state: HostState, dev) -> None:
    """An empty flush bio (fsync of the device)."""
    if isinstance(dev, DmDevice):
        for t in dev.live or []:
            if t.type == "thin":
                before = t.obj.pool.pmd.commit_count
                t.obj.flush()
                _worker_committed(state, t.obj.pool, before)
            elif t.type == "thin-pool":
                t.obj.commit()


def supports_discard(state: HostState, dev) -> bool:
    """Whether the device's queue takes discards (max_discard_sectors != 0): a loop device
    on a file, a thin whose pool does not ignore discards, a linear device over either."""
    if isinstance(dev, LoopDevice):
        return True
    if not dev.live:
        return False
    for t in dev.live:
        if t.type == "thin":
            if not t.obj.pool.pf.discard_enabled:
                return False
        elif t.type == "linear":
            if not supports_discard(state, t.obj[1]):
                return False
        else:
            return False
    return True
