"""The kernel backend: the interface done for real, with sparse backing files, loop devices,
``dmsetup`` and O_DIRECT I/O on the thin devices.

It needs root and a kernel with dm-thin (``thin-pool`` in ``dmsetup targets``); where either is
missing, :class:`KernelPool` raises :class:`KernelUnavailableError` saying which, and how to get
a VM that has both (``thinsim vm -- COMMAND``).

Care for the host:

- It only touches devices it made.  Each pool draws a random token; its dm devices are named
  ``thinsim-<token>-pool`` / ``-thin<ID>`` with UUID ``THINSIM-<token>-...``, its backing files
  live in a fresh folder ``thinsim-<token>`` under ``workdir``.
- Everything is written to a ledger before it is made (:mod:`thinsim.backends.ledger`).
  :meth:`KernelPool.close` tears it all down; so does a failure while the pool is being made,
  interpreter exit (``atexit``), and SIGTERM/SIGHUP (turned into ``SystemExit`` when nobody
  else handles them; SIGINT already raises ``KeyboardInterrupt``).  A run killed outright
  (SIGKILL) is cleaned up by the next kernel pool made on the host, or by
  ``python -m thinsim.backends.kernel --recover``: the recovery path is the ledger.
- Removes are retried while udev still holds a new device open.
- Backing files that already exist are refused unless ``adopt_files=True``; adopted files
  are never deleted.  A loop device is detached, and a file deleted, only when it is proven
  to be on the very file this pool made or adopted (device, inode and file handle, written
  down before the attach), never because a path matches.

Determinism: I/O is issued one request per pool data block, in ascending order, one at a
time, so the kernel allocates blocks in the order the model does (the scenario executor,
thinsim/executor.py, splits its I/O the same way before it reaches a thin).

:class:`KernelMachine` is the scenario's machine (:class:`thinsim.interface.Machine`): pools
made from a table's words, the kernel log read from ``/dev/kmsg``, dm_thin_pool's
``no_space_timeout``.  It expects a machine as just booted (no loop or dm device), so that
the metadata file gets loop0, the data file loop1 and the pool dm minor 0: run it in the VM.
"""

from __future__ import annotations

import atexit
import contextlib
import errno as E
import fcntl
import logging
import mmap
import os
import secrets
import signal
import struct
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

from .. import interface
from ..constants import MAX_REQUEST
from ..constants import SECTOR_SIZE as SECTOR
from ..errors import (
    DeviceIOError,
    ExistsError,
    InvalidArgumentError,
    NoDeviceError,
    ThinsimError,
    error_for,
    with_kernel_log,
)
from .dmtools import (
    VM_HINT,
    CommandError,
    KernelUnavailableError,
    dmsetup,
    require_kernel,
    run_command,
    unavailable_reason,
)
from .identity import FileId
from .ledger import Ledger, dm_uuid, our_dm_devices, recover, remove_dm, teardown

__all__ = [
    "VM_HINT",
    "CommandError",
    "KernelMachine",
    "KernelPool",
    "KernelThin",
    "KernelUnavailableError",
    "recover",
    "unavailable_reason",
]

log = logging.getLogger("thinsim.kernel")

# linux/fs.h
BLKDISCARD = 0x1277

DEFAULT_WORKDIR = "/tmp"


def _workdir() -> Path:
    """``$THINSIM_KERNEL_DIR``, else ``$THINSIM_SCRATCH`` (the tmpfs ``thinsim vm`` mounts in
    its guest), else /tmp.  Backing files need a file system that punches holes (tmpfs,
    ext4, xfs): on one that cannot (9p) the loop device offers no discard and the pool
    reports ``no_discard_passdown``."""
    for var in ("THINSIM_KERNEL_DIR", "THINSIM_SCRATCH"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(DEFAULT_WORKDIR)


# -- interrupt safety ---------------------------------------------------------------------

_OPEN: dict[int, KernelPool] = {}
_hooks_installed = False


def _close_all() -> None:
    for pool in list(_OPEN.values()):
        try:
            pool.close()
        except Exception:  # keep closing the others
            log.exception("closing %r at exit", pool)


def _exit_on_signal(signum: int, frame) -> None:
    # SystemExit unwinds like an exception (finally blocks, context managers), then atexit
    # runs _close_all for whatever is still open.
    raise SystemExit(128 + signum)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        # Someone else's handler (pytest's, an application's) stays in charge.
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _exit_on_signal)


class _SignalsHeld:
    """Hold SIGINT/SIGTERM/SIGHUP while tearing down, so a second Ctrl-C cannot cut a
    cleanup short; they are delivered when it ends."""

    SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

    def __enter__(self) -> None:
        self.old = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)

    def __exit__(self, *exc) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self.old)


def _oserror(e: OSError) -> Exception:
    return error_for(e.errno or E.EIO, str(e))


# -- the kernel log --------------------------------------------------------------------------


class _Kmsg:
    """``device-mapper:`` lines of the kernel log from now on, read from ``/dev/kmsg``.  Where
    it cannot be read (a container that hides it) there are no lines, unless ``required``:
    then the OSError is raised (a recorder must not record a log it could not read)."""

    def __init__(self, required: bool = False) -> None:
        self._fd = -1
        try:
            self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self.close()
            if required:
                raise
        self.lines: list[str] = []

    def read(self) -> list[str]:
        """Every line read so far (new ones appended)."""
        while self._fd >= 0:
            try:
                record = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten before we read them
                continue
            # "prio,seq,usec,flags;text\n" then optional " KEY=value" continuation lines.
            text = record.decode("utf-8", "replace").split(";", 1)[1].split("\n", 1)[0]
            if text.startswith("device-mapper:"):
                self.lines.append(text)
        return self.lines

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- thins --------------------------------------------------------------------------------


class KernelThin(interface.Thin):
    """A real ``thin`` dm device, opened once with O_DIRECT."""

    def __init__(self, pool: KernelPool, dev_id: int, length: int, name: str) -> None:
        self.pool = pool
        self.dev_id = dev_id
        self.length_sectors = length // SECTOR
        self.name = name
        self.path = f"/dev/mapper/{name}"
        self._fd = -1

    def __repr__(self) -> str:
        return f"KernelThin(dev_id={self.dev_id}, length={self.size}, name={self.name!r})"

    @property
    def size(self) -> int:
        return self.length_sectors * SECTOR

    def _check_active(self) -> None:
        """ENXIO once the device is removed (deactivate, or its pool closed), as
        device-mapper answers for a device that is gone (opening its vanished node would
        say ENOENT; one errno for every call, as the model gives)."""
        if self.pool._thins.get(self.name) is not self:
            raise NoDeviceError(f"thin {self.dev_id} was deactivated: its device is gone")

    def _open(self) -> int:
        if self._fd < 0:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
            except OSError as e:
                raise _oserror(e) from None
        return self._fd

    def _read_sectors(self, offset: int, length: int) -> bytes:
        fd = self._open()
        buf = self.pool._buffer
        out = bytearray()
        for pos, n in interface.io_requests(offset, length, self.pool.data_block_size_sectors):
            with memoryview(buf)[:n] as view:
                try:
                    done = os.preadv(fd, [view], pos)
                except OSError as e:
                    raise _oserror(e) from None
                out += view[:done]
            if done != n:
                break
        return bytes(out)

    def read(self, offset: int, length: int) -> bytes:
        # Reads stop at the end of the device, as on a block device (the model does too).
        self._check_active()
        interface.check_read(offset, length)
        length = max(0, min(length, self.size - offset))
        if not length:
            return b""
        # O_DIRECT wants whole sectors: read the covering ones and cut.
        start = offset - offset % SECTOR
        stop = -(-(offset + length) // SECTOR) * SECTOR
        with self.pool._logged():
            data = self._read_sectors(start, stop - start)
        return data[offset - start : offset - start + length]

    def write(self, offset: int, data: bytes) -> None:
        # One that runs past the end is refused whole (ENOSPC), as the model refuses it.
        self._check_active()
        data = interface.check_write(offset, data, self.size).tobytes()
        if not data:
            return
        with self.pool._logged():
            self._write(offset, data)

    def _write(self, offset: int, data: bytes) -> None:
        head = offset % SECTOR
        tail = -(offset + len(data)) % SECTOR
        if head or tail:
            # O_DIRECT wants whole sectors: read-modify-write the partial ones, as the page
            # cache would (reads of unmapped blocks allocate nothing).
            start = offset - head
            old = bytearray(self._read_sectors(start, head + len(data) + tail))
            old[head : head + len(data)] = data
            offset, data = start, bytes(old)
        fd = self._open()
        buf = self.pool._buffer
        for pos, n in interface.io_requests(offset, len(data), self.pool.data_block_size_sectors):
            with memoryview(buf)[:n] as view:
                view[:] = data[pos - offset : pos - offset + n]
                try:
                    done = os.pwrite(fd, view, pos)
                except OSError as e:
                    raise _oserror(e) from None
            if done != n:
                raise DeviceIOError(f"short write at {pos}: {done} of {n} bytes")

    def discard(self, offset: int, length: int) -> None:
        # block/ioctl.c: blk_ioctl_discard does the checks (EOPNOTSUPP, then EINVAL for
        # unaligned or past the end); uint64 arguments cannot be negative.
        self._check_active()
        interface.check_discard(offset, length)
        with self.pool._logged():
            try:
                fcntl.ioctl(self._open(), BLKDISCARD, struct.pack("=QQ", offset, length))
            except OSError as e:
                raise _oserror(e) from None
            except OverflowError:
                raise InvalidArgumentError("range too large") from None

    def flush(self) -> None:
        self._check_active()
        with self.pool._logged():
            try:
                os.fsync(self._open())
            except OSError as e:
                raise _oserror(e) from None

    def status(self) -> str:
        self._check_active()
        (line,) = self.pool._dmsetup("status", self.name)
        return line

    def table(self) -> str:
        self._check_active()
        (line,) = self.pool._dmsetup("table", self.name)
        return line

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def deactivate(self) -> None:
        self._check_active()
        self._close_fd()
        with _SignalsHeld():
            remove_dm(self.name)
            self.pool._ledger.add("-dm", self.name)
        self.pool._thins.pop(self.name, None)

    def suspend(self) -> None:
        self._check_active()
        self.pool._dmsetup("suspend", self.name)

    def resume(self) -> None:
        self._check_active()
        self.pool._dmsetup("resume", self.name)


# -- pools --------------------------------------------------------------------------------


class KernelPool(interface.Pool):
    """A real pool: sparse files ``meta`` and ``data`` in a fresh folder under ``workdir``
    (default ``$THINSIM_KERNEL_DIR`` or /tmp), each on a loop device, and a ``thin-pool``
    dm device over them.

    ``metadata_file`` / ``data_file`` name the backing files instead; if one exists it is
    refused (EEXIST) unless ``adopt_files=True``, and an adopted file is grown to the size
    asked for when smaller but never deleted.  ``recover_stale`` first cleans up after runs
    that died without closing (see :func:`recover`).
    """

    def __init__(
        self,
        data_size: int,
        metadata_size: int,
        data_block_size_sectors: int = 128,
        low_water_mark_blocks: int = 0,
        features: Sequence[str] = (),
        *,
        length_sectors: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        metadata_file: str | os.PathLike[str] | None = None,
        data_file: str | os.PathLike[str] | None = None,
        adopt_files: bool = False,
        recover_stale: bool = True,
    ) -> None:
        interface.check_pool_args(
            data_size,
            metadata_size,
            data_block_size_sectors,
            low_water_mark_blocks,
            features,
            length_sectors,
        )
        self._start(
            data_size,
            metadata_size,
            length_sectors if length_sectors is not None else data_size // SECTOR,
            str(data_block_size_sectors),
            str(low_water_mark_blocks),
            list(features),
            workdir=workdir,
            metadata_file=metadata_file,
            data_file=data_file,
            adopt_files=adopt_files,
            recover_stale=recover_stale,
        )

    @classmethod
    def from_table(
        cls,
        *,
        metadata_size: int,
        data_size: int,
        length_sectors: int,
        block_size: str,
        low_water_mark: str,
        features: Sequence[str],
        workdir: str | os.PathLike[str] | None = None,
    ) -> KernelPool:
        """A pool made from a table's words, as ``dmsetup create`` is given them (what
        :meth:`KernelMachine.create_pool` does): the kernel parses them."""
        pool = cls.__new__(cls)
        pool._start(
            data_size,
            metadata_size,
            length_sectors,
            block_size,
            low_water_mark,
            list(features),
            workdir=workdir,
        )
        return pool

    def _start(
        self,
        data_size: int,
        metadata_size: int,
        length_sectors: int,
        block_size: str,
        low_water_mark: str,
        features: list[str],
        *,
        workdir: str | os.PathLike[str] | None = None,
        metadata_file: str | os.PathLike[str] | None = None,
        data_file: str | os.PathLike[str] | None = None,
        adopt_files: bool = False,
        recover_stale: bool = True,
    ) -> None:
        require_kernel()
        if recover_stale:
            for what in recover():
                log.warning("removed %s left by a dead run", what)
        self.data_size = data_size
        self.metadata_size = metadata_size
        self._bs = block_size
        try:  # for __repr__ until the kernel took the word (set again then)
            self.data_block_size_sectors = int(block_size)
        except ValueError:
            self.data_block_size_sectors = 0
        self._lwm = low_water_mark
        self._features = features
        self._length = length_sectors
        self.token = secrets.token_hex(4)
        self.name = f"thinsim-{self.token}-pool"
        self._thins: dict[str, KernelThin] = {}
        self._loops: list[str] = []  # [metadata loop, data loop]
        self._buffer = mmap.mmap(-1, MAX_REQUEST)  # page aligned, as O_DIRECT wants
        self._closed = False
        self._kmsg = _Kmsg()
        self._log_seen = 0
        _install_hooks()
        # No interrupt between writing the ledger and registering for teardown at exit.
        with _SignalsHeld():
            self._ledger = Ledger(self.token)
            _OPEN[id(self)] = self
        try:
            self._make(workdir, metadata_file, data_file, adopt_files)
        except BaseException:
            self.close()
            raise
        # the kernel took the word (dm-thin.c: pool_ctr's kstrtoul, base 10)
        self.data_block_size_sectors = int(block_size)

    def __repr__(self) -> str:
        return (
            f"KernelPool(data_size={self.data_size}, metadata_size={self.metadata_size}, "
            f"data_block_size_sectors={self.data_block_size_sectors}, "
            f"low_water_mark_blocks={self._lwm}, features={self._features!r})"
        )

    def __enter__(self) -> Self:
        return self

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def devno(self) -> str:
        rdev = os.stat(f"/dev/mapper/{self.name}").st_rdev
        return f"{os.major(rdev)}:{os.minor(rdev)}"

    def _dmsetup(self, *args: str) -> list[str]:
        """dmsetup, a refusal carrying the kernel's log lines printed meanwhile."""
        with self._logged():
            return dmsetup(*args)

    @contextlib.contextmanager
    def _logged(self) -> Iterator[None]:
        """A thinsim error raised inside carries the kernel's ``device-mapper:`` lines
        logged meanwhile (a dmsetup refusal; I/O a full pool fails, whose first write logs
        the switch to out-of-data-space mode)."""
        seen = len(self._kmsg.read())
        try:
            yield
        except ThinsimError as e:
            raise with_kernel_log(e, self._kmsg.read()[seen:]) from None

    def log_lines(self) -> list[str]:
        self._check_open()
        lines = self._kmsg.read()
        new, self._log_seen = lines[self._log_seen :], len(lines)
        return new

    # -- making it ------------------------------------------------------------------------

    def _backing_file(self, path: Path, size: int, adopt: bool) -> Path:
        path = Path(os.path.abspath(path))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            if not adopt:
                raise ExistsError(
                    f"{path} exists and this pool did not create it; pass adopt_files=True "
                    f"to use it (it will not be deleted)"
                ) from None
            self._ledger.add("adopted", str(path))
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                self._record_id(fd, path)
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
            return path
        self._ledger.add("file", str(path))
        try:
            self._record_id(fd, path)
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return path

    def _record_id(self, fd: int, path: Path) -> None:
        """Write down the file's identity before any loop device is attached to it: the
        teardown detaches only loops on that very file (identity.py)."""
        try:
            fid = FileId.of_fd(fd)
        except OSError as e:
            raise KernelUnavailableError(
                f"{path}: its file system has no file handles ({e.strerror}), so a loop "
                f"device on it could not be proven this pool's later; put the backing files "
                f"on ext4, xfs, btrfs or tmpfs (THINSIM_KERNEL_DIR)"
            ) from None
        self._ledger.add("id", str(fid), str(path))

    def _make(self, workdir, metadata_file, data_file, adopt: bool) -> None:
        if metadata_file is None or data_file is None:
            folder = Path(os.path.abspath(workdir or _workdir())) / f"thinsim-{self.token}"
            self._ledger.add("dir", str(folder))
            folder.mkdir(mode=0o700)
        md = self._backing_file(
            Path(metadata_file) if metadata_file else folder / "meta", self.metadata_size, adopt
        )
        data = self._backing_file(
            Path(data_file) if data_file else folder / "data", self.data_size, adopt
        )
        self.metadata_path, self.data_path = md, data
        # Metadata first, as the model's table (7:0 7:1) and the recorded scenarios have it.
        for path in (md, data):
            dev = run_command(["losetup", "-f", "--show", str(path)]).stdout.strip()
            self._ledger.add("loop", dev, str(path))
            self._loops.append(dev)
        self._ledger.add("dm", self.name)
        self._dmsetup(
            "create", self.name, "--uuid", dm_uuid(self.token, "pool"), "--table", self._line()
        )

    def _line(self) -> str:
        words = ["0", str(self._length), "thin-pool", *self._loops]
        words += [self._bs, self._lwm]
        if self._features:
            words += [str(len(self._features)), *self._features]
        return " ".join(words)

    @property
    def metadata_dev(self) -> str:
        """The metadata loop device (``/dev/loopN``)."""
        return self._loops[0]

    @property
    def data_dev(self) -> str:
        return self._loops[1]

    # -- the interface --------------------------------------------------------------------

    def message(self, text: str) -> None:
        # dm-ioctl.c: target_message rejects an empty message (dmsetup cannot send one).
        self._check_open()
        words = interface.check_message(text).split()
        # "--" so that words like "-1" reach the kernel instead of dmsetup's option parser.
        self._dmsetup("message", self.name, "0", "--", *words)

    def activate(self, dev_id: int, length: int) -> KernelThin:
        self._check_open()
        interface.check_activate(dev_id, length)
        role, n = f"thin{dev_id}", 1
        while f"thinsim-{self.token}-{role}" in self._thins:  # a thin may be active twice
            role, n = f"thin{dev_id}.{n}", n + 1
        name = f"thinsim-{self.token}-{role}"
        thin = KernelThin(self, dev_id, length, name)
        table = f"0 {length // SECTOR} thin /dev/mapper/{self.name} {dev_id}"
        self._ledger.add("dm", name)
        try:
            self._dmsetup("create", name, "--uuid", dm_uuid(self.token, role), "--table", table)
        except BaseException:
            # dmsetup removes a device whose table load failed; make sure of it.
            with _SignalsHeld():
                if name in our_dm_devices(self.token):
                    remove_dm(name)
                self._ledger.add("-dm", name)
            raise
        self._thins[name] = thin
        return thin

    def reload_table(
        self,
        *,
        metadata_size: int,
        data_size: int,
        length_sectors: int,
        block_size: str,
        low_water_mark: str,
        features: Sequence[str],
    ) -> None:
        self._check_open()
        for path, loop, new in (
            (self.metadata_path, self._loops[0], metadata_size),
            (self.data_path, self._loops[1], data_size),
        ):
            if os.stat(path).st_size != new:
                os.truncate(path, new)
                run_command(["losetup", "-c", loop])
        self.data_size, self.metadata_size = data_size, metadata_size
        saved = (self._bs, self._lwm, self._features, self._length)
        self._bs, self._lwm, self._features = block_size, low_water_mark, list(features)
        self._length = length_sectors
        self._dmsetup("suspend", self.name)
        try:
            self._dmsetup("reload", self.name, "--table", self._line())
            self._dmsetup("resume", self.name)
        except BaseException:
            self._bs, self._lwm, self._features, self._length = saved
            if self._suspended():
                run_command(["dmsetup", "resume", self.name], check=False)
            raise
        self.data_block_size_sectors = int(block_size)

    def _suspended(self) -> bool:
        proc = run_command(
            ["dmsetup", "info", "-c", "--noheadings", "-o", "suspended", self.name], check=False
        )
        return proc.stdout.strip() == "Suspended"

    def suspend(self) -> None:
        self._check_open()
        self._dmsetup("suspend", self.name)

    def resume(self) -> None:
        self._check_open()
        self._dmsetup("resume", self.name)

    def commit(self) -> None:
        # dm-thin.c: pool_status commits unless noflush or suspended; there is no commit
        # message, and this is what `dmsetup status` users rely on.
        self._check_open()
        self._dmsetup("status", self.name)

    def status(self, noflush: bool = False) -> str:
        self._check_open()
        args = ["status", "--noflush", self.name] if noflush else ["status", self.name]
        (line,) = self._dmsetup(*args)
        return line

    def table(self) -> str:
        self._check_open()
        (line,) = self._dmsetup("table", self.name)
        return line

    @property
    def event_nr(self) -> int:
        self._check_open()
        (line,) = dmsetup("info", "-c", "--noheadings", "-o", "events", self.name)
        return int(line.strip())

    # -- beyond the interface: what a differential test compares --------------------------

    def metadata_dump(self) -> str:
        """thin_dump's XML of the pool under a metadata snapshot: ``reserve_metadata_snap``,
        ``thin_dump -m`` on the metadata loop device, ``release_metadata_snap``."""
        self._check_open()
        self.reserve_metadata_snap()
        try:
            # thin_dump reads through the loop device's page cache; drop stale pages first.
            run_command(["blockdev", "--flushbufs", self._loops[0]])
            proc = run_command(["thin_dump", "-m", self._loops[0]], check=False)
        finally:
            self.release_metadata_snap()
        if proc.returncode != 0:
            raise CommandError(f"thin_dump failed: {proc.stderr}")
        return proc.stdout

    def allocated_bytes(self) -> int:
        """The data file's allocated size (``du``: st_blocks * 512)."""
        self._check_open()
        return os.stat(self.data_path).st_blocks * 512

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every thin, the pool, both loop devices and the files this pool made.
        Safe to call twice; also runs at exit and on SIGTERM for pools left open."""
        if self._closed:
            return
        with _SignalsHeld():
            for thin in list(self._thins.values()):
                thin._close_fd()
            done = teardown(self._ledger.entries())
            log.debug("closed %s: %s", self.name, ", ".join(done))
            self._thins.clear()
            self._ledger.close()
            self._buffer.close()
            self._kmsg.close()
            self._closed = True
            _OPEN.pop(id(self), None)


# -- the scenario's machine ------------------------------------------------------------

NO_SPACE_TIMEOUT = Path("/sys/module/dm_thin_pool/parameters/no_space_timeout")


class KernelMachine(interface.Machine):
    """The real kernel as a scenario drives it: pools made from a table's words (backing
    files in ``workdir``: a file system that punches holes, such as the tmpfs the recorder
    mounts), device-mapper's log lines read from ``/dev/kmsg``, dm_thin_pool's
    ``no_space_timeout`` (put back by :meth:`close`).

    It drives losetup and dmsetup: run it only where nothing else uses loop or dm devices
    (inside ``thinsim vm``), as the scenarios expect loop0, loop1 and dm minor 0.
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        require_kernel()
        self.workdir = workdir
        self._saved_timeout = NO_SPACE_TIMEOUT.read_text().strip()
        self._kmsg = _Kmsg(required=True)
        self._seen = 0
        self._pools: list[KernelPool] = []

    def __repr__(self) -> str:
        return f"KernelMachine({self.workdir!r})"

    def create_pool(
        self,
        *,
        metadata_size: int,
        data_size: int,
        length_sectors: int,
        block_size: str,
        low_water_mark: str,
        features: Sequence[str],
    ) -> KernelPool:
        pool = KernelPool.from_table(
            metadata_size=metadata_size,
            data_size=data_size,
            length_sectors=length_sectors,
            block_size=block_size,
            low_water_mark=low_water_mark,
            features=features,
            workdir=self.workdir,
        )
        self._pools.append(pool)
        return pool

    def log_lines(self) -> list[str]:
        lines = self._kmsg.read()
        new, self._seen = lines[self._seen :], len(lines)
        return new

    def set_no_space_timeout(self, seconds: int) -> None:
        NO_SPACE_TIMEOUT.write_text(f"{seconds}\n")

    def close(self) -> None:
        """Remove every pool made here (thins, loop devices, files); put back
        ``no_space_timeout``.  Safe to call twice."""
        for pool in self._pools:
            pool.close()
        self._pools.clear()
        NO_SPACE_TIMEOUT.write_text(f"{self._saved_timeout}\n")
        self._kmsg.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m thinsim.backends.kernel --recover|--check``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m thinsim.backends.kernel")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--recover", action="store_true", help="clean up after dead runs")
    group.add_argument("--check", action="store_true", help="can the kernel backend run here?")
    args = parser.parse_args(argv)
    if args.check:
        reason = unavailable_reason()
        print(reason or "the kernel backend can run here")
        return 1 if reason else 0
    for what in recover():
        print(f"removed {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
