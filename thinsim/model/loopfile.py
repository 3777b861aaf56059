"""A loop device's backing file, held open as the kernel holds it.

loop.c keeps the file losetup hands it (LOOP_CONFIGURE's fd) as ``lo->lo_backing_file``, a
``struct file``: I/O goes to that file whatever happens to its name, and
/sys/block/loopN/loop/backing_file (which losetup prints) is its ``d_path`` at read time, so
it follows a rename and ends in `` (deleted)`` once the file is unlinked
(loop_attr_backing_file_show -> file_path).

Every simulated command is its own short process, so the open files live in a small holder
process per host, started by the first attach: a command sends it the file it opened over a
unix socket (SCM_RIGHTS), and later commands reopen it as /proc/HOLDER/fd/N (which opens the
very file, deleted or renamed) and read the kernel's name from readlink(/proc/HOLDER/fd/N),
the same d_path with the same " (deleted)".  The holder exits when its run ends (``stop``), or
when its socket disappears from the host folder.

Without a holder (it was killed, or a ``--host`` folder is opened again after its run ended,
as after a reboot that kept the loop devices) a loop device reopens its file by name, but only
while that name is still the same file (device and inode): otherwise the file is lost and the
device's I/O fails with EIO, as it would in the kernel had the file gone.  (A file made after
the old one was freed may get its inode number back, and pass for it.)

A host state used in-process (no THINSIM_HOST, as the tests do) is its own holder: this
process keeps the files open.
"""

from __future__ import annotations

import errno as E
import os
import select
import socket
import stat
import subprocess
import sys
from pathlib import Path

from ..errors import error_for
from .store import DataStore, _punch_hole, punches_holes

SOCKET = "loops.sock"  # in the host folder
POLL_SECONDS = 1.0  # how often an idle holder checks that its socket is still its host's
ROOT = str(Path(__file__).resolve().parents[2])  # this thinsim, for the holder's python

_HOLDER = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from thinsim.model.loopfile import holder_main; sys.exit(holder_main(int(sys.argv[2])))"
)

# the files this process holds for a host state used in-process: fd -> (device, inode)
_local: dict[int, tuple[int, int]] = {}


# -- the holder process ------------------------------------------------------------------


def holder_main(listen_fd: int) -> int:
    """Hold the files commands send, until told to stop or the socket is gone.

    One request per connection: ``hold`` with a file (SCM_RIGHTS) answers ``PID FD``;
    ``drop PID FD`` closes that file if this holder (PID) has it; ``stop`` ends."""
    server = socket.socket(fileno=listen_fd)
    path = server.getsockname()
    ours = os.stat(path).st_ino
    held: set[int] = set()
    me = os.getpid()
    while True:
        ready, _, _ = select.select([server], [], [], POLL_SECONDS)
        if not ready:
            try:
                if os.stat(path).st_ino != ours:
                    return 0
            except OSError:
                return 0  # the host folder is gone: the run is over
            continue
        try:
            conn, _ = server.accept()
        except OSError:
            continue
        with conn:
            try:
                msg, fds, _, _ = socket.recv_fds(conn, 256, 4)
            except OSError:
                continue
            words = msg.decode("ascii", "replace").split()
            reply = "?"
            if words[:1] == ["hold"] and fds:
                fd = fds.pop(0)
                held.add(fd)
                reply = f"{me} {fd}"
            elif words[:1] == ["drop"] and len(words) == 3:
                pid, fd = int(words[1]), int(words[2])
                if pid == me and fd in held:
                    held.discard(fd)
                    os.close(fd)
                reply = "ok"
            elif words[:1] == ["stop"]:
                if _same_inode(path, ours):
                    os.unlink(path)
                conn.sendall(b"ok")
                return 0
            for fd in fds:
                os.close(fd)
            try:
                conn.sendall(reply.encode())
            except OSError:
                pass


def _same_inode(path: str, ino: int) -> bool:
    try:
        return os.stat(path).st_ino == ino
    except OSError:
        return False


def _host() -> str | None:
    return os.environ.get("THINSIM_HOST")


def _ask(host: str, message: str, fd: int | None = None, *, start: bool = False) -> str | None:
    """Send MESSAGE (and FD) to HOST's holder, starting one if START; its answer, or None
    when there is no holder."""
    path = os.path.join(host, SOCKET)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with conn:
        try:
            conn.connect(path)
        except OSError:
            if not start:
                return None
            _start(path)
            conn.connect(path)
        socket.send_fds(conn, [message.encode()], [] if fd is None else [fd])
        answer = b""
        while chunk := conn.recv(256):
            answer += chunk
        return answer.decode()


def _start(path: str) -> None:
    """A new holder listening on PATH (a stale socket of a dead holder is replaced)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with server:
        server.bind(path)
        server.listen(8)
        # listening before the holder runs: the first request waits in the backlog.  No
        # stdio of the run (a script's pipe would stay open), no lock file, no folder.
        subprocess.Popen(
            [sys.executable, "-c", _HOLDER, ROOT, str(server.fileno())],
            pass_fds=(server.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
        )


def stop(host: str) -> None:
    """The run on HOST ends: its holder closes every file (the kernel's loop devices would
    go with the machine)."""
    try:
        answer = _ask(host, "stop")
    except OSError:
        answer = None
    if answer is None:  # the holder died with the run's namespace: its socket stays
        path = os.path.join(host, SOCKET)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass


# -- what commands use ---------------------------------------------------------------------


def hold(loop, fd: int) -> None:
    """LOOP_CONFIGURE keeps FD's file as the loop device's backing file (the caller closes
    FD)."""
    st = os.fstat(fd)
    loop.device, loop.inode = st.st_dev, st.st_ino
    host = _host()
    if host is None:
        kept = os.dup(fd)
        _local[kept] = (st.st_dev, st.st_ino)
        loop.holder_pid, loop.holder_fd = os.getpid(), kept
        return
    try:
        answer = _ask(host, "hold", fd, start=True) or ""
    except OSError:
        answer = ""  # no socket here (a host folder path too long for one, say)
    pid, _, n = answer.partition(" ")
    if pid.isdigit() and n.isdigit():
        loop.holder_pid, loop.holder_fd = int(pid), int(n)
    else:
        loop.holder_pid, loop.holder_fd = 0, -1  # held by name only (see above)


def release(loop) -> None:
    """loop_clr_fd: the device lets its file go."""
    pid, n = getattr(loop, "holder_pid", 0), getattr(loop, "holder_fd", -1)
    loop.holder_pid, loop.holder_fd = 0, -1
    if not pid:
        return
    if pid == os.getpid() and n in _local:
        del _local[n]
        os.close(n)
        return
    host = _host()
    if host is not None:
        try:
            _ask(host, f"drop {pid} {n}")
        except OSError:
            pass


def _held(loop) -> str | None:
    """/proc/HOLDER/fd/N when it still is the loop device's file, else None."""
    pid = getattr(loop, "holder_pid", 0)
    if not pid:
        return None
    proc = f"/proc/{pid}/fd/{loop.holder_fd}"
    try:
        st = os.stat(proc)
    except OSError:
        return None
    if (st.st_dev, st.st_ino) != (loop.device, loop.inode):
        return None  # the holder is gone and its number went to another process
    return proc


def _by_name(loop) -> bool:
    """Whether the name the file was given still names it (no holder to ask)."""
    try:
        st = os.stat(loop.backing_file)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (loop.device, loop.inode)


def io_path(loop) -> str | None:
    """The path that opens the loop device's backing file itself (for the pool's metadata
    and data I/O): /proc/HOLDER/fd/N, or its name while that still names it when the holder
    is gone; None when the file is lost (its I/O fails with EIO)."""
    if not loop.backing_file:
        return None
    held = _held(loop)
    if held is not None:
        return held
    if not _by_name(loop):
        return None
    # the same file still has the name: the device holds it again from now on
    try:
        fd = os.open(loop.backing_file, os.O_RDONLY if loop.read_only else os.O_RDWR)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_ino == loop.inode:
            hold(loop, fd)
    finally:
        os.close(fd)
    return _held(loop) or loop.backing_file


def open_file(loop, write: bool) -> int:
    """An fd on the loop device's backing file (O_RDWR for WRITE, else O_RDONLY); EIO when
    the file is lost."""
    path = io_path(loop)
    if path is None:
        raise error_for(E.EIO)
    try:
        return os.open(path, os.O_RDWR if write else os.O_RDONLY)
    except OSError as e:
        raise error_for(E.EIO) from e


def backing_name(loop) -> str:
    """loop/backing_file: the kernel's name for the open file (d_path), which follows a
    rename and reads "NAME (deleted)" once the file is unlinked."""
    held = _held(loop)
    if held is not None:
        try:
            return os.readlink(held)
        except OSError:
            pass
    if _by_name(loop):
        return loop.backing_file
    return loop.backing_file + " (deleted)"


def size(loop) -> int:
    """The backing file's size now (loop_get_size: i_size_read of the open file)."""
    fd = open_file(loop, write=False)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


class LoopStore(DataStore):
    """A pool's data device that is a loop device: its I/O goes to the loop device's open
    backing file (renamed or deleted alike), opened once per command.  Pickled with the host
    state as the loop device itself, never as a file name."""

    def __init__(self, loop, offset: int = 0) -> None:
        self.loop = loop
        self.offset = offset  # where the pool's data device starts (a linear device on it)
        self._fd = -1

    def __repr__(self) -> str:
        return f"LoopStore({self.loop!r}, offset={self.offset})"

    def __getstate__(self):
        return {"loop": self.loop, "offset": self.offset}

    def __setstate__(self, state) -> None:
        self.loop = state["loop"]
        self.offset = state.get("offset", 0)
        self._fd = -1

    @property
    def fd(self) -> int:
        if self._fd < 0:
            self._fd = open_file(self.loop, write=True)
        return self._fd

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self.fd, data, self.loop.offset + self.offset + offset)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, self.loop.offset + self.offset + offset)
        return data + bytes(length - len(data))

    def discard(self, offset: int, length: int) -> None:
        _punch_hole(self.fd, self.loop.offset + self.offset + offset, length)

    def supports_discard(self) -> bool:
        """Whether the file's file system punches holes (else the loop device on it
        advertises no discard)."""
        return punches_holes(self.fd)

    def allocated_bytes(self) -> int:
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
