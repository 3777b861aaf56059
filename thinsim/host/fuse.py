"""The simulated devices' bytes as files of a FUSE file system, served by the host's process.

thinsim/host/realdev.py attaches a real loop device of the host to each file, so that every
program of a run sees a real block device whose reads, writes, flushes and discards come here
and go through the same path as the simulated dd's (thinsim/model/blockio.py).  This module
speaks the kernel's side of /dev/fuse (<linux/fuse.h>, protocol 7.31) itself: a run needs a
dozen requests, and Debian's python has no FUSE binding.

- every file is opened with FOPEN_DIRECT_IO: no page cache between the model and the loop
  device, so what a simulated command writes is what the next read through the loop sees;
- READ, WRITE, FSYNC and FALLOCATE go to the owner's ``io`` in a thread of a small pool
  (they take the machine's lock, and one waiting on a suspended device must not stop the
  others); LOOKUP, GETATTR, OPEN and the rest are answered from the file table alone, with
  no lock, since the command that attaches a loop device holds the machine while the loop
  driver opens the file;
- a hole punch (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) is what the loop driver sends
  for a discard (and for a write-zeroes: the two look the same here); FALLOC_FL_ZERO_RANGE
  is a write-zeroes with REQ_NOUNMAP, written as zeros.
"""

from __future__ import annotations

import errno as E
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# <linux/fuse.h>
KERNEL_MAJOR, KERNEL_MINOR = 7, 31
LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
OPEN, READ, WRITE, STATFS, RELEASE, FSYNC, FLUSH, INIT = 14, 15, 16, 17, 18, 20, 25, 26
OPENDIR, READDIR, RELEASEDIR, INTERRUPT, DESTROY = 27, 28, 29, 36, 38
BATCH_FORGET, FALLOCATE = 42, 43
ASYNC_READ, BIG_WRITES, MAX_PAGES = 1 << 0, 1 << 5, 1 << 22
FOPEN_DIRECT_IO = 1 << 0
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10

IN_HEADER = struct.Struct("<IIQQIIII")
OUT_HEADER = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
INIT_IN = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
ENTRY_OUT = struct.Struct("<QQQQII")
ATTR_OUT = struct.Struct("<QII")
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQII")
WRITE_IN = struct.Struct("<QQIIQII")
WRITE_OUT = struct.Struct("<II")
FALLOCATE_IN = struct.Struct("<QQQII")
STATFS_OUT = struct.Struct("<QQQQQIIII6I")
DIRENT = struct.Struct("<QQII")

ROOT = 1
MAX_WRITE = 1 << 20  # one request carries up to 1 MiB (max_pages 256)
BUFFER = MAX_WRITE + 4096  # a request's header and arguments with the largest write
IO_THREADS = 4


@dataclass(frozen=True)
class File:
    """One device's file: its size in bytes and whether the device is read-only."""

    size: int
    read_only: bool = False


class FuseSession:
    """Serve the FUSE connection FD: a root folder holding the files of :meth:`set_files`,
    whose I/O calls ``io(name, op, offset, data_or_length)`` (op: ``read``, ``write``,
    ``flush``, ``discard``, ``zero``; it returns the bytes read, or raises OSError)."""

    def __init__(self, fd: int, io) -> None:
        self.fd = fd
        self.io = io
        self.files: dict[str, File] = {}
        self.ready: set[str] = set()  # files a loop device is bound to (attached)
        self.ids: dict[str, int] = {}
        self.names: dict[int, str] = {}
        self.guard = threading.Lock()
        self.pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="fuse-io")
        self.started = time.time()
        self.thread: threading.Thread | None = None

    def set_files(self, files: dict[str, File]) -> None:
        with self.guard:
            self.files = dict(files)

    def attached(self, name: str) -> None:
        """NAME's loop device is bound: its FSYNCs reach the model from now on.  Until
        then they are answered at once: LOOP_CONFIGURE fsyncs the file (to switch it to
        direct I/O) while the command that asked for it holds the machine, and nothing
        has been written through the file yet."""
        with self.guard:
            self.ready.add(name)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.serve, name="fuse", daemon=True)
        self.thread.start()

    # -- the loop ----------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            try:
                request = os.read(self.fd, BUFFER)
            except OSError as e:
                if e.errno in (E.ENOENT, E.EINTR, E.EAGAIN):
                    continue  # a request interrupted before it was read
                return  # ENODEV: unmounted, or the connection aborted
            if not request:
                return
            try:
                self.dispatch(request)
            except Exception:  # noqa: BLE001 -- a request that makes no sense: EIO, go on
                _, _, unique, *_ = IN_HEADER.unpack_from(request)
                self.reply(unique, -E.EIO)

    def reply(self, unique: int, error: int = 0, payload: bytes = b"") -> None:
        header = OUT_HEADER.pack(OUT_HEADER.size + len(payload), error, unique)
        try:
            os.write(self.fd, header + payload)
        except OSError:
            pass  # the request was interrupted (ENOENT), or the connection is gone

    def dispatch(self, request: bytes) -> None:
        _, opcode, unique, node, _, _, _, _ = IN_HEADER.unpack_from(request)
        body = memoryview(request)[IN_HEADER.size :]
        if opcode in (FORGET, BATCH_FORGET, INTERRUPT):
            return  # no answer
        handler = {
            INIT: self._init,
            LOOKUP: self._lookup,
            GETATTR: self._getattr,
            SETATTR: self._getattr,
            OPEN: self._open,
            OPENDIR: self._opendir,
            READDIR: self._readdir,
            RELEASE: self._empty,
            RELEASEDIR: self._empty,
            FLUSH: self._empty,
            STATFS: self._statfs,
            DESTROY: self._empty,
        }.get(opcode)
        if handler is not None:
            self.reply(unique, *handler(node, body))
            return
        if opcode in (READ, WRITE, FSYNC, FALLOCATE):
            name = self._name(node)
            if name is None:
                self.reply(unique, -E.ENOENT)
                return
            with self.guard:
                fresh = name not in self.ready
            if opcode == FSYNC and fresh:
                self.reply(unique)
                return
            self.pool.submit(self._io, opcode, unique, name, bytes(body))
            return
        self.reply(unique, -E.ENOSYS)

    # -- metadata, from the table alone ------------------------------------------------

    def _name(self, node: int) -> str | None:
        with self.guard:
            return self.names.get(node)

    def _node(self, name: str) -> int:
        with self.guard:
            if name not in self.ids:
                self.ids[name] = len(self.ids) + 2
                self.names[self.ids[name]] = name
            return self.ids[name]

    def _attr(self, node: int) -> bytes | None:
        t = int(self.started)
        if node == ROOT:
            return ATTR.pack(ROOT, 0, 0, t, t, t, 0, 0, 0, 0o40755, 2, 0, 0, 0, 4096, 0)
        name = self._name(node)
        with self.guard:
            f = self.files.get(name) if name is not None else None
        if f is None:
            return None
        mode = 0o100400 if f.read_only else 0o100600
        return ATTR.pack(node, f.size, f.size // 512, t, t, t, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)

    def _init(self, node, body):
        major, _minor, readahead, flags = INIT_IN.unpack_from(body)
        if major < KERNEL_MAJOR:
            return (-E.EPROTO,)
        want = flags & (ASYNC_READ | BIG_WRITES | MAX_PAGES)
        out = INIT_OUT.pack(
            KERNEL_MAJOR, KERNEL_MINOR, readahead, want, 16, 12, MAX_WRITE, 1, 256, 0, 0,
            *([0] * 7),
        )  # fmt: skip
        return 0, out

    def _lookup(self, node, body):
        name = bytes(body).split(b"\0", 1)[0].decode(errors="replace")
        with self.guard:
            known = node == ROOT and name in self.files
        if not known:
            return (-E.ENOENT,)
        child = self._node(name)
        attr = self._attr(child)
        if attr is None:
            return (-E.ENOENT,)
        # entry and attributes valid for no time: a device's size is asked again each time
        return 0, ENTRY_OUT.pack(child, 0, 0, 0, 0, 0) + attr

    def _getattr(self, node, body):
        attr = self._attr(node)
        if attr is None:
            return (-E.ENOENT,)
        return 0, ATTR_OUT.pack(0, 0, 0) + attr

    def _open(self, node, body):
        if self._attr(node) is None or node == ROOT:
            return (-E.ENOENT,)
        return 0, OPEN_OUT.pack(0, FOPEN_DIRECT_IO, 0)

    def _opendir(self, node, body):
        return (0, OPEN_OUT.pack(0, 0, 0)) if node == ROOT else (-E.ENOTDIR,)

    def _readdir(self, node, body):
        _, offset, size, _ = READ_IN.unpack_from(body)
        with self.guard:
            names = sorted(self.files)
        out = b""
        for i, name in enumerate(names[offset:], offset + 1):
            raw = name.encode()
            entry = DIRENT.pack(self._node(name), i, len(raw), 8) + raw
            entry += bytes(-len(entry) % 8)
            if len(out) + len(entry) > size:
                break
            out += entry
        return 0, out

    def _statfs(self, node, body):
        return 0, STATFS_OUT.pack(0, 0, 0, 0, 0, 4096, 255, 4096, 0, *([0] * 6))

    def _empty(self, node, body):
        return (0,)

    # -- I/O, through the model --------------------------------------------------------

    def _io(self, opcode: int, unique: int, name: str, body: bytes) -> None:
        try:
            if opcode == READ:
                _, offset, size, _ = READ_IN.unpack_from(body)
                self.reply(unique, 0, self.io(name, "read", offset, size))
            elif opcode == WRITE:
                _, offset, size, _, _, _, _ = WRITE_IN.unpack_from(body)
                data = body[WRITE_IN.size : WRITE_IN.size + size]
                self.io(name, "write", offset, data)
                self.reply(unique, 0, WRITE_OUT.pack(len(data), 0))
            elif opcode == FSYNC:
                self.io(name, "flush", 0, 0)
                self.reply(unique)
            else:
                _, offset, length, mode, _ = FALLOCATE_IN.unpack_from(body)
                if mode == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
                    self.io(name, "discard", offset, length)
                elif mode & ~FALLOC_FL_KEEP_SIZE == FALLOC_FL_ZERO_RANGE:
                    self.io(name, "zero", offset, length)
                else:
                    raise OSError(E.EOPNOTSUPP, os.strerror(E.EOPNOTSUPP))
                self.reply(unique)
        except OSError as e:
            self.reply(unique, -(e.errno or E.EIO))
        except Exception:  # noqa: BLE001 -- a model error the loop driver sees as EIO
            self.reply(unique, -E.EIO)
