"""KernelExecutor: scenario operations on a real dm-thin kernel (run it inside the VM only).

It needs root, device-mapper with dm-thin-pool, loop devices and thin-provisioning-tools.
Never use it on a host whose devices you care about: it drives losetup and dmsetup.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from thinsim.errors import ThinsimError, error_for
from thinsim.scenario import SECTOR_SIZE, Executor, pattern

log = logging.getLogger("thinsim.kernel")

NO_SPACE_TIMEOUT = Path("/sys/module/dm_thin_pool/parameters/no_space_timeout")
POOL = "pool"
# Requests larger than this are split even inside one data block (huge block sizes only).
MAX_REQUEST = 8 << 20

# strerror text -> errno, over every errno the platform knows ("File exists" -> EEXIST).
_ERRNO_BY_TEXT = {os.strerror(code): code for code in errno.errorcode}
# Messages libdevmapper prints instead of a strerror text (libdm-iface.c: ENXIO from the ioctl).
_ERRNO_BY_TOOL_TEXT = {"Device does not exist.": errno.ENXIO}


def errno_from_message(text: str) -> int | None:
    """The errno whose strerror text ends a line of ``text`` after ``": "``, if any.

    Tools print e.g. ``device-mapper: message ioctl on pool  failed: File exists`` or
    ``blkdiscard: /dev/mapper/thin0: BLKDISCARD ioctl failed: Operation not supported``.
    The longest matching text wins ("No such device or address" over "No such device").

    >>> errno_from_message("device-mapper: message ioctl on pool  failed: File exists\\n")
    17
    """
    best: tuple[int, int] | None = None
    for line in text.splitlines():
        line = line.rstrip()
        if line in _ERRNO_BY_TOOL_TEXT:
            return _ERRNO_BY_TOOL_TEXT[line]
        for msg, code in _ERRNO_BY_TEXT.items():
            if line.endswith(": " + msg) and (best is None or len(msg) > best[0]):
                best = (len(msg), code)
    return None if best is None else best[1]


class CommandError(RuntimeError):
    """A tool failed without a recognisable errno: a harness problem, not a kernel result."""


def run_command(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (never through a shell), log it, and map a failure to a ThinsimError.

    A failing command whose stderr names an errno raises ``error_for(errno)``; any other
    failure raises CommandError.  With ``check=False`` the result is returned as is.
    """
    log.debug("run: %s", shlex.join(argv))
    proc = subprocess.run(argv, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        log.debug("exit %d: %s", proc.returncode, proc.stderr.strip())
    if check and proc.returncode != 0:
        code = errno_from_message(proc.stderr)
        if code is None:
            raise CommandError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        raise error_for(code, proc.stderr.strip())
    return proc


def table_line(
    length_sectors: int,
    md_dev: str,
    data_dev: str,
    block_size_sectors: str,
    low_water_blocks: str,
    features: list[str],
) -> str:
    words = ["0", str(length_sectors), "thin-pool", md_dev, data_dev]
    words += [block_size_sectors, low_water_blocks]
    if features:
        words += [str(len(features)), *features]
    return " ".join(words)


class KernelExecutor(Executor):
    """Runs scenario operations with dmsetup, losetup, blkdiscard, thin_dump and O_DIRECT I/O.

    ``workdir`` must be on a filesystem that punches holes (a tmpfs made in the guest), not
    on a 9p share.  Expects no loop or dm device to exist, so that the metadata file gets
    loop0, the data file loop1 and the pool dm minor 0.
    """

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.workdir = Path(workdir)
        self.md_path = self.workdir / "md"
        self.data_path = self.workdir / "data"
        self.loops: list[str] = []  # [metadata loop, data loop] while attached
        self.thins: list[str] = []  # dm names of thins created, in creation order
        self.pool_active = False
        self.block_bytes = 128 * SECTOR_SIZE
        self._saved_timeout = NO_SPACE_TIMEOUT.read_text().strip()
        self._kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self._kmsg, 0, os.SEEK_END)
        self._buffer = mmap.mmap(-1, MAX_REQUEST)  # page aligned, as O_DIRECT wants

    def __repr__(self) -> str:
        return f"KernelExecutor({str(self.workdir)!r})"

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _dm(*args: str) -> list[str]:
        return run_command(["dmsetup", *args]).stdout.splitlines()

    @staticmethod
    def _thin_name(thin_id: int) -> str:
        return f"thin{thin_id}"

    def _thin_path(self, thin_id: int) -> str:
        return f"/dev/mapper/{self._thin_name(thin_id)}"

    def _suspended(self, name: str) -> bool:
        proc = run_command(["dmsetup", "info", "-c", "--noheadings", "-o", "suspended", name])
        return proc.stdout.strip() == "Suspended"

    def _detach(self) -> None:
        # udev may still be probing a loop device; detaching it then only defers the clear.
        run_command(["udevadm", "settle"], check=False)
        for loop in reversed(self.loops):
            run_command(["losetup", "-d", loop], check=False)
        for loop in self.loops:
            backing = Path("/sys/block", Path(loop).name, "loop")
            for _ in range(100):
                if not backing.exists():
                    break
                time.sleep(0.05)
            else:
                raise CommandError(f"{loop} is still attached after losetup -d")
        self.loops = []
        for path in (self.md_path, self.data_path):
            path.unlink(missing_ok=True)

    def _requests(self, offset: int, length: int):
        """(offset, length) pieces of one I/O: split at data-block boundaries, ascending."""
        step = min(self.block_bytes, MAX_REQUEST)
        pos, end = offset, offset + length
        while pos < end:
            nxt = min(end, (pos // step + 1) * step)
            yield pos, nxt - pos
            pos = nxt

    def _open(self, thin_id: int, flags: int) -> int:
        try:
            return os.open(self._thin_path(thin_id), flags)
        except OSError as e:
            raise error_for(e.errno, str(e)) from None

    # -- pool lifecycle -------------------------------------------------------------------

    def pool(
        self,
        *,
        md_bytes: int,
        data_bytes: int,
        length_sectors: int,
        block_size_sectors: str,
        low_water_blocks: str,
        features: list[str],
    ) -> list[str]:
        if self.pool_active:
            raise CommandError("pool: a pool already exists in this scenario")
        self._detach()
        for path, size in ((self.md_path, md_bytes), (self.data_path, data_bytes)):
            with open(path, "wb") as f:
                f.truncate(size)
        for path, want in ((self.md_path, "/dev/loop0"), (self.data_path, "/dev/loop1")):
            dev = run_command(["losetup", "-f", "--show", str(path)]).stdout.strip()
            self.loops.append(dev)
            if dev != want:
                raise CommandError(f"losetup gave {dev} for {path}, expected {want}")
        table = table_line(
            length_sectors, *self.loops, block_size_sectors, low_water_blocks, features
        )
        try:
            self._dm("create", POOL, "--table", table)
        except ThinsimError:
            self._detach()
            raise
        self.pool_active = True
        self.block_bytes = int(block_size_sectors) * SECTOR_SIZE
        return []

    def reload(
        self,
        *,
        md_bytes: int,
        data_bytes: int,
        length_sectors: int,
        block_size_sectors: str,
        low_water_blocks: str,
        features: list[str],
    ) -> list[str]:
        for path, loop, size in zip(
            (self.md_path, self.data_path), self.loops, (md_bytes, data_bytes)
        ):
            if path.stat().st_size != size:
                os.truncate(path, size)
                run_command(["losetup", "-c", loop])
        table = table_line(
            length_sectors, *self.loops, block_size_sectors, low_water_blocks, features
        )
        self._dm("suspend", POOL)
        try:
            self._dm("reload", POOL, "--table", table)
            self._dm("resume", POOL)
        except ThinsimError:
            if self._suspended(POOL):
                run_command(["dmsetup", "resume", POOL], check=False)
            raise
        return []

    def remove_pool(self) -> list[str]:
        self._dm("remove", "--retry", POOL)
        self.pool_active = False
        return []

    def suspend(self) -> list[str]:
        return self._dm("suspend", POOL)

    def resume(self) -> list[str]:
        return self._dm("resume", POOL)

    def msg(self, *, message: str) -> list[str]:
        # "--" so that words like "-1" reach the kernel instead of dmsetup's option parser.
        return self._dm("message", POOL, "0", "--", *message.split())

    def no_space_timeout(self, *, seconds: int) -> list[str]:
        NO_SPACE_TIMEOUT.write_text(f"{seconds}\n")
        return []

    # -- thin devices ---------------------------------------------------------------------

    def thin(self, *, thin_id: int, length_sectors: int) -> list[str]:
        name = self._thin_name(thin_id)
        self._dm("create", name, "--table", f"0 {length_sectors} thin /dev/mapper/{POOL} {thin_id}")
        self.thins.append(name)
        return []

    def remove_thin(self, *, thin_id: int) -> list[str]:
        name = self._thin_name(thin_id)
        self._dm("remove", "--retry", name)
        self.thins.remove(name)
        return []

    def suspend_thin(self, *, thin_id: int) -> list[str]:
        return self._dm("suspend", self._thin_name(thin_id))

    def resume_thin(self, *, thin_id: int) -> list[str]:
        return self._dm("resume", self._thin_name(thin_id))

    # -- I/O ------------------------------------------------------------------------------

    def _write(self, thin_id: int, offset: int, length: int, seed: int, sync: bool) -> None:
        fd = self._open(thin_id, os.O_RDWR | os.O_DIRECT)
        try:
            for pos, n in self._requests(offset, length):
                view = memoryview(self._buffer)[:n]
                view[:] = pattern(seed, pos, n)
                try:
                    done = os.pwrite(fd, view, pos)
                except OSError as e:
                    raise error_for(e.errno, str(e)) from None
                finally:
                    view.release()
                if done != n:
                    raise CommandError(f"short write at {pos}: {done} of {n}")
            if sync:
                try:
                    os.fsync(fd)
                except OSError as e:
                    raise error_for(e.errno, str(e)) from None
        finally:
            os.close(fd)

    def write(self, *, thin_id: int, offset: int, length: int, seed: int) -> list[str]:
        self._write(thin_id, offset, length, seed, sync=True)
        return []

    def write_nosync(self, *, thin_id: int, offset: int, length: int, seed: int) -> list[str]:
        self._write(thin_id, offset, length, seed, sync=False)
        return []

    def read(self, *, thin_id: int, offset: int, length: int) -> list[str]:
        digest = hashlib.md5()
        fd = self._open(thin_id, os.O_RDONLY | os.O_DIRECT)
        try:
            for pos, n in self._requests(offset, length):
                view = memoryview(self._buffer)[:n]
                try:
                    done = os.preadv(fd, [view], pos)
                except OSError as e:
                    raise error_for(e.errno, str(e)) from None
                else:
                    if done != n:
                        raise CommandError(f"short read at {pos}: {done} of {n}")
                    digest.update(view)
                finally:
                    view.release()
        finally:
            os.close(fd)
        return [f"md5 {digest.hexdigest()}"]

    def discard(self, *, thin_id: int, offset: int, length: int) -> list[str]:
        argv = ["blkdiscard", "-o", str(offset), "-l", str(length), self._thin_path(thin_id)]
        run_command(argv)
        return []

    def flush(self, *, thin_id: int) -> list[str]:
        fd = self._open(thin_id, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError as e:
            raise error_for(e.errno, str(e)) from None
        finally:
            os.close(fd)
        return []

    # -- observation ----------------------------------------------------------------------

    def status(self) -> list[str]:
        return self._dm("status", POOL)

    def status_noflush(self) -> list[str]:
        return self._dm("status", "--noflush", POOL)

    def thin_status(self, *, thin_id: int) -> list[str]:
        return self._dm("status", self._thin_name(thin_id))

    def table(self) -> list[str]:
        return self._dm("table", POOL)

    def thin_table(self, *, thin_id: int) -> list[str]:
        return self._dm("table", self._thin_name(thin_id))

    def events(self) -> list[str]:
        (line,) = self._dm("info", "-c", "--noheadings", "-o", "events", POOL)
        return [f"event_nr {line.strip()}"]

    def dump(self) -> list[str]:
        self.msg(message="reserve_metadata_snap")
        try:
            # thin_dump reads the metadata loop device; drop any stale page cache first.
            run_command(["blockdev", "--flushbufs", self.loops[0]])
            out = run_command(["thin_dump", "-m", self.loops[0]], check=False)
        finally:
            self.msg(message="release_metadata_snap")
        if out.returncode != 0:
            raise CommandError(f"thin_dump failed: {out.stderr}")
        return out.stdout.splitlines()

    def du(self) -> list[str]:
        return [f"allocated {self.data_path.stat().st_blocks * 512}"]

    # -- bookkeeping ----------------------------------------------------------------------

    def log_lines(self) -> list[str]:
        lines = []
        while True:
            try:
                record = os.read(self._kmsg, 65536)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten before we read them
                continue
            # "prio,seq,usec,flags;text\n" then optional " KEY=value" continuation lines.
            text = record.decode("utf-8", "replace").split(";", 1)[1].split("\n", 1)[0]
            if text.startswith("device-mapper:"):
                lines.append(text)
        return lines

    def close(self) -> None:
        """Remove thins, then the pool, then the loop devices and files; restore the
        no_space_timeout parameter.  Safe to call twice."""
        NO_SPACE_TIMEOUT.write_text(f"{self._saved_timeout}\n")
        names = [n for n in self._dm_names() if n == POOL or re.fullmatch(r"thin\d+", n)]
        if POOL in names:
            # A suspended pool would block thin removal.
            run_command(["dmsetup", "resume", POOL], check=False)
        for name in sorted(n for n in names if n != POOL):
            run_command(["dmsetup", "resume", name], check=False)
            if run_command(["dmsetup", "remove", "--retry", name], check=False).returncode:
                run_command(["dmsetup", "remove", "--force", "--retry", name])
        pool_argv = ["dmsetup", "remove", "--retry", POOL]
        if POOL in names and run_command(pool_argv, check=False).returncode:
            run_command(["dmsetup", "remove", "--force", "--retry", POOL])
        self.thins = []
        self.pool_active = False
        self._detach()
        run_command(["udevadm", "settle"], check=False)
        if self._kmsg >= 0:
            os.close(self._kmsg)
            self._kmsg = -1
            self._buffer.close()

    @staticmethod
    def _dm_names() -> list[str]:
        proc = run_command(["dmsetup", "ls"], check=False)
        if "No devices found" in proc.stdout:
            return []
        return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
