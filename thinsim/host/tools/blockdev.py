"""blockdev and blkdiscard, as util-linux 2.38.1 prints (disk-utils/blockdev.c,
sys-utils/blkdiscard.c), over the block layer's ioctls on the simulated devices (6.1's
block/ioctl.c and the queue limits loop and dm-thin set)."""

from __future__ import annotations

import errno as E
import os
import stat

from ...constants import SECTOR_SIZE as SECTOR
from ...errors import ThinsimError
from ...model import blockio, devices, dm
from ..state import HostState, LoopDevice, is_device_path
from .common import IO, unsupported
from .getopt import NO, REQUIRED, GetoptError, Long, getopt_long
from .losetup import _strtosize

PAGE_SIZE = 4096
MAX_SECTORS = 2560  # queue/max_sectors_kb 1280: what loop and dm devices showed in the VM


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


# -- the devices' block-layer facts ----------------------------------------------------


def _pool_block_bytes(state: HostState, dev) -> int | None:
    """The data block size of the pool under a thin or pool device (its io_min/io_opt)."""
    return blockio.io_min(state, dev)


def _read_ahead(dev) -> int:
    """BLKRAGET: the bdi's read-ahead in sectors (256 unless set)."""
    return getattr(dev, "read_ahead", 256)


def _init_blocksize(size: int, logical: int = SECTOR) -> int:
    """block/bdev.c: set_init_blocksize -- the largest power of two up to a page that
    divides the size, from the logical block size up."""
    bsize = logical
    while bsize < PAGE_SIZE:
        if size & bsize:
            break
        bsize <<= 1
    return bsize


def _ioctl(state: HostState, dev, name: str) -> int | None:
    """The value a query ioctl returns for a simulated block device."""
    size = devices.device_size(state, dev)
    block = _pool_block_bytes(state, dev)
    if name == "BLKROGET":
        return int(blockio.read_only(dev))
    if name == "BLKDISCARDZEROES":
        return 0  # always 0 since 5.x
    logical = getattr(dev, "block_size", SECTOR)  # losetup -b
    if name in ("BLKSSZGET", "BLKPBSZGET"):
        return logical
    if name == "BLKIOMIN":
        if block is None:
            return logical
        # pool_io_hints: max_sectors when the block size is a multiple of it
        return MAX_SECTORS * SECTOR if block % (MAX_SECTORS * SECTOR) == 0 else block
    if name == "BLKIOOPT":
        return block or 0
    if name == "BLKALIGNOFF":
        return 0
    if name == "BLKSECTGET":
        return MAX_SECTORS
    if name == "BLKBSZGET":
        return _init_blocksize(size, logical)
    if name == "BLKGETSIZE":
        return size // SECTOR
    if name == "BLKGETSIZE64":
        return size
    if name in ("BLKRAGET", "BLKFRAGET"):
        return _read_ahead(dev)
    raise AssertionError(name)


# blockdev.c: bdcms[] -- name, ioctl, argument kind, help; "set" commands take no result
COMMANDS = [
    ("--setro", "BLKROSET", "set", "set read-only"),
    ("--setrw", "BLKROSET", "set", "set read-write"),
    ("--getro", "BLKROGET", "%d", "get read-only"),
    ("--getdiscardzeroes", "BLKDISCARDZEROES", "%u", "get discard zeroes support status"),
    ("--getss", "BLKSSZGET", "%d", "get logical block (sector) size"),
    ("--getpbsz", "BLKPBSZGET", "%u", "get physical block (sector) size"),
    ("--getiomin", "BLKIOMIN", "%u", "get minimum I/O size"),
    ("--getioopt", "BLKIOOPT", "%u", "get optimal I/O size"),
    ("--getalignoff", "BLKALIGNOFF", "%d", "get alignment offset in bytes"),
    ("--getmaxsect", "BLKSECTGET", "%hu", "get max sectors per request"),
    ("--getbsz", "BLKBSZGET", "%d", "get blocksize"),
    ("--setbsz", "BLKBSZSET", "arg", "set blocksize on file descriptor opening the block device"),
    ("--getsize", "BLKGETSIZE", "%lu", "get 32-bit sector count (deprecated, use --getsz)"),
    ("--getsize64", "BLKGETSIZE64", "%llu", "get size in bytes"),
    ("--setra", "BLKRASET", "arg", "set readahead"),
    ("--getra", "BLKRAGET", "%ld", "get readahead"),
    ("--setfra", "BLKFRASET", "arg", "set filesystem readahead"),
    ("--getfra", "BLKFRAGET", "%ld", "get filesystem readahead"),
    ("--flushbufs", "BLKFLSBUF", "none", "flush buffers"),
    ("--rereadpt", "BLKRRPART", "none", "reread partition table"),
]
_BY_NAME = {c[0]: c for c in COMMANDS}


class _Blockdev:
    def __init__(self, state: HostState, io: IO) -> None:
        self.state = state
        self.io = io

    def warnx(self, text: str) -> None:
        self.io.err(f"blockdev: {text}\n")

    def tryhelp(self) -> None:
        self.io.err("Try 'blockdev --help' for more information.\n")
        raise _Exit(1)

    def open(self, path: str, report: bool = False):
        """open(path, O_RDONLY): a simulated device, ("file", stat) for anything else, or
        an errno."""
        dev = blockio.lookup_path(self.state, path)
        if dev is not None:
            return dev
        if is_device_path(path) and os.environ.get("THINSIM_PRIVATE_DEV") != "/dev":
            return E.ENOENT  # without the private /dev this name could reach a real device
        try:
            fd = os.open(path, os.O_RDONLY | (os.O_NONBLOCK if report else 0))
        except OSError as e:
            return e.errno
        try:
            return ("file", os.fstat(fd))
        finally:
            os.close(fd)

    def main(self, argv: list[str]) -> int:
        if not argv:
            self.warnx("not enough arguments")
            self.tryhelp()
        if argv[0] in ("-V", "--version", "-h", "--help"):
            return unsupported(self.io, "blockdev", argv[0])
        if argv[0] == "--report":
            self.io.out("RO    RA   SSZ   BSZ        StartSec            Size   Device\n")
            if len(argv) == 1:
                return unsupported(self.io, "blockdev", "--report of every device")
            for path in argv[1:]:
                self.report(path)
            return 0
        d = 0
        while d < len(argv):
            a = argv[d]
            if a in _BY_NAME:
                if _BY_NAME[a][2] == "arg":
                    d += 1
                d += 1
                continue
            if a == "--getsz":
                d += 1
                continue
            if a == "--":
                d += 1
                break
            if not a.startswith("-"):
                break
            d += 1
        if d >= len(argv):
            self.warnx("no device specified")
            self.tryhelp()
        for path in argv[d:]:
            dev = self.open(path)
            if isinstance(dev, int):
                self.warnx(f"cannot open {path}: {os.strerror(dev)}")
                raise _Exit(1)
            self.do_commands(dev, argv[:d], path)
        return 0

    def do_commands(self, dev, commands: list[str], path: str) -> None:
        verbose = False
        i = 0
        while i < len(commands):
            a = commands[i]
            i += 1
            if a in ("-v", "-q"):
                verbose = a == "-v"
                continue
            if a == "--getsz":
                size = self.size_of(dev)
                if size is None:
                    self.warnx("could not get device size")
                    raise _Exit(1)
                self.io.out(f"{size // SECTOR}\n")
                continue
            cmd = _BY_NAME.get(a)
            if cmd is None:
                self.warnx(f"Unknown command: {a}")
                self.tryhelp()
            name, ioc, kind, help_ = cmd
            arg = None
            if kind == "arg":
                if i >= len(commands):
                    self.warnx(f"{name} requires an argument")
                    self.tryhelp()
                arg = _strtos32(self, commands[i])
                i += 1
            errno, value = self.ioctl(dev, name, ioc, arg)
            if errno:
                self.warnx(f"ioctl error on {ioc}: {os.strerror(errno)}")
                if verbose:
                    self.io.out(f"{help_} failed.\n")
                raise _Exit(1)
            if kind in ("none", "set", "arg"):
                if verbose:
                    self.io.out(f"{help_} succeeded.\n")
                continue
            if verbose:
                self.io.out(f"{help_}: ")
            self.io.out(f"{value}\n")

    def size_of(self, dev) -> int | None:
        """lib/blkdev.c: blkdev_get_size (a regular file's size too)."""
        if isinstance(dev, tuple):
            st = dev[1]
            return st.st_size if stat.S_ISREG(st.st_mode) else None
        return devices.device_size(self.state, dev)

    def ioctl(self, dev, name: str, ioc: str, arg: int | None):
        """(errno, value) of one blockdev command's ioctl."""
        if isinstance(dev, tuple):
            return E.ENOTTY, None  # not a block device
        if ioc == "BLKROSET":
            dev.bd_read_only = name == "--setro"
            return 0, None
        if ioc in ("BLKRASET", "BLKFRASET"):
            if arg < 0:
                return E.EINVAL, None
            # the bdi keeps whole pages
            dev.read_ahead = (arg * SECTOR // PAGE_SIZE) * PAGE_SIZE // SECTOR
            return 0, None
        if ioc == "BLKFLSBUF":
            return 0, None  # fsync_bdev + invalidate: the simulated page cache is empty
        if ioc == "BLKRRPART":
            if isinstance(dev, LoopDevice) and dev.partscan:
                raise _Unsupported("--rereadpt on a partitioned loop device")
            return E.EINVAL, None  # GENHD_FL_NO_PART
        if ioc == "BLKBSZSET":
            raise _Unsupported("--setbsz")
        return 0, _ioctl(self.state, dev, ioc)

    def report(self, path: str) -> None:
        dev = self.open(path, report=True)
        if isinstance(dev, int):
            self.warnx(f"cannot open {path}: {os.strerror(dev)}")
            return
        if isinstance(dev, tuple):
            self.warnx(f"ioctl error on {path}")
            return
        ro = "ro" if blockio.read_only(dev) else "rw"
        size = devices.device_size(self.state, dev)
        logical = getattr(dev, "block_size", SECTOR)
        self.io.out(
            f"{ro} {_read_ahead(dev):5d} {logical:5d} {_init_blocksize(size, logical):5d} "
            f"{0:15d} {size:15d}   {path}\n"
        )


class _Unsupported(Exception):
    pass


def _strtos32(b: _Blockdev, text: str) -> int:
    """strutils.c: strtos32_or_err."""
    try:
        value = int(text.strip(), 10) if text.strip() else None
    except ValueError:
        value = None
    if value is None:
        b.warnx(f"failed to parse command argument: '{text}': {os.strerror(E.EINVAL)}")
        raise _Exit(1)
    if not -(1 << 31) <= value < (1 << 31):
        b.warnx(f"failed to parse command argument: '{text}': {os.strerror(E.ERANGE)}")
        raise _Exit(1)
    return value


def blockdev(state: HostState, argv: list[str], io: IO) -> int:
    try:
        return _Blockdev(state, io).main(argv)
    except _Exit as e:
        return e.status
    except _Unsupported as e:
        return unsupported(io, "blockdev", str(e))


# -- blkdiscard -------------------------------------------------------------------------

BLKDISCARD_LONGOPTS = [
    Long("help", NO, "h"),
    Long("version", NO, "V"),
    Long("offset", REQUIRED, "o"),
    Long("force", NO, "f"),
    Long("length", REQUIRED, "l"),
    Long("step", REQUIRED, "p"),
    Long("secure", NO, "s"),
    Long("verbose", NO, "v"),
    Long("zeroout", NO, "z"),
]
ULLONG_MAX = (1 << 64) - 1


def blkdiscard(state: HostState, argv: list[str], io: IO) -> int:
    def errx(text: str) -> int:
        io.err(f"blkdiscard: {text}\n")
        return 1

    offset, length, step = 0, ULLONG_MAX, 0
    act = "discard"
    verbose = force = False
    operands: list[str] = []
    try:
        for c, optarg in getopt_long(argv, "hfVsvo:l:p:z", BLKDISCARD_LONGOPTS, operands):
            if c in ("l", "o", "p"):
                what = {"l": "length", "o": "offset", "p": "step"}[c]
                try:
                    value = _strtosize(optarg)
                except ValueError:
                    return errx(f"failed to parse {what}: '{optarg}': {os.strerror(E.EINVAL)}")
                if c == "l":
                    length = value
                elif c == "o":
                    offset = value
                else:
                    step = value
            elif c == "f":
                force = True
            elif c == "s":
                act = "secure"
            elif c == "v":
                verbose = True
            elif c == "z":
                act = "zeroout"
            else:
                return unsupported(io, "blkdiscard", "--help and --version")
    except GetoptError as e:
        io.err(f"blkdiscard: {e}\nTry 'blkdiscard --help' for more information.\n")
        return 1
    if not operands:
        return errx("no device specified")
    path = operands.pop(0)
    if operands:
        io.err("blkdiscard: unexpected number of arguments\n")
        io.err("Try 'blkdiscard --help' for more information.\n")
        return 1
    # open(path, O_RDWR | O_EXCL)
    dev = blockio.lookup_path(state, path)
    if dev is None:
        if is_device_path(path) and os.environ.get("THINSIM_PRIVATE_DEV") != "/dev":
            return errx(f"cannot open {path}: {os.strerror(E.ENOENT)}")
        try:
            fd = os.open(path, os.O_RDWR | (0 if force else os.O_EXCL))
        except OSError as e:
            return errx(f"cannot open {path}: {os.strerror(e.errno)}")
        os.close(fd)
        return errx(f"{path}: not a block device")
    if not force and _held(state, dev):
        return errx(f"cannot open {path}: {os.strerror(E.EBUSY)}")
    blksize = devices.device_size(state, dev)
    secsize = getattr(dev, "block_size", SECTOR)  # BLKSSZGET
    if offset % secsize:
        return errx(f"{path}: offset {offset} is not aligned to sector size {secsize}")
    if offset > blksize:
        return errx(f"{path}: offset is greater than device size")
    end = offset + length
    if end > ULLONG_MAX or end > blksize:
        end = blksize
    length = step if step > 0 else end - offset
    if length % secsize:
        return errx(f"{path}: length {length} is not aligned to sector size {secsize}")
    if force:
        io.err("blkdiscard: Operation forced, data will be lost!\n")
    start = offset
    done = 0
    while offset < end:
        if offset + length > end:
            length = end - offset
        errno = _blk_ioctl(state, dev, act, offset, length, blksize)
        if errno:
            ioc = {"discard": "BLKDISCARD", "secure": "BLKSECDISCARD", "zeroout": "BLKZEROOUT"}
            return errx(f"{path}: {ioc[act]} ioctl failed: {os.strerror(errno)}")
        done += length
        if length == 0:
            break
        offset += length
    if verbose and done:
        verb = "Zero-filled" if act == "zeroout" else "Discarded"
        io.out(f"{path}: {verb} {done} bytes from the offset {start}\n")
    return 0


def _held(state: HostState, dev) -> bool:
    """Whether a dm table holds the device (opened O_EXCL: blkdiscard gets EBUSY)."""
    if isinstance(dev, LoopDevice):
        return dev.number in state.loops and dm.loop_in_use(state, dev)
    return dm.dm_open_count(state, dev) > 0


def _blk_ioctl(state: HostState, dev, act: str, start: int, length: int, size: int) -> int:
    """block/ioctl.c: blk_ioctl_discard, blk_ioctl_secure_erase, blk_ioctl_zeroout."""
    if act == "secure":
        return E.EOPNOTSUPP  # neither loop nor dm-thin can secure-erase
    if act == "discard" and not blockio.supports_discard(state, dev):
        return E.EOPNOTSUPP
    if start % SECTOR or length % SECTOR:
        return E.EINVAL
    if act == "zeroout":
        if start + length - 1 >= size:
            return E.EINVAL
    elif start + length > size:
        return E.EINVAL
    if not length:
        return 0
    try:
        if act == "discard":
            blockio.discard(state, dev, start, length)
        else:
            # no REQ_OP_WRITE_ZEROES on loop or dm-thin: zero pages are written
            blockio.write(state, dev, start, bytes(length))
    except ThinsimError as e:
        return e.errno
    return 0
