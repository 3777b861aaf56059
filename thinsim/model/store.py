"""What the data device holds: a real file, memory, or nothing (accounting only).

dm-thin reads and writes whole or partial data blocks, zeroes new ones (kcopyd with real
zero writes), copies blocks to break sharing, and passes discards down (which a loop
device turns into hole punching).  A store does those operations at byte offsets.
"""

from __future__ import annotations

import ctypes
import errno
import os

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


class DataStore:
    """The data device's contents.  Offsets and lengths are bytes."""

    #: False when the store keeps no payload (reads then return zeros).
    keeps_data = True

    def write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def zero(self, offset: int, length: int) -> None:
        self.write(offset, bytes(length))

    def copy(self, src: int, dst: int, length: int) -> None:
        self.write(dst, self.read(src, length))

    def discard(self, offset: int, length: int) -> None:
        """A discard passed down to the data device: the range reads as zeros after."""
        raise NotImplementedError

    def break_sharing_run(self, srcs, dst: int, withins, data: bytes, block_bytes: int) -> None:
        """The writes that break sharing of blocks ``srcs`` (block numbers) into the
        consecutive blocks from block ``dst``, in turn: the i-th copies block ``srcs[i]``
        to block ``dst + i`` (unless ``data`` covers it whole, at ``withins[i]`` 0) and
        writes ``data`` at ``withins[i]`` in it (bytes from its start)."""
        whole_size = len(data) == block_bytes
        for x, src in enumerate(srcs):
            off = (dst + x) * block_bytes
            within = withins[x]
            if not (within == 0 and whole_size):
                self.copy(src * block_bytes, off, block_bytes)
            self.write(off + within, data)

    def allocated_bytes(self) -> int:
        """Bytes the backing store really holds (``du``)."""
        return 0

    def close(self) -> None:
        pass


class AccountingStore(DataStore):
    """No payload at all: for what-ifs on pools far larger than memory."""

    keeps_data = False

    def __repr__(self) -> str:
        return "AccountingStore()"

    def write(self, offset: int, data: bytes) -> None:
        pass

    def zero(self, offset: int, length: int) -> None:
        pass

    def copy(self, src: int, dst: int, length: int) -> None:
        pass

    def read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def discard(self, offset: int, length: int) -> None:
        pass


class MemoryStore(DataStore):
    """The payload in memory, in 4 KiB pages (unwritten pages read as zeros)."""

    PAGE = 4096

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}

    def __repr__(self) -> str:
        return "MemoryStore()"

    def write(self, offset: int, data: bytes) -> None:
        page = self.PAGE
        pos = 0
        n = len(data)
        while pos < n:
            o = offset + pos
            p, within = divmod(o, page)
            chunk = min(page - within, n - pos)
            buf = self.pages.get(p)
            if buf is None:
                buf = self.pages[p] = bytearray(page)
            buf[within : within + chunk] = data[pos : pos + chunk]
            pos += chunk

    def read(self, offset: int, length: int) -> bytes:
        page = self.PAGE
        out = bytearray(length)
        pos = 0
        while pos < length:
            o = offset + pos
            p, within = divmod(o, page)
            chunk = min(page - within, length - pos)
            buf = self.pages.get(p)
            if buf is not None:
                out[pos : pos + chunk] = buf[within : within + chunk]
            pos += chunk
        return bytes(out)

    def discard(self, offset: int, length: int) -> None:
        page = self.PAGE
        first = -(-offset // page)
        last = (offset + length) // page
        for p in range(first, last):
            self.pages.pop(p, None)
        # partial pages at the ends read as zeros too, as a punched hole does
        head_end = min(first * page, offset + length)
        if head_end > offset:
            self._zero_in_place(offset, head_end - offset)
        tail_start = max(last * page, offset)
        if offset + length > tail_start and last >= first:
            self._zero_in_place(tail_start, offset + length - tail_start)

    def _zero_in_place(self, offset: int, length: int) -> None:
        p, within = divmod(offset, self.PAGE)
        buf = self.pages.get(p)
        if buf is not None:
            buf[within : within + length] = bytes(length)

    def allocated_bytes(self) -> int:
        return len(self.pages) * self.PAGE


_libc = None


def _punch_hole(fd: int, offset: int, length: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def punches_holes(fd: int) -> bool:
    """Whether FD's file system punches holes: a hole past the end of the file changes
    nothing but tells whether it can."""
    try:
        _punch_hole(fd, -(-os.fstat(fd).st_size // 4096) * 4096, 4096)
    except OSError:
        return False
    return True


class FileStore(DataStore):
    """A real (sparse) file: pwrite/pread, and hole punching for passed-down discards."""

    def __init__(self, path: str | os.PathLike, size: int | None = None, offset: int = 0) -> None:
        self.path = os.fspath(path)
        self.offset = offset  # where the device starts in the file (losetup -o)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if size is not None and os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)

    def __repr__(self) -> str:
        return f"FileStore({self.path!r})"

    def __getstate__(self):
        # a simulated host pickles its pools between commands: keep the path, not the fd
        return {"path": self.path, "offset": self.offset}

    def __setstate__(self, state):
        self.path = state["path"]
        self.offset = state.get("offset", 0)
        self.fd = os.open(self.path, os.O_RDWR)

    def write(self, offset: int, data: bytes) -> None:
        if os.pwrite(self.fd, data, self.offset + offset) != len(data):
            # a full file system takes part of a write: loop.c fails the request
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, self.offset + offset)
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    def discard(self, offset: int, length: int) -> None:
        _punch_hole(self.fd, self.offset + offset, length)

    def supports_discard(self) -> bool:
        """Whether the file's file system can punch holes (else a loop device on it
        advertises no discard)."""
        return punches_holes(self.fd)

    def allocated_bytes(self) -> int:
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
