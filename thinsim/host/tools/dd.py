"""dd, as coreutils 9.1 prints (src/dd.c), when an operand names a simulated device.

The operands, the skip/seek logic, the copy loop, the records counts and the messages follow
dd.c; files are either the simulated block devices (through ``blockio``, with the block
layer's rules: EOF at the device's end, ENOSPC for a write that starts there, a short write
for one that runs past it, EINVAL for O_DIRECT I/O not aligned to 512 bytes, EINVAL for a
seek past the end) or ordinary files, pipes and /dev/null on the real host.  The transfer
time and rate are the real ones; everything else is deterministic.
"""

from __future__ import annotations

import errno as E
import os
import signal
import stat
import time

from ...constants import SECTOR_SIZE as SECTOR
from ...errors import ThinsimError
from ...model import blockio, devices, dm
from .. import command
from ..command import unlocked
from ..state import DmDevice, HostState, is_device_path
from .common import IO, unsupported

PROG = "dd"
DEFAULT_BLOCKSIZE = 512
INTMAX_MAX = (1 << 63) - 1

# conv= symbols the simulation implements (dd.c: conversions[]); the others are refused
CONVERSIONS = {
    "ascii",
    "ebcdic",
    "ibm",
    "block",
    "unblock",
    "lcase",
    "ucase",
    "sparse",
    "swab",
    "sync",
    "excl",
    "nocreat",
    "notrunc",
    "noerror",
    "fdatasync",
    "fsync",
}
SIMULATED_CONVERSIONS = {"sync", "excl", "nocreat", "notrunc", "fdatasync", "fsync"}
FLAGS = {
    "append",
    "binary",
    "cio",
    "direct",
    "directory",
    "dsync",
    "noatime",
    "nocache",
    "noctty",
    "nofollow",
    "nolinks",
    "nonblock",
    "sync",
    "text",
    "fullblock",
    "count_bytes",
    "skip_bytes",
    "seek_bytes",
}
# flags glibc/Linux leave at 0 (dd.c lists them only where they exist): not accepted
MISSING_FLAGS = {"cio", "nolinks", "binary", "text"}
SIMULATED_FLAGS = {
    "direct",
    "dsync",
    "sync",
    "fullblock",
    "count_bytes",
    "skip_bytes",
    "seek_bytes",
    "noatime",
    "noctty",
    "nofollow",
    "nonblock",
    "nocache",
}
STATUSES = {"none", "noxfer", "progress"}


class _Quit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


# -- quoting (gnulib quotearg) ----------------------------------------------------------


def _utf8_locale() -> bool:
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var)
        if value:
            return "UTF-8" in value.upper() or "UTF8" in value.upper()
    return False


def quote(text: str) -> str:
    """locale_quoting_style: curly quotes in a UTF-8 locale."""
    return f"\u2018{text}\u2019" if _utf8_locale() else f"'{text}'"


_SHELL_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789%+,-./=@_^")


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def quoteaf(text: str) -> str:
    """shell_escape_always_quoting_style."""
    return _shell_quote(text)


def quotef(text: str) -> str:
    """shell_escape_quoting_style with ':' quoted too (quote_n_style_colon)."""
    if text and all(c in _SHELL_SAFE for c in text) and not text.startswith(("~", "#")):
        return text
    return _shell_quote(text)


# -- gnulib human_readable (human_autoscale | human_round_to_nearest | human_SI | human_B) --


def human(n: int, base: int) -> str:
    """What dd prints for a byte count: "262 kB", "2.9 KiB", "512 B"."""
    amt = n
    tenths = rounding = 0
    exponent = -1 if amt < base else 0
    if base <= amt:
        exponent = 0
        while True:
            r10 = (amt % base) * 10 + tenths
            r2 = (r10 % base) * 2 + (rounding >> 1)
            amt //= base
            tenths = r10 // base
            rounding = (
                (1 if (r2 + rounding) != 0 else 0) if r2 < base else 2 + (base < r2 + rounding)
            )
            exponent += 1
            if not (base <= amt and exponent < 8):
                break
    text = None
    if exponent >= 0 and amt < 10:
        if 2 < rounding + (tenths & 1):
            tenths += 1
            rounding = 0
            if tenths == 10:
                amt += 1
                tenths = 0
        if amt < 10:
            text = f"{amt}.{tenths}"
            tenths = rounding = 0
    if text is None:
        if 5 < tenths + (1 if 0 < rounding + (amt & 1) else 0):
            amt += 1
            if exponent >= 0 and amt == base and exponent < 8:
                exponent += 1
                text = "1.0"
        if text is None:
            text = str(amt)
    if exponent < 0:
        return f"{text} B"
    prefix = "kMGTPEZY"[exponent - 1]
    if base == 1024:
        prefix = prefix.upper() + "i"
    return f"{text} {prefix}B"


# -- files ------------------------------------------------------------------------------


def _open(path: str, flags: int, mode: int = 0o777) -> int:
    """open(2) of a file of the real host, with the machine let go: a FIFO's open waits
    for the other end, which may be another simulated command's or the script's."""
    with unlocked():
        return os.open(path, flags, mode)


class _RealFile:
    """A descriptor of the real host (an ordinary file, a pipe, /dev/null)."""

    device = False

    def __init__(self, fd: int, close: bool = True) -> None:
        self.fd = fd
        self._close = close

    def read(self, n: int) -> bytes:
        with unlocked():  # a pipe may wait for another simulated command
            return os.read(self.fd, n)

    def write(self, data: bytes) -> int:
        try:
            with unlocked():
                return os.write(self.fd, data)
        except BrokenPipeError:
            # a pipe nobody reads: SIGPIPE kills GNU dd there, silently (cmp <(dd ...)
            # that stops at the first difference); the shim dies of it too
            raise _Quit(-signal.SIGPIPE) from None

    def lseek(self, offset: int, whence: int) -> int:
        return os.lseek(self.fd, offset, whence)

    def fstat(self):
        return os.fstat(self.fd)

    def ftruncate(self, length: int) -> None:
        os.ftruncate(self.fd, length)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def fdatasync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self._close:
            os.close(self.fd)


class _StreamFile(_RealFile):
    """A Python stream without a descriptor (tests): no seeking."""

    def __init__(self, stream) -> None:
        self.stream = getattr(stream, "buffer", stream)

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        return data.encode() if isinstance(data, str) else data

    def write(self, data: bytes) -> int:
        try:
            self.stream.write(data)
        except TypeError:
            self.stream.write(data.decode("latin-1"))
        return len(data)

    def lseek(self, offset: int, whence: int) -> int:
        raise OSError(E.ESPIPE, os.strerror(E.ESPIPE))

    def fstat(self):
        return None

    def ftruncate(self, length: int) -> None:
        raise OSError(E.EINVAL, os.strerror(E.EINVAL))

    def fsync(self) -> None:
        raise OSError(E.EINVAL, os.strerror(E.EINVAL))

    fdatasync = fsync

    def close(self) -> None:
        pass


class _DeviceFile:
    """An open simulated block device (block/fops.c: blkdev_read_iter, blkdev_write_iter,
    blkdev_llseek, blkdev_fsync)."""

    device = True

    def __init__(self, state: HostState, dev, direct: bool, dsync: bool) -> None:
        self.state = state
        self.dev = dev
        self.direct = direct
        self.dsync = dsync
        self.pos = 0
        self.wb_error: int | None = None  # a failed writeback, reported by fsync
        # O_DIRECT I/O must be aligned to the logical block size (losetup -b)
        self.logical = getattr(dev, "block_size", SECTOR)
        command.open_device(dev)
        self.closed = False

    @property
    def size(self) -> int:
        return devices.device_size(self.state, self.dev)

    def read(self, n: int) -> bytes:
        self._between_bios()
        if self.pos >= self.size:
            return b""  # no bio: nothing to wait for
        self._wait_resumed()
        size = self.size  # a resume may have swapped in a table of another size
        if self.pos >= size:
            return b""
        if self.direct and (self.pos % self.logical or n % self.logical):
            raise OSError(E.EINVAL, os.strerror(E.EINVAL))
        n = min(n, size - self.pos)
        try:
            data = blockio.read(self.state, self.dev, self.pos, n)
        except ThinsimError as e:
            raise OSError(e.errno, os.strerror(e.errno)) from None
        self.pos += len(data)
        return data

    def write(self, data: bytes) -> int:
        self._between_bios()
        if blockio.read_only(self.dev):
            raise OSError(E.EPERM, os.strerror(E.EPERM))
        size = self.size
        if self.pos >= size:
            raise OSError(E.ENOSPC, os.strerror(E.ENOSPC))
        if self.direct and (self.pos % self.logical or len(data) % self.logical):
            raise OSError(E.EINVAL, os.strerror(E.EINVAL))
        self._wait_resumed()
        n = min(len(data), self.size - self.pos)
        if n <= 0:
            raise OSError(E.ENOSPC, os.strerror(E.ENOSPC))
        try:
            blockio.write(self.state, self.dev, self.pos, bytes(data[:n]))
        except ThinsimError as e:
            if self.direct:
                raise OSError(e.errno, os.strerror(e.errno)) from None
            # the page cache took the data; the writeback fails later (fsync reports it)
            self.wb_error = self.wb_error or e.errno
        self.pos += n
        if self.dsync:
            self.fsync()
        return n

    def lseek(self, offset: int, whence: int) -> int:
        size = self.size
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: size}[whence]
        new = base + offset
        if new < 0 or new > size:
            raise OSError(E.EINVAL, os.strerror(E.EINVAL))
        self.pos = new
        return new

    def fstat(self):
        return None

    def ftruncate(self, length: int) -> None:
        raise OSError(E.EINVAL, os.strerror(E.EINVAL))

    def fsync(self) -> None:
        self._between_bios()
        self._wait_resumed()
        error, self.wb_error = self.wb_error, None
        try:
            blockio.flush(self.state, self.dev)
        except ThinsimError as e:
            error = error or e.errno
        if error:
            raise OSError(error, os.strerror(error))

    fdatasync = fsync

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            command.close_device(self.dev)
            if isinstance(self.dev, DmDevice) and not command.stale():
                dm.dm_blk_close(self.state, self.dev)

    def _between_bios(self) -> None:
        """Each read(2), write(2) or fsync(2) is a bio of its own (or a few): other
        commands run between two of them (command.between_bios), so that a long dd holds
        no other command for its whole length; one that reloaded the machine's state
        meanwhile leaves this dd's device another state's: its I/O fails."""
        if not command.between_bios():
            raise OSError(E.EIO, os.strerror(E.EIO))

    def _wait_resumed(self) -> None:
        """The bio waits in the suspended device until its resume (dd blocks in read(2),
        write(2) or fsync(2): in a buffered write's writeback, at the last close on a real
        host), while other commands run, the resume among them."""
        if not blockio.bio_waits(self.dev):
            return
        if not command.can_wait():
            # a command run in a process of its own (THINSIM_SERVER=0): no other command
            # can run meanwhile to resume the device, so dd would hang for ever
            raise _NotSimulated("I/O to a suspended device (it waits for a resume)")
        if not command.wait_until(lambda: not blockio.bio_waits(self.dev)):
            raise OSError(E.EIO, os.strerror(E.EIO))


class _NotSimulated(Exception):
    pass


# -- the command ------------------------------------------------------------------------


def _parse_symbols(text: str, table: set[str], what: str) -> list[str]:
    out = []
    for sym in text.split(","):
        if sym not in table:
            raise _Usage(f"{what}: {quote(sym)}")
        out.append(sym)
    return out


class _Usage(Exception):
    pass


_MULT = {
    "b": 512,
    "c": 1,
    "w": 2,
    "k": 1024,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "T": 1024**4,
    "P": 1024**5,
    "E": 1024**6,
    "Z": 1024**7,
    "Y": 1024**8,
}


def _xstrtoumax(text: str) -> tuple[int | None, str, str]:
    """gnulib xstrtoumax with dd's suffixes: (value or None, error kind, rest)."""
    i = 0
    while i < len(text) and text[i] in " \t\n\v\f\r":
        i += 1
    if i < len(text) and text[i] == "-":
        return None, "invalid", text
    j = i
    if j < len(text) and text[j] == "+":
        j += 1
    k = j
    while k < len(text) and text[k].isdigit():
        k += 1
    if k == j:
        return None, "invalid", text
    value = int(text[j:k])
    rest = text[k:]
    if not rest:
        return value, "ok", ""
    letter = rest[0]
    if letter not in _MULT:
        return value, "suffix", rest
    base = 1024
    used = 1
    if letter not in "bcw":
        if rest[1:3] == "iB":
            used = 3
        elif rest[1:2] in ("B", "D"):
            base, used = 1000, 2
    mult = _MULT[letter]
    if base == 1000:
        mult = 1000 ** ("KMGTPEZY".index(letter.upper()) + 1)
    value *= mult
    rest = rest[used:]
    return value, ("ok" if not rest else "suffix"), rest


def _parse_integer(text: str) -> int:
    """dd.c: parse_integer (a trailing B for bytes, NxM products)."""
    value, kind, rest = _xstrtoumax(text)
    if kind == "suffix" and rest == "B" and not text[: len(text) - 1].endswith("B"):
        kind = "ok"
    if kind == "suffix" and rest.startswith("x"):
        other = _parse_integer(rest[1:])
        return value * other
    if kind != "ok" or value is None:
        raise ValueError(text)
    if value > INTMAX_MAX:
        raise OverflowError(text)
    return value


def dd(state: HostState, argv: list[str], io: IO) -> int:
    run = _DD(state, io)
    try:
        return run.main(argv)
    except _Quit as q:
        return q.status
    except _NotSimulated as e:
        return unsupported(io, PROG, str(e))
    except _Usage as u:
        if str(u):
            io.err(f"{PROG}: {u}\n")
        io.err(f"Try '{PROG} --help' for more information.\n")
        return 1
    finally:
        run.close()


class _DD:
    def __init__(self, state: HostState, io: IO) -> None:
        self.state = state
        self.io = io
        self.infile = self.outfile = None
        self.r_full = self.r_partial = self.w_full = self.w_partial = 0
        self.w_bytes = 0
        self.start = time.monotonic()
        self.status = None
        self.conv: set[str] = set()

    def error(self, text: str, errno: int | None = None) -> None:
        if errno:
            text += f": {os.strerror(errno)}"
        self.io.err(f"{PROG}: {text}\n")

    def close(self) -> None:
        for f in (self.infile, self.outfile):
            if f is not None:
                f.close()

    # -- dd.c: print_stats, quit ---------------------------------------------------------

    def print_stats(self) -> None:
        if self.status == "none":
            return
        self.io.err(
            f"{self.r_full}+{self.r_partial} records in\n"
            f"{self.w_full}+{self.w_partial} records out\n"
        )
        if self.status == "noxfer":
            return
        n = self.w_bytes
        si, iec = human(n, 1000), human(n, 1024)
        elapsed = time.monotonic() - self.start
        rate = f"{human(int(n / elapsed), 1000)}/s" if elapsed > 0 else "Infinity B/s"
        times = f"{elapsed:g} s, {rate}"
        if si.endswith(" B"):
            unit = "byte" if n == 1 else "bytes"
            self.io.err(f"{n} {unit} copied, {times}\n")
        elif iec.endswith(" B"):
            self.io.err(f"{n} bytes ({si}) copied, {times}\n")
        else:
            self.io.err(f"{n} bytes ({si}, {iec}) copied, {times}\n")

    def synchronize_output(self) -> int:
        conv = self.conv
        sync_data = "fdatasync" in conv
        sync_all = "fsync" in conv
        self.conv -= {"fdatasync", "fsync"}
        status = 0
        if sync_data:
            try:
                self.outfile.fdatasync()
            except OSError as e:
                if e.errno not in (E.ENOSYS, E.EINVAL):
                    self.error(f"fdatasync failed for {quoteaf(self.output_name)}", e.errno)
                    status = 1
                sync_all = True
        if sync_all:
            try:
                self.outfile.fsync()
            except OSError as e:
                self.error(f"fsync failed for {quoteaf(self.output_name)}", e.errno)
                return 1
        return status

    def quit(self, code: int) -> None:
        sync = self.synchronize_output()
        if sync:
            code = sync
        self.print_stats()
        raise _Quit(code)

    # -- dd.c: main ----------------------------------------------------------------------

    def main(self, argv: list[str]) -> int:
        opts = self.scanargs(argv)
        if opts is None:
            return 1
        self.open_files(opts)
        status = self.dd_copy(opts)
        sync = self.synchronize_output()
        if sync:
            status = sync
        self.print_stats()
        return status

    def scanargs(self, argv: list[str]):
        if argv and argv[0] in ("--help", "--version"):
            unsupported(self.io, PROG, argv[0])
            raise _Quit(1)
        if argv and argv[0] == "--":
            argv = argv[1:]
        o = {
            "if": None,
            "of": None,
            "ibs": 0,
            "obs": 0,
            "bs": 0,
            "count": INTMAX_MAX,
            "skip": 0,
            "seek": 0,
            "iflag": set(),
            "oflag": set(),
        }
        count_b = skip_b = seek_b = False
        for arg in argv:
            if arg.startswith("--") and arg != "--":
                raise _Usage(f"unrecognized option '{arg}'")
            if arg.startswith("-") and arg != "-":
                raise _Usage(f"invalid option -- '{arg[1]}'")
            name, eq, val = arg.partition("=")
            if not eq:
                raise _Usage(f"unrecognized operand {quote(arg)}")
            if name in ("if", "of"):
                o[name] = val
            elif name == "conv":
                syms = _parse_symbols(val, CONVERSIONS, "invalid conversion")
                for s in syms:
                    if s not in SIMULATED_CONVERSIONS:
                        unsupported(self.io, PROG, f"conv={s}")
                        raise _Quit(1)
                self.conv |= set(syms)
            elif name in ("iflag", "oflag"):
                what = "invalid input flag" if name == "iflag" else "invalid output flag"
                syms = _parse_symbols(val, FLAGS - MISSING_FLAGS, what)
                for s in syms:
                    if s not in SIMULATED_FLAGS:
                        unsupported(self.io, PROG, f"{name}={s}")
                        raise _Quit(1)
                o[name] |= set(syms)
            elif name == "status":
                syms = _parse_symbols(val, STATUSES, "invalid status level")
                self.status = syms[-1]
            else:
                key = {"iseek": "skip", "oseek": "seek"}.get(name, name)
                if key not in ("ibs", "obs", "bs", "cbs", "skip", "seek", "count"):
                    raise _Usage(f"unrecognized operand {quote(name)}")
                if key == "cbs":
                    unsupported(self.io, PROG, "cbs=")
                    raise _Quit(1)
                try:
                    n = _parse_integer(val)
                except OverflowError:
                    self.error(f"invalid number: {quote(val)}", E.EOVERFLOW)
                    raise _Quit(1) from None
                except ValueError:
                    self.error(f"invalid number: {quote(val)}")
                    raise _Quit(1) from None
                if key in ("ibs", "obs", "bs") and n < 1:
                    self.error(f"invalid number: {quote(val)}")
                    raise _Quit(1)
                o[key] = n
                has_b = "B" in val
                if key == "skip":
                    skip_b = has_b
                elif key == "seek":
                    seek_b = has_b
                elif key == "count":
                    count_b = has_b
        if o["bs"]:
            o["ibs"] = o["obs"] = o["bs"]
            self.twobufs = False
        else:
            self.twobufs = True
        o["ibs"] = o["ibs"] or DEFAULT_BLOCKSIZE
        o["obs"] = o["obs"] or DEFAULT_BLOCKSIZE
        if "fullblock" in o["oflag"]:
            self.error(f"invalid output flag: {quote('fullblock')}")
            raise _Usage("")
        iflag, oflag = o["iflag"], o["oflag"]
        if skip_b:
            iflag.add("skip_bytes")
        if count_b:
            iflag.add("count_bytes")
        if seek_b:
            oflag.add("seek_bytes")
        ibs, obs = o["ibs"], o["obs"]
        skip, count, seek = o["skip"], o["count"], o["seek"]
        o["skip_records"], o["skip_bytes"] = (
            divmod(skip, ibs) if "skip_bytes" in iflag and skip else (skip, 0)
        )
        if "count_bytes" in iflag and count != INTMAX_MAX:
            o["max_records"], o["max_bytes"] = divmod(count, ibs)
        else:
            o["max_records"], o["max_bytes"] = count, 0
        o["seek_records"], o["seek_bytes"] = (
            divmod(seek, obs) if "seek_bytes" in oflag and seek else (seek, 0)
        )
        if {"excl", "nocreat"} <= self.conv:
            self.error("cannot combine excl and nocreat")
            raise _Quit(1)
        if ("direct" in iflag and "nocache" in iflag) or ("direct" in oflag and "nocache" in oflag):
            self.error("cannot combine direct and nocache")
            raise _Quit(1)
        return o

    def open_device(self, path: str, flags: set[str]):
        dev = blockio.lookup_path(self.state, path)
        if dev is None:
            if is_device_path(path) and os.environ.get("THINSIM_PRIVATE_DEV") != "/dev":
                # without the private /dev this name could reach a real device
                self.error(f"failed to open {quoteaf(path)}", E.ENOENT)
                raise _Quit(1)
            return None
        return _DeviceFile(self.state, dev, "direct" in flags, bool({"dsync", "sync"} & flags))

    def open_files(self, o) -> None:
        src, dst = o["if"], o["of"]
        if src is None:
            self.input_name = "standard input"
            self.infile = _stdio(self.io.stdin, 0)
        else:
            self.input_name = src
            self.infile = self.open_device(src, o["iflag"])
            if self.infile is None:
                try:
                    self.infile = _RealFile(_open(src, os.O_RDONLY))
                except OSError as e:
                    self.error(f"failed to open {quoteaf(src)}", e.errno)
                    raise _Quit(1) from None
        try:
            offset = self.infile.lseek(0, os.SEEK_CUR)
            self.input_seekable = True
        except OSError:
            offset = 0
            self.input_seekable = False
        self.input_offset = max(0, offset)
        if dst is None:
            self.output_name = "standard output"
            self.outfile = _stdio(self.io.stdout, 1)
            return
        self.output_name = dst
        self.outfile = self.open_device(dst, o["oflag"])
        seek_records, obs = o["seek_records"], o["obs"]
        size = seek_records * obs + o["seek_bytes"]
        if self.outfile is None:
            flags = 0 if "nocreat" in self.conv else os.O_CREAT
            if "excl" in self.conv:
                flags |= os.O_EXCL
            if not (seek_records or "notrunc" in self.conv):
                flags |= os.O_TRUNC
            fd = None
            if seek_records:
                try:
                    fd = _open(dst, os.O_RDWR | flags, 0o666)
                except OSError:
                    fd = None
            if fd is None:
                try:
                    fd = _open(dst, os.O_WRONLY | flags, 0o666)
                except OSError as e:
                    self.error(f"failed to open {quoteaf(dst)}", e.errno)
                    raise _Quit(1) from None
            self.outfile = _RealFile(fd)
        if seek_records and "notrunc" not in self.conv:
            try:
                self.outfile.ftruncate(size)
            except OSError as e:
                st = self.outfile.fstat()
                if st is not None and (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                    # (dd.c's exit status for this is overwritten by dd_copy's)
                    self.error(
                        f"failed to truncate to {size} bytes in output file {quoteaf(dst)}",
                        e.errno,
                    )

    # -- dd.c: skip ----------------------------------------------------------------------

    def skip(self, f, name: str, records: int, blocksize: int, nbytes: int, is_input: bool):
        """Returns (records not skipped, bytes left)."""
        offset = records * blocksize + nbytes
        try:
            f.lseek(offset, os.SEEK_CUR)
        except OSError as e:
            lseek_errno = e.errno
        else:
            if is_input:
                st = f.fstat()
                if (
                    st is not None
                    and stat.S_ISREG(st.st_mode)
                    and self.input_offset >= 0
                    and st.st_size - self.input_offset < offset
                ):
                    records = (offset - st.st_size) // blocksize
                    offset = st.st_size - self.input_offset
                else:
                    records = 0
                self.input_offset += offset
                return records, nbytes
            return 0, 0
        try:
            f.lseek(0, os.SEEK_END)
        except OSError:
            pass
        else:
            self.error(
                f"{quotef(name)}: {'cannot skip' if is_input else 'cannot seek'}", lseek_errno
            )
            self.quit(1)
        while records or nbytes:
            try:
                data = f.read(blocksize if records else nbytes)
            except OSError as e:
                if is_input:
                    self.error(f"error reading {quoteaf(name)}", e.errno)
                else:
                    self.error(f"{quotef(name)}: cannot seek", lseek_errno)
                self.quit(1)
            if not data:
                break
            if is_input:
                self.input_offset += len(data)
            if records:
                records -= 1
            else:
                nbytes = 0
        return records, nbytes

    # -- dd.c: iread, iwrite, dd_copy ----------------------------------------------------

    def iread(self, n: int, fullblock: bool, direct: bool) -> int | bytes:
        if not fullblock:
            return self._iread(n, direct)
        out = b""
        while n > 0:
            data = self._iread(n, direct)
            if isinstance(data, int):
                return data
            if not data:
                break
            out += data
            n -= len(data)
        return out

    def _iread(self, n: int, direct: bool):
        try:
            data = self.infile.read(n)
        except OSError as e:
            prev = getattr(self, "prev_nread", 0)
            if e.errno == E.EINVAL and 0 < prev < n and direct:
                data = b""
            else:
                self.prev_nread = -1
                return e.errno
        self.prev_nread = len(data)
        return data

    def iwrite(self, data: bytes, o) -> tuple[int, int | None]:
        total = 0
        if (
            "direct" in o["oflag"]
            and len(data) < o["obs"]
            and isinstance(self.outfile, _DeviceFile)
        ):
            # dd turns O_DIRECT off for a final short block, and fsyncs instead
            self.outfile.direct = False
            self.conv.add("fsync")
        while total < len(data):
            try:
                n = self.outfile.write(data[total:])
            except OSError as e:
                if e.errno == E.EINTR:
                    continue
                return total, e.errno
            if n == 0:
                return total, E.ENOSPC
            total += n
        return total, None

    def dd_copy(self, o) -> int:
        ibs, obs = o["ibs"], o["obs"]
        if o["skip_records"] or o["skip_bytes"]:
            offset0 = self.input_offset
            us_bytes = o["skip_records"] * ibs + o["skip_bytes"]
            left, _ = self.skip(
                self.infile, self.input_name, o["skip_records"], ibs, o["skip_bytes"], True
            )
            if (left or (self.input_offset >= 0 and us_bytes != self.input_offset - offset0)) and (
                self.status != "none"
            ):
                self.error(f"{quotef(self.input_name)}: cannot skip to specified offset")
        if o["seek_records"] or o["seek_bytes"]:
            records, nbytes = self.skip(
                self.outfile, self.output_name, o["seek_records"], obs, o["seek_bytes"], False
            )
            while records or nbytes:
                size = obs if records else nbytes
                written, errno = self.iwrite(bytes(size), o)
                if written != size:
                    self.error(f"writing to {quoteaf(self.output_name)}", errno)
                    self.quit(1)
                if records:
                    records -= 1
                else:
                    nbytes = 0
        max_records, max_bytes = o["max_records"], o["max_bytes"]
        if max_records == 0 and max_bytes == 0:
            return 0
        fullblock = "fullblock" in o["iflag"]
        direct_in = "direct" in o["iflag"]
        sync = "sync" in self.conv
        obuf = bytearray()
        status = 0
        while True:
            if self.r_partial + self.r_full >= max_records + (1 if max_bytes else 0):
                break
            want = max_bytes if self.r_partial + self.r_full >= max_records else ibs
            data = self.iread(want, fullblock, direct_in)
            if isinstance(data, int):
                self.error(f"error reading {quoteaf(self.input_name)}", data)
                status = 1
                break
            if not data:
                break
            self.input_offset += len(data)
            if len(data) < ibs:
                self.r_partial += 1
                if sync:
                    data = data + bytes(ibs - len(data))
            else:
                self.r_full += 1
            if not self.twobufs:
                written, errno = self.iwrite(data, o)
                self.w_bytes += written
                if written != len(data):
                    self.error(f"error writing {quoteaf(self.output_name)}", errno)
                    return 1
                if len(data) == ibs:
                    self.w_full += 1
                else:
                    self.w_partial += 1
                continue
            obuf += data
            while len(obuf) >= obs:
                written, errno = self.iwrite(bytes(obuf[:obs]), o)
                self.w_bytes += written
                if written != obs:
                    self.error(f"writing to {quoteaf(self.output_name)}", errno)
                    if written:
                        self.w_partial += 1
                    self.quit(1)
                self.w_full += 1
                del obuf[:obs]
        if obuf:
            written, errno = self.iwrite(bytes(obuf), o)
            self.w_bytes += written
            if written:
                self.w_partial += 1
            if written != len(obuf):
                self.error(f"error writing {quoteaf(self.output_name)}", errno)
                return 1
        return status


def _stdio(stream, fd: int):
    try:
        real = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return _StreamFile(stream)
    if fd == 1 and hasattr(stream, "flush"):
        stream.flush()
    return _RealFile(real, close=False)
