"""The simulated host's sandbox: what ``thinsim run`` puts around a script so that nothing in
it, run as root, reaches or shows the real host's block devices.

``thinsim run`` (thinsim/host/run.py) starts this module's :func:`main` as the first process
of a new PID and mount namespace (``unshare --mount --pid --fork --kill-child``).  As that
namespace's init it sets the namespace up, still with every capability:

- ``/proc``: its own proc for the new PID namespace (no host process is visible, so no
  ``/proc/PID/root`` or ``nsenter -t PID`` leads back to the host); ``/proc/partitions`` and
  ``/proc/diskstats`` show the simulated devices (thinsim/host/sysfs.py keeps them); the
  kernel's knobs (``/proc/sys``, ``/proc/sysrq-trigger``, ``/proc/irq``, ``/proc/bus``,
  ``/proc/fs``) are read-only and ``/proc/kcore``, ``/proc/keys``, ``/proc/scsi`` ... hidden,
  as container runtimes do;
- ``/dev``: a tmpfs with only harmless nodes (null, zero, random, tty ...), a devpts
  instance of its own (``/dev/ptmx`` links to it), a private ``/dev/shm``, and the simulated
  devices' nodes (thinsim/host/devnodes.py), all of major 0;
- ``/sys``: read-only everywhere, with a tmpfs of the simulated devices over each folder
  that names block devices (thinsim/host/sysfs.py) and an empty one over the host's own
  disks' folders, ``/sys/firmware`` and ``/sys/kernel/debug``;
- every other mount: ``nodev``, so that no device node anywhere else opens;
- ``/dev/.thinsim``: a tmpfs of the run's own (the shims, the default host's state, the
  sources of the /proc views), gone with the namespace, so a killed run leaves no folder.

Then it starts bash without the capabilities that reach devices or change mounts (only
:data:`KEEP` remain, in the bounding set too, and no new privileges), waits for it, and makes
the device nodes the simulated commands ask for (:func:`serve_nodes`: they can no longer
``mknod``, and the nodes are major 0, which no driver has).  When bash exits, this init
exits and the kernel kills whatever the script left running.  Run anywhere else,
:func:`main` refuses.

Where the machine allows it, the init also binds real loop devices of the host to the
simulated devices' FUSE files, makes their nodes, and runs mount, umount, fstrim and mkfs.xfs on them
for the script (thinsim/host/realdev.py: only its own loop devices, detached when it ends).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading

from . import realdev

# <linux/mount.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC = 1, 2, 4, 8, 4096, 16384
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NODEV = 0x1, 0x4
AT_RECURSIVE = 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (asm-generic, x86)
# <linux/prctl.h>
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# The capabilities a script keeps (<linux/capability.h> numbers): what root needs for files,
# processes and users (Docker's default set less CAP_MKNOD, which its device cgroup makes
# harmless and nothing here would).  Gone, among others: CAP_SYS_ADMIN (mount, setns, so no
# nsenter), CAP_MKNOD, CAP_SYS_RAWIO (/proc/kcore, ioports), CAP_SYS_MODULE,
# CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH (open_by_handle_at reaches past mounts), CAP_SYS_BOOT,
# CAP_SYSLOG, CAP_NET_ADMIN.
KEEP = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}

RUN = "/dev/.thinsim"  # the run's own tmpfs
SHIMS = f"{RUN}/bin"
DEFAULT_HOST = f"{RUN}/host"
PROC_VIEWS = f"{RUN}/proc"  # sources of /proc/partitions and /proc/diskstats
NODES = f"{RUN}/nodes"  # the socket serve_nodes answers on

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
# what the kernel's /proc shows of the hardware and lets root change, as runc hides it
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
PROC_HIDDEN_FILES = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats")
PROC_HIDDEN_FOLDERS = ("acpi", "scsi")
SYS_HIDDEN = ("firmware", "kernel/debug", "kernel/tracing")
SYSFS_SOURCE = "thinsim-sys"  # sysfs.SOURCE

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns")]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]


def _check(result: int, what: str) -> None:
    if result != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(source: str, target: str, fstype: str | None = None, flags: int = 0, data=None):
    def enc(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    _check(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {target}",
    )


def set_attr(path: str, add: int = 0, clear: int = 0, recursive: bool = False) -> None:
    """mount_setattr(2): change the flags of the mount on PATH (and those under it) alone."""
    attr = _MountAttr(add, clear, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    result = _libc.syscall(
        SYS_MOUNT_SETATTR, -100, os.fsencode(path), flags, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(result, f"mount_setattr {path}")


def _tmpfs(target: str, options: str, flags: int = MS_NOSUID | MS_NODEV) -> None:
    # sysfs.py writes only where /proc/self/mountinfo shows its source name
    source = SYSFS_SOURCE if target.startswith("/sys/") else "thinsim"
    mount(source, target, "tmpfs", flags, options)


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


def die_with_parent(sig: int = signal.SIGKILL):
    """A preexec_fn: the child gets SIG when the process that starts it dies (SIGKILL
    included), so a killed ``thinsim run`` or ``thinsim diff`` takes its run with it."""
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), sig)

    return preexec


def drop_privileges(last: int) -> None:
    """Keep only KEEP, in every capability set (LAST is the kernel's highest capability), and
    forbid new privileges (setuid files, file capabilities) for this process and what it
    starts: the script's preexec_fn."""
    keep = sum(1 << c for c in KEEP.values())
    for cap in range(last + 1):
        if not keep >> cap & 1:
            prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    for i in (0, 1):
        mask = keep >> (32 * i) & 0xFFFFFFFF
        data[i].permitted &= mask
        data[i].effective &= mask
        data[i].inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def _host_disk_folders() -> list[str]:
    """The sysfs folders that hold the host's own disks (``.../virtio1/block`` holds vda and
    its partitions); loop and dm devices live in devices/virtual/block, hidden anyway."""
    folders = set()
    try:
        names = os.listdir("/sys/class/block")
    except OSError:
        return []
    for name in names:
        path = os.path.realpath(os.path.join("/sys/class/block", name))
        while path != "/sys" and os.path.basename(os.path.dirname(path)) != "block":
            path = os.path.dirname(path)
        folder = os.path.dirname(path)
        if path != "/sys" and folder != "/sys/devices/virtual/block":
            folders.add(folder)
    return sorted(folders)


def _dev(dev_fd: int) -> None:
    """The private /dev, as a Debian host's looks: harmless nodes as on the host (made again
    where root may, bound from the host's /dev in a user namespace), a devpts of the run's
    own, a private /dev/shm, the links udev and systemd make, and the run's own folder.
    Sized as the kernel sizes devtmpfs and a default tmpfs: half of RAM."""
    mount("udev", "/dev", "tmpfs", MS_NOSUID, "mode=755")
    for name in DEV_NODES:
        real = f"/proc/self/fd/{dev_fd}/{name}"
        try:
            st = os.stat(real)
        except OSError:
            continue
        path = f"/dev/{name}"
        try:
            os.mknod(path, st.st_mode, st.st_rdev)
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, stat.S_IMODE(st.st_mode))  # past the umask
        except PermissionError:
            open(path, "w").close()
            mount(real, path, None, MS_BIND)
            set_attr(path, clear=MOUNT_ATTR_NODEV)
    _devpts()
    os.mkdir("/dev/shm")
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for link, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ):
        os.symlink(target, f"/dev/{link}")
    os.mkdir("/dev/mapper")
    os.mkdir(RUN)
    mount("thinsim-run", RUN, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    os.mkdir(PROC_VIEWS)
    os.mkdir(f"{RUN}/fuse")  # the host's processes' FUSE mounts (realdev.Privileged)


def _devpts() -> None:
    """A devpts instance of the run's own (``newinstance``, as container runtimes mount it),
    reached through the /dev/ptmx link: openpty, script and ssh-like programs get
    terminals there, numbered from 0, and the host's terminals stay out of sight.  Debian's
    options (gid=5 the tty group, mode=620), but ptmxmode=666, since /dev/ptmx is the
    instance's own ptmx node."""
    os.mkdir("/dev/pts")
    options = "newinstance,ptmxmode=0666,mode=0620"
    try:
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, f"{options},gid=5")
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        # a user namespace that maps no tty group (thinsim run as non-root)
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, options)


def _sys() -> None:
    """/sys read-only, the simulated block devices' folders over the real ones, the host's
    disks and firmware hidden."""
    hidden = _host_disk_folders()
    set_attr("/sys", add=MOUNT_ATTR_RDONLY, recursive=True)
    from .sysfs import PRIVATE

    for folder in PRIVATE:
        if os.path.isdir(f"/sys/{folder}"):
            _tmpfs(f"/sys/{folder}", "mode=755,size=4m", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for folder in hidden + [f"/sys/{f}" for f in SYS_HIDDEN]:
        if os.path.isdir(folder):
            _tmpfs(folder, "mode=755,size=4k", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _proc() -> None:
    """A proc of the new PID namespace, with the knobs read-only, the hardware hidden and
    the block devices' lists the simulated host's."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READ_ONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            mount(path, path, None, MS_BIND | MS_REC)
            set_attr(path, add=MOUNT_ATTR_RDONLY, recursive=True)
    for name in PROC_HIDDEN_FILES:
        if os.path.isfile(f"/proc/{name}"):
            mount("/dev/null", f"/proc/{name}", None, MS_BIND)
    for name in PROC_HIDDEN_FOLDERS:
        if os.path.isdir(f"/proc/{name}"):
            _tmpfs(f"/proc/{name}", "mode=555,size=4k", MS_RDONLY | MS_NOSUID | MS_NODEV)
    from .sysfs import PROC_FILES

    for name in PROC_FILES:
        source = os.path.join(PROC_VIEWS, name)
        open(source, "w").close()
        mount(source, f"/proc/{name}", None, MS_BIND)
        set_attr(f"/proc/{name}", add=MOUNT_ATTR_RDONLY)


def set_up(workdir: tuple[str, str] | None) -> dict[str, str]:
    """Make the namespace's mounts; return the environment the script runs with."""
    os.umask(0o022)
    real = _real_devices()  # what it needs is the host's /dev and /proc: before they go
    dev_fd = os.open("/dev", os.O_PATH | os.O_DIRECTORY)
    # nodev first, on every mount there is: the ones made below choose their own
    set_attr("/", add=MOUNT_ATTR_NODEV, recursive=True)
    _sys()
    _dev(dev_fd)  # before /proc is replaced: the host's /dev is reached through dev_fd
    os.close(dev_fd)
    _proc()
    env = dict(os.environ)
    env.setdefault("THINSIM_HOST", DEFAULT_HOST)
    env[realdev.ENV] = real
    env.update(
        THINSIM_PRIVATE_DEV="/dev",
        THINSIM_PRIVATE_SYS="/sys",
        THINSIM_PRIVATE_PROC=PROC_VIEWS,
        THINSIM_NODES=NODES,
        THINSIM_SHIMS=SHIMS,
        THINSIM_PYTHON=sys.executable,
        PATH=f"{SHIMS}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    os.environ.update(env)
    from . import devnodes
    from .shims import make_shims

    make_shims(SHIMS)
    # the nodes and /sys, /proc views of a host that has devices already
    global _start_host
    _start_host = devnodes.sync_host() and real == "1"
    if workdir is not None:
        source, target = workdir
        os.makedirs(target, exist_ok=True)
        mount(source, target, None, MS_BIND)
        os.chdir(os.path.join(target, "work"))
    return env


_privileged: realdev.Privileged | None = None  # the real devices' side, where the run has them
# A host that has devices already (thinsim run --host): their nodes are real block devices
# only once the host's process serves them, which the first command starts.  The script
# finds them real from its first line: a command that does nothing (udevadm settle) starts
# the process before the script runs, silently (what it could say, such as a state it
# cannot save, the script's own first command says again).
_start_host = False
START_HOST = ("/bin/sh", "-c", 'udevadm settle >/dev/null 2>&1; exec "$@"', "sh")


def _real_devices() -> str:
    """THINSIM_REAL_DEVICES for the script: "1" where the machine has what real block
    devices need (thinsim/host/realdev.py), else "0: what it lacks"."""
    global _privileged
    why = realdev.unavailable()
    if why is None:
        try:
            privileged = realdev.Privileged(f"{RUN}/fuse")
            privileged.open_record()
        except OSError as exc:
            why = f"cannot record its loop devices in {realdev.RECORDS}: {exc.strerror}"
        else:
            _privileged = privileged
            _at_exit.append(privileged.finish)
            return "1"
    return f"0: {why}"


def serve_nodes(listener: socket.socket) -> None:
    """Make the nodes the simulated commands ask for (devnodes.request_node): only major 0,
    only in /dev and /dev/mapper, so a script asking too gets nothing it could not see.
    The real devices' requests (fuse, attach, detach) go to realdev.Privileged, which
    serves only the loop devices it bound itself."""
    dev = os.open("/dev", os.O_PATH | os.O_DIRECTORY)
    while True:
        try:
            conn, _ = listener.accept()
            with conn:
                head, fds, _, _ = socket.recv_fds(conn, 1 << 16, 4)
                request = head.decode()
                if request.startswith("tool\0"):  # the script's mount, umount, fstrim, mkfs.xfs
                    if _privileged is None:
                        for fd in fds:
                            os.close(fd)
                        conn.send(f"{errno.ENODEV} no real devices in this run".encode())
                        continue
                    # in a thread of its own: the tool's I/O may wait for other requests
                    threading.Thread(
                        target=_tool, args=(conn.dup(), request.split("\0"), fds), daemon=True
                    ).start()
                    continue
                for fd in fds:
                    os.close(fd)
                words = request.split(" ")
                if words[0] in ("fuse", "attach", "detach"):
                    if _privileged is None:
                        conn.send(f"{errno.ENODEV} no real devices in this run".encode())
                    else:
                        _privileged.handle(conn, words)
                    continue
                kind, minor, path = request.split(" ", 2)
                conn.send(str(_make_node(dev, kind, int(minor), path)).encode())
        except (OSError, ValueError, UnicodeError):
            pass  # a request that makes no sense gets no answer


def _tool(conn: socket.socket, words: list[str], fds: list[int]) -> None:
    with conn:
        _privileged.tool(conn, words, fds)


def _make_node(dev: int, kind: str, minor: int, path: str) -> int:
    parts = path.split("/")
    if (
        kind not in ("b", "c")
        or not 0 <= minor < 1 << 20
        or parts[:2] != ["", "dev"]
        or len(parts) not in (3, 4)
        or (len(parts) == 4 and parts[2] != "mapper")
        or parts[-1] in ("", ".", "..")
        or "\0" in path
    ):
        return errno.EINVAL
    mode = (stat.S_IFBLK if kind == "b" else stat.S_IFCHR) | 0o660
    folder = dev
    try:
        if len(parts) == 4:
            folder = os.open("mapper", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dev)
        try:
            os.mknod(parts[-1], mode, os.makedev(0, minor), dir_fd=folder)
        finally:
            if folder != dev:
                os.close(folder)
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


def named_fds(argv: list[str]) -> list[int]:
    """The descriptors of this process that ARGV names as ``/dev/fd/N`` or
    ``/proc/self/fd/N`` (bash's process substitution: ``thinsim run <(echo 'dmsetup ls')``
    runs ``bash /dev/fd/63``).  They must reach the script under their numbers, as they would
    without thinsim run, where a child inherits them (subprocess closes all others)."""
    fds = set()
    for arg in argv:
        m = re.fullmatch(r"/(?:dev|proc/self)/fd/([0-9]{1,9})", arg)
        if m is not None and int(m.group(1)) > 2:
            try:
                os.fstat(int(m.group(1)))
            except OSError:
                continue  # not open here: bash says so, as it would
            fds.add(int(m.group(1)))
    return sorted(fds)


def main(argv: list[str] | None = None) -> int:
    """``sandbox.py REPORT_FD [--workdir SOURCE TARGET] [--pass-fds N,...] -- COMMAND...``:
    set up, report ``pid N`` (this process outside the namespace) and ``ready`` on REPORT_FD
    (or ``error: WHY`` and exit 125), run COMMAND with the descriptors N... open, exit with
    its status (128+N when killed by signal N)."""
    argv = sys.argv[1:] if argv is None else argv
    report = os.fdopen(int(argv[0]), "w", buffering=1)
    options, command = argv[1 : argv.index("--")], argv[argv.index("--") + 1 :]
    workdir, fds = None, []
    while options:
        if options[0] == "--workdir":
            workdir, options = (options[1], options[2]), options[3:]
        else:  # --pass-fds
            fds, options = [int(fd) for fd in options[1].split(",")], options[2:]
    # an init ignores the signals it has no handler for; the tty's ^C is the script's.
    # SIGTERM (thinsim run ending the run, set-up included) ends the namespace: exiting
    # kills all in it.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: _exit(128 + signal.SIGTERM))
    if os.getpid() != 1:
        _say(report, "error: not the init of a new PID namespace")
        return 125
    _say(report, f"pid {os.readlink('/proc/self')}")  # the host's proc, not replaced yet
    try:
        env = set_up(workdir)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(NODES)
        listener.listen(16)
    except Exception as exc:  # noqa: BLE001 (whatever failed, the run goes on without)
        _say(report, f"error: {exc}")
        return 125
    _say(report, "ready")
    report.close()
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    # no thread yet: serve_nodes starts once the script's process exists
    drop = functools.partial(drop_privileges, last_cap)
    if _start_host:
        command = [*START_HOST, *command]
    terminal = _Terminal.open()
    if terminal is None:
        script = subprocess.Popen(command, env=env, preexec_fn=drop, pass_fds=fds)  # noqa: PLW1509
    else:
        script = terminal.start(command, env, drop, fds)
    for fd in fds:  # the script's now: a pipe's reader sees its end when the script is done
        os.close(fd)
    threading.Thread(target=serve_nodes, args=(listener,), daemon=True).start()
    while True:  # reap everything (orphans come to init) until the script is done
        pid, status = os.wait()
        if pid == script.pid:
            code = os.waitstatus_to_exitcode(status)
            _exit(code if code >= 0 else 128 - code)
        realdev.child_ended(pid, status)  # a tool it runs for the script waits for it


_at_exit: list = []  # what the init undoes before it ends (the user's terminal mode)


def _exit(code: int) -> None:
    for undo in _at_exit:
        undo()
    os._exit(code)


class _Terminal:
    """A terminal of the run's devpts for a script run from a terminal (``thinsim shell``),
    as ``docker run -t`` gives one: the host's terminals are not in the run's /dev/pts, so
    the script's own would have no name there (``tty`` would say "not a tty").  The init
    copies bytes both ways with the user's terminal in raw mode (^C, ^Z and the line
    discipline are the inner terminal's), passes on its size (SIGWINCH), and puts the
    user's terminal back as it was when the run ends."""

    def __init__(self, master: int, slave: int, saved: list) -> None:
        self.master, self.slave, self.saved = master, slave, saved
        self.output: threading.Thread | None = None

    @classmethod
    def open(cls) -> _Terminal | None:
        """One when stdin and stdout are the same terminal (an interactive run)."""
        import termios

        try:
            if not (os.isatty(0) and os.isatty(1)):
                return None
            if os.fstat(0).st_rdev != os.fstat(1).st_rdev:
                return None
            saved = termios.tcgetattr(0)
            master, slave = os.openpty()  # /dev/ptmx: the run's own devpts
            termios.tcsetattr(slave, termios.TCSANOW, saved)
            _copy_size(0, slave)
        except (OSError, termios.error):
            return None
        return cls(master, slave, saved)

    def start(self, command: list[str], env: dict[str, str], drop, fds: list[int]):
        import fcntl
        import termios
        import tty

        stderr = self.slave if os.isatty(2) and os.fstat(2).st_rdev == os.fstat(0).st_rdev else None

        def preexec() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # after setsid: the script's session's
            drop()

        script = subprocess.Popen(
            command,
            env=env,
            stdin=self.slave,
            stdout=self.slave,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 (no thread yet)
            pass_fds=fds,
        )
        os.close(self.slave)
        _at_exit.append(self.finish)
        tty.setraw(0)
        signal.signal(signal.SIGWINCH, lambda *_: _copy_size(0, self.master))
        threading.Thread(target=_copy, args=(0, self.master), daemon=True).start()
        self.output = threading.Thread(target=_copy, args=(self.master, 1), daemon=True)
        self.output.start()
        return script

    def finish(self) -> None:
        """The script's last output shown, the user's terminal as it was."""
        import termios

        if self.output is not None:
            self.output.join(timeout=1)
        try:
            termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
        except (OSError, termios.error):
            pass


def _copy(source: int, target: int) -> None:
    while True:
        try:
            data = os.read(source, 65536)
        except OSError:  # EIO: the inner terminal has no process left
            return
        if not data:
            return
        while data:
            try:
                data = data[os.write(target, data) :]
            except OSError:
                return


def _copy_size(source: int, target: int) -> None:
    import fcntl
    import termios

    try:
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _say(report, line: str) -> None:
    """A line to thinsim run; if it stopped listening (it is ending the run), the init ends
    quietly, and the namespace with it."""
    try:
        report.write(line + "\n")
    except OSError:
        _exit(125)


if __name__ == "__main__":
    sys.exit(main())
