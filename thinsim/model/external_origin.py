"""I/O to a thin device with an external origin (table ``thin POOL ID ORIGIN``).

dm-thin.c sends a read of an unprovisioned block to the origin device (zeros past the
origin's end), and a write that does not cover a whole unprovisioned block first copies the
origin's block into the newly provisioned one (schedule_external_copy).  The model's thin
device knows no origin, so the host gives it whole blocks built from the origin's data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .devices import Target


@dataclass
class OriginReader:
    """The origin device as the thin target sees it: its size, and a read of ``n`` bytes
    at an offset inside it (the block layer's, given by the caller)."""

    size: int
    read: Callable[[int, int], bytes]


def _origin_bytes(origin: OriginReader, offset: int, length: int) -> bytes:
    """The origin's bytes at ``offset``, zeros past its end (remap_to_origin_and_issue,
    zero_fill_bio)."""
    have = max(0, min(length, origin.size - offset))
    data = origin.read(offset, have) if have else b""
    return data + bytes(length - len(data))


def _mapped(t: Target, vblock: int) -> bool:
    thin = t.obj
    return thin.pool.find_block(thin.td, vblock) is not None


def read(t: Target, offset: int, length: int, origin: OriginReader) -> bytes:
    """Read ``length`` bytes at ``offset`` of the thin device."""
    thin = t.obj
    length = max(0, min(length, thin.size - offset))
    bb = thin.pool.block_bytes
    out = bytearray()
    for start, vblock, within, n in thin._pieces(offset, length):
        pos = offset + start
        if _mapped(t, vblock):
            out += thin.read(pos, n)
        else:
            thin.read(pos, 0)  # a failed pool still fails the read
            out += _origin_bytes(origin, vblock * bb + within, n)
    return bytes(out)


def write(t: Target, offset: int, data: bytes, origin: OriginReader) -> None:
    """Write ``data`` at ``offset``: a partial write of an unprovisioned block inside the
    origin is done as the whole block, the origin's data under the new."""
    thin = t.obj
    bb = thin.pool.block_bytes
    origin_size = origin.size
    if offset < 0 or offset >= thin.size:
        thin.write(offset, data)  # the model's errors (EINVAL, ENOSPC)
        return
    data = data[: thin.size - offset]
    for start, vblock, within, n in thin._pieces(offset, len(data)):
        piece = data[start : start + n]
        begin = vblock * bb
        if n == bb or _mapped(t, vblock) or begin >= origin_size:
            thin.write(begin + within, piece)
            continue
        # schedule_copy of min(block, origin end) sectors; the rest of the block zeroed
        # (with skip_block_zeroing the kernel leaves what the data block held there)
        block = bytearray(_origin_bytes(origin, begin, min(bb, thin.size - begin)))
        block[within : within + n] = piece
        thin.write(begin, bytes(block))
