"""losetup, as util-linux 2.38.1 prints (sys-utils/losetup.c over lib/loopdev.c).

The flow of ``main`` is losetup.c's, in its order: option parsing (getopt_long, the
exclusive-option groups, ``-c``/``-d`` checking their device at once), the action it
settles on, then the action.  Devices are read the way loopdev.c reads them on a 6.1 kernel:
from sysfs (``/sys/block/loopN/loop/*`` exists only while the device is bound), with
LOOP_GET_STATUS64 for the backing device and inode.
"""

from __future__ import annotations

import errno as E
import os
import stat

from ...constants import LOOP_MAJOR
from ...constants import SECTOR_SIZE as SECTOR
from ...errors import ThinsimError
from ...model import devices, dm, loopfile
from ...model.loop import loop_attach, loop_detach, loop_set_capacity
from ..state import HostState, LoopDevice, is_device_path
from .common import IO, unsupported
from .getopt import NO, OPTIONAL, REQUIRED, GetoptError, Long, getopt_long
from .smartcols import BOOLEAN, NUMBER, Column, render

PROG = "losetup"
LOOPDEV_DEFAULT_NNODES = 8

# losetup.c: infos[] (name, width hint, right-aligned, JSON type), in COL_* order
COLUMNS = [
    Column("NAME", 0.25),
    Column("AUTOCLEAR", 1, True, BOOLEAN),
    Column("BACK-FILE", 0.3),
    Column("BACK-INO", 4, True, NUMBER),
    Column("BACK-MAJ:MIN", 6),
    Column("MAJ:MIN", 3),
    Column("OFFSET", 5, True, NUMBER),
    Column("PARTSCAN", 1, True, BOOLEAN),
    Column("RO", 1, True, BOOLEAN),
    Column("SIZELIMIT", 5, True, NUMBER),
    Column("DIO", 1, True, BOOLEAN),
    Column("LOG-SEC", 4, True, NUMBER),
]
(
    COL_NAME,
    COL_AUTOCLR,
    COL_BACK_FILE,
    COL_BACK_INO,
    COL_BACK_MAJMIN,
    COL_MAJMIN,
    COL_OFFSET,
    COL_PARTSCAN,
    COL_RO,
    COL_SIZELIMIT,
    COL_DIO,
    COL_LOGSEC,
) = range(12)
DEFAULT_COLUMNS = [
    COL_NAME,
    COL_SIZELIMIT,
    COL_OFFSET,
    COL_AUTOCLR,
    COL_RO,
    COL_BACK_FILE,
    COL_DIO,
    COL_LOGSEC,
]

OPT_SIZELIMIT, OPT_SHOW, OPT_RAW, OPT_DIO, OPT_OUTPUT_ALL = 128, 129, 130, 131, 132
LONGOPTS = [
    Long("all", NO, "a"),
    Long("set-capacity", REQUIRED, "c"),
    Long("detach", REQUIRED, "d"),
    Long("detach-all", NO, "D"),
    Long("find", NO, "f"),
    Long("nooverlap", NO, "L"),
    Long("help", NO, "h"),
    Long("associated", REQUIRED, "j"),
    Long("json", NO, "J"),
    Long("list", NO, "l"),
    Long("sector-size", REQUIRED, "b"),
    Long("noheadings", NO, "n"),
    Long("offset", REQUIRED, "o"),
    Long("output", REQUIRED, "O"),
    Long("output-all", NO, OPT_OUTPUT_ALL),
    Long("sizelimit", REQUIRED, OPT_SIZELIMIT),
    Long("partscan", NO, "P"),
    Long("read-only", NO, "r"),
    Long("direct-io", OPTIONAL, OPT_DIO),
    Long("raw", NO, OPT_RAW),
    Long("show", NO, OPT_SHOW),
    Long("verbose", NO, "v"),
    Long("version", NO, "V"),
]
# losetup.c: excl[] (rows in ASCII order as written there; 'O' after 'f' is never reached
# by optutils.h's scan, so -O mixes with -D/-c/-d/-f unnoticed, as on the real host)
EXCL = [
    ["D", "a", "c", "d", "f", "j"],
    ["D", "c", "d", "f", "l"],
    ["D", "c", "d", "f", "O"],
    ["J", OPT_RAW],
]

A_CREATE, A_DELETE, A_DELETE_ALL, A_SHOW, A_SHOW_ONE, A_FIND_FREE, A_SET_CAPACITY = range(1, 8)
A_SET_DIRECT_IO, A_SET_BLOCKSIZE = 8, 9


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _key(v: object) -> int:
    return ord(v) if isinstance(v, str) else v


class Losetup:
    """One losetup run: the loopdev context (one current device) and the output options."""

    def __init__(self, state: HostState, io: IO) -> None:
        self.state = state
        self.io = io
        self.device: str | None = None  # lc->device, as the user spelled it
        self.raw = self.json = self.no_headings = False

    # -- messages (c.h: warn, warnx, err, errx) --------------------------------------------

    def warnx(self, text: str) -> None:
        self.io.err(f"{PROG}: {text}\n")

    def warn(self, text: str, errno: int) -> None:
        self.warnx(f"{text}: {os.strerror(errno)}")

    def errx(self, text: str) -> None:
        self.warnx(text)
        raise _Exit(1)

    def err(self, text: str, errno: int) -> None:
        self.warn(text, errno)
        raise _Exit(1)

    # -- the kernel's loop devices as loopdev.c sees them -----------------------------------

    @property
    def nodes(self) -> set[int]:
        return self.state.loop_nodes

    def number_of(self, path: str | None) -> int | None:
        """The loop number a path names when it is an existing loop node (is_loopdev)."""
        devno = devices.node_devno(self.state, path) if path else None
        major, _, minor = (devno or "").partition(":")
        return int(minor) if major == str(LOOP_MAJOR) else None

    def is_loopdev(self, path: str) -> bool:
        return self.number_of(path) is not None

    def set_device(self, device: str | None) -> None:
        """loopcxt_set_device: names without a slash go under /dev."""
        if device is not None and not device.startswith("/"):
            device = "/dev/" + device
        self.device = device

    def bound(self) -> LoopDevice | None:
        """The current device's binding (what /sys/block/loopN/loop/ describes), if any."""
        n = self.number_of(self.device)
        return None if n is None else self.state.loops.get(n)

    def used_devices(self):
        """loopcxt_next with LOOPITER_FL_USED: /sys/block entries that have
        loop/backing_file, in readdir order (kernfs keeps a directory sorted by name hash)."""
        # kernfs_sd_compare: by hash, then by name
        order = sorted(self.state.loops, key=lambda n: (_kernfs_name_hash(f"loop{n}"), f"loop{n}"))
        for n in order:
            if n in self.state.loops:
                self.set_device(f"loop{n}")
                yield self.state.loops[n]

    def backing_file(self, loop: LoopDevice) -> str:
        """loop/backing_file: the path the kernel has for the open file (d_path)."""
        return loopfile.backing_name(loop)

    def is_used(self, loop: LoopDevice, st, file: str, offset: int, check_offset: bool) -> bool:
        """loopcxt_is_used: the same inode and device, or (without stat) the same name."""
        if st is not None:
            found = (loop.inode, loop.device) == (st.st_ino, st.st_dev)
        else:
            found = self.backing_file(loop) == file
        if found and check_offset:
            return loop.offset == offset
        return found

    # -- output ------------------------------------------------------------------------

    def printf_loopdev(self) -> int:
        loop = self.bound()
        if loop is None:
            return -E.ENOENT  # loop/backing_file cannot be read
        text = f"{self.device}: [{loop.device:04d}]:{loop.inode} ({self.backing_file(loop)})"
        if loop.offset:
            text += f", offset {loop.offset}"
        if loop.sizelimit:
            text += f", sizelimit {loop.sizelimit}"
        self.io.out(text + "\n")
        return 0

    def row(self, columns: list[int]) -> list[str | None]:
        """losetup.c: set_scols_data."""
        loop = self.bound()
        n = self.number_of(self.device)
        cells: list[str | None] = []
        for col in columns:
            value: str | None = None
            if col == COL_NAME:
                value = self.device
            elif col == COL_BACK_FILE:
                value = self.backing_file(loop) if loop else None
            elif col == COL_OFFSET:
                value = str(loop.offset) if loop else None
            elif col == COL_SIZELIMIT:
                value = str(loop.sizelimit) if loop else None
            elif col == COL_BACK_MAJMIN:
                if loop and loop.device:
                    value = f"{os.major(loop.device):8d}:{os.minor(loop.device):<3d}"
            elif col == COL_MAJMIN:
                if n is not None:
                    value = f"{LOOP_MAJOR:3d}:{n:<3d}"
            elif col == COL_BACK_INO:
                if loop and loop.inode:
                    value = str(loop.inode)
            elif col == COL_AUTOCLR:
                value = "1" if loop and loop.autoclear else "0"
            elif col == COL_RO:
                value = "1" if loop and loop.read_only else "0"
            elif col == COL_DIO:
                value = "1" if loop and loop.dio else "0"
            elif col == COL_PARTSCAN:
                # no loop/partscan while unbound: loopmod_supports_partscan() says 1
                value = ("1" if loop.partscan else "0") if loop else "1"
            elif col == COL_LOGSEC:
                value = str(getattr(loop, "block_size", SECTOR))
            cells.append(value)
        return cells

    def devices_of(self, file: str | None, offset: int, check_offset: bool):
        """The bound devices, current in turn; only those FILE backs when FILE is given
        (losetup.c: the loopcxt_is_used loop, retried with the canonical path once)."""
        st = _stat(file) if file else None
        cn_file = None
        for loop in self.used_devices():
            if file:
                used = self.is_used(loop, st, cn_file or file, offset, check_offset)
                if not used and cn_file is None:
                    cn_file = _canonicalize(file)
                    used = self.is_used(loop, st, cn_file, offset, check_offset)
                if not used:
                    continue
            yield loop

    def show_table(self, columns, file: str | None, offset: int, check_offset: bool) -> int:
        rows = []
        if self.device is not None:
            rows.append(self.row(columns))
        else:
            for _loop in self.devices_of(file, offset, check_offset):
                rows.append(self.row(columns))
            self.device = None
        self.io.out(
            render(
                [COLUMNS[c] for c in columns],
                rows,
                raw=self.raw,
                json=self.json,
                noheadings=self.no_headings,
                name="loopdevices",
            )
        )
        return 0

    def show_all_loops(self, file: str | None, offset: int, check_offset: bool) -> int:
        for _loop in self.devices_of(file, offset, check_offset):
            self.printf_loopdev()
        self.device = None
        return 0

    # -- actions -----------------------------------------------------------------------

    def delete_loop(self) -> int:
        """loopcxt_delete_device (LOOP_CLR_FD); warns on failure."""
        loop = self.bound()
        if loop is None:
            self.warn(f"{self.device}: detach failed", E.ENXIO)
            return -1
        if dm.loop_in_use(self.state, loop):
            loop.autoclear = True  # loop_clr_fd on a held device: cleared on last close
            return 0
        loop_detach(self.state, loop)
        return 0

    def find_unused(self) -> int:
        """LOOP_CTL_GET_FREE: the first existing unbound device, or a new one."""
        free = [n for n in sorted(self.nodes) if n not in self.state.loops]
        if free:
            n = free[0]
        else:
            n = 0
            while n in self.nodes:
                n += 1
            self.nodes.add(n)
        self.set_device(f"loop{n}")
        return 0

    def add_device(self) -> None:
        """loopcxt_add_device: LOOP_CTL_ADD with the number in "/loopN" or "/N" (the last
        slash on); the kernel makes loopN even when the path is not /dev/loopN."""
        name = self.device.rsplit("/", 1)[-1]
        nr = _leading_int(name[4:]) if name.startswith("loop") else None
        if nr is None:
            nr = _leading_int(name)
        if nr is not None:
            self.nodes.add(nr)

    def create_loop(self, lo_flags: dict, offset: int, sizelimit: int, file: str) -> int:
        hasdev = self.device is not None
        if hasdev:
            self.add_device()
        else:
            self.find_unused()
        filename = _canonicalize(file)
        read_only = lo_flags.get("ro", False)
        # loopcxt_setup_device: the backing file first
        try:
            if os.path.isdir(filename) and not read_only:
                raise OSError(E.EISDIR, "")
            st = os.stat(filename)
        except OSError as e:
            self.warn(f"{file}: failed to set up loop device", e.errno)
            return -1
        if not read_only and not os.access(filename, os.W_OK):
            read_only = True  # EROFS/EACCES: losetup falls back to read-only
        errno = self.configure(filename, st, offset, sizelimit, dict(lo_flags, ro=read_only))
        if errno:
            errpre = self.device if hasdev and self.device_fd_fails() else file
            self.warn(f"{errpre}: failed to set up loop device", errno)
            return -1
        return 0

    def device_fd_fails(self) -> bool:
        """Whether open(lc->device) fails (then losetup names the device, not the file)."""
        if self.is_loopdev(self.device):
            return False
        if is_device_path(self.device):
            return self.state.device_by_path(self.device) is None
        return not os.path.exists(self.device)

    def configure(self, filename: str, st, offset: int, sizelimit: int, flags: dict) -> int:
        """Open the device and LOOP_CONFIGURE (falling back to LOOP_SET_FD); an errno or 0."""
        n = self.number_of(self.device)
        if n is None:
            if self.device_fd_fails():
                return E.ENOENT
            if os.path.isdir(self.device):
                return E.EISDIR
            return E.ENOTTY  # not a loop device: the loop ioctls are unknown to it
        if n in self.state.loops:
            return E.EBUSY
        if flags.get("block_size") and _validate_block_size(flags["block_size"]):
            return E.EINVAL  # LOOP_CONFIGURE, then LOOP_SET_FD + LOOP_SET_BLOCK_SIZE, refuse it
        # loop_validate_file: a regular file or a block device
        if stat.S_ISDIR(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            return E.EINVAL
        if is_device_path(filename) or stat.S_ISBLK(st.st_mode):
            raise _Unsupported("a loop device on a block device")
        try:
            loop = loop_attach(
                self.state, n, filename, offset=offset, sizelimit=sizelimit, read_only=flags["ro"]
            )
        except ThinsimError as e:
            return e.errno
        loop.backing_file = filename
        loop.dio = flags.get("dio", False)
        loop.partscan = flags.get("partscan", False)
        if flags.get("block_size"):
            loop.block_size = flags["block_size"]
        return 0


class _Unsupported(Exception):
    pass


def _validate_block_size(size: int) -> int:
    """blk_validate_block_size: a power of two from 512 to the page size, else EINVAL."""
    ok = SECTOR <= size <= 4096 and size & (size - 1) == 0
    return 0 if ok else E.EINVAL


def _leading_int(text: str) -> int | None:
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def _stat(path: str):
    try:
        return os.stat(path)
    except OSError:
        return None


def _canonicalize(path: str) -> str:
    """canonicalize.c: canonicalize_path (realpath, or the path itself when that fails)."""
    try:
        return os.path.realpath(path, strict=True)
    except OSError:
        return path


def _strtosize(text: str) -> int:
    """strutils.c: parse_size (binary suffixes K, KiB, M ...; decimal KB, MB ...)."""
    s = text.strip()
    if not s or s[0] == "-":
        raise ValueError(text)
    digits = ""
    i = 0
    base = 10
    if s.startswith(("0x", "0X")):
        base = 16
        i = 2
        while i < len(s) and s[i] in "0123456789abcdefABCDEF":
            digits += s[i]
            i += 1
    else:
        if s.startswith("0") and len(s) > 1 and s[1].isdigit():
            base = 8
        while i < len(s) and s[i].isdigit():
            digits += s[i]
            i += 1
    if not digits:
        raise ValueError(text)
    value = int(digits, base)
    suffix = s[i:]
    if not suffix:
        return value
    units = "KMGTPEZY"
    letter = suffix[0].upper()
    if letter not in units:
        raise ValueError(text)
    rest = suffix[1:]
    if rest in ("", "iB", "ib"):
        mult = 1024
    elif rest in ("B", "b"):
        mult = 1000
    else:
        raise ValueError(text)
    return value * mult ** (units.index(letter) + 1)


def losetup(state: HostState, argv: list[str], io: IO) -> int:
    lc = Losetup(state, io)
    try:
        return _main(lc, argv)
    except _Exit as e:
        return e.status
    except _Unsupported as e:
        return unsupported(io, PROG, str(e))


def _main(lc: Losetup, argv: list[str]) -> int:
    act = 0
    check_offset = False
    no_overlap = False
    file = None
    offset = sizelimit = 0
    showdev = False
    lo_flags: dict = {}
    outarg = None
    columns: list[int] = []
    listing = False
    set_dio = use_dio = False
    set_blocksize = False
    blocksize = 0
    excl_st = [0] * len(EXCL)
    operands: list[str] = []
    try:
        for c, optarg in getopt_long(argv, "ab:c:d:Dfhj:JlLno:O:PrvV", LONGOPTS, operands):
            _exclusive(lc, c, excl_st)
            if c == "a":
                act = A_SHOW
            elif c == "b":
                set_blocksize = True
                try:
                    blocksize = _strtosize(optarg)
                except ValueError:
                    lc.err(f"failed to parse logical block size: '{optarg}'", E.EINVAL)
            elif c in ("c", "d"):
                act = A_SET_CAPACITY if c == "c" else A_DELETE
                if not lc.is_loopdev(optarg):
                    lc.err(f"{optarg}: failed to use device", E.ENODEV)
                lc.set_device(optarg)
            elif c == "r":
                lo_flags["ro"] = True
            elif c == "D":
                act = A_DELETE_ALL
            elif c == "f":
                act = A_FIND_FREE
            elif c == "J":
                lc.json = True
            elif c == "j":
                act = A_SHOW
                file = optarg
            elif c == "l":
                listing = True
            elif c == "L":
                no_overlap = True
            elif c == "n":
                lc.no_headings = True
            elif c == OPT_RAW:
                lc.raw = True
            elif c == "o":
                try:
                    offset = _strtosize(optarg)
                except ValueError:
                    lc.err(f"failed to parse offset: '{optarg}'", E.EINVAL)
                check_offset = True
            elif c == "O":
                outarg = optarg
                listing = True
            elif c == OPT_OUTPUT_ALL:
                columns = list(range(len(COLUMNS)))
            elif c == "P":
                lo_flags["partscan"] = True
            elif c == OPT_SHOW:
                showdev = True
            elif c == OPT_DIO:
                set_dio = True
                use_dio = True
                if optarg is not None:
                    if optarg == "on":
                        use_dio = True
                    elif optarg == "off":
                        use_dio = False
                    else:
                        lc.errx(f"argument error: {optarg}")
                if use_dio:
                    lo_flags["dio"] = True
            elif c == "v":
                pass
            elif c == OPT_SIZELIMIT:
                try:
                    sizelimit = _strtosize(optarg)
                except ValueError:
                    lc.err(f"failed to parse size: '{optarg}'", E.EINVAL)
            elif c in ("h", "V"):
                return unsupported(lc.io, PROG, "--help and --version")
    except GetoptError as e:
        lc.warnx(str(e))
        lc.io.err(f"Try '{PROG} --help' for more information.\n")
        return 1

    if not argv:
        act = A_SHOW
        listing = True
    if not act and len(argv) == 1 and (lc.raw or lc.json):
        act = A_SHOW
        listing = True
    if listing and not columns:
        columns = list(DEFAULT_COLUMNS)
    if act == A_FIND_FREE and operands:
        act = A_CREATE
        file = operands.pop(0)
        if operands:
            lc.errx("unexpected arguments")
    if listing and not act and not operands:
        act = A_SHOW
    if not act and len(operands) == 1:
        if set_dio:
            act = A_SET_DIRECT_IO
            lo_flags.pop("dio", None)
        elif set_blocksize:
            act = A_SET_BLOCKSIZE
        else:
            act = A_SHOW_ONE
        path = operands.pop(0)
        if not lc.is_loopdev(path):
            lc.err(f"{path}: failed to use device", E.ENODEV)
        lc.set_device(path)
    if not act:
        act = A_CREATE
        if not operands:
            lc.errx("no loop device specified")
        lc.set_device(operands.pop(0))
        if not operands:
            lc.errx("no file specified")
        file = operands.pop(0)
    if act != A_CREATE and (sizelimit or lo_flags or showdev):
        lc.errx(
            "the options --{sizelimit,partscan,read-only,show} are allowed during loop "
            "device setup only"
        )
    if check_offset and act != A_CREATE and (act != A_SHOW or not file):
        lc.errx("the option --offset is not allowed in this context")
    if outarg is not None:
        columns = _add_columns(lc, outarg, columns)
        if columns is None:
            return 1

    res = 0
    if act == A_CREATE:
        if no_overlap:
            return unsupported(lc.io, PROG, "option --nooverlap")
        if blocksize:
            lo_flags["block_size"] = blocksize
        res = lc.create_loop(lo_flags, offset, sizelimit, file)
        if res == 0:
            if showdev:
                lc.io.out(f"{lc.device}\n")
            _warn_size(lc, file, sizelimit, offset, check_offset)
    elif act == A_DELETE:
        res = lc.delete_loop()
        while operands:
            path = operands.pop(0)
            if not lc.is_loopdev(path):
                lc.warn(f"{path}: failed to use device", E.ENODEV)
            else:
                lc.set_device(path)
            res += lc.delete_loop()
    elif act == A_DELETE_ALL:
        for _loop in lc.used_devices():
            res += lc.delete_loop()
    elif act == A_FIND_FREE:
        lc.find_unused()
        lc.io.out(f"{lc.device}\n")
    elif act == A_SHOW:
        if listing:
            res = lc.show_table(columns, file, offset, check_offset)
        else:
            res = lc.show_all_loops(file, offset, check_offset)
    elif act == A_SHOW_ONE:
        if listing:
            res = lc.show_table(columns, None, 0, False)
        else:
            res = lc.printf_loopdev()
            if res:
                lc.warn(lc.device, E.ENOENT)
    elif act == A_SET_CAPACITY:
        loop = lc.bound()
        if loop is None:
            lc.warn(f"{lc.device}: set capacity failed", E.ENXIO)
            res = 1
        else:
            try:
                loop_set_capacity(lc.state, loop)
            except ThinsimError as e:  # the backing file is lost (loopfile.py)
                lc.warn(f"{lc.device}: set capacity failed", e.errno)
                res = 1
    elif act == A_SET_DIRECT_IO:
        loop = lc.bound()
        if loop is None:
            lc.warn(f"{lc.device}: set direct io failed", E.ENXIO)
            res = 1
        else:
            loop.dio = use_dio
    elif act == A_SET_BLOCKSIZE:
        loop = lc.bound()
        errno = E.ENXIO if loop is None else _validate_block_size(blocksize)
        if errno:
            lc.warn(f"{lc.device}: set logical block size failed", errno)
            res = 1
        else:
            loop.block_size = blocksize
    else:
        lc.warnx("bad usage")
        lc.io.err(f"Try '{PROG} --help' for more information.\n")
        return 1
    return 1 if res else 0


def _exclusive(lc: Losetup, c: object, status: list[int]) -> None:
    """optutils.h: err_exclusive_options."""
    key = _key(c)
    for e, row in enumerate(EXCL):
        if _key(row[0]) > key:
            break
        for op in row:
            if _key(op) > key:
                break
            if op != c:
                continue
            if status[e] == 0:
                status[e] = key
            elif status[e] != key:
                names = []
                for o in row:
                    long = next((x.name for x in LONGOPTS if x.val == o), None)
                    names.append(f" --{long}" if long else f" -{o}")
                lc.io.err(f"{PROG}: mutually exclusive arguments:{''.join(names)}\n")
                raise _Exit(1)
            break


def _add_columns(lc: Losetup, outarg: str, columns: list[int]) -> list[int] | None:
    """strutils.c: string_add_to_idarray with losetup's column_name_to_id."""
    if not outarg:
        return None
    if outarg.startswith("+"):
        spec, out = outarg[1:], list(columns)
    else:
        spec, out = outarg, []
    if not spec:
        return None
    begin = None
    i = 0
    while i < len(spec):
        if begin is None:
            begin = i
        end = None
        if spec[i] == ",":
            end = i
        if i + 1 == len(spec):
            end = i + 1
        if end is not None:
            if end <= begin:
                return None
            name = spec[begin:end]
            ids = [k for k, c in enumerate(COLUMNS) if c.name.lower() == name.lower()]
            if not ids:
                lc.warnx(f"unknown column: {spec[begin:]}")
                return None
            if len(out) >= len(COLUMNS) * 2:
                return None
            out.append(ids[0])
            begin = None
        i += 1
    return out


def _warn_size(lc: Losetup, filename: str, sizelimit: int, offset: int, has_offset: bool):
    size = sizelimit
    if not size:
        st = _stat(filename)
        if st is None or stat.S_ISBLK(st.st_mode):
            return
        size = st.st_size
        if has_offset:
            size = (size - offset) % (1 << 64)  # uint64_t
    if size < 512:
        lc.warnx(
            f"{filename}: Warning: file is smaller than 512 bytes; the loop device may be "
            "useless or invisible for system tools."
        )
    elif size % 512:
        lc.warnx(
            f"{filename}: Warning: file does not fit into a 512-byte sector; the end of the "
            "file will be ignored."
        )


def _kernfs_name_hash(name: str) -> int:
    """fs/kernfs/dir.c: kernfs_name_hash (no namespace): partial_name_hash over the bytes in
    an unsigned long, end_name_hash = hash_long(hash, 32) (hash_64 on a 64-bit kernel)."""
    h = 0
    for c in name.encode():
        h = ((h + (c << 4) + (c >> 4)) * 11) & 0xFFFFFFFFFFFFFFFF
    h = ((h * 0x61C8864680B583EB) & 0xFFFFFFFFFFFFFFFF) >> 32
    h &= 0x7FFFFFFF
    if h < 2:
        h += 2
    return min(h, 0x7FFFFFFE)


__all__ = ["losetup"]
