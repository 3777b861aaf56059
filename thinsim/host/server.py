"""The host's process: one per host folder, holding the simulated host in memory.

Every simulated command used to be a Python process that imported thinsim, loaded the whole
host state from its file, worked and saved it back (85 ms and up per command).  Now the host
lives in one process per host folder, started by the first command that finds none
(:func:`connect`; two first commands at once start one, under a POSIX lock on the host's
lock file), listening on ``server.sock`` in the host folder.  A command is a small client
(thinsim/host/client.c, or run.client_main where no C compiler is) that sends its name,
argv, environment, umask and working folder, with its standard streams and working folder
as descriptors (SCM_RIGHTS), and gets back how it ends: ``E<status>``, ``S<signal>`` (it
dies of the signal, as the real tool would: ``thin_ls | head -n1`` dies of SIGPIPE), or
``X<path>`` (a command that is not simulated, or dd without a simulated device: the client
execs the real one), each after an ``A`` sent when the process takes the command (:data:`STARTED`).

Each command runs in a thread of its own with its own working folder and umask
(``unshare(CLONE_FS)``), its own environment and standard streams (thread-local views
behind ``os.environ`` and ``sys.std*``), under the machine's lock.  A command blocked on
its pipes holds no lock (:func:`unlocked`, around dd's opens, reads and writes of real
files and thin_restore's read of its input), so ``dd if=/dev/mapper/a | dd
of=/dev/mapper/b`` and ``cmp <(dd ...) <(dd ...)`` run as on a real host; nor does one
whose I/O waits in a suspended device for its resume (command.wait_until: ``dmsetup
suspend thin; dd of=/dev/mapper/thin ... & dmsetup resume thin; wait``), which keeps the
device open meanwhile (dm_open_count counts it).  A long transfer lets the machine go
between two of its bios (command.between_bios: each read(2), write(2) or fsync(2) dd makes
on a simulated device): the lock is handed in turn (:class:`_Mutex`) to the commands
waiting for it, so a ``dmsetup status`` of another device waits for one bio of a 2 GiB dd,
not for the whole of it, as the kernel serves each bio on its own and other devices'
ioctls meanwhile.

Why one machine lock, handed on at the kernel's units of atomicity, rather than the
kernel's finer locks (dm's _hash_lock for names and tables, each device's suspend_lock,
each pool's): the simulated kernel is a Python object graph that is not thread-safe (one
table's load reaches the devices it names, a thin's write the pool's metadata, the
block layer's lookup every device), and the host state is saved whole after each command
(state._save_state, pools left out): per-device locks would need every path to name the
objects it touches and a save that sees no command halfway.  With one lock handed on only
where the kernel's own work is atomic (between bios, at a wait), every command sees and
leaves a whole state, the save included, and a script gets the kernel's outcomes; only the
interleaving is coarser (one bio at a time, not several at once on two CPUs), since a
simulated command only ever blocks on a pipe, a file of the real host, a suspended device
or another command's bio.  A command that let the machine go finds it as it was, or, when
the process loaded the state again meanwhile (another process on the host folder saved
it, or a command failed halfway: command.stale), its I/O ends with EIO and its changes
are not saved over the newer state.

Durability is the kernel's: the host state (loop bindings, dm tables, the pools' in-core
facts, the log) is saved (state.py: sealed, written aside and renamed) at the end of every
command, under the host folder's flock, without the pools' metadata, which this process
keeps in memory as the kernel does and which reaches the disk as the kernel writes it, at
each commit.  A ``kill -9`` of the process, or of a command, loses nothing committed: the
next command starts a new process that loads the state and re-opens each pool from its
metadata device (kernel.reopen_pools), so that a command's cost does not grow with the
pools' metadata; the commands the process was running end with an error (after the
``A``: they may have read their input and written their output, so they are not run
again).  The state file is also how a process
learns that another one (a second run on the same folder, a command run without a process)
changed the host: it is reloaded whenever it is no longer the one this process last saved.

The process ends when it has been idle for ``THINSIM_SERVER_IDLE`` seconds (default 300),
when its socket leaves the host folder, at ``thinsim host stop`` (:func:`stop`: the
commands under way finish, except those blocked on a pipe, a file of the real host or a
suspended device, which end as at a kill of the process), and with
its run: it is started inside the run's sandbox, so the end of the namespace ends it, and an
unsandboxed run stops it at its end.  ``THINSIM_SERVER=0`` runs each command in its own
process as before (thinsim/host/run.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as E
import fcntl
import io as _io
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import MutableMapping
from pathlib import Path

from .command import _local
from .shims import names_device, real_command

SOCKET = "server.sock"  # in the host folder
START_BYTE = 1 << 30  # the byte of the lock file whose POSIX lock a starter holds
IDLE_SECONDS = 300.0
POLL_SECONDS = 1.0
SETTLE_SECONDS = 0.2  # how long a stop sees every command waiting before it ends them
ROOT = str(Path(__file__).resolve().parents[2])
CLONE_FS = 0x200
HEADER = struct.Struct("<III")  # payload length, which of fds 0-2 are open, umask
# The first byte of every answer, sent before the command runs: a client whose answer
# stops there knows its command was under way when the process died (it may have read
# its input, written its output, committed), so it must not run it again itself.
STARTED = b"A"

_SERVER = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from thinsim.host.server import server_main; "
    "sys.exit(server_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))"
)


def _address(dirfd: int) -> str:
    """The socket's name through a descriptor of the host folder: a host folder's path may
    be longer than sun_path's 108 bytes."""
    return f"/proc/self/fd/{dirfd}/{SOCKET}"


# -- the client side -----------------------------------------------------------------------


def connect(host: str) -> socket.socket:
    """A connection to HOST's process, started first if there is none (one only, however
    many commands start at once)."""
    dirfd = os.open(host, os.O_PATH | os.O_DIRECTORY)
    try:
        try:
            return _connect(dirfd)
        except OSError:
            pass
        from .state import LOCK_FILE

        # a POSIX record lock on the state's lock file (independent of the commands' flock
        # on it): one starter at a time
        lock = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=dirfd)
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX, 1, START_BYTE)
            try:
                return _connect(dirfd)
            except OSError:
                pass
            _start(host, dirfd)
            return _connect(dirfd)
        finally:
            os.close(lock)
    finally:
        os.close(dirfd)


def _connect(dirfd: int) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(_address(dirfd))
    except OSError:
        conn.close()
        raise
    return conn


def _start(host: str, dirfd: int) -> None:
    """Bind the socket (a dead process's is replaced), then start the process on it: the
    first request waits in the backlog.  No stdio of the command (a script's pipe would stay
    open), a session of its own."""
    path = _address(dirfd)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    log = os.environ.get("THINSIM_SERVER_LOG")  # where the process's own errors go
    with listener, open(log or os.devnull, "ab") as errors:
        listener.bind(path)
        listener.listen(128)
        # the socket file the process owns, told rather than looked up when it starts: by
        # then another starter may have put its own in its place, and a process that took
        # that one for its own left it behind, dead, when it stopped
        ino = os.stat(path).st_ino
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SERVER,
                ROOT,
                os.path.abspath(host),
                str(listener.fileno()),
                str(ino),
            ],
            pass_fds=(listener.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            cwd="/",
            start_new_session=True,
        )


def standard_streams() -> int:
    """Which of fds 0-2 the command has (a bit each), taken before the client opens anything:
    each closed one is held by a close-on-exec placeholder from then on, so that no
    descriptor the client opens (the socket, a lock file, the working folder) takes its
    number and passes for the stream (``thin_dump >&-`` would write into the socket)."""
    mask = 0
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            mask |= 1 << fd
        except OSError:
            os.open("/dev/null", os.O_PATH | os.O_CLOEXEC)  # the lowest free number: fd
    return mask


def request(conn: socket.socket, name: str, argv: list[str], streams: int) -> str:
    """Send the command, with the standard streams STREAMS says it has
    (:func:`standard_streams`); the answer: ``A`` (:data:`STARTED`) once the process has
    taken it, then E, S or X and its argument when it ends (nothing after the A: the
    process died while it ran the command)."""
    payload = b"\0".join(
        [name.encode(), str(len(argv)).encode()]
        + [os.fsencode(a) for a in argv]
        + [os.fsencode(f"{k}={v}") for k, v in os.environ.items()]
    )
    mask = streams
    fds = [os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
    fds += [fd for fd in (0, 1, 2) if mask & (1 << fd)]
    try:
        umask = os.umask(0)
        os.umask(umask)
        socket.send_fds(conn, [HEADER.pack(len(payload), mask, umask) + payload], fds)
    finally:
        os.close(fds[0])
    answer = b""
    with contextlib.suppress(OSError):  # the process died: what came before its end
        while chunk := conn.recv(4096):
            answer += chunk
    return answer.decode(errors="surrogateescape")


def stop(host: str) -> bool:
    """Stop HOST's process (``thinsim host stop``): it answers once it no longer takes
    commands and has finished those it had, but for those blocked on a pipe, a file of the
    real host or a suspended device, which it ends (their clients say the process died;
    what was committed stays).  Whether one was running."""
    try:
        dirfd = os.open(host, os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        try:
            conn = _connect(dirfd)
        except OSError:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(_address(dirfd)).st_mode):
                    os.unlink(_address(dirfd))  # a dead process's
            return False
        with conn:
            payload = b"stop"
            try:
                conn.sendall(HEADER.pack(len(payload), 0, 0) + payload)
                while conn.recv(256):
                    pass
            except OSError:
                pass
        return True
    finally:
        os.close(dirfd)


# -- the process ---------------------------------------------------------------------------


class _Env(MutableMapping):
    """``os.environ`` in the process: the environment of the command the thread runs."""

    def __init__(self, base) -> None:
        self.base = base

    def _d(self):
        return getattr(_local, "env", None) or self.base

    def __getitem__(self, key):
        return self._d()[key]

    def __setitem__(self, key, value):
        self._d()[key] = value

    def __delitem__(self, key):
        del self._d()[key]

    def __iter__(self):
        return iter(dict(self._d()))

    def __len__(self):
        return len(self._d())

    def copy(self):
        return dict(self._d())


class _Std:
    """``sys.stdout`` (...) in the process: the stream of the command the thread runs."""

    def __init__(self, which: str, base) -> None:
        object.__setattr__(self, "_which", which)
        object.__setattr__(self, "_base", base)

    def _s(self):
        streams = getattr(_local, "std", None)
        if streams is None:
            return self._base
        return streams[self._which]

    def __getattr__(self, name):
        return getattr(self._s(), name)

    def __iter__(self):
        return iter(self._s())


class _Mutex:
    """The machine's mutex, handed on in turn: a command that holds it between two bios of
    a long transfer (:meth:`handover`, command.between_bios) gives it to a command waiting
    for it, then waits for it again, as the kernel serves each bio on its own while another
    process's ioctl runs.  A plain lock would not do: its holder takes it back before a
    waiter wakes.  Usable as a Condition's lock (acquire, release, _is_owned)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns = threading.Condition(threading.Lock())
        self.wanting = 0  # threads blocked in acquire
        self.taken = 0  # acquisitions so far
        self._owner: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        with self._turns:
            self.wanting += 1
        got = False
        try:
            got = self._lock.acquire(blocking, timeout)
        finally:
            with self._turns:
                self.wanting -= 1
                if got:
                    self.taken += 1
                    self._owner = threading.get_ident()
                    self._turns.notify_all()
        return got

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    def _is_owned(self) -> bool:
        return self._owner == threading.get_ident()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()

    def handover(self) -> bool:
        """Let another command that waits for the machine have it, and take it back once
        that one lets it go; whether there was one."""
        with self._turns:
            if not self.wanting:
                return False
            turn = self.taken
            self.release()
            while self.taken == turn and self.wanting:
                self._turns.wait(POLL_SECONDS)
        self.acquire()
        return True


class _Lock:
    """The machine's lock: a mutex handed on in turn (:class:`_Mutex`), and the host
    folder's flock while any command of this process is under way (other processes on the
    folder wait for it); the state reloaded when another process saved it since.
    ``changed`` is signalled whenever a command lets the machine go (a waiter on a
    suspended device checks its device again); ``generation`` changes whenever the
    process's state is no longer the one its commands hold (loaded again, or dropped by a
    command that failed halfway); ``waiting`` counts the commands waiting on a suspended
    device, ``blocked`` those blocked on a pipe or a file of the real host (command.unlocked)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.mutex = _Mutex()
        self.changed = threading.Condition(self.mutex)
        self.generation = 0
        self.waiting = 0
        self.blocked = 0
        self.count = 0  # commands under way
        self.guard = threading.Lock()

    def enter(self) -> None:
        with self.guard:
            self.count += 1
            if self.count == 1:
                fcntl.flock(self.server.lockfd, fcntl.LOCK_EX)
        self.mutex.acquire()

    def leave(self) -> None:
        self.changed.notify_all()
        self.mutex.release()
        with self.guard:
            self.count -= 1
            if self.count == 0:
                fcntl.flock(self.server.lockfd, fcntl.LOCK_UN)


class Server:
    def __init__(self, host: str, listener: socket.socket, ino: int) -> None:
        from .state import LOCK_FILE

        self.host = host
        self.listener = listener
        self.dirfd = os.open(host, os.O_PATH | os.O_DIRECTORY)
        self.ino = ino  # the inode of the socket file it listens on
        self.lockfd = os.open(
            LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=self.dirfd
        )
        self.lock = _Lock(self)
        self.state = None
        self.saved: tuple | None = None  # the state file as this process last saw it
        self.last = time.monotonic()
        self.busy = 0
        self.stopping = False
        self.idle = float(os.environ.get("THINSIM_SERVER_IDLE", IDLE_SECONDS))

    def serve(self) -> None:
        while not self.stopping:
            ready, _, _ = select.select([self.listener], [], [], POLL_SECONDS)
            if not ready:
                if self._done():
                    return
                continue
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue  # shut down by a stop (EINVAL), or the client gone already
            self.last = time.monotonic()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        # A stop is under way in its own thread, which ends the process once the commands
        # under way are done.  This thread must not end first: the end of the main thread
        # ends the process, the stop's unlink of the socket or the commands' ends not done
        # (the dead server.sock that host stop used to leave behind, 1 stop in 2).
        while True:
            time.sleep(POLL_SECONDS)

    def _done(self) -> bool:
        try:
            if os.stat(_address(self.dirfd)).st_ino != self.ino:
                return True  # another process's socket, or none: the host folder moved on
        except OSError:
            return True
        from . import realdev

        if realdev.current is not None and realdev.current.devices:
            return False  # it serves the loop devices of the run's nodes: it lives with the run
        return self.busy == 0 and time.monotonic() - self.last > self.idle

    def device_io(self, key: str, op: str, offset: int, arg):
        """A request of the FUSE file of device KEY (``loopN``, ``dm-N``): what a bio from
        the loop device of the host bound to it does, through blockio as the simulated dd's
        I/O goes (thinsim/host/fuse.py).  Under the machine's lock, as a command; the state
        is saved at a flush or discard, and after a write that made a pool commit."""
        from ..errors import ThinsimError
        from .blockio import bio_waits, discard, flush, read, read_only, write
        from .command import wait_until
        from .state import STATE_FILE, _save_state

        with self.lock.guard:
            self.busy += 1
        self.lock.enter()
        _local.lock, _local.held = self.lock, True
        try:
            path = Path(self.host) / STATE_FILE
            state = self._state_now(path)
            dev = _device(state, key)
            if dev is None:
                raise OSError(E.ENXIO, os.strerror(E.ENXIO))
            if bio_waits(dev) and not wait_until(lambda: not bio_waits(dev)):
                raise OSError(E.EIO, os.strerror(E.EIO))
            if op != "read" and read_only(dev):
                raise OSError(E.EPERM, os.strerror(E.EPERM))
            commits = _commits(state)
            try:
                if op == "read":
                    return read(state, dev, offset, arg)
                if op == "write":
                    write(state, dev, offset, bytes(arg))
                elif op == "flush":
                    flush(state, dev)
                elif op == "discard":
                    discard(state, dev, offset, arg)
                elif op == "zero":
                    for at in range(offset, offset + arg, 1 << 20):
                        write(state, dev, at, bytes(min(1 << 20, offset + arg - at)))
            except ThinsimError as e:
                raise OSError(e.errno, os.strerror(e.errno)) from None
            finally:
                if op in ("flush", "discard", "zero") or _commits(state) != commits:
                    state.stamp_log()
                    with contextlib.suppress(OSError):
                        _save_state(Path(self.host), state, sync=False, pools=False)
                    self.saved = _stat(path)
        finally:
            _local.held = False
            _local.lock = None
            self.lock.leave()
            with self.lock.guard:
                self.busy -= 1
            self.last = time.monotonic()

    def _state_now(self, path: Path):
        """The host's state as its file PATH has it, the machine held: loaded again when
        another process saved it since this one last did, or after a command failed
        halfway (``generation`` counts the loads)."""
        from .state import _load_state

        seen = _stat(path)
        if self.state is None or seen != self.saved:
            self.state = None
            self.lock.generation += 1
            self.state = _load_state(path)
            self.saved = seen
        return self.state

    def _serve(self, conn: socket.socket) -> None:
        fds: list[int] = []
        with conn:
            try:
                head, fds, _, _ = socket.recv_fds(conn, 1 << 16, 4)
                if len(head) < HEADER.size:
                    return
                length, mask, umask = HEADER.unpack_from(head)
                payload = head[HEADER.size :]
                while len(payload) < length:
                    chunk = conn.recv(length - len(payload))
                    if not chunk:
                        return
                    payload += chunk
                if payload == b"stop":
                    self._stop()
                    return
                conn.sendall(STARTED)  # a client killed already: its command never runs
                answer = self._command(payload, mask, umask, fds)
                fds = []
                conn.sendall(answer.encode(errors="surrogateescape"))
            except OSError:
                pass  # the command was killed: what it did stays done
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _stop(self) -> None:
        """``thinsim host stop``: no new command (the socket unlinked, the listener shut
        down: not closed, which the main thread's select could not see), those under way
        finish, then the process ends, before it answers."""
        with contextlib.suppress(OSError):
            if os.stat(_address(self.dirfd)).st_ino == self.ino:
                os.unlink(_address(self.dirfd))
        self.stopping = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the select: accept fails
        # The commands under way finish; not those waiting for the resume of a suspended
        # device, which no command can come to do any more (the kernel would wait for
        # ever), nor those blocked on a pipe or a file of the real host (``sleep 1000 |
        # thin_restore -i /dev/stdin``: a real host's shutdown does not wait for a process
        # blocked in read(2) either).  The machine is taken first, so that none of them is
        # halfway through a change: each ends as at a kill of the process (its client says
        # the process died, the host goes on from the state file and what was committed).
        # A command that is only writing its last output to a pipe whose reader reads
        # ends meanwhile: the stop waits for the commands to stay settled a moment.
        since = None
        while True:
            if self._settled() and self.lock.mutex.acquire(timeout=POLL_SECONDS):
                if self._settled():
                    if not self.busy or (since and time.monotonic() - since > SETTLE_SECONDS):
                        os._exit(0)
                    since = since or time.monotonic()
                else:
                    since = None
                self.lock.mutex.release()  # one came back from its wait meanwhile
            else:
                since = None
            time.sleep(0.01)

    def _settled(self) -> bool:
        """Whether every command under way waits: on a suspended device, a pipe or a file
        of the real host."""
        with self.lock.guard:
            return self.busy <= self.lock.waiting + self.lock.blocked

    def _command(self, payload: bytes, mask: int, umask: int, fds: list[int]) -> str:
        parts = payload.split(b"\0")
        name = parts[0].decode()
        argc = int(parts[1])
        argv = [os.fsdecode(a) for a in parts[2 : 2 + argc]]
        env = {}
        for item in parts[2 + argc :]:
            k, _, v = os.fsdecode(item).partition("=")
            env[k] = v
        cwd, rest = fds[0], fds[1:]
        std: dict[int, int | None] = {}
        for fd in (0, 1, 2):
            std[fd] = rest.pop(0) if mask >> fd & 1 and rest else None
        with self.lock.guard:
            self.busy += 1
        try:
            return self._run(name, argv, env, umask, cwd, std)
        finally:
            with self.lock.guard:
                self.busy -= 1
            self.last = time.monotonic()
            for fd in [cwd, *std.values()]:
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _run(self, name, argv, env, umask, cwd, std) -> str:
        from . import devnodes, sysfs
        from .state import HostStateError
        from .tools import COMMANDS, IO

        _local.env = env
        os.fchdir(cwd)
        os.umask(umask)
        streams = _streams(std)
        _local.std = streams
        try:
            from . import realdev

            if (
                name in realdev.TOOLS
                and realdev.current is not None
                and realdev.current.devices
                and (name not in ("mount", "mkfs.xfs") or names_device(argv) is not None)
            ):
                # mount, umount, fstrim and mkfs.xfs of real devices: the init runs them for the
                # script, which has not the capabilities (realdev.Privileged.tool)
                return realdev.run_tool(name, argv, cwd, std)
            if name not in COMMANDS or (name == "dd" and names_device(argv) is None):
                device = names_device(argv) if name not in COMMANDS else None
                if device is not None and not _real_node(device):
                    streams["stderr"].write(
                        f"thinsim: {name} on {device} is not simulated: refused, so that it "
                        f"cannot reach the real device{_why_not_real()}\n"
                    )
                    return "E1"
                if name not in COMMANDS and sysfs.reads_names(argv):
                    with self._locked():
                        sysfs.refresh_names_of(self.state, argv)
                real = real_command(name)
                if real is None:
                    streams["stderr"].write(f"{name}: command not found\n")
                    return "E127"
                return f"X{real}"
            io = IO(streams["stdin"], streams["stdout"], streams["stderr"], defer=True)
            try:
                with self._locked() as command:
                    before = len(self.state.log.lines)
                    status = COMMANDS[name](self.state, argv, io)
                    devnodes.sync(self.state)
                    said = self.state.log.lines[before:]
            except HostStateError as e:
                streams["stderr"].write(f"{e.code}\n")
                return "E1"
            except SystemExit as e:
                code = e.code
                if isinstance(code, str):
                    streams["stderr"].write(code + "\n")
                    code = 1
                return f"E{code or 0}"
            try:
                with self._blocked():
                    io.finish()
            except BrokenPipeError:
                status = status if status < 0 else -signal.SIGPIPE
            except (OSError, ValueError):
                pass
            if command.unsaved is not None:
                e = command.unsaved
                streams["stderr"].write(
                    f"thinsim: {e.folder}: cannot save the host state ({e.strerror}); the "
                    "host's process goes on with it and saves it with the next command\n"
                )
                status = status if status < 0 else 1
            with self._blocked():
                explain(name, status, said, streams["stderr"])
                return _ending(status, streams)
        except Exception:  # noqa: BLE001 -- the command's traceback, as the shim printed it
            with contextlib.suppress(Exception):
                streams["stderr"].write(traceback.format_exc())
                streams["stderr"].flush()
            return "E1"
        finally:
            with self._blocked():
                for s in streams.values():
                    with contextlib.suppress(Exception):
                        s.flush()
            _local.std = None
            _local.env = None

    @contextlib.contextmanager
    def _blocked(self):
        """Around the writes of a command's output once it is done with the machine: a
        pipe's reader may never read (``thin_dump ... | sleep 1000``), so a stop does not
        wait for it, as for a command blocked in command.unlocked."""
        with self.lock.guard:
            self.lock.blocked += 1
        try:
            yield
        finally:
            with self.lock.guard:
                self.lock.blocked -= 1

    @contextlib.contextmanager
    def _locked(self):
        """The machine for this command: the state as the file has it, saved at the end.

        A state that cannot be saved (a full or failing file system under the host folder)
        is kept, not dropped: the command is done (its ioctls, and its pools' commits
        already on their metadata devices, as the kernel would have them), so the process
        goes on with it and tells so (``unsaved``, which the command reports, exit status
        1); the next command saves it whole, and a kill meanwhile takes the host back to
        the file's state, the pools to what they committed.  Only a command that failed
        halfway (a traceback) has the state loaded again from the file."""
        from .blockio import new_command
        from .state import STATE_FILE, StateNotSaved, _save_state

        self.lock.enter()
        _local.lock, _local.held = self.lock, True
        try:
            path = Path(self.host) / STATE_FILE
            self._state_now(path)
            _local.generation = self.lock.generation
            new_command(self.state)
            command = _Command()
            yield command
            if self.lock.generation != _local.generation:
                # the state this command changed was dropped or loaded again while it let
                # the machine go (its I/O failed since: command.stale): nothing of it to save
                return
            self.state.stamp_log()
            try:
                _save_state(Path(self.host), self.state, sync=False, pools=False)
            except StateNotSaved as e:
                command.unsaved = e
            finally:
                self.saved = _stat(path)
        except BaseException:
            # half a command's changes: the file has the last whole state; the commands
            # that let the machine go meanwhile hold a state that is no longer the machine's
            self.state = None
            self.lock.generation += 1
            raise
        finally:
            _local.held = False
            _local.lock = None
            self.lock.leave()


def _real_node(path: str) -> bool:
    """Whether PATH is a simulated device's node that the run made a real block device
    (thinsim/host/realdev.py: a loop device of the host over the model), which any program
    may open: the guard's refusal is for the nodes that are not."""
    from . import realdev

    if realdev.current is None:
        return False
    try:
        rdev = os.stat(path).st_rdev
    except OSError:
        return False
    return (os.major(rdev), os.minor(rdev)) in {
        (realdev.LOOP_MAJOR, n) for n in realdev.current.nodes().values()
    }


def _why_not_real() -> str:
    """Where the run has no real devices, why (the guard's refusal says it)."""
    from . import realdev

    value = os.environ.get(realdev.ENV, "")
    if value.startswith("0: "):
        return f" (no real block devices in this run: {value[3:]})"
    return ""


def _device(state, key: str):
    """The simulated device of FUSE file KEY: ``loopN`` or ``dm-N``."""
    if key.startswith("loop"):
        return state.loops.get(int(key[4:]))
    minor = int(key[3:])
    for dev in state.dm.values():
        if dev.minor == minor and dev.disk_added:
            return dev
    return None


def _commits(state) -> int:
    """The commits of every pool so far (a write that made one has the state saved)."""
    total = 0
    for dev in state.dm.values():
        for t in dev.live or []:
            pmd = getattr(t.obj, "pmd", None)
            total += getattr(pmd, "commit_count", 0)
    return total


class _Command:
    """What _locked tells its command at the end: the state's save that failed, if any."""

    unsaved = None


def _stat(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


def _streams(std: dict[int, int | None]) -> dict:
    """The command's sys.stdin, sys.stdout and sys.stderr, as Python makes them (a closed
    descriptor's: a stream that drops what is written, as the shim's IO did)."""

    def text(fd, mode, **kw):
        if fd is None:
            return _io.StringIO()
        return open(fd, mode, encoding="utf-8", errors="surrogateescape", closefd=False, **kw)

    tty = std[1] is not None and os.isatty(std[1])
    return {
        "stdin": text(std[0], "r"),
        "stdout": text(std[1], "w", buffering=1 if tty else -1),
        "stderr": text(std[2], "w", buffering=1),
    }


EXPLAIN = "THINSIM_EXPLAIN"  # set (to 1) by thinsim run --explain and the %%thinsim magic


def explain(name: str, status: int, said: list[str], stderr) -> None:
    """Explain mode (``EXPLAIN`` in the command's environment): after a simulated command
    that failed, the kernel log lines it made the kernel print, which say why (dmsetup
    prints only the ioctl's errno: ``message ioctl on pool  failed: Invalid argument``).
    A learner reads them without knowing to look in dmesg.  Nothing when the command
    succeeded or the kernel said nothing."""
    if status == 0 or not said or os.environ.get(EXPLAIN, "") in ("", "0"):
        return
    with contextlib.suppress(OSError, ValueError):
        stderr.write(
            f"thinsim --explain: {name} failed; the kernel logged (dmesg):\n"
            + "".join(f"  {line}\n" for line in said)
        )


def _ending(status: int, streams: dict) -> str:
    """The shim's _exit_as: stdout flushed (a reader gone: SIGPIPE), then the status or
    the signal the client dies of."""
    try:
        streams["stdout"].flush()
    except BrokenPipeError:
        status = status if status < 0 else -signal.SIGPIPE
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError, ValueError):
        streams["stderr"].flush()
    if status < 0:
        return f"S{-status}"
    return f"E{status}"


_libc = None


def _unshare_fs() -> None:
    """This thread's own working folder and umask."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.unshare(CLONE_FS) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def server_main(host: str, listen_fd: int, ino: int) -> int:
    listener = socket.socket(fileno=listen_fd)
    # a view per thread, not a change of the environment
    os.environ = _Env(os.environ)  # type: ignore[assignment]  # noqa: B003
    sys.stdin = _Std("stdin", sys.stdin)  # type: ignore[assignment]
    sys.stdout = _Std("stdout", sys.stdout)  # type: ignore[assignment]
    sys.stderr = _Std("stderr", sys.stderr)  # type: ignore[assignment]
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # each command's thread has its own working folder and umask
    original = threading.Thread.run

    def run(self) -> None:
        try:
            _unshare_fs()
        except OSError as e:  # pragma: no cover -- Linux has had it since 2.6.16
            if e.errno != E.EINVAL:
                raise
        original(self)

    threading.Thread.run = run  # type: ignore[method-assign]
    # what commands import, imported once
    from . import blockio, devnodes, sysfs  # noqa: F401
    from .tools import COMMANDS  # noqa: F401

    server = Server(host, listener, ino)
    from . import realdev

    if realdev.enabled():
        realdev.current = realdev.Attached(server.device_io)
        from ..model import devices

        devices.external_opens = realdev.current.opens
    server.serve()
    return 0
