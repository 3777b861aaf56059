"""Which file a loop device is attached to, and whether that file is one we made: proof by
the kernel's own identities, never by a path.

A path proves nothing: a file can be deleted and another made under the same name, and
ext4 hands the freed inode number to the next file made in the folder, so even (device,
inode) can name someone else's file once ours is gone.  The kernel tells them apart by the
inode's generation, which it draws at random for every new inode (ext4: __ext4_new_inode,
tmpfs: shmem_get_inode) and which NFS file handles carry for exactly this reason
(``name_to_handle_at``).  So a file we made is recorded as its :class:`FileId`: device, inode
and file handle; later, ``open_by_handle_at`` on that handle succeeds only while that very
inode lives (ESTALE once it was freed, even if the number was reused), and two live inodes
never share a (device, inode).  Hence a loop device whose backing file has our (device,
inode) (``LOOP_GET_STATUS64``: lo_device, lo_inode) while our handle still opens is attached
to our file, whatever its path says now (deleted, renamed, or a namesake).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# linux/loop.h
LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64_SIZE = 232  # struct loop_info64; lo_device and lo_inode are its first two u64
# linux/fcntl.h
AT_EMPTY_PATH = 0x1000
_MAX_HANDLE = 128  # MAX_HANDLE_SZ

_libc = ctypes.CDLL(None, use_errno=True)


def _errno() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


@dataclass(frozen=True)
class FileId:
    """A file's identity for as long as its inode lives: device, inode and file handle."""

    dev: int
    ino: int
    handle_type: int
    handle: bytes

    def __str__(self) -> str:
        return f"{self.dev} {self.ino} {self.handle_type}:{self.handle.hex()}"

    @classmethod
    def parse(cls, text: str) -> FileId:
        dev, ino, handle = text.split(" ")
        kind, _, data = handle.partition(":")
        return cls(int(dev), int(ino), int(kind), bytes.fromhex(data))

    @classmethod
    def of_fd(cls, fd: int) -> FileId:
        """The identity of the file open on ``fd``; OSError where the file system has no
        file handles (EOPNOTSUPP: 9p, overlayfs without nfs_export)."""
        buf = ctypes.create_string_buffer(8 + _MAX_HANDLE)
        struct.pack_into("=Ii", buf, 0, _MAX_HANDLE, 0)
        mount_id = ctypes.c_int()
        if _libc.name_to_handle_at(fd, b"", buf, ctypes.byref(mount_id), AT_EMPTY_PATH):
            raise _errno()
        size, kind = struct.unpack_from("=Ii", buf, 0)
        st = os.fstat(fd)
        return cls(st.st_dev, st.st_ino, kind, buf.raw[8 : 8 + size])

    @classmethod
    def of_path(cls, path: str | os.PathLike[str]) -> FileId | None:
        """The identity of what ``path`` names now (None: nothing there, or no handles)."""
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return cls.of_fd(fd)
        except OSError:
            return None
        finally:
            os.close(fd)

    def alive(self, near: str | os.PathLike[str]) -> bool:
        """Whether this very inode still exists (linked or not): its handle still opens.

        ``near`` is where the file was made; any folder on its file system will do for the
        mount ``open_by_handle_at`` wants."""
        mount_fd = _folder_on(self.dev, Path(near))
        if mount_fd is None:
            return False
        try:
            buf = ctypes.create_string_buffer(
                struct.pack("=Ii", len(self.handle), self.handle_type) + self.handle
            )
            fd = _libc.open_by_handle_at(mount_fd, buf, os.O_PATH | os.O_CLOEXEC)
            if fd < 0:
                return False  # ESTALE: freed; EPERM: cannot tell, so not proven
            try:
                st = os.fstat(fd)
                return (st.st_dev, st.st_ino) == (self.dev, self.ino)
            finally:
                os.close(fd)
        finally:
            os.close(mount_fd)


def _folder_on(dev: int, near: Path) -> int | None:
    """An open folder on the file system with device number ``dev``: the nearest existing
    ancestor of ``near`` on it, else its mount point from /proc/self/mountinfo."""
    candidates = [*near.parents]
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split(" ")
            major, _, minor = fields[2].partition(":")
            if os.makedev(int(major), int(minor)) == dev:
                candidates.append(Path(fields[4].replace("\\040", " ")))
    except (OSError, ValueError, IndexError):
        pass
    for folder in candidates:
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        if os.fstat(fd).st_dev == dev:
            return fd
        os.close(fd)
    return None


# -- loop devices -------------------------------------------------------------------------


def backing_file(dev: str) -> str | None:
    """The path the kernel gives for the file loop device ``dev`` is attached to (d_path
    from our root: a file in another mount namespace shows a path there), or None when
    unbound.  A hint only: see :func:`loop_file`."""
    try:
        text = Path("/sys/block", Path(dev).name, "loop", "backing_file").read_text()
    except OSError:
        return None
    return text.rstrip("\n")


def loop_file(dev: str) -> tuple[int, int] | None:
    """(device, inode) of the file loop device ``dev`` is attached to, as the kernel has
    them (LOOP_GET_STATUS64: lo_device, lo_inode), or None when unbound.

    Opening the device holds it as briefly as udev's probe does."""
    if backing_file(dev) is None:
        return None  # unbound: do not open it
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(_LOOP_INFO64_SIZE))
    except OSError:  # ENXIO: detached meanwhile
        return None
    finally:
        os.close(fd)
    return struct.unpack_from("=QQ", info)


def bound_loops() -> list[str]:
    """Every loop device attached to a file: /dev/loopN, in number order."""
    devs = [p.name for p in Path("/sys/block").glob("loop*") if (p / "loop").is_dir()]
    return [f"/dev/{name}" for name in sorted(devs, key=lambda n: int(n[4:]))]


def holders(dev: str) -> list[str]:
    """Kernel names of the devices stacked on ``dev`` (a dm table naming it)."""
    try:
        return sorted(p.name for p in Path("/sys/block", Path(dev).name, "holders").iterdir())
    except OSError:
        return []
