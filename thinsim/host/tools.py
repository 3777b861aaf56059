"""The simulated host's commands: what dmsetup, losetup, dd, blkdiscard, blockdev, dmesg,
sync and udevadm print, byte for byte as Debian 12's tools print them.

Each command is ``NAME(state, argv, io) -> exit status``.  A command or option the simulator
does not support says so on stderr and exits 1; it never pretends.
"""

from __future__ import annotations

import os
import sys
import time

from ..errors import ThinsimError
from . import blockio, kernel
from .state import DmDevice, HostState, LoopDevice, is_device_path

DMSETUP_LIBRARY = "1.02.185 (2022-05-18)"
DM_DRIVER = "4.47.0"


class IO:
    """Where a command reads and writes."""

    def __init__(self, stdin=None, stdout=None, stderr=None) -> None:
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def out(self, text: str) -> None:
        self.stdout.write(text)

    def err(self, text: str) -> None:
        self.stderr.write(text)


class Unsupported(Exception):
    """The simulator does not do this."""


def unsupported(io: IO, tool: str, what: str) -> int:
    io.err(f"thinsim: {tool}: {what} is not simulated\n")
    return 1


# -- dmsetup ----------------------------------------------------------------------------

_DM_COMMANDS = (
    "create",
    "remove",
    "remove_all",
    "message",
    "status",
    "table",
    "ls",
    "info",
    "suspend",
    "resume",
    "reload",
    "load",
    "version",
    "targets",
    "deps",
    "mknodes",
    "udevcomplete_all",
    "clear",
)


def _dm_ioctl_error(io: IO, op: str, name: str, e: ThinsimError, devno: str = "") -> int:
    # libdm-iface.c: _do_dm_ioctl -- "on %s %s%s%.0d%s%.0d%s%s failed": the uuid, then
    # "(major:minor)" when the task names the device by number (create's reload does)
    io.err(f"device-mapper: {op} ioctl on {name} {f'({devno})' if devno else ''} failed: ")
    io.err(f"{os.strerror(e.errno)}\n")
    io.err("Command failed.\n")
    return 1


def _no_device(io: IO) -> int:
    io.err("Device does not exist.\n")
    io.err("Command failed.\n")
    return 1


def _parse_table(text: str) -> list[tuple[int, int, str, str]]:
    rows = []
    for line in text.replace(";", "\n").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) < 3:
            raise ValueError(line)
        rows.append((int(words[0]), int(words[1]), words[2], " ".join(words[3:])))
    return rows


def dmsetup(state: HostState, argv: list[str], io: IO) -> int:
    opts: dict[str, object] = {}
    args: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            args.extend(argv[i + 1 :])
            break
        if a in ("--table",):
            opts["table"] = argv[i + 1]
            i += 2
            continue
        if a.startswith("--table="):
            opts["table"] = a.split("=", 1)[1]
        elif a in ("--noflush",):
            opts["noflush"] = True
        elif a in ("--retry", "--noudevsync", "--noudevrules", "--verifyudev", "-f", "--force"):
            opts[a.lstrip("-")] = True
        elif a == "--tree":
            opts["tree"] = True
        elif a in ("-c", "-C", "--columns"):
            opts["columns"] = True
        elif a in ("--noheadings",):
            opts["noheadings"] = True
        elif a in ("-o", "--options"):
            opts["fields"] = argv[i + 1]
            i += 2
            continue
        elif a in ("--target",):
            opts["target"] = argv[i + 1]
            i += 2
            continue
        elif a in ("-u", "--uuid"):
            opts["uuid"] = argv[i + 1]
            i += 2
            continue
        elif a in ("-j", "--major", "-m", "--minor"):
            opts["major" if a in ("-j", "--major") else "minor"] = argv[i + 1]
            i += 2
            continue
        elif a.startswith("-") and len(a) > 1 and not args:
            return unsupported(io, "dmsetup", f"option {a}")
        else:
            args.append(a)
        i += 1
    if not args:
        return unsupported(io, "dmsetup", "running without a command")
    cmd, rest = args[0], args[1:]
    if "minor" in opts:
        # -j MAJOR -m MINOR name the device by number instead of by name
        dev = state.device_by_path(f"{opts.get('major', 254)}:{opts['minor']}")
        if not isinstance(dev, DmDevice):
            return _no_device(io)
        rest = [dev.name, *rest]
    if cmd not in _DM_COMMANDS:
        return unsupported(io, "dmsetup", f"command {cmd!r}")
    if "columns" in opts or "fields" in opts:
        return unsupported(io, "dmsetup", "column output (-c/-o)")
    handler = globals()["_dm_" + cmd]
    return handler(state, rest, opts, io)


def _dm_version(state, rest, opts, io) -> int:
    io.out(f"Library version:   {DMSETUP_LIBRARY}\nDriver version:    {DM_DRIVER}\n")
    return 0


def _dm_targets(state, rest, opts, io) -> int:
    for name, version in (
        ("thin-pool", "v1.22.0"),
        ("thin", "v1.22.0"),
        ("striped", "v1.6.0"),
        ("linear", "v1.4.0"),
        ("error", "v1.5.0"),
    ):
        io.out(f"{name:<16} {version}\n")
    return 0


def _dm_create(state, rest, opts, io) -> int:
    if not rest:
        return unsupported(io, "dmsetup", "create without a name")
    name = rest[0]
    text = opts.get("table")
    if text is None:
        text = rest[1] if len(rest) > 1 else io.stdin.read()
    try:
        rows = _parse_table(text)
    except ValueError:
        return unsupported(io, "dmsetup", "that table syntax")
    try:
        dev = kernel.dm_create(state, name, str(opts.get("uuid", "")))
    except ThinsimError as e:
        return _dm_ioctl_error(io, "create", name, e)
    try:
        kernel.dm_load(state, dev, rows)
    except ThinsimError as e:
        del state.dm[name]
        return _dm_ioctl_error(io, "reload", name, e, dev.devno)
    try:
        kernel.dm_resume(state, dev)
    except ThinsimError as e:
        return _dm_ioctl_error(io, "resume", name, e)
    return 0


def _dm_reload(state, rest, opts, io) -> int:
    if not rest:
        return unsupported(io, "dmsetup", "reload without a name")
    dev = state.dm.get(rest[0])
    if dev is None:
        return _no_device(io)
    text = opts.get("table")
    if text is None:
        text = rest[1] if len(rest) > 1 else io.stdin.read()
    try:
        kernel.dm_load(state, dev, _parse_table(text))
    except ThinsimError as e:
        return _dm_ioctl_error(io, "reload", dev.name, e)
    return 0


_dm_load = _dm_reload


def _each_device(state, rest):
    if rest:
        out = []
        for n in rest:
            dev = state.dm.get(n)
            if dev is None and "/" in n:
                found = state.device_by_path(n)
                dev = found if isinstance(found, DmDevice) else None
            out.append(dev)
        return out
    return [state.dm[n] for n in sorted(state.dm)]


def _dm_suspend(state, rest, opts, io) -> int:
    for dev in _each_device(state, rest):
        if dev is None:
            return _no_device(io)
        kernel.dm_suspend(state, dev)
    return 0


def _dm_resume(state, rest, opts, io) -> int:
    for dev in _each_device(state, rest):
        if dev is None:
            return _no_device(io)
        try:
            kernel.dm_resume(state, dev)
        except ThinsimError as e:
            return _dm_ioctl_error(io, "resume", dev.name, e)
    return 0


def _dm_remove(state, rest, opts, io) -> int:
    if not rest:
        return unsupported(io, "dmsetup", "remove without a name")
    status = 0
    for name, dev in zip(rest, _each_device(state, rest)):
        if dev is None:
            status = _no_device(io)
            continue
        try:
            kernel.dm_remove(state, dev)
        except ThinsimError as e:
            status = _dm_ioctl_error(io, "remove", name, e)
    return status


def _dm_remove_all(state, rest, opts, io) -> int:
    while state.dm:
        removable = [d for d in state.dm.values() if not kernel.dm_open_count(state, d)]
        if not removable:
            break
        for dev in removable:
            kernel.dm_remove(state, dev)
    return 0


def _dm_message(state, rest, opts, io) -> int:
    if len(rest) < 3:
        return unsupported(io, "dmsetup", "message without a device, sector and message")
    dev = state.dm.get(rest[0]) or state.device_by_path(rest[0])
    if not isinstance(dev, DmDevice):
        return _no_device(io)
    try:
        sector = int(rest[1])
    except ValueError:
        return unsupported(io, "dmsetup", f"message sector {rest[1]!r}")
    try:
        kernel.dm_message(state, dev, sector, " ".join(rest[2:]))
    except ThinsimError as e:
        return _dm_ioctl_error(io, "message", dev.name, e)
    return 0


def _status_or_table(state, rest, opts, io, table: bool) -> int:
    devices = _each_device(state, rest)
    if not devices:
        io.out("No devices found\n")
        return 0
    prefix = not rest or len(rest) > 1
    for dev in devices:
        if dev is None:
            return _no_device(io)
        target = opts.get("target")
        for t in dev.live or []:
            if target and t.type != target:
                continue
            params = kernel.target_status(state, t, table=table, noflush=bool(opts.get("noflush")))
            line = f"{t.start} {t.length} {t.type}" + (f" {params}" if params else "")
            io.out((f"{dev.name}: " if prefix else "") + line + "\n")
    return 0


def _dm_status(state, rest, opts, io) -> int:
    return _status_or_table(state, rest, opts, io, table=False)


def _dm_table(state, rest, opts, io) -> int:
    return _status_or_table(state, rest, opts, io, table=True)


def _deps(state, dev) -> list:
    """The devices a dm device's live table uses, in dmsetup deps order."""
    deps = []
    for t in dev.live or []:
        if t.type == "thin-pool":
            deps += [state.loops[t.data_loop], state.loops[t.md_loop]]
        elif t.type == "thin":
            deps.append(state.dm[t.pool_name])
        elif t.type == "linear":
            deps.append(t.obj[1])
    return deps


def _utf8() -> bool:
    for var in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = os.environ.get(var)
        if value:
            return "utf-8" in value.lower() or "utf8" in value.lower()
    return False


def _dm_ls_tree(state, io) -> int:
    """dmsetup ls --tree: every device nobody uses, with what it uses below it."""
    used = {id(d) for dev in state.dm.values() for d in _deps(state, dev)}
    roots = [state.dm[n] for n in sorted(state.dm) if id(state.dm[n]) not in used]
    if not roots:
        io.out("No devices found\n")
        return 0
    tee, last, bar = ("├─", "└─", "│  ") if _utf8() else ("|-", "`-", "|  ")

    def label(dev) -> str:
        name = dev.name if isinstance(dev, DmDevice) else ""
        return f"{name} ({dev.devno})"

    def children(dev, indent: str) -> None:
        if not isinstance(dev, DmDevice):
            return
        deps = _deps(state, dev)
        for i, d in enumerate(deps):
            is_last = i == len(deps) - 1
            io.out(f"{indent}{last if is_last else tee}{label(d)}\n")
            children(d, indent + ("   " if is_last else bar))

    for dev in roots:
        io.out(label(dev) + "\n")
        children(dev, " ")
    return 0


def _dm_ls(state, rest, opts, io) -> int:
    if rest:
        return unsupported(io, "dmsetup", "ls with arguments")
    if opts.get("tree"):
        return _dm_ls_tree(state, io)
    names = sorted(state.dm)
    target = opts.get("target")
    if target:
        names = [n for n in names if any(t.type == target for t in state.dm[n].live or [])]
    if not names:
        io.out("No devices found\n")
        return 0
    for n in names:
        dev = state.dm[n]
        io.out(f"{n}\t({dev.devno})\n")
    return 0


def _dm_info(state, rest, opts, io) -> int:
    devices = _each_device(state, rest)
    if not devices:
        io.out("No devices found\n")
        return 0
    for dev in devices:
        if dev is None:
            return _no_device(io)
        tables = []
        if dev.live is not None:
            tables.append("LIVE")
        if dev.inactive is not None:
            tables.append("INACTIVE")
        io.out(f"Name:              {dev.name}\n")
        io.out(f"State:             {'SUSPENDED' if dev.suspended else 'ACTIVE'}\n")
        io.out("Read Ahead:        256\n")
        io.out(f"Tables present:    {' & '.join(tables) if tables else 'None'}\n")
        io.out(f"Open count:        {kernel.dm_open_count(state, dev)}\n")
        io.out(f"Event number:      {kernel.event_nr(dev)}\n")
        io.out(f"Major, minor:      {kernel.dm_major()}, {dev.minor}\n")
        io.out(f"Number of targets: {len(dev.live or [])}\n")
        if dev.uuid:
            io.out(f"UUID: {dev.uuid}\n")
        io.out("\n")
    return 0


def _dm_deps(state, rest, opts, io) -> int:
    for dev in _each_device(state, rest):
        if dev is None:
            return _no_device(io)
        deps = [d.devno for d in _deps(state, dev)]
        pairs = "".join(" ({}, {})".format(*d.split(":")) for d in deps)
        prefix = f"{dev.name}: " if not rest else ""
        io.out(f"{prefix}{len(deps)} dependencies\t:{pairs}\n")
    return 0


def _dm_mknodes(state, rest, opts, io) -> int:
    return 0


def _dm_udevcomplete_all(state, rest, opts, io) -> int:
    return 0


def _dm_clear(state, rest, opts, io) -> int:
    for dev in _each_device(state, rest):
        if dev is None:
            return _no_device(io)
        dev.inactive = None
    return 0


# -- losetup ----------------------------------------------------------------------------


def losetup(state: HostState, argv: list[str], io: IO) -> int:
    find = show = detach = detach_all = capacity = list_all = False
    assoc = None
    offset = sizelimit = 0
    read_only = False
    positional: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-f", "--find"):
            find = True
        elif a == "--show":
            show = True
        elif a in ("-d", "--detach"):
            detach = True
        elif a in ("-D", "--detach-all"):
            detach_all = True
        elif a in ("-c", "--set-capacity"):
            capacity = True
        elif a in ("-a", "--all"):
            list_all = True
        elif a in ("-r", "--read-only"):
            read_only = True
        elif a in ("-j", "--associated"):
            assoc = argv[i + 1]
            i += 1
        elif a in ("-o", "--offset"):
            offset = int(argv[i + 1])
            i += 1
        elif a == "--sizelimit":
            sizelimit = int(argv[i + 1])
            i += 1
        elif a.startswith("-") and len(a) > 1:
            return unsupported(io, "losetup", f"option {a}")
        else:
            positional.append(a)
        i += 1
    if detach_all:
        for loop in list(state.loops.values()):
            if not kernel.loop_in_use(state, loop):
                del state.loops[loop.number]
        return 0
    if detach:
        status = 0
        for path in positional:
            loop = state.device_by_path(path)
            if not isinstance(loop, LoopDevice):
                io.err(f"losetup: {path}: detach failed: No such device or address\n")
                status = 1
                continue
            if kernel.loop_in_use(state, loop):
                loop.autoclear = True  # loop_clr_fd on an open device: cleared on last close
                continue
            del state.loops[loop.number]
        return status
    if capacity:
        for path in positional:
            loop = state.device_by_path(path)
            if not isinstance(loop, LoopDevice):
                io.err(f"losetup: {path}: set capacity failed: No such device or address\n")
                return 1
            kernel.loop_set_capacity(state, loop)
        return 0
    if list_all or assoc:
        # util-linux reads /sys/block, whose entries come in kernfs hash order
        for n in sorted(state.loops, key=lambda n: (_kernfs_name_hash(f"loop{n}"), n)):
            loop = state.loops[n]
            if assoc and os.path.abspath(assoc) != loop.backing_file:
                continue
            extra = ""
            if loop.offset:
                extra += f", offset {loop.offset}"
            if loop.sizelimit:
                extra += f", sizelimit {loop.sizelimit}"
            io.out(f"{loop.path}: [{loop.device:04d}]:{loop.inode} ({loop.backing_file}){extra}\n")
        return 0
    if find and not positional:
        io.out(f"/dev/loop{state.free_loop()}\n")
        return 0
    if find and len(positional) == 1:
        number = state.free_loop()
        file = positional[0]
    elif len(positional) == 2 and not find:
        loop_path, file = positional
        if not is_device_path(loop_path) or not loop_path.startswith("/dev/loop"):
            return unsupported(io, "losetup", f"device {loop_path}")
        number = int(loop_path[9:])
    elif not positional and not find:
        return unsupported(io, "losetup", "listing without -a")
    else:
        return unsupported(io, "losetup", "those arguments")
    if not os.path.exists(file):
        io.err(f"losetup: {file}: failed to set up loop device: No such file or directory\n")
        return 1
    try:
        loop = kernel.loop_attach(
            state, number, file, offset=offset, sizelimit=sizelimit, read_only=read_only
        )
    except ThinsimError as e:
        io.err(f"losetup: {file}: failed to set up loop device: {os.strerror(e.errno)}\n")
        return 1
    if show:
        io.out(loop.path + "\n")
    return 0


def _kernfs_name_hash(name: str) -> int:
    """fs/kernfs/dir.c: kernfs_name_hash (no namespace)."""
    h = 0
    for c in name.encode():
        h = ((h + (c << 4) + (c >> 4)) * 11) & 0xFFFFFFFFFFFFFFFF
    h = ((h & 0xFFFFFFFF) * 0x61C88647) & 0xFFFFFFFF & 0x7FFFFFFF
    if h < 2:
        h += 2
    return min(h, 0x7FFFFFFE)


# -- blockdev, blkdiscard --------------------------------------------------------------------


def blockdev(state: HostState, argv: list[str], io: IO) -> int:
    if len(argv) < 2:
        return unsupported(io, "blockdev", "those arguments")
    *ops, path = argv
    dev = state.device_by_path(path)
    if dev is None:
        io.err(f"blockdev: cannot open {path}: No such file or directory\n")
        return 1
    size = kernel.device_size(state, dev)
    for op in ops:
        if op == "--getsize64":
            io.out(f"{size}\n")
        elif op == "--getsz":
            io.out(f"{size // 512}\n")
        elif op in ("--getss", "--getpbsz"):
            io.out("512\n")
        elif op == "--getbsz":
            io.out("4096\n")
        elif op == "--flushbufs":
            blockio.flush(state, dev)
        else:
            return unsupported(io, "blockdev", op)
    return 0


def _parse_size(text: str) -> int:
    units = {
        "": 1,
        "K": 1 << 10,
        "KiB": 1 << 10,
        "M": 1 << 20,
        "MiB": 1 << 20,
        "G": 1 << 30,
        "GiB": 1 << 30,
        "T": 1 << 40,
        "TiB": 1 << 40,
        "KB": 1000,
        "MB": 10**6,
        "GB": 10**9,
    }
    digits = text.rstrip("KMGTiBkb")
    return int(digits) * units[text[len(digits) :]]


def blkdiscard(state: HostState, argv: list[str], io: IO) -> int:
    offset = 0
    length = None
    paths = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-o", "--offset"):
            offset = _parse_size(argv[i + 1])
            i += 1
        elif a in ("-l", "--length"):
            length = _parse_size(argv[i + 1])
            i += 1
        elif a.startswith("-"):
            return unsupported(io, "blkdiscard", f"option {a}")
        else:
            paths.append(a)
        i += 1
    if len(paths) != 1:
        return unsupported(io, "blkdiscard", "those arguments")
    path = paths[0]
    dev = state.device_by_path(path)
    if dev is None:
        io.err(f"blkdiscard: cannot open {path}: No such file or directory\n")
        return 1
    size = kernel.device_size(state, dev)
    if length is None or offset + length > size:
        length = size - offset
    if offset % 512:
        io.err(f"blkdiscard: {path}: offset {offset} is not aligned to sector size 512\n")
        return 1
    if length % 512:
        io.err(f"blkdiscard: {path}: length {length} is not aligned to sector size 512\n")
        return 1
    try:
        blockio.discard(state, dev, offset, length)
    except ThinsimError as e:
        io.err(f"blkdiscard: {path}: BLKDISCARD ioctl failed: {os.strerror(e.errno)}\n")
        return 1
    return 0


# -- dd ---------------------------------------------------------------------------------------


def _dd_number(text: str) -> int:
    mult = {
        "c": 1,
        "w": 2,
        "b": 512,
        "kB": 1000,
        "K": 1024,
        "k": 1024,
        "KiB": 1024,
        "MB": 10**6,
        "M": 1 << 20,
        "MiB": 1 << 20,
        "GB": 10**9,
        "G": 1 << 30,
        "GiB": 1 << 30,
        "T": 1 << 40,
        "TiB": 1 << 40,
    }
    total = 1
    for part in text.split("x"):
        digits = part
        suffix = ""
        while digits and not digits[-1].isdigit():
            suffix = digits[-1] + suffix
            digits = digits[:-1]
        if suffix not in mult and suffix:
            raise ValueError(text)
        total *= int(digits) * mult.get(suffix, 1)
    return total


def _human(n: float, base: int) -> str:
    units = [
        "",
        "k" if base == 1000 else "Ki",
        "M" if base == 1000 else "Mi",
        "G" if base == 1000 else "Gi",
        "T" if base == 1000 else "Ti",
    ]
    i = 0
    while n >= base and i < len(units) - 1:
        n /= base
        i += 1
    text = f"{n:.1f}" if n < 10 else f"{n:.0f}"
    return f"{text} {units[i]}B"


def dd(state: HostState, argv: list[str], io: IO) -> int:
    ops = {}
    for a in argv:
        if "=" not in a:
            return unsupported(io, "dd", f"operand {a!r}")
        k, v = a.split("=", 1)
        ops[k] = v
    bs = _dd_number(ops.get("bs", ops.get("ibs", "512")))
    count = _dd_number(ops["count"]) if "count" in ops else None
    skip = _dd_number(ops.get("skip", "0"))
    seek = _dd_number(ops.get("seek", "0"))
    conv = set(filter(None, ops.get("conv", "").split(",")))
    status = ops.get("status", "")
    src = ops.get("if")
    dst = ops.get("of")
    in_dev = state.device_by_path(src) if src else None
    out_dev = state.device_by_path(dst) if dst else None
    if src and is_device_path(src) and in_dev is None:
        io.err(f"dd: failed to open '{src}': No such file or directory\n")
        return 1
    if dst and is_device_path(dst) and out_dev is None:
        io.err(f"dd: failed to open '{dst}': No such file or directory\n")
        return 1
    t0 = time.monotonic()
    records_in = partial_in = records_out = partial_out = 0
    total = 0
    src_f = None if in_dev or not src else open(src, "rb")
    dst_f = None
    if dst and not out_dev:
        mode = "r+b" if os.path.exists(dst) and "notrunc" in conv else "wb"
        dst_f = open(dst, mode)
        if "notrunc" not in conv:
            dst_f.truncate(seek * bs)
    stdin = io.stdin.buffer if hasattr(io.stdin, "buffer") else None
    in_pos = skip * bs
    out_pos = seek * bs
    err_text = None
    try:
        if src_f is not None:
            src_f.seek(in_pos)
        elif src is None and stdin is not None and skip:
            stdin.read(skip * bs)
        n = 0
        while count is None or n < count:
            if in_dev is not None:
                size = kernel.device_size(state, in_dev)
                chunk = blockio.read(state, in_dev, in_pos, min(bs, max(0, size - in_pos)))
            elif src_f is not None:
                chunk = src_f.read(bs)
            else:
                chunk = stdin.read(bs) if stdin is not None else b""
            if not chunk:
                break
            in_pos += len(chunk)
            if len(chunk) == bs:
                records_in += 1
            else:
                partial_in += 1
                if "sync" in conv:
                    # conv=sync pads every input block to ibs with zeros
                    chunk = chunk + bytes(bs - len(chunk))
            try:
                if out_dev is not None:
                    blockio.write(state, out_dev, out_pos, chunk)
                elif dst_f is not None:
                    dst_f.seek(out_pos)
                    dst_f.write(chunk)
                else:
                    out = io.stdout.buffer if hasattr(io.stdout, "buffer") else None
                    if out is None:
                        return unsupported(io, "dd", "binary output to this stream")
                    out.write(chunk)
            except ThinsimError as e:
                err_text = os.strerror(e.errno)
                break
            out_pos += len(chunk)
            total += len(chunk)
            if len(chunk) == bs:
                records_out += 1
            else:
                partial_out += 1
            n += 1
        if err_text is None and out_dev is not None and ("fsync" in conv or "fdatasync" in conv):
            blockio.flush(state, out_dev)
    finally:
        if src_f:
            src_f.close()
        if dst_f:
            dst_f.close()
    if err_text is not None:
        io.err(f"dd: error writing '{dst}': {err_text}\n")
    elapsed = max(time.monotonic() - t0, 1e-6)
    if status not in ("none", "noxfer") or (status == "noxfer"):
        if status != "none":
            io.err(
                f"{records_in}+{partial_in} records in\n{records_out}+{partial_out} records out\n"
            )
            if status != "noxfer":
                if total >= 1000:
                    size = f"{total} bytes ({_human(total, 1000)}, {_human(total, 1024)}) copied"
                    if total < 1024:
                        size = f"{total} bytes ({_human(total, 1000)}) copied"
                else:
                    size = f"{total} bytes copied"
                rate = _human(total / elapsed, 1000)
                io.err(f"{size}, {elapsed:.5g} s, {rate}/s\n")
    return 1 if err_text is not None else 0


# -- dmesg, sync, udevadm -------------------------------------------------------------------


def dmesg(state: HostState, argv: list[str], io: IO) -> int:
    if argv and argv not in (["-t"], ["--notime"]):
        return unsupported(io, "dmesg", " ".join(argv))
    state.stamp_log()
    for line, t in zip(state.log.lines, state.log_times):
        if argv:
            io.out(line + "\n")
        else:
            io.out(f"[{t:12.6f}] {line}\n")
    return 0


def sync(state: HostState, argv: list[str], io: IO) -> int:
    os.sync()
    return 0


def udevadm(state: HostState, argv: list[str], io: IO) -> int:
    if argv[:1] == ["settle"]:
        return 0
    return unsupported(io, "udevadm", " ".join(argv[:1]) or "without a command")


COMMANDS = {
    "dmsetup": dmsetup,
    "losetup": losetup,
    "blockdev": blockdev,
    "blkdiscard": blkdiscard,
    "dd": dd,
    "dmesg": dmesg,
    "sync": sync,
    "udevadm": udevadm,
}

# Commands that are not simulated but must never be handed a simulated device.
GUARDED = (
    "mkfs",
    "mkfs.ext2",
    "mkfs.ext3",
    "mkfs.ext4",
    "mkfs.xfs",
    "mkfs.btrfs",
    "mkfs.vfat",
    "mke2fs",
    "mount",
    "umount",
    "fdisk",
    "sfdisk",
    "parted",
    "wipefs",
    "blkid",
    "fsck",
    "e2fsck",
    "tune2fs",
    "resize2fs",
    "xfs_growfs",
    "cat",
    "cp",
    "hexdump",
    "od",
    "head",
    "tail",
    "cmp",
    "md5sum",
    "sha256sum",
    "shred",
    "truncate",
    "fallocate",
    "tee",
    "xxd",
    "mkswap",
    "swapon",
    "pvcreate",
    "vgcreate",
    "lvcreate",
    "cryptsetup",
    "badblocks",
    "thin_check",
    "thin_dump",
    "thin_ls",
    "thin_delta",
    "thin_restore",
    "thin_repair",
    "thin_metadata_size",
    "thin_trim",
    "thin_rmap",
)
