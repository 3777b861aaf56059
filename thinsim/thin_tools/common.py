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

VERSION = "0.9.0"
MD_BLOCK_SIZE = 4096


class ToolError(RuntimeError):
    """A std::runtime_error a tool throws: ``str(self)`` is its ``what()``."""


class Output:
    """Where a tool writes: ``out`` is stdout, ``err`` stderr."""

    def __init__(self, stdout=None, stderr=None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def out(self, text: str) -> None:
        self.stdout.write(text)

    def err(self, text: str) -> None:
        self.stderr.write(text)


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
        """The whole of a plain file (the XML a restore reads)."""
        with open(path, "rb") as f:
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
        data = os.pread(self.fd, length, offset)
        return data + bytes(length - len(data))

    def pwrite(self, offset: int, data: bytes) -> None:
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
