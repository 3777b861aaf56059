"""What the thin tools share: their version, errors, output and the files they open.

The tools run against a :class:`Files`: :class:`RealFiles` for plain files (Python use,
teaching notebooks), or the simulated host's own (``thinsim.host.tools.thintools``), which
maps /dev/loopN and /dev/mapper/NAME onto simulated devices.
"""

from __future__ import annotations

import errno as E
import os
import stat as st
import sys
from dataclasses import dataclass

from ..constants import METADATA_BLOCK_SIZE
from ..host.command import between_bios, unlocked

VERSION = "0.9.0"
MD_BLOCK_SIZE = METADATA_BLOCK_SIZE


class ToolError(RuntimeError):
    """A std::runtime_error a tool throws: ``str(self)`` is its ``what()``."""


class Abort(BaseException):
    """The C++ tool called abort(3) (exit status 134 in a shell): ``text`` is what it
    printed to stderr on the way, an assertion's line or std::terminate's.  A
    BaseException, so that no ``except ToolError`` on the way takes it for an error the
    tool handles."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def terminate(what: str) -> Abort:
    """std::terminate for a std::runtime_error thrown where no exception may leave (a
    destructor): libstdc++'s verbose terminate handler prints the type and what()."""
    return Abort(
        f"terminate called after throwing an instance of 'std::runtime_error'\n  what():  {what}\n"
    )


class Crash(BaseException):
    """The C++ tool dies of ``signal`` (a segfault) with nothing more printed: where the
    port meets the C++'s undefined behaviour and the measured tool crashes there."""

    def __init__(self, signal: int) -> None:
        super().__init__(signal)
        self.signal = signal


class BrokenPipe(BaseException):
    """A write to a pipe with no reader: the C++ tool is killed there by SIGPIPE (status 141
    in a shell), as it leaves SIGPIPE at its default."""


class Output:
    """Where a tool writes: ``out`` is stdout (std::cout), ``err`` stderr (std::cerr).

    As iostreams do, a stream that fails to write (a full disk, a closed descriptor) sets
    its badbit and silently writes nothing more, so the tool carries on and exits as it
    would have; a write to a pipe with no reader raises :class:`BrokenPipe` instead, since
    SIGPIPE kills the C++ tool before write(2) can fail.  A missing stream (Python gives
    ``sys.stdout = None`` when descriptor 1 was closed) is a bad one from the start.

    stdout goes out as glibc's stdio sends cout to a pipe or file: 4096 bytes at a time
    (``out``), each line at once where the C++ ends it with std::endl (``endl``: thin_dump),
    the rest when the tool exits (``flush``), so a reader that goes away early (``| head``)
    meets the tool at the same writes.  Before that last write the C++ tool has destroyed
    its block cache, whose io_destroy(2) waits for an RCU grace period: a reader that took
    the first 4096 bytes has gone by then, and the exit's write dies of SIGPIPE
    (``thin_ls | head -n 1``: 141, every time, for a listing of 4 to 64 KiB)."""

    CHUNK = 4096  # st_blksize of a pipe: the size of stdout's buffer
    # io_destroy's wait (kill_ioctx, then an RCU grace period before free_ioctx): 30 to 39 ms
    # measured, strace -T, with Debian's thin_ls
    IO_DESTROY_S = 0.035

    def __init__(self, stdout=None, stderr=None, *, reader_start_s: float = 0.0) -> None:
        self.stdout = stdout if stdout is not None else sys.stdout
        # how long a pipe's reader may take to drain what the tool wrote before io_destroy's
        # grace period counts (_io_destroy_wait): none where the reader is a real host's
        # program, READER_START_S on the simulated host
        self.reader_start_s = reader_start_s
        self.stderr = stderr if stderr is not None else sys.stderr
        self._bad: set[str] = set()
        self._pending: list[str] = []
        self._pending_len = 0
        self._written = False  # whether part of stdout went out before the exit
        self._fd: int | None | bool = False  # endl's descriptor, once looked up

    def out(self, text: str) -> None:
        if "out" in self._bad or self.stdout is None:
            return
        self._pending.append(text)
        self._pending_len += len(text)
        if self._pending_len >= self.CHUNK:
            data = "".join(self._pending)
            cut = len(data) - len(data) % self.CHUNK
            self._pending = [data[cut:]]
            self._pending_len = len(data) - cut
            self._written = True
            for at in range(0, cut, self.CHUNK):
                self._write("out", self.stdout, data[at : at + self.CHUNK], flush=True)

    def endl(self, text: str) -> None:
        """``cout << line << endl`` for each line of TEXT: the line goes out with what the
        buffer held, in one write(2) per line."""
        if "out" in self._bad or self.stdout is None:
            return
        fd = self._raw_fd()
        for line in text.splitlines(keepends=True):
            self._pending.append(line)
            data = "".join(self._pending)
            self._pending, self._pending_len = [], 0
            self._written = True
            if fd is None:
                self._write("out", self.stdout, data, flush=True)
                continue
            # straight to the descriptor: a Python stream's flush per line costs more than
            # the dump itself (50,000 lines)
            try:
                os.write(fd, data.encode("utf-8", "surrogateescape"))
            except BrokenPipeError:
                raise BrokenPipe from None
            except OSError:
                self._bad.add("out")
                return

    def _raw_fd(self) -> int | None:
        """stdout's descriptor, its Python buffer emptied, where writing to it directly
        is safe (a stream over a descriptor); None otherwise.  Looked up once: from then
        on stdout's text goes through ``endl`` or ``out``, and ``out`` flushes what it
        writes."""
        if self._fd is False:
            self._fd = self._lookup_fd()
        return self._fd

    def _lookup_fd(self) -> int | None:
        try:
            fd = self.stdout.fileno()
            self.stdout.flush()
        except BrokenPipeError:
            raise BrokenPipe from None
        except (AttributeError, OSError, ValueError):
            return None
        return fd

    def err(self, text: str) -> None:
        self._write("err", self.stderr, text)

    def _write(self, which: str, stream, text: str, flush: bool = False) -> None:
        if which in self._bad or stream is None:
            return
        try:
            with unlocked():  # a pipe's reader may be a simulated command
                stream.write(text)
                if flush:
                    stream.flush()
        except BrokenPipeError:
            raise BrokenPipe from None
        except (OSError, ValueError):  # ValueError: a closed Python file
            self._bad.add(which)

    def flush(self) -> None:
        """exit(3)'s flush of what stdout holds: into the Python stream, which its owner
        flushes (``thinsim run``'s shim, once the host's state is saved, as the C++ tool
        flushes after its destructors ran); a pipe with no reader raises
        :class:`BrokenPipe`."""
        data = "".join(self._pending)
        self._pending, self._pending_len = [], 0
        if data:
            if self._written and "out" not in self._bad:
                with unlocked():  # the reader may be a simulated command
                    _io_destroy_wait(self.stdout, self.IO_DESTROY_S, self.reader_start_s)
            self._write("out", self.stdout, data)

    def discard(self) -> None:
        """What stdout's buffer holds goes unwritten (the process dies of a signal)."""
        self._pending, self._pending_len = [], 0

    @property
    def failed(self) -> bool:
        """Whether a write failed (the data may still sit in a Python buffer)."""
        return bool(self._bad)


def _io_destroy_wait(stream, seconds: float, reader_start_s: float) -> None:
    """The time the C++ tool spends in io_destroy before its exit's flush, as a reader of
    STREAM sees it: over a pipe, until the reader has gone (poll's POLLERR on the write
    end, reported whatever was asked) or the grace period is over; no wait elsewhere.

    On a real host the reader is waiting in read(2) when the tool writes; on the simulated
    one it may still be starting (``thinsim run`` starts a command through a Python shim).
    There the grace period counts from when the reader has taken what the pipe held
    (FIONREAD on either end of a pipe: the bytes not yet read), waited for up to
    READER_START_S, not from the tool's last write.  The price: a reader that is slow on
    purpose (``| (sleep 1; head -n 1)``) still meets the tool's last write there, 141,
    where Debian's tool was done long before, 0."""
    import fcntl
    import select
    import termios
    import time

    try:
        fd = stream.fileno()
        if not st.S_ISFIFO(os.fstat(fd).st_mode):
            return
    except (AttributeError, OSError, ValueError):
        return
    p = select.poll()
    p.register(fd, 0)
    unread = bytearray(4)
    deadline = time.monotonic() + reader_start_s
    while time.monotonic() < deadline:
        if p.poll(0):
            return  # the reader is gone
        try:
            fcntl.ioctl(fd, termios.FIONREAD, unread)
        except OSError:
            break
        if not int.from_bytes(unread, sys.byteorder):
            break
        p.poll(1)
    p.poll(int(seconds * 1000))


# how long a reader on the simulated host (a command thinsim run starts through a shim) may
# take to start and drain the pipe before the grace period counts anyway (a reader that
# never reads, ``| (sleep 9; cat)``, costs the tool that long)
READER_START_S = 5.0


class OFStream:
    """std::ofstream over a file a tool was told to write (thin_dump -o): writes that fail
    (a full disk) are dropped, as the stream's badbit drops them; exit status unchanged."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, text: str) -> None:
        if self.f is None:
            return
        try:
            self.f.write(text)
        except (OSError, ValueError):
            self._drop()

    def close(self) -> None:
        if self.f is None:
            return
        try:
            self.f.close()
        except (OSError, ValueError):
            self._drop()
        self.f = None

    def _drop(self) -> None:
        f, self.f = self.f, None
        try:
            f.close()
        except (OSError, ValueError):
            pass


@dataclass
class Stat:
    """What stat(2) says of a path, as far as the tools look: the kind and the size."""

    kind: str  # "reg", "blk" or "other"
    size: int


class Handle:
    """An open file or device: positioned reads and writes of whole blocks."""

    size: int

    def pread(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def pwrite(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Files:
    """The file system the tools see.  Errors are OSError with the kernel's errno."""

    def stat(self, path: str) -> Stat:
        raise NotImplementedError

    def open(self, path: str, *, write: bool = False, excl: bool = False) -> Handle:
        """open(path, O_DIRECT | (O_RDWR or O_RDONLY) | (O_EXCL if excl))."""
        raise NotImplementedError

    def read_text(self, path: str) -> bytes:
        """The whole of a plain file (the XML a restore reads), which may be a pipe whose
        writer is a simulated command, or never closes it (``sleep 1000 | thin_restore -i
        /dev/stdin``): read with the machine let go."""
        with unlocked(), open(path, "rb") as f:
            return f.read()

    def create_text(self, path: str):
        """std::ofstream(path): truncates or creates; None when it cannot be opened."""
        try:
            return open(path, "w")
        except OSError:
            return None


class _FileHandle(Handle):
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        between_bios()  # on the simulated host, other commands run between two reads
        data = os.pread(self.fd, length, offset)
        return data + bytes(length - len(data))

    def pwrite(self, offset: int, data: bytes) -> None:
        between_bios()
        os.pwrite(self.fd, data, offset)

    def close(self) -> None:
        os.close(self.fd)


class RealFiles(Files):
    """Plain files on this machine, opened as the tools open them (O_DIRECT: a tmpfs
    refuses it with EINVAL, as it refuses the real tools)."""

    def stat(self, path: str) -> Stat:
        info = os.stat(path)
        if st.S_ISREG(info.st_mode):
            return Stat("reg", info.st_size)
        if st.S_ISBLK(info.st_mode):
            raise OSError(E.EPERM, "real block devices are not opened by thinsim", path)
        return Stat("other", 0)

    def open(self, path: str, *, write: bool = False, excl: bool = False) -> Handle:
        flags = (os.O_RDWR if write else os.O_RDONLY) | (os.O_EXCL if excl else 0)
        if _on_tmpfs(path):
            # Debian 12's 6.1 kernel refuses O_DIRECT on a tmpfs (newer kernels accept it)
            raise OSError(E.EINVAL, os.strerror(E.EINVAL), path)
        direct = getattr(os, "O_DIRECT", 0)
        # the O_DIRECT open is the tools' own; the data is then read through a normal one
        probe = os.open(path, flags | direct)
        os.close(probe)
        return _FileHandle(os.open(path, flags))


TMPFS_MAGIC = 0x01021994


def _on_tmpfs(path: str) -> bool:
    """statfs(2)'s f_type is TMPFS_MAGIC."""
    import ctypes
    import ctypes.util

    buf = ctypes.create_string_buffer(256)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value == TMPFS_MAGIC
