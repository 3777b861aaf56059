"""Reads, writes, discards and flushes on simulated block devices, at byte offsets."""

from __future__ import annotations

import errno as E
import os

from ..errors import error_for
from ..model.thin import Thin
from .kernel import device_size
from .state import DmDevice, HostState, LoopDevice


def _loop_file(loop: LoopDevice):
    return os.open(loop.backing_file, os.O_RDWR if not loop.read_only else os.O_RDONLY)


def read(state: HostState, dev, offset: int, length: int) -> bytes:
    size = device_size(state, dev)
    length = max(0, min(length, size - offset))
    if isinstance(dev, LoopDevice):
        fd = _loop_file(dev)
        try:
            data = os.pread(fd, length, dev.offset + offset)
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
            os.pwrite(fd, data, dev.offset + offset)
        finally:
            os.close(fd)
        return
    _dm_io(state, dev, offset, len(data), data)


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
            if piece is None:
                out += thin.read(rel, n)
            else:
                thin.write(rel, piece)
        elif t.type == "thin-pool":
            # pool_map: I/O to the pool device goes straight to the data device
            under = state.loops[t.data_loop]
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
    """BLKDISCARD."""
    if isinstance(dev, LoopDevice):
        from ..model.store import _punch_hole

        fd = _loop_file(dev)
        try:
            _punch_hole(fd, dev.offset + offset, length)
        finally:
            os.close(fd)
        return
    for t in _targets(dev):
        if t.type == "thin":
            t.obj.discard(offset - t.start * 512, length)
        else:
            raise error_for(E.EOPNOTSUPP)


def flush(state: HostState, dev) -> None:
    """An empty flush bio (fsync of the device)."""
    if isinstance(dev, DmDevice):
        for t in dev.live or []:
            if t.type == "thin":
                t.obj.flush()
            elif t.type == "thin-pool":
                t.obj.commit()


def supports_discard(state: HostState, dev) -> bool:
    if isinstance(dev, LoopDevice):
        return True
    return bool(dev.live) and all(
        t.type == "thin" and t.obj.pool.pf.discard_enabled for t in dev.live
    )
