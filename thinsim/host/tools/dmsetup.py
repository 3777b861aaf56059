"""dmsetup, as Debian 12's dmsetup 1.02.185 (driver 4.47.0) prints."""

from __future__ import annotations

import os

from ...errors import ThinsimError
from .. import kernel
from ..state import DmDevice, HostState
from .common import IO, unsupported

DMSETUP_LIBRARY = "1.02.185 (2022-05-18)"
DM_DRIVER = "4.47.0"

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
