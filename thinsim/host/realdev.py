"""Simulated devices as real block devices: a real loop device of the host over each
device's file of thinsim/host/fuse.py, and its node in the run's private /dev.

Three parties, because the one that has the model cannot reach devices:

- the host's process (thinsim/host/server.py) has the model and serves the FUSE file system,
  but runs inside the sandbox without CAP_SYS_ADMIN or CAP_MKNOD.  At the end of every
  command :class:`Attached` works out which devices should show (every bound loop device,
  every device-mapper device with a live table), and asks the namespace's init for what
  it cannot do itself;
- the namespace's init (thinsim/host/sandbox.py, :class:`Privileged`), which kept its
  capabilities, answers on the THINSIM_NODES socket: ``fuse`` mounts a FUSE file system for
  the asking process (identified by SO_PEERCRED, not by what it says) and hands it the
  /dev/fuse descriptor; ``attach`` binds a free loop device of the host (LOOP_CTL_GET_FREE,
  LOOP_CONFIGURE with the device's logical block size and direct I/O; the loop driver
  turns discards into hole punches by itself) to one of that process's files and makes the
  device's node in the private /dev with the loop device's numbers; ``detach`` lets go of
  one of those loop devices, and no other;
- the record: each run writes the loop devices it bound to RECORDS/<init's pid>.loops,
  flock'ed by its init for as long as the run lives.  The init detaches its loop devices
  when it ends; a run killed outright (SIGKILL: no handler runs) leaves its record
  unlocked, and :func:`sweep` (at the start of every ``thinsim run``, at its end and at
  ``thinsim host stop``) detaches each loop device such a record names, if it is still the
  one the run bound, and nothing else: its backing file (sysfs's loop/backing_file, which
  still answers once the FUSE connection is dead, where LOOP_GET_STATUS64 gets ENOTCONN)
  must be the file the record names, whose name has a random part of its run's.

Where the machine lacks something (not root in the initial user namespace, no /dev/fuse,
no fuse file system, no loop driver) or THINSIM_REAL_DEVICES=0, :func:`unavailable` says
what, and the nodes stay those of thinsim/host/devnodes.py (major 0: ENXIO).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as E
import fcntl
import os
import socket
import stat
import struct
import threading

# <linux/loop.h>
LOOP_MAJOR, MISC_MAJOR, LOOP_CTL_MINOR, FUSE_MINOR = 7, 10, 237, 229
LOOP_CLR_FD, LOOP_GET_STATUS64, LOOP_CONFIGURE, LOOP_CTL_GET_FREE = 0x4C01, 0x4C05, 0x4C0A, 0x4C82
LO_FLAGS_READ_ONLY, LO_FLAGS_DIRECT_IO = 1, 16
LOOP_INFO64 = struct.Struct("<QQQQQIIII64s64s32s2Q")
LOOP_CONFIG = struct.Struct("<II")  # fd, block_size; then a loop_info64 and 8 reserved u64
MNT_DETACH = 2
MS_NOSUID, MS_NODEV = 2, 4

RECORDS = "/run/thinsim/loops"
MARK = "thinsim:"  # lo_file_name of every loop device thinsim binds: thinsim:<init pid>:<file>
ENV = "THINSIM_REAL_DEVICES"  # "1" in a run that has them; "0: why" where it has not

_libc = ctypes.CDLL(None, use_errno=True)
FINISH_SECONDS = float(
    os.environ.get("THINSIM_FINISH_SECONDS", "60")
)  # how long the end of a run waits for its file systems' last flush


def unavailable() -> str | None:
    """What this machine lacks for real block devices (None: nothing).  Asked by the
    sandbox's init before it drops anything."""
    if os.environ.get(ENV, "").startswith("0"):
        return f"{ENV}=0"
    if os.geteuid() != 0:
        return "not root"
    with contextlib.suppress(OSError), open("/proc/self/uid_map") as f:
        if f.read().split() != ["0", "0", "4294967295"]:
            return "a user namespace (the loop driver needs root of the host)"
    for path, numbers, what in (
        ("/dev/fuse", (MISC_MAJOR, FUSE_MINOR), "/dev/fuse (the fuse module)"),
        ("/dev/loop-control", (MISC_MAJOR, LOOP_CTL_MINOR), "/dev/loop-control (the loop driver)"),
    ):
        try:
            st = os.stat(path)
        except OSError:
            return f"no {what}"
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != numbers:
            return f"no {what}"
    try:
        with open("/proc/filesystems") as f:
            if not any(line.split()[-1:] == ["fuse"] for line in f):
                return "no fuse file system in /proc/filesystems"
    except OSError:
        return "no /proc/filesystems"
    return None


def _check(result: int, what: str) -> int:
    if result < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return result


SYS_BLOCK = "/sys/devices/virtual/block"


def backing_name(sys_block: int, number: int) -> str | None:
    """The name of loop device NUMBER's backing file (None: not bound), from sysfs (SYS_BLOCK
    open as SYS_BLOCK: the run's /sys hides the host's loop devices)."""
    try:
        fd = os.open(f"loop{number}/loop/backing_file", os.O_RDONLY, dir_fd=sys_block)
    except OSError:
        return None
    try:
        text = os.read(fd, 8192).decode(errors="replace").rstrip("\n")
    except OSError:
        return None
    finally:
        os.close(fd)
    return os.path.basename(text.removesuffix(" (deleted)"))


def _clear_if(fd: int, sys_block: int, number: int, name: str) -> bool:
    """LOOP_CLR_FD on FD (loop device NUMBER) if its backing file is still NAME."""
    st = os.fstat(fd)
    if not stat.S_ISBLK(st.st_mode):
        return False
    if (os.major(st.st_rdev), os.minor(st.st_rdev)) != (LOOP_MAJOR, number):
        return False
    if backing_name(sys_block, number) != name:
        return False  # unbound since, or bound again by someone else
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as e:
        if e.errno != E.ENXIO:
            raise
    return True


# -- the init's side -----------------------------------------------------------------------


class Privileged:
    """What the namespace's init does for the host's processes (serve_nodes hands it the
    requests it does not know).  DEV is the private /dev, where it makes the nodes it
    opens (never left there: made, opened, unlinked) and those it is asked for."""

    def __init__(self, base: str, dev: str = "/dev") -> None:
        self.base = base  # folder of the FUSE mounts, one per process: BASE/<pid>
        self.dev = dev
        self.mounts: dict[int, str] = {}
        self.loops: dict[int, tuple[int, str]] = {}  # number -> owner, backing file's name
        self.sys_block = os.open(SYS_BLOCK, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.lock = threading.Lock()
        self.record_fd = -1
        self.record = ""
        self.serial = 0
        self.host_pid = str(os.getpid())

    def open_record(self) -> None:
        os.makedirs(RECORDS, mode=0o700, exist_ok=True)
        self.host_pid = os.readlink("/proc/self")  # the host's proc: not replaced yet
        self.record = os.path.join(RECORDS, f"{self.host_pid}.loops")
        self.record_fd = os.open(self.record, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.record_fd, fcntl.LOCK_EX)
        self._write_record()

    def _write_record(self) -> None:
        lines = "".join(f"{n} {name}\n" for n, (_, name) in sorted(self.loops.items()))
        os.ftruncate(self.record_fd, 0)
        os.pwrite(self.record_fd, lines.encode(), 0)

    def _open_node(self, kind: int, major: int, minor: int, flags: int) -> int:
        self.serial += 1
        path = os.path.join(self.dev, f".thinsim-node-{self.serial}")
        os.mknod(path, kind | 0o600, os.makedev(major, minor))
        try:
            return os.open(path, flags | os.O_CLOEXEC)
        finally:
            os.unlink(path)

    def handle(self, conn: socket.socket, words: list[str]) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        owner = struct.unpack("3i", creds)[0]
        with self.lock:
            try:
                if words[0] == "fuse":
                    fd = self.mount(owner)
                    try:
                        socket.send_fds(conn, [b"0"], [fd])
                    finally:
                        os.close(fd)
                    return
                if words[0] == "attach":
                    name, read_only, block_size, node = words[1], words[2] == "1", *words[3:5]
                    number = self.attach(owner, name, read_only, int(block_size), node)
                    conn.send(f"0 {number}".encode())
                    return
                if words[0] == "detach":
                    self.detach(int(words[1]), owner)
                    conn.send(b"0")
                    return
                conn.send(str(E.EINVAL).encode())
            except OSError as e:
                conn.send(f"{e.errno or E.EIO} {e}".encode())

    def mount(self, owner: int) -> int:
        """A FUSE file system for OWNER at BASE/OWNER; the /dev/fuse descriptor that serves
        it.  The mounts of processes that are gone go first, with their loop devices."""
        for pid in list(self.mounts):
            if pid == owner or not os.path.exists(f"/proc/{pid}"):
                self._drop(pid)
        fd = self._open_node(stat.S_IFCHR, MISC_MAJOR, FUSE_MINOR, os.O_RDWR)
        path = os.path.join(self.base, str(owner))
        try:
            os.makedirs(path, exist_ok=True)
            options = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other"
            _check(
                _libc.mount(
                    b"thinsim", os.fsencode(path), b"fuse.thinsim",
                    ctypes.c_ulong(MS_NOSUID | MS_NODEV), options.encode(),
                ),
                f"mount {path}",
            )  # fmt: skip
        except OSError:
            os.close(fd)
            raise
        self.mounts[owner] = path
        return fd

    def _drop(self, owner: int) -> None:
        for number, (who, *_) in list(self.loops.items()):
            if who == owner:
                with contextlib.suppress(OSError):
                    self.detach(number, owner)
        path = self.mounts.pop(owner, None)
        if path is not None:
            _libc.umount2(os.fsencode(path), MNT_DETACH)
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def attach(self, owner: int, name: str, read_only: bool, block_size: int, node: str) -> int:
        """Bind a free loop device of the host to OWNER's file NAME and make NODE (in /dev)
        a block node of it; its number."""
        if owner not in self.mounts or "/" in name or name in ("", ".", ".."):
            raise OSError(E.EINVAL, "no such file")
        folder, leaf = _node_path(self.dev, node)
        backing = os.open(
            os.path.join(self.mounts[owner], name),
            (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC,
        )
        try:
            control = self._open_node(stat.S_IFCHR, MISC_MAJOR, LOOP_CTL_MINOR, os.O_RDWR)
            try:
                number = self._configure(control, backing, read_only, block_size, owner, name)
            finally:
                os.close(control)
        finally:
            os.close(backing)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leaf, dir_fd=folder)
        os.mknod(leaf, stat.S_IFBLK | 0o660, os.makedev(LOOP_MAJOR, number), dir_fd=folder)
        os.close(folder)
        return number

    def _configure(self, control, backing, read_only: bool, size: int, owner: int, name: str):
        """LOOP_CONFIGURE of a free loop device, recorded first (a kill meanwhile leaves
        the record, which the sweep checks against the device)."""
        mark = f"{MARK}{self.host_pid}:{name}".encode()[:63]
        flags = LO_FLAGS_DIRECT_IO | (LO_FLAGS_READ_ONLY if read_only else 0)
        info = LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, mark, b"", b"", 0, 0)
        config = LOOP_CONFIG.pack(backing, size) + info + bytes(64)
        for _ in range(64):  # another process may take the free device first: EBUSY
            number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            fd = self._open_node(stat.S_IFBLK, LOOP_MAJOR, number, os.O_RDWR)
            self.loops[number] = (owner, name)
            self._write_record()
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, config)
            except OSError as e:
                del self.loops[number]
                self._write_record()
                if e.errno == E.EBUSY:
                    continue
                raise
            finally:
                os.close(fd)
            return number
        raise OSError(E.EBUSY, "no free loop device")

    def detach(self, number: int, owner: int | None = None) -> None:
        """LOOP_CLR_FD of loop device NUMBER, if it is one this init bound (for OWNER) and
        still the same (an open one is cleared at its last close: autoclear)."""
        entry = self.loops.get(number)
        if entry is None or (owner is not None and entry[0] != owner):
            raise OSError(E.EPERM, f"loop{number} is not thinsim's")
        fd = self._open_node(stat.S_IFBLK, LOOP_MAJOR, number, os.O_RDONLY)
        try:
            _clear_if(fd, self.sys_block, number, entry[1])
        finally:
            os.close(fd)
        del self.loops[number]
        self._write_record()

    # -- mount, umount, fstrim, mkfs.xfs of the script's, run with the init's capabilities --

    def tool(self, conn: socket.socket, words: list[str], fds: list[int]) -> None:
        """``tool NAME ARG...`` with the caller's working folder and standard streams: run
        the real mount, umount, fstrim or mkfs.xfs, if what it names is one of this init's devices
        or a file system on one (:func:`check_tool`); answer ``0 STATUS``."""
        try:
            cwd, streams = fds[0], fds[1:4]
            name, argv = words[1], words[2:]
            with self.lock:
                ours = {os.makedev(LOOP_MAJOR, n) for n in self.loops}
            try:
                argv = check_tool(name, argv, cwd, ours)
            except ValueError as e:
                os.write(streams[2], f"thinsim: {name}: {e}: refused\n".encode())
                conn.send(b"0 32" if name in ("mount", "umount") else b"0 1")
                return
            path = "/usr/sbin:/usr/bin:/sbin:/bin"
            import shutil
            import subprocess

            binary = shutil.which(name, path=path)
            if binary is None:
                conn.send(b"0 127")
                return
            proc = subprocess.Popen(
                [name, *argv],
                executable=binary,
                cwd=f"/proc/self/fd/{cwd}",
                stdin=streams[0],
                stdout=streams[1],
                stderr=streams[2],
                env={"PATH": path, "LC_ALL": "C.UTF-8"},
            )
            status = reaped(proc.pid)
            proc.returncode = status  # the init's main loop reaped it
            code = os.waitstatus_to_exitcode(status)
            conn.send(f"0 {code if code >= 0 else 128 - code}".encode())
        except OSError as e:
            conn.send(f"{e.errno or E.EIO} {e}".encode())
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _unmount_ours(self) -> None:
        """The file systems mounted on this run's devices, unmounted (last first)."""
        ours = {f"{LOOP_MAJOR}:{n}" for n in self.loops}
        for devno, target in reversed(_mounts()):
            if devno in ours and _libc.umount2(os.fsencode(target), 0) != 0:
                _libc.umount2(os.fsencode(target), MNT_DETACH)

    def finish(self, patience: float = FINISH_SECONDS) -> None:
        """The run ends: every loop device it bound is let go, its record removed.

        The unmounts flush file systems through the loop devices to the host's process,
        which serves them over FUSE; should it not answer (a deadlock in it, or a command
        that never lets the machine go), the run would never end and the processes in
        the flush would stay in D state for good.  So after PATIENCE seconds the run's
        FUSE connections are aborted (fusectl's ``abort``): their requests fail, the
        unmounts and detaches go on, and what was not flushed is lost, as on a pulled
        disk."""
        worker = threading.Thread(target=self._finish, daemon=True)
        worker.start()
        worker.join(patience)
        if worker.is_alive():
            self._abort_connections()
            worker.join(patience)

    def _abort_connections(self) -> None:
        """Abort every FUSE connection of this run's mounts, found by their device numbers
        in mountinfo (a stat of the mount would wait on the server too)."""
        points = set(self.mounts.values())
        minors = [devno.split(":")[1] for devno, point in _mounts() if point in points]
        control = os.path.join(self.base, ".fusectl")
        with contextlib.suppress(OSError):
            os.makedirs(control, exist_ok=True)
            _libc.mount(b"fusectl", os.fsencode(control), b"fusectl", ctypes.c_ulong(0), None)
        for minor in minors:
            with contextlib.suppress(OSError), open(f"{control}/{minor}/abort", "w") as f:
                f.write("1")

    def _finish(self) -> None:
        with self.lock:
            self._unmount_ours()
            for owner in list(self.mounts):
                self._drop(owner)
            for number in list(self.loops):
                with contextlib.suppress(OSError):
                    self.detach(number)
            if self.record_fd >= 0 and not self.loops:
                with contextlib.suppress(OSError):
                    os.unlink(self.record)


def _mounts() -> list[tuple[str, str]]:
    """This namespace's mounts in /proc/self/mountinfo's order: (MAJOR:MINOR of the
    mounted device, mount point)."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    fields = (line.split(" ") for line in lines)
    return [(f[2], _unescape(f[4])) for f in fields if len(f) > 4]


def _unescape(text: str) -> str:
    """A path of /proc/self/mountinfo (space, tab, newline, backslash as octal escapes)."""
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


#: the init's main loop reaps every child (orphans come to it): statuses of its own children
_reaped: dict[int, int] = {}
_reaped_changed = threading.Condition()


def child_ended(pid: int, status: int) -> None:
    """The init's main loop reaped PID."""
    with _reaped_changed:
        _reaped[pid] = status
        while len(_reaped) > 1000:  # orphans' statuses nobody asks for
            del _reaped[next(iter(_reaped))]
        _reaped_changed.notify_all()


def reaped(pid: int) -> int:
    with _reaped_changed:
        while pid not in _reaped:
            _reaped_changed.wait()
        return _reaped.pop(pid)


FILE_SYSTEMS = ("auto", "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat")
# what would make a mount reach past the run's devices, or the run's own mounts
FORBIDDEN = ("bind", "move", "remount", "make-", "propagation", "x-", "helper", "loop",
             "offset", "sizelimit", "source", "target", "fstab", "owner", "user", "dev", "suid")  # fmt: skip
VALUE_OPTIONS = {
    "mount": {"-t": "type", "--types": "type", "-o": "opts", "--options": "opts"},
    "umount": {},
    "fstrim": {"-o": "", "--offset": "", "-l": "", "--length": "", "-m": "", "--minimum": ""},
    # mkfs.xfs sets the device's block size (BLKBSZSET, which needs CAP_SYS_ADMIN) and
    # gives up without it: the init runs it.  Sub-options are checked (XFS_FORBIDDEN).
    "mkfs.xfs": {o: "xfs" for o in ("-b", "-d", "-i", "-l", "-m", "-n", "-r", "-s", "-L")},
}
FLAG_OPTIONS = {
    "mount": {"-r": "ro", "--read-only": "ro", "-w": "rw", "--rw": "rw", "-v": "", "-n": ""},
    "umount": {"-v": "", "-l": "", "--lazy": "", "-f": "", "--force": "", "-n": ""},
    "fstrim": {"-v": "", "--verbose": ""},
    "mkfs.xfs": {"-f": "", "-q": "", "-K": "", "-N": ""},
}
# mkfs.xfs sub-options that name another file or device (a log, realtime or data device, a
# file instead of the device): the init would open them with its capabilities
XFS_FORBIDDEN = ("name", "file", "logdev", "rtdev")


def check_tool(name: str, argv: list[str], cwd: int, ours: set[int]) -> list[str]:
    """The argv the init runs NAME with, or ValueError (why it is refused): ``mount
    [-t TYPE] [-o OPTIONS] [-r|-w] DEVICE DIR`` of one of OURS (devices), always nodev and
    nosuid (a file system a script made may hold device nodes and setuid files);
    ``umount TARGET`` and ``fstrim [-v] DIR`` of a file system on one of OURS; ``mkfs.xfs
    [OPTION]... DEVICE`` of one of OURS, with no option naming another file or device."""
    if name not in VALUE_OPTIONS:
        raise ValueError("not a tool the run's init runs")
    fstype, options, flags, positional = None, [], [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        key, _, inline = a.partition("=") if a.startswith("--") else (a[:2], "", a[2:])
        if a.startswith("-") and key in VALUE_OPTIONS[name]:
            if not inline:
                i += 1
                if i == len(argv):
                    raise ValueError(f"option {a} needs a value")
                inline = argv[i]
            what = VALUE_OPTIONS[name][key]
            if what == "xfs":
                for sub in inline.split(","):
                    if key == "-L":
                        break
                    if sub.partition("=")[0].strip() in XFS_FORBIDDEN:
                        raise ValueError(f"option {a} {sub} is not simulated")
                flags += [key, inline]
            elif what == "type":
                fstype = inline
            elif what == "opts":
                options += inline.split(",")
            else:
                flags += [key, inline]
        elif a.startswith("-") and a in FLAG_OPTIONS[name]:
            if FLAG_OPTIONS[name][a]:
                options.append(FLAG_OPTIONS[name][a])
            else:
                flags.append(a)
        elif a.startswith("-") and a != "-":
            raise ValueError(f"option {a} is not simulated")
        else:
            positional.append(a)
        i += 1

    def resolve(path: str) -> str:
        return path if path.startswith("/") else f"/proc/self/fd/{cwd}/{path}"

    def device_of(path: str) -> int | None:
        st = os.stat(resolve(path))
        if stat.S_ISBLK(st.st_mode):
            return st.st_rdev if st.st_rdev in ours else None
        return st.st_dev if st.st_dev in ours else None

    try:
        if name == "mount":
            if len(positional) != 2:
                raise ValueError("give a simulated device and a folder")
            if (
                not stat.S_ISBLK(os.stat(resolve(positional[0])).st_mode)
                or device_of(positional[0]) is None
            ):
                raise ValueError(f"{positional[0]} is not a simulated device")
            if not stat.S_ISDIR(os.stat(resolve(positional[1])).st_mode):
                raise ValueError(f"{positional[1]} is not a folder")
            if fstype is not None and fstype not in FILE_SYSTEMS:
                raise ValueError(f"file system type {fstype} is not simulated")
            for option in options:
                if any(word in option.lower() for word in FORBIDDEN):
                    raise ValueError(f"mount option {option} is not simulated")
            options = [o for o in options if o] + ["nodev", "nosuid"]
            out = flags + (["-t", fstype] if fstype else []) + ["-o", ",".join(options)]
            return [*out, *positional]
        if name.startswith("mkfs"):
            if len(positional) != 1 or not stat.S_ISBLK(os.stat(resolve(positional[0])).st_mode):
                raise ValueError("give one simulated device")
            if device_of(positional[0]) is None:
                raise ValueError(f"{positional[0]} is not a simulated device")
            return [*flags, *positional]
        if len(positional) != 1 or device_of(positional[0]) is None:
            raise ValueError(f"{' '.join(positional) or 'no target'}: not a file system on a "
                             "simulated device")  # fmt: skip
        return [*flags, *positional]
    except OSError as e:
        raise ValueError(f"{e.filename or ''}: {e.strerror}") from None


def _node_path(dev: str, node: str) -> tuple[int, str]:
    """The folder (a descriptor) and name of NODE, which must be /dev/NAME."""
    parts = node.split("/")
    if parts[:2] != ["", "dev"] or len(parts) != 3 or parts[2] in ("", ".", ".."):
        raise OSError(E.EINVAL, f"{node}: not a node of /dev")
    return os.open(dev, os.O_PATH | os.O_DIRECTORY), parts[2]


# -- what a killed run left ----------------------------------------------------------------


def sweep(records: str = RECORDS, dev: str = "/dev", sys_block: str = SYS_BLOCK) -> list[int]:
    """Detach the loop devices that dead runs bound (their records are not locked), each
    only if it is still what the run bound; remove the records.  The loop devices
    detached."""
    done: list[int] = []
    try:
        names = sorted(os.listdir(records))
        sys_fd = os.open(sys_block, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return done
    for name in names:
        if not name.endswith(".loops"):
            continue
        path = os.path.join(records, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its run is alive
            with os.fdopen(os.dup(fd)) as f:
                lines = f.read().splitlines()
            for line in lines:
                with contextlib.suppress(ValueError, OSError):
                    number, name = line.split(" ", 1)
                    loop = os.open(f"{dev}/loop{int(number)}", os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        if _clear_if(loop, sys_fd, int(number), name):
                            done.append(int(number))
                    finally:
                        os.close(loop)
            with contextlib.suppress(OSError):
                os.unlink(path)
        finally:
            os.close(fd)
    os.close(sys_fd)
    return done


# -- the host's process's side -------------------------------------------------------------


# what the init runs for a script (Privileged.tool)
TOOLS = ("mount", "umount", "fstrim", "mkfs.xfs")


def run_tool(name: str, argv: list[str], cwd: int, std: dict) -> str:
    """Have the init run NAME (one of TOOLS) with the command's working folder and
    streams: the command's ending (``E<status>``)."""
    fds = [cwd]
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        fds += [std[fd] if std.get(fd) is not None else null for fd in (0, 1, 2)]
        address = os.environ["THINSIM_NODES"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(address)
            payload = "\0".join(["tool", name, *argv]).encode(errors="surrogateescape")
            socket.send_fds(s, [payload], fds)
            reply = s.recv(4096).decode(errors="replace")
    finally:
        os.close(null)
    code, _, rest = reply.partition(" ")
    if code != "0":
        os.write(fds[3], f"thinsim: {name}: {rest or reply}\n".encode())
        return "E1"
    return f"E{int(rest)}"


def _ask(words: str, fds: bool = False) -> tuple[str, list[int]]:
    address = os.environ.get("THINSIM_NODES")
    if address is None:
        raise OSError(E.ENOENT, "no THINSIM_NODES")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(address)
        s.send(words.encode())
        if fds:
            reply, got, _, _ = socket.recv_fds(s, 4096, 1)
        else:
            reply, got = s.recv(4096), []
    text = reply.decode(errors="replace")
    code, _, rest = text.partition(" ")
    if code != "0":
        for fd in got:
            os.close(fd)
        raise OSError(int(code) if code.isdigit() else E.EIO, rest or text)
    return rest, got


def enabled() -> bool:
    return os.environ.get(ENV) == "1" and os.environ.get("THINSIM_SERVER") != "0"


#: the host's process's Attached, once it serves real devices (server_main sets it)
current: Attached | None = None


class Attached:
    """The host's process's real devices: its FUSE session and, per simulated device
    (``loopN``, ``dm-N``), the loop device of the host bound to its file."""

    def __init__(self, io) -> None:
        self.io = io  # FuseSession's io: (key, op, offset, arg)
        self.session = None
        self.failed: str | None = None
        self.devices: dict[str, tuple[int, tuple, str]] = {}  # key -> loop, spec, file name
        self.serial = 0
        # in every file's name: a record of a dead run names files no other program has
        self.token = os.urandom(6).hex()

    def opens(self, dev) -> int:
        """1 when a program claims DEV's real device (a mounted file system: an O_EXCL open
        fails with EBUSY), so that dmsetup remove says it is busy, as dm_open_count would;
        other opens of the node are not seen."""
        key = f"loop{dev.number}" if hasattr(dev, "number") else f"dm-{dev.minor}"
        if key not in self.devices:
            return 0
        try:
            os.close(os.open(_node_of(key), os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC))
        except OSError as e:
            return 1 if e.errno == E.EBUSY else 0
        return 0

    def nodes(self) -> dict[str, int]:
        """The nodes of /dev that are real now: path -> loop device number."""
        return {_node_of(key): number for key, (number, _, _) in self.devices.items()}

    def sync(self, state) -> None:
        """Bind a loop device to every device that should have one, let go of those of
        devices gone or changed (another size, block size or mode: a new file and loop)."""
        if self.failed is not None:
            return
        from .fuse import File, FuseSession

        want = wanted(state)
        if self.session is None:
            if not want:
                return
            try:
                _, fds = _ask("fuse", fds=True)
            except OSError as e:
                self.failed = str(e)
                return
            self.session = FuseSession(fds[0], lambda name, *a: self.io(name.split(".")[0], *a))
            self.session.start()
        for key, (number, spec, _) in list(self.devices.items()):
            if want.get(key) != spec:
                with contextlib.suppress(OSError):
                    _ask(f"detach {number}")
                del self.devices[key]
        files = {}
        for key, spec in want.items():
            if key in self.devices:
                files[self.devices[key][2]] = File(spec[0], spec[1])
        new = {}
        for key, spec in want.items():
            if key not in self.devices:
                self.serial += 1
                new[key] = f"{key}.{self.token}.{self.serial}"
                files[new[key]] = File(spec[0], spec[1])
        self.session.set_files(files)
        for key, name in new.items():
            _, read_only, block_size = want[key]
            try:
                reply, _ = _ask(f"attach {name} {int(read_only)} {block_size} {_node_of(key)}")
            except OSError:
                continue  # the node stays major 0
            self.devices[key] = (int(reply), want[key], name)
            self.session.attached(name)


def _node_of(key: str) -> str:
    return f"/dev/{key}"


def wanted(state) -> dict[str, tuple[int, bool, int]]:
    """The devices that show as real block devices: key -> (size, read-only, block size)."""
    from ..model.blockio import read_only
    from ..model.devices import device_size

    out = {}
    for n, loop in state.loops.items():
        if loop.backing_file and loop.size > 0:
            out[f"loop{n}"] = (loop.size, read_only(loop), getattr(loop, "block_size", 512))
    for d in state.dm.values():
        if d.disk_added and d.live:
            size = device_size(state, d)
            if size > 0:
                out[f"dm-{d.minor}"] = (size, read_only(d), 512)
    return out
