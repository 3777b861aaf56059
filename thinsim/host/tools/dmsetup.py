"""dmsetup, as Debian 12's dmsetup 1.02.185 (lvm2 2.03.16, driver 4.47.0) prints.

A port of lvm2's libdm/dm-tools/dmsetup.c (option parsing, the command table, each command)
over libdm's task layer (libdm/ioctl/libdm-iface.c: how an ioctl failure is reported) and
its report engine (``thinsim.host.libdm_report``); the ioctls themselves are
``thinsim.model.dm``'s.
"""

from __future__ import annotations

import os
import re
import sys

from ...constants import DM_MAJOR
from ...errors import ThinsimError
from ...getopt import NO_ARGUMENT, REQUIRED_ARGUMENT, LongOption
from ...getopt import parse as getopt_parse
from ...model import devices, dm
from ..libdm_report import (
    NUM,
    STR,
    FieldType,
    ObjectType,
    Report,
    ReportError,
    ReportFieldError,
)
from ..state import DmDevice, HostState, is_device_path
from .common import IO, unsupported

DMSETUP_LIBRARY = "1.02.185 (2022-05-18)"
DM_DRIVER = "4.47.0"
DM_IOCTL_RETRIES = 25  # libdm-iface.c: remove --retry tries this often (200 ms apart)
DM_COOKIE_MAGIC = 0x0D4D
DM_UDEV_FLAGS_SHIFT = 16
DM_READ_AHEAD_AUTO = -1  # UINT32_MAX in libdm; any negative here
DM_READ_AHEAD_NONE = -2


class _Fail(Exception):
    """A libdm call failed (its messages are printed); the command returns 0."""


# -- the command table (dmsetup.c: _dmsetup_commands) -------------------------------------

# name, help, min_args, max_args, repeatable_cmd, has_subcommands
_COMMANDS = [
    ("help", "[-c|-C|--columns]", 0, 0, 0, 0),
    (
        "create",
        (
            "<dev_name>\n"
            "\t    [-j|--major <major> -m|--minor <minor>]\n"
            "\t    [-U|--uid <uid>] [-G|--gid <gid>] [-M|--mode <octal_mode>]\n"
            "\t    [-u|--uuid <uuid>] [--addnodeonresume|--addnodeoncreate]\n"
            "\t    [--readahead {[+]<sectors>|auto|none}]\n"
            "\t    [-n|--notable|--table {<table>|<table_file>}]\n"
            "\tcreate --concise [<concise_device_spec_list>]"
        ),
        0,
        2,
        0,
        0,
    ),
    ("remove", "[--deferred] [-f|--force] [--retry] <device>...", 0, -1, 2, 0),
    ("remove_all", "[-f|--force]", 0, 0, 0, 0),
    ("suspend", "[--noflush] [--nolockfs] <device>...", 0, -1, 2, 0),
    (
        "resume",
        (
            "[--noflush] [--nolockfs] <device>...\n"
            "\t       [--addnodeonresume|--addnodeoncreate]\n"
            "\t       [--readahead {[+]<sectors>|auto|none}]"
        ),
        0,
        -1,
        2,
        0,
    ),
    ("load", "<device> [<table>|<table_file>]", 0, 2, 0, 0),
    ("clear", "<device>", 0, -1, 2, 0),
    ("reload", "<device> [<table>|<table_file>]", 0, 2, 0, 0),
    ("wipe_table", "[-f|--force] [--noflush] [--nolockfs] <device>...", 0, -1, 2, 0),
    ("rename", "<device> [--setuuid] <new_name_or_uuid>", 1, 2, 0, 0),
    ("measure", "[<device>...]", 0, -1, 2, 0),
    ("message", "<device> <sector> <message>", 2, -1, 0, 0),
    ("ls", "[--target <target_type>] [--exec <command>] [-o <options>] [--tree]", 0, 0, 0, 0),
    ("info", "[<device>...]", 0, -1, 1, 0),
    ("deps", "[-o <options>] [<device>...]", 0, -1, 2, 0),
    ("stats", "<command> [<options>] [<device>...]", 1, -1, 1, 1),
    ("status", "[<device>...] [--noflush] [--target <target_type>]", 0, -1, 2, 0),
    ("table", "[<device>...] [--concise] [--target <target_type>] [--showkeys]", 0, -1, 2, 0),
    ("wait", "<device> [<event_nr>] [--noflush]", 0, 2, 0, 0),
    ("mknodes", "[<device>...]", 0, -1, 1, 0),
    ("mangle", "[<device>...]", 0, -1, 1, 0),
    ("udevcreatecookie", "", 0, 0, 0, 0),
    ("udevreleasecookie", "[<cookie>]", 0, 1, 0, 0),
    ("udevflags", "<cookie>", 1, 1, 0, 0),
    ("udevcomplete", "<cookie>", 1, 1, 0, 0),
    ("udevcomplete_all", "[<age_in_minutes>]", 0, 1, 0, 0),
    ("udevcookies", "", 0, 0, 0, 0),
    ("target-version", "[<target>...]", 1, -1, 1, 0),
    ("targets", "", 0, 0, 0, 0),
    ("version", "", 0, 0, 0, 0),
    ("setgeometry", "<device> <cyl> <head> <sect> <start>", 5, 5, 0, 0),
    ("splitname", "<device> [<subsystem>]", 1, 2, 0, 0),
]
_BY_NAME = {c[0]: c for c in _COMMANDS}


def usage_text() -> str:
    """dmsetup.c: _dmsetup_usage."""
    lines = [
        "Usage:\n\n"  # noqa: ISC004
        "dmsetup\n"
        "        [--version] [-h|--help [-c|-C|--columns]]\n"
        "        [-v|--verbose [-v|--verbose ...]] [-f|--force]\n"
        "        [--checks] [--manglename {none|hex|auto}]\n"
        "        [-r|--readonly] [--noopencount] [--noflush] [--nolockfs] [--inactive]\n"
        "        [--udevcookie <cookie>] [--noudevrules] [--noudevsync] [--verifyudev]\n"
        "        [-y|--yes] [--readahead {[+]<sectors>|auto|none}] [--retry]\n"
        "        [-c|-C|--columns] [-o <fields>] [-O|--sort <sort_fields>]\n"
        "        [-S|--select <selection>] [--nameprefixes] [--noheadings]\n"
        "        [--separator <separator>]\n\n"
    ]
    lines += [f"\t{name} {help_}\n" for name, help_, *_ in _COMMANDS]
    lines.append(
        "\n<device> may be device name or (if only one) -u <uuid> or -j <major> -m <minor>\n"
        "<mangling_mode> is one of 'none', 'auto' and 'hex'.\n"
        "<fields> are comma-separated.  Use 'help -c' for list.\n"
        "<concise_device_specification> has single-device entries separated by semi-colons:\n"
        "    <name>,<uuid>,<minor>,<flags>,<table>\n"
        "        where <flags> is 'ro' or 'rw' (the default) and any of <uuid>, <minor>\n"
        "        and <flags> may be empty. Separate extra table lines with commas.\n"
        "    E.g.: dev1,,,,0 100 linear 253:1 0,100 100 error;dev2,,,ro,0 1 error\n"
        "Table_file contents may be supplied on stdin.\n"
        "Options are: devno, devname, blkdevname.\n"
        "Tree specific options are: ascii, utf, vt100; compact, inverted, notrunc;\n"
        "                           blkdevname, [no]device, active, open, rw and uuid.\n\n"
    )
    return "".join(lines)


_INDENT = "\n\t    "
_AREA_OPTS = "[--areas <nr_areas>] [--areasize <size>] "
_REGION_OPTS = "[--start <start> [--length <len>]" + _INDENT + _AREA_OPTS
_ID_OPTS = "[--programid <id>] [--userdata <data> ] "
_SELECT_OPTS = "[--programid <id>] [--regionid <id>] "
_EXTRA_OPTS = "[--bounds histogram_boundaries] [--precise] "
_FILE_MONITOR_OPTS = "[--nomonitor] [--follow mode]"
_GROUP_ID_OPT = "--groupid <id> "
_ALL_PROGS_OPT = "[--allprograms|--programid id] "
_ALL_REGIONS_OPT = "[--allregions|--regionid id] "
_ALL_DEVICES_OPT = "[--alldevices|<device>...] "
_ALL_PROGS_REGIONS_DEVICES = (
    _ALL_PROGS_OPT + _INDENT + _ALL_REGIONS_OPT + _INDENT + _ALL_DEVICES_OPT
)
_DM_REPORT_OPTS = (
    "[-o <fields>] [-O|--sort <sort_fields>]"
    + _INDENT
    + "[-S|--select <selection>] [--nameprefixes]"
    + _INDENT
    + "[--noheadings] [--separator <separator>]"
)
# dmsetup.c: _stats_subcommands (name, help)
_STATS_COMMANDS = [
    ("help", ""),
    ("clear", _ALL_REGIONS_OPT + _ALL_DEVICES_OPT),
    (
        "create",
        _REGION_OPTS
        + _INDENT
        + _ID_OPTS
        + _INDENT
        + _EXTRA_OPTS
        + _INDENT
        + "[--segments] "
        + _ALL_DEVICES_OPT,
    ),
    (
        "create",
        "--filemap [--nogroup] "
        + _FILE_MONITOR_OPTS
        + _INDENT
        + _ID_OPTS
        + _INDENT
        + _EXTRA_OPTS
        + "<file_path>",
    ),
    ("delete", _ALL_PROGS_REGIONS_DEVICES),
    ("group", "[--alias NAME] --regions <regions>" + _INDENT + _ALL_PROGS_OPT + _ALL_DEVICES_OPT),
    ("list", _ALL_PROGS_OPT + _ALL_REGIONS_OPT),
    ("print", "[--clear] " + _ALL_PROGS_REGIONS_DEVICES),
    (
        "report",
        "[--interval <seconds>] [--count <cnt>]"
        + _INDENT
        + "[--units <u>] "
        + _SELECT_OPTS
        + _INDENT
        + _DM_REPORT_OPTS
        + _INDENT
        + _ALL_PROGS_OPT
        + "[<device>...]",
    ),
    ("ungroup", _GROUP_ID_OPT + _ALL_PROGS_OPT + _INDENT + _ALL_DEVICES_OPT),
    ("update_filemap", _GROUP_ID_OPT + _INDENT + _FILE_MONITOR_OPTS + " <file_path>"),
    ("version", ""),
]
_STATS_SUBCOMMANDS = {name for name, _ in _STATS_COMMANDS}


def stats_usage_text() -> str:
    """dmsetup.c: _stats_usage (as "dmsetup stats")."""
    lines = [
        "Usage:\n\n"  # noqa: ISC004
        "dmsetup stats\n"
        "        [-h|--help]\n"
        "        [-v|--verbose [-v|--verbose ...]]\n"
        "        [--areas <nr_areas>] [--areasize <size>]\n"
        "        [--userdata <data>] [--clear]\n"
        "        [--count <count>] [--interval <seconds>]\n"
        "        [-o <fields>] [-O|--sort <sort_fields>]\n"
        "\t      [--programid <id>]\n"
        "        [--start <start>] [--length <length>]\n"
        "        [--segments] [--units <units>]\n\n"
    ]
    lines += [f"\t{name} {help_}\n" for name, help_ in _STATS_COMMANDS]
    lines.append(
        "\n<device> may be device name or (if only one) -u <uuid> or -j <major> -m <minor>\n"
        "<fields> are comma-separated.  Use 'help -c' for list.\n\n"
    )
    return "".join(lines)


# -- getopt_long (glibc), with dmsetup's option table -------------------------------------

_SHORTOPTS = "cCfG:hj:m:M:no:O:rS:u:U:vy"
_LONGOPTS = {
    # name: has_arg
    **dict.fromkeys(
        [
            "readonly",
            "alldevices",
            "allprograms",
            "allregions",
            "area",
            "checks",
            "clear",
            "columns",
            "concise",
            "deferred",
            "filemap",
            "force",
            "foreground",
            "group",
            "help",
            "histogram",
            "inactive",
            "nameprefixes",
            "nogroup",
            "noflush",
            "noheadings",
            "nolockfs",
            "noopencount",
            "nosuffix",
            "notable",
            "notimesuffix",
            "nomonitor",
            "noudevrules",
            "noudevsync",
            "precise",
            "raw",
            "region",
            "relative",
            "retry",
            "rows",
            "segments",
            "setuuid",
            "showkeys",
            "tree",
            "unbuffered",
            "unquoted",
            "verifyudev",
            "version",
            "yes",
            "addnodeonresume",
            "addnodeoncreate",
        ],
        0,
    ),
    **dict.fromkeys(
        [
            "alias",
            "areas",
            "areasize",
            "bounds",
            "count",
            "select",
            "exec",
            "follow",
            "gid",
            "groupid",
            "interval",
            "length",
            "manglename",
            "major",
            "minor",
            "mode",
            "options",
            "programid",
            "readahead",
            "regions",
            "regionid",
            "separator",
            "sort",
            "start",
            "table",
            "target",
            "uid",
            "units",
            "uuid",
            "userdata",
            "verbose",
            "udevcookie",
        ],
        1,
    ),
}
# the long option table's order (getopt lists ambiguous candidates in it)
_LONG_ORDER = [
    "readonly",
    "alias",
    "alldevices",
    "allprograms",
    "allregions",
    "area",
    "areas",
    "areasize",
    "bounds",
    "checks",
    "clear",
    "columns",
    "concise",
    "count",
    "deferred",
    "select",
    "exec",
    "filemap",
    "follow",
    "force",
    "foreground",
    "gid",
    "group",
    "groupid",
    "help",
    "histogram",
    "inactive",
    "interval",
    "length",
    "manglename",
    "major",
    "minor",
    "mode",
    "nameprefixes",
    "nogroup",
    "noflush",
    "noheadings",
    "nolockfs",
    "noopencount",
    "nosuffix",
    "notable",
    "notimesuffix",
    "udevcookie",
    "nomonitor",
    "noudevrules",
    "noudevsync",
    "options",
    "precise",
    "programid",
    "raw",
    "readahead",
    "region",
    "regions",
    "regionid",
    "relative",
    "retry",
    "rows",
    "segments",
    "separator",
    "setuuid",
    "showkeys",
    "sort",
    "start",
    "table",
    "target",
    "tree",
    "uid",
    "units",
    "uuid",
    "unbuffered",
    "unquoted",
    "userdata",
    "verbose",
    "verifyudev",
    "version",
    "yes",
    "addnodeonresume",
    "addnodeoncreate",
]
_SHORT_TO_LONG = {
    "c": "columns",
    "C": "columns",
    "f": "force",
    "G": "gid",
    "h": "help",
    "j": "major",
    "m": "minor",
    "M": "mode",
    "n": "notable",
    "o": "options",
    "O": "sort",
    "r": "readonly",
    "S": "select",
    "u": "uuid",
    "U": "uid",
    "v": "verbose",
    "y": "yes",
}


class _GetoptError(Exception):
    pass


def _getopt(argv: list[str]):
    """GNU getopt_long with permutation (thinsim/getopt.py): (options as (name, arg) in
    order, operands); the first error raises _GetoptError with glibc's line."""
    longopts = [
        LongOption(name, REQUIRED_ARGUMENT if _LONGOPTS[name] else NO_ARGUMENT, name)
        for name in _LONG_ORDER
    ]
    opts: list[tuple[str, str | None]] = []
    operands: list[str] = []
    for val, arg in getopt_parse(argv, _SHORTOPTS, longopts, operands):
        if val == "?":
            raise _GetoptError(f"dmsetup: {arg}\n")
        opts.append((_SHORT_TO_LONG.get(val, val), arg))
    return opts, operands


def _atoi(text: str) -> int:
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


# -- the device-mapper task layer (libdm-iface.c) ------------------------------------------


class _Info:
    """struct dm_info, plus what dm_task_get_* give about the device."""

    def __init__(self, state: HostState, dev: DmDevice | None, inactive: bool) -> None:
        self.exists = dev is not None
        self.dev = dev
        if dev is None:
            return
        self.name = dev.name
        self.uuid = dev.uuid
        self.major, self.minor = DM_MAJOR, dev.minor
        self.suspended = dev.suspended
        self.live_table = dev.live is not None
        self.inactive_table = dev.inactive is not None
        self.open_count = dm.dm_open_count(state, dev)
        self.event_nr = dm.event_nr(dev)
        self.deferred_remove = dev.deferred_remove
        if inactive:
            self.target_count = len(dev.inactive or [])
            self.read_only = dev.inactive_ro if dev.inactive is not None else dev.read_only
        else:
            self.target_count = len(dev.live or [])
            self.read_only = dev.read_only


class Dmsetup:
    """One dmsetup run: its switches (dmsetup.c's _switches/_int_args/_string_args)."""

    def __init__(self, state: HostState, io: IO) -> None:
        self.state = state
        self.io = io
        self.sw: dict[str, int] = {}
        self.args: dict[str, str] = {}
        self.report: Report | None = None
        self.report_type = 0
        self.selection_cmd = None
        self.concise_output_produced = False
        self.dev_name_type = "devno"
        self.tree_switches: dict[str, int] = {}
        self.tsym = _TSYM_ASCII
        self.termwidth = 80
        self.num_devices = 0
        self.dtree = None

    # -- output ----------------------------------------------------------------------------

    def out(self, text: str) -> None:
        self.io.out(text)

    def err(self, text: str) -> None:
        self.io.err(text + "\n")

    def on(self, switch: str) -> int:
        return self.sw.get(switch, 0)

    # -- libdm: dm_task_set_name and friends ------------------------------------------------

    def _node_rdev(self, path: str):
        """stat(path).st_rdev on the simulated host: a devno string, "" for a file that is
        no device node, None when the path does not exist."""
        if is_device_path(path):
            return devices.node_devno(self.state, path)
        return "" if os.path.exists(path) else None

    def set_name(self, name: str, task: str) -> str:
        """dm_task_set_name: a path names an existing device by its node."""
        if "/" not in name:
            if len(name.encode()) >= 128:  # DM_NAME_LEN
                self.err(f'Name "{name}" too long.')
                raise _Fail
            return name
        if task == "create":
            self.err(f'Name "{name}" invalid. It contains "/".')
            raise _Fail
        last = name.rsplit("/", 1)[1]
        rdev = self._node_rdev(name)
        if rdev is None:
            if len(name) < 3 or name[0] == "/" or name.count("/") != 1:
                self.err(f"Device {name} not found")
                raise _Fail
            rdev = self._node_rdev("/dev/" + name)
            if rdev is None:
                self.err(f"Device {name} not found")
                raise _Fail
        elif rdev and self._node_rdev("/dev/mapper/" + last) == rdev:
            return last
        for dev in sorted(self.state.dm.values(), key=lambda d: d.minor):
            if rdev and devices.has_mapper_node(dev) and dev.devno == rdev:
                return dev.name
        self.err(f"Device {last} not found")
        raise _Fail

    def task_device(self, name: str | None, task: str, optional: bool = False) -> dict:
        """_set_task_device: by name, else -u, else -j/-m."""
        if name is not None:
            return {"name": self.set_name(name, task)}
        if self.on("uuid"):
            return {"uuid": self.args["uuid"]}
        if self.on("major") and self.on("minor"):
            return {"major": _atoi(self.args["major"]), "minor": _atoi(self.args["minor"])}
        if not optional:
            self.err("No device specified.")
            raise _Fail
        return {}

    def lookup(self, ident: dict) -> DmDevice | None:
        """dm-ioctl.c: __find_device_hash_cell."""
        state = self.state
        if ident.get("uuid"):
            if ident.get("name") or ident.get("major"):
                return None
            return devices.dm_by_uuid(state, ident["uuid"])
        if ident.get("name"):
            return state.dm.get(ident["name"])
        if ident.get("major") is not None:
            if ident["major"] != DM_MAJOR:
                return None
            return devices.dm_by_minor(state, ident["minor"])
        return None

    def ioctl_error(self, op: str, ident: dict, errno: int) -> None:
        """_do_dm_ioctl's message: name, uuid, then (major:minor) when the task has one."""
        major = ident.get("major") or 0
        minor = ident.get("minor") or 0
        devno = f"({major}:{minor})" if major > 0 else ""
        # the ioctl carries the names as libdm mangled them (\\xNN for what udev refuses)
        name = _mangle(ident.get("name", ""), "auto")
        uuid = _mangle(ident.get("uuid", ""), "auto")
        self.err(f"device-mapper: {op} ioctl on {name} {uuid}{devno} failed: {os.strerror(errno)}")

    def find(self, op: str, ident: dict, quiet_missing: bool = False) -> DmDevice | None:
        """Run the lookup part of an ioctl: ENXIO is reported (or, for info/status/mknodes,
        turned into a missing device)."""
        dev = self.lookup(ident)
        if dev is None:
            if quiet_missing:
                return None
            self.ioctl_error(op, ident, 6)  # ENXIO
            raise _Fail
        return dev

    def kernel_call(self, op: str, ident: dict, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except dm.NotSimulated as e:
            self.io.err(f"thinsim: dmsetup: {e} is not simulated\n")
            raise _Fail from None
        except ThinsimError as e:
            self.ioctl_error(op, ident, e.errno)
            raise _Fail from None

    def info(self, dev: DmDevice | None) -> _Info:
        return _Info(self.state, dev, bool(self.on("inactive")))

    def read_ahead(self, info: _Info) -> int | None:
        """dm_task_get_read_ahead: sysfs bdi/read_ahead_kb, else BLKRAGET on the node."""
        dev = info.dev
        if dev.disk_added:
            return dev.read_ahead
        # no disk, so no bdi in sysfs; the node (if mknodes made one) opens no device
        why = (
            "No such device or address"
            if getattr(dev, "mknod", False)
            else ("No such file or directory")
        )
        self.err(f"/dev/mapper/{dev.name}: open failed: {why}")
        return None

    def device_get_name(self, devno: str, prefer_kernel: bool) -> str | None:
        """dm_device_get_name: the kernel name, or for a dm device its dm name."""
        kname = dm.blkdev_name(self.state, devno)
        if kname is None:
            return None
        major, _, minor = devno.partition(":")
        if prefer_kernel or int(major) != DM_MAJOR:
            return kname
        return devices.dm_by_minor(self.state, int(minor)).name

    # -- the run (dmsetup.c: main) -----------------------------------------------------------

    def main(self, argv: list[str]) -> int:
        ret = self._main(argv)
        return 0 if self.on("help") or self.on("version") else ret

    def _process_switches(self, argv: list[str]):
        try:
            opts, operands = _getopt(argv)
        except _GetoptError as e:
            self.io.err(str(e))
            return None
        for name, value in opts:
            self.sw[name] = self.sw.get(name, 0) + 1
            if value is not None:
                self.args[name] = value
            if name == "count" and _atoi(value) < 0:
                self.err("Count must be zero or greater.")
                return None
            if name == "udevcookie" and not self._cookie_value(value):
                pass
            if name == "interval" and _atoi(value) <= 0:
                self.err("Interval must be a positive integer.")
                return None
            if name == "mode":
                try:
                    if not int(value, 8):
                        raise ValueError
                except ValueError:
                    self.err(f"Invalid argument for --mode: {value}. ")
                    return None
            if name == "manglename" and value.lower() not in ("none", "auto", "hex"):
                self.err("Unknown name mangling mode.")
                return None
            if name == "readahead":
                low = value.lower()
                if low == "auto":
                    self.read_ahead_value, self.read_ahead_min = DM_READ_AHEAD_AUTO, False
                elif low == "none":
                    self.read_ahead_value, self.read_ahead_min = DM_READ_AHEAD_NONE, False
                else:
                    self.read_ahead_min = value.lstrip()[:1] == "+"
                    self.read_ahead_value = _atoi(value)
                    if self.read_ahead_value < -1:
                        self.err(
                            f"Negative read ahead value ({self.read_ahead_value}) is not "
                            "understood."
                        )
                        return None
        if bool(self.on("major")) != bool(self.on("minor")):
            self.err("Please specify both major number and minor number.")
            return None
        if self.on("table") and self.on("notable"):
            self.err("--table and --notable are incompatible.")
            return None
        if self.on("addnodeonresume") and self.on("addnodeoncreate"):
            self.err("--addnodeonresume and --addnodeoncreate are incompatible.")
            return None
        return operands

    def _main(self, argv: list[str]) -> int:
        operands = self._process_switches(argv)
        if operands is None:
            self.err("Couldn't process command line.")
            return 1
        if self.on("verbose") > 1:
            return unsupported(self.io, "dmsetup", "debug output (-vv)")
        command = operands[0] if operands else None
        args = operands[1:]
        if self.on("help"):
            cmd = _BY_NAME["help"]
        elif self.on("version"):
            cmd = _BY_NAME["version"]
        elif command is None:
            self.io.err(usage_text())
            return 1
        else:
            cmd = _BY_NAME.get(command)
            if cmd is None:
                self.err("Unknown command.")
                self.io.err(usage_text())
                return 1
            name, _, min_args, max_args, *_ = cmd
            if len(args) < min_args or (max_args >= 0 and len(args) > max_args):
                self.err("Incorrect number of arguments.")
                self.io.err(usage_text())
                return 1
            if name == "splitname" and not self.on("columns"):
                self.sw["columns"] = 1
            if name == "stats":
                return self._stats(args)
            if not self._process_options(self.args.get("options")):
                self.err("Couldn't process command line.")
                return 1
            if self.on("select") and cmd[4] == 2:
                self.selection_cmd = cmd
                self.sw["columns"] = 1
                cmd = _BY_NAME["info"]
            if self.on("columns") and not self._report_init(cmd[0]):
                return 1
            if (self.on("count") and _atoi(self.args["count"]) != 1) or self.on("interval"):
                return unsupported(self.io, "dmsetup", "repeated reports (--count/--interval)")
        multiple = bool(
            cmd[4] and len(args) != 1 and (args or (not self.on("uuid") and not self.on("major")))
        )
        r = self._perform(cmd, args, multiple)
        if self.concise_output_produced:
            self.out("\n")
        if self.report is not None:
            self.report.output()
        return 0 if r else 1

    def _perform(self, cmd, args: list[str], multiple: bool) -> bool:
        """_perform_command_for_all_repeatable_args."""
        fn = getattr(self, "_cmd_" + cmd[0].replace("-", "_"))
        i = 0
        while True:
            try:
                ok = fn(cmd, args[i:], None, multiple)
            except _Fail:
                ok = False
            if not ok:
                self.err("Command failed.")
                return False
            i += 1
            if not (cmd[4] and len(args) - i > 0):
                return True

    def _process_options(self, options: str | None) -> bool:
        if self.on("tree"):
            return self._process_tree_options(options)
        if self.on("columns") or not self.on("options"):
            return True
        self.dev_name_type = "devno"
        for word in _option_words(options):
            kind = _prefix_match(word, ("devno", "blkdevname", "devname"))
            if kind is None:
                self.err(f"Option not recognised: {word}.")
                return False
            self.dev_name_type = kind
        return True

    def _process_tree_options(self, options: str | None) -> bool:
        self.tsym = _TSYM_UTF if _codeset_is_utf8() else _TSYM_ASCII
        ts = self.tree_switches
        ts["device"] = 1
        ts["truncate"] = 1
        names = [
            "device",
            "blkdevname",
            "nodevice",
            "status",
            "table",
            "active",
            "open",
            "uuid",
            "rw",
            "utf",
            "vt100",
            "ascii",
            "inverted",
            "compact",
            "notrunc",
        ]
        for word in _option_words(options or ""):
            kind = _prefix_match(word, names)
            if kind is None:
                self.err(f"Tree options not recognised: {word}.")
                return False
            if kind == "nodevice":
                ts["device"] = 0
            elif kind == "notrunc":
                ts["truncate"] = 0
            elif kind == "utf":
                self.tsym = _TSYM_UTF
            elif kind == "vt100":
                self.tsym = _TSYM_VT100
            elif kind == "ascii":
                self.tsym = _TSYM_ASCII
            elif kind == "inverted":
                ts["bottomup"] = 1
            else:
                ts[kind] = 1
        if self.tsym is not _TSYM_VT100 and os.isatty(1):
            cols = os.get_terminal_size(1).columns
            if cols > 3:
                self.termwidth = cols - 3
        return True

    # -- reports -------------------------------------------------------------------------------

    def _report_init(self, cmd_name: str, help_: bool = False) -> bool:
        options = "name,major,minor,attr,open,segments,events,uuid"
        if cmd_name == "splitname":
            options = "vg_name,lv_name,lv_layer"
            self.report_type |= DR_NAME
        separator, aligned, headings, prefixes = " ", True, True, False
        if self.on("noheadings"):
            separator, aligned, headings = ":", False, False
        if self.on("nameprefixes"):
            aligned, prefixes = False, True
        opt = "help" if help_ else self.args.get("options") if self.on("options") else None
        if opt is not None:
            if "help" in opt:
                headings = False
            options = opt if not opt.startswith("+") else f"{options},{opt[1:]}"
        keys = ""
        if self.on("sort") and not help_:
            keys = self.args["sort"]
            if cmd_name in ("status", "table"):
                self.err("--sort is not yet supported with status and table.")
                return False
        if self.on("separator"):
            separator, aligned = self.args["separator"], False
        selection = self.args.get("select") if self.on("select") and not help_ else None
        try:
            self.report = Report(
                self.report_type,
                _REPORT_TYPES,
                _REPORT_FIELDS,
                options,
                separator,
                aligned=aligned,
                buffered=True,
                headings=headings,
                field_prefixes=prefixes,
                quoted=not self.on("unquoted"),
                sort_keys=keys,
                columns_as_rows=bool(self.on("rows")),
                selection=selection,
                warn=self.err,
                out=self.out,
            )
        except ReportError:
            self.report = None
            return False
        self.report.output_field_name_prefix = "DM_"
        self.report_type = self.report.report_types
        return True

    def _report_object(self, dev: DmDevice, info: _Info) -> bool:
        """_display_info_cols."""
        rt = self.report.report_types
        if rt & (DR_STATS | DR_STATS_META):
            return True  # the simulation has no dm statistics regions: nothing to report
        objs = {DR_TASK: info, DR_INFO: info}
        if rt & DR_TREE:
            objs[DR_TREE] = (self._deptree(), f"{DM_MAJOR}:{dev.minor}")
        if rt & DR_DEPS:
            objs[DR_DEPS] = dm.table_devnos(dev, inactive=bool(self.on("inactive")))
        if rt & DR_NAME:
            objs[DR_NAME] = _split_name(dev.uuid, dev.name, "-")
        objs["dmsetup"] = self
        try:
            selected = self.report.is_selected(
                lambda t: self if t == "dmsetup" else objs.get(t),
                output=self.selection_cmd is None,
            )
        except ReportFieldError:
            return False
        if self.selection_cmd is not None and selected:
            fn = getattr(self, "_cmd_" + self.selection_cmd[0].replace("-", "_"))
            return fn(self.selection_cmd, [dev.name], None, True)
        return True

    # -- _process_all and the device commands ------------------------------------------------

    def _process_all(self, cmd, args, silent: bool, fn) -> bool:
        names = sorted(self.state.dm)
        if not names:
            if not silent:
                self.out("No devices found\n")
            return True
        r = True
        for name in names:
            if name not in self.state.dm:
                continue
            try:
                if not fn(cmd, args, name, True):
                    r = False
            except _Fail:
                r = False
        return r

    def _display_info(self, info: _Info) -> bool:
        if not info.exists:
            self.err("Device does not exist.")
            return False
        if not self.on("columns"):
            self._display_info_long(info)
            return True
        return self._report_object(info.dev, info)

    def _display_info_long(self, info: _Info) -> None:
        self.out(f"Name:              {info.name}\n")
        state = "SUSPENDED" if info.suspended else "ACTIVE"
        ro = " (READ-ONLY)" if info.read_only else ""
        deferred = " (DEFERRED REMOVE)" if info.deferred_remove else ""
        self.out(f"State:             {state}{ro}{deferred}\n")
        ra = self.read_ahead(info)
        if ra is not None:
            self.out(f"Read Ahead:        {ra}\n")
        if not info.live_table and not info.inactive_table:
            self.out("Tables present:    None\n")
        else:
            both = " & " if info.live_table and info.inactive_table else ""
            live = "LIVE" if info.live_table else ""
            inactive = "INACTIVE" if info.inactive_table else ""
            self.out(f"Tables present:    {live}{both}{inactive}\n")
        self.out(f"Open count:        {info.open_count}\n")
        self.out(f"Event number:      {info.event_nr}\n")
        self.out(f"Major, minor:      {info.major}, {info.minor}\n")
        self.out(f"Number of targets: {info.target_count}\n")
        if info.uuid:
            self.out(f"UUID: {info.uuid}\n")
        self.out("\n")

    def _cmd_info(self, cmd, args, name, multiple) -> bool:
        if name is None:
            if not args and not self.on("uuid") and not self.on("major"):
                return self._process_all(cmd, args, False, self._cmd_info)
            name = args[0] if args else None
        ident = self.task_device(name, "info")
        dev = self.find("info", ident, quiet_missing=True)
        return self._display_info(self.info(dev))

    def _cmd_deps(self, cmd, args, name, multiple) -> bool:
        if name is None:
            if not args and not self.on("uuid") and not self.on("major"):
                return self._process_all(cmd, args, False, self._cmd_deps)
            name = args[0] if args else None
        ident = self.task_device(name, "deps")
        dev = self.find("deps", ident)
        info = self.info(dev)
        if self.on("verbose"):
            self._display_info(info)
        line = f"{dev.name}: " if multiple and not self.on("verbose") else ""
        devnos = dm.table_devnos(dev, inactive=bool(self.on("inactive")))
        line += f"{len(devnos)} dependencies\t:"
        for devno in devnos:
            shown = None
            if self.dev_name_type in ("blkdevname", "devname"):
                shown = self.device_get_name(devno, self.dev_name_type == "blkdevname")
            major, _, minor = devno.partition(":")
            line += f" ({shown})" if shown else f" ({major}, {minor})"
        self.out(line + "\n")
        if multiple and self.on("verbose"):
            self.out("\n")
        return True

    def _status_common(self, cmd, args, name, multiple) -> bool:
        """dmsetup.c: _status (status, table, measure and ls --target/--exec)."""
        cmd_name = cmd[0]
        if name is None:
            if not args and not self.on("uuid") and not self.on("major"):
                return self._process_all(cmd, args, False, self._status_common)
            name = args[0] if args else None
        table = cmd_name == "table"
        concise = table and self.on("concise")
        ls_only = cmd_name == "ls"
        op = "table" if table else "status"
        ident = self.task_device(name, op)
        dev = self.find(op, ident, quiet_missing=not table)
        if dev is None:
            self.err("Device does not exist.")
            return False
        info = self.info(dev)
        name = name or dev.name
        inactive = bool(self.on("inactive"))
        targets = (dev.inactive if inactive else dev.live) or []
        target = self.args.get("target") if self.on("target") else None
        executing = self.on("exec") and self.args.get("exec")
        matched = False
        for t in targets or [None]:
            if target is not None and (t is None or t.type != target):
                continue
            if ls_only:
                if not executing or self.on("verbose"):
                    self.out(f"{name}\t({DM_MAJOR}, {dev.minor})\n")
                matched = True
                break
            if not executing or self.on("verbose"):
                if not concise:
                    if not matched and self.on("verbose"):
                        self._display_info(info)
                    if multiple and not self.on("verbose"):
                        self.out(f"{name}: ")
                elif not matched:
                    if self.concise_output_produced:
                        self.out(";")
                    self.concise_output_produced = True
                    self.out(f"{_quoted(name)},{_quoted(dev.uuid)},{dev.minor},")
                    self.out("ro" if info.read_only else "rw")
                if t is not None:
                    params = self.kernel_call(
                        op,
                        ident,
                        dm.target_status,
                        self.state,
                        t,
                        table=table,
                        noflush=bool(self.on("noflush")),
                        ima=cmd_name == "measure",
                    )
                    if concise:
                        self.out(f",{t.start} {t.length} {t.type} {_quoted(params)}")
                    else:
                        self.out(f"{t.start} {t.length} {t.type} {params}")
                if not concise:
                    self.out("\n")
            matched = True
        if (
            multiple
            and self.on("verbose")
            and matched
            and not ls_only
            and (not concise or self.on("verbose") > 1)
        ):
            self.out("\n")
        if matched and executing:
            return self._exec_command(name)
        return True

    _cmd_status = _status_common
    _cmd_table = _status_common
    _cmd_measure = _status_common

    def _exec_command(self, name: str) -> bool:
        words = self.args["exec"].split()
        if not words:
            return False
        self._mknodes(name)
        # the command gets the device's path as its last argument; it may be a simulated
        # command (dmsetup, a thin tool ...), so it runs once this one has released the host
        self.io.run([*words, f"/dev/mapper/{name}"])
        return True

    def _cmd_ls(self, cmd, args, name, multiple) -> bool:
        if (self.on("target") and self.args.get("target")) or (
            self.on("exec") and self.args.get("exec")
        ):
            return self._process_all(cmd, args, False, self._status_common)
        if self.on("tree"):
            return self._display_tree()
        return self._process_all(cmd, args, False, self._display_name)

    def _display_name(self, cmd, args, name, multiple) -> bool:
        dev = self.state.dm[name]
        shown = None
        if self.dev_name_type in ("blkdevname", "devname"):
            shown = self.device_get_name(dev.devno, self.dev_name_type == "blkdevname")
        self.out(f"{name}\t({shown or dev.devno})\n")
        return True

    def _simple(self, op: str, name: str | None, event_nr: int = 0, display: bool = True) -> bool:
        """dmsetup.c: _simple -- one suspend/resume/clear/remove/waitevent ioctl."""
        ident = self.task_device(name, op)
        retry = op == "remove" and self.on("retry")
        dev = self.lookup(ident)
        if dev is None:
            self.ioctl_error(op, ident, 6)
            raise _Fail
        state = self.state
        if op == "suspend":
            self.kernel_call(op, ident, dm.dm_suspend, state, dev)
        elif op == "resume":
            self.kernel_call(op, ident, dm.dm_resume, state, dev)
            if self.on("readahead"):
                self._set_read_ahead(dev)
        elif op == "clear":
            self.kernel_call(op, ident, dm.dm_clear, state, dev)
        elif op == "waitevent":
            if event_nr == dm.event_nr(dev):
                return unsupported(self.io, "dmsetup", "waiting for a device event") == 0
        elif op == "remove":
            deferred = bool(self.on("deferred"))
            tries = DM_IOCTL_RETRIES if retry else 1
            for _ in range(tries):
                try:
                    dm.dm_remove(state, dev, deferred=deferred)
                    break
                except ThinsimError as e:
                    self.ioctl_error(op, ident, e.errno)
                    if e.errno != 16:  # EBUSY: the only error worth retrying
                        raise _Fail from None
            else:
                raise _Fail
        if display and self.on("verbose"):
            return self._display_info(self.info(dev if dev.name in state.dm else None))
        return True

    def _set_read_ahead(self, dev: DmDevice) -> None:
        """libdm-common.c: _set_dev_node_read_ahead after a resume."""
        value = self.read_ahead_value
        if value == DM_READ_AHEAD_AUTO:
            return
        if value == DM_READ_AHEAD_NONE:
            value = 0
        if self.read_ahead_min and dev.read_ahead >= value:
            return
        # libdm writes bdi/read_ahead_kb (rounded up); the bdi keeps whole 4 KiB pages
        dev.read_ahead = ((value + 1) // 2 >> 2) * 8

    def _cmd_suspend(self, cmd, args, name, multiple) -> bool:
        return self._simple("suspend", name or (args[0] if args else None))

    def _cmd_resume(self, cmd, args, name, multiple) -> bool:
        return self._simple("resume", name or (args[0] if args else None))

    def _cmd_clear(self, cmd, args, name, multiple) -> bool:
        return self._simple("clear", name or (args[0] if args else None))

    def _cmd_wait(self, cmd, args, name, multiple) -> bool:
        if not self.on("uuid") and not self.on("major"):
            if not args:
                self.err("No device specified.")
                return False
            name, args = args[0], args[1:]
        return self._simple("waitevent", name, _atoi(args[-1]) if args else 0)

    def _cmd_remove(self, cmd, args, name, multiple) -> bool:
        name = name or (args[0] if args else None)
        if self.on("force") and name is not None:
            try:
                self._cmd_wipe_table(cmd, [name], None, False)
            except _Fail:
                pass
        return self._simple("remove", name, display=False)

    def _device_size(self, name: str) -> int:
        """_get_device_size: the table's total length (0 when the TABLE ioctl fails)."""
        try:
            ident = self.task_device(name, "table")
            dev = self.find("table", ident)
        except _Fail:
            return 0
        targets = (dev.inactive if self.on("inactive") else dev.live) or []
        return sum(t.length for t in targets)

    def _cmd_wipe_table(self, cmd, args, name, multiple) -> bool:
        """_error_device: load an error table as long as the device, resume it."""
        name = name or (args[0] if args else None)
        if not name:
            self.err("No device specified.")
            return False
        size = self._device_size(name)
        ident = self.task_device(name, "reload")
        dev = self.find("reload", ident)
        self.kernel_call(
            "reload",
            ident,
            dm.dm_load,
            self.state,
            dev,
            [(0, size, "error", "")],
            read_only=bool(self.on("readonly")),
        )
        try:
            self._simple("resume", name, display=False)
        except _Fail:
            try:
                self._simple("clear", name, display=False)
            except _Fail:
                pass
            raise
        return True

    def _cmd_remove_all(self, cmd, args, name, multiple) -> bool:
        dm.dm_remove_all(self.state)
        if self.on("force") and self.state.dm:
            for dev_name in sorted(self.state.dm):
                try:
                    self._cmd_wipe_table(cmd, [dev_name], None, True)
                except _Fail:
                    pass
            dm.dm_remove_all(self.state)
            if self.state.dm:
                self.err(f"Unable to remove {len(self.state.dm)} device(s).")
        return True

    # -- tables: create, load, rename, message ----------------------------------------------

    def _read_table(self, file: str | None) -> list[tuple[int, int, str, str]]:
        """_parse_file / _parse_table_lines."""
        table = self.args.get("table") if self.on("table") else None
        if table is not None:
            lines, where = table.split("\n"), ""
        elif file is not None:
            try:
                with open(file, errors="surrogateescape") as f:
                    lines = f.read().splitlines()
            except OSError:
                self.err(f"Couldn't open '{file}' for reading.")
                raise _Fail from None
            where = file
        else:
            lines, where = self.io.stdin.read().splitlines(), "on stdin"
        rows = []
        for n, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            m = re.match(r"(\d+)\s+(\d+)\s+(\S+)\s*(.*)$", text)
            if m is None:
                self.err(f"Invalid format on line {n} of table {where}.")
                raise _Fail
            params = m.group(4).split("#", 1)[0]
            rows.append((int(m.group(1)), int(m.group(2)), m.group(3), params))
        return rows

    def _create_one(self, name: str, file: str | None) -> bool:
        """_create_one_device, with libdm's _create_and_load_v4."""
        self.set_name(name, "create")
        rows = None if self.on("notable") else self._read_table(file)
        uuid = self.args.get("uuid", "") if self.on("uuid") else ""
        minor = _atoi(self.args["minor"]) if self.on("minor") else None
        ident = {"name": name, "uuid": uuid}
        if minor is not None:
            ident.update(major=_atoi(self.args["major"]), minor=minor)
        state = self.state
        dev = self.kernel_call("create", ident, dm.dm_create, state, name, uuid, minor)
        if rows is None:
            return self._verbose_info(dev)
        load_ident = {"name": name, "major": DM_MAJOR, "minor": dev.minor}
        try:
            self.kernel_call(
                "reload",
                load_ident,
                dm.dm_load,
                state,
                dev,
                rows,
                read_only=bool(self.on("readonly")),
            )
            self.kernel_call("resume", {"name": name}, dm.dm_resume, state, dev)
        except _Fail:
            dm.dm_remove(state, dev)
            raise
        if self.on("readahead"):
            self._set_read_ahead(dev)
        return self._verbose_info(dev)

    def _verbose_info(self, dev: DmDevice) -> bool:
        if self.on("verbose"):
            return self._display_info(self.info(dev))
        return True

    def _cmd_create(self, cmd, args, name, multiple) -> bool:
        if self.on("concise"):
            if len(args) > 1:
                self.err("dmsetup create --concise takes at most one argument")
                return False
            return self._create_concise(args)
        if not args:
            self.err("Please provide a name for the new device.")
            return False
        return self._create_one(args[0], args[1] if len(args) == 2 else None)

    def _create_concise(self, args: list[str]) -> bool:
        if any(self.on(s) for s in ("table", "minor", "uuid", "notable", "inactive")):
            self.err("--concise is incompatible with --[no]table, --minor, --uuid and --inactive.")
            return False
        text = args[0] if args else self.io.stdin.read()
        fields: list[str] = [""]
        c = 0

        def parsed() -> str:
            f = [*fields, None, None, None, None][:5]
            shown = ["(null)" if v is None else v for v in f]
            return (
                f"Parsed {len(fields)} fields: name: {shown[0]} uuid: {shown[1]} "
                f"minor: {shown[2]} flags: {shown[3]} table: {shown[4]}"
            )

        while c < len(text):
            ch = text[c]
            if ch == "\\":
                c += 1
                if c >= len(text):
                    self.err("Backslash must be followed by another character at end of string.")
                    self.err(parsed())
                    return False
                fields[-1] += text[c]
                c += 1
                continue
            if ch == "," and len(fields) < 5:
                fields.append("")
                c += 1
                while c < len(text) and text[c].isspace():
                    c += 1
                continue
            if ch == "," and len(fields) >= 5:
                fields[-1] += "\n"
                c += 1
                continue
            if ch == ";" or c + 1 == len(text):
                if ch != ";":
                    fields[-1] += ch
                c += 1
                if len(fields) != 5:
                    self.err("Five comma-separated fields are required for each device")
                    self.err(parsed())
                    return False
                name, uuid, minor, flags, table = fields
                saved = dict(self.sw), dict(self.args)
                if uuid:
                    self.sw["uuid"], self.args["uuid"] = 1, uuid
                if minor:
                    self.sw["minor"], self.args["minor"] = 1, minor
                    self.sw["major"], self.args["major"] = 1, str(DM_MAJOR)
                if flags == "ro":
                    self.sw["readonly"] = 1
                elif flags and flags != "rw":
                    self.err(f"Invalid flags parameter '{flags}' must be 'ro' or 'rw' or empty.")
                    return False
                self.sw["table"], self.args["table"] = 1, table
                try:
                    ok = self._create_one(name, None)
                finally:
                    self.sw, self.args = saved
                if not ok:
                    return False
                fields = [""]
                while c < len(text) and text[c].isspace():
                    c += 1
                continue
            fields[-1] += ch
            c += 1
        if fields != [""]:
            self.err("Incomplete entry: five comma-separated fields are required for each device")
            self.err(parsed())
            return False
        return True

    def _cmd_load(self, cmd, args, name, multiple) -> bool:
        if self.on("notable"):
            self.err("--notable only available when creating new device.")
            return False
        dev_name = None
        if not self.on("uuid") and not self.on("major"):
            if not args:
                self.err("Please specify device.")
                return False
            dev_name, args = args[0], args[1:]
        elif len(args) > 1:
            self.err("Too many command line arguments.")
            return False
        ident = self.task_device(dev_name, "reload")
        rows = self._read_table(args[0] if len(args) == 1 else None)
        dev = self.find("reload", ident)
        self.kernel_call(
            "reload",
            ident,
            dm.dm_load,
            self.state,
            dev,
            rows,
            read_only=bool(self.on("readonly")),
        )
        return self._verbose_info(dev)

    _cmd_reload = _cmd_load

    def _cmd_rename(self, cmd, args, name, multiple) -> bool:
        dev_name = args[0] if len(args) == 2 else None
        new = args[-1]
        ident = self.task_device(dev_name, "rename")
        if not self.on("setuuid"):
            # dm_task_set_newname
            if "/" in new:
                self.err(f'Name "{new}" invalid. It contains "/".')
                return False
            if len(new) >= 128:
                self.err(f'Name "{new}" too long')
                return False
            if not new:
                self.err("Non empty new name is required.")
                return False
        # dm-ioctl.c: dev_rename finds the device by its name only (a uuid or number names
        # none, so the kernel finds nothing)
        self.kernel_call(
            "rename",
            ident,
            dm.dm_rename,
            self.state,
            ident.get("name", ""),
            new,
            uuid=bool(self.on("setuuid")),
        )
        return True

    def _cmd_message(self, cmd, args, name, multiple) -> bool:
        if self.on("uuid") or self.on("major"):
            ident = self.task_device(None, "message")
        else:
            ident = self.task_device(args[0], "message")
            args = args[1:]
        m = re.fullmatch(r"\s*\+?\d+", args[0])
        if m is None:
            self.err("Invalid sector.")
            return False
        sector = int(args[0])
        args = args[1:]
        if not args:
            self.err("No message supplied.")
        dev = self.find("message", ident)
        response = self.kernel_call(
            "message", ident, dm.dm_message, self.state, dev, sector, " ".join(args)
        )
        if response:
            self.out(response if response.endswith("\n") else response + "\n")
        return True

    def _cmd_setgeometry(self, cmd, args, name, multiple) -> bool:
        if self.on("uuid") or self.on("major"):
            ident = self.task_device(None, "setgeometry")
        else:
            ident = self.task_device(args[0], "setgeometry")
            args = args[1:]
        dev = self.find("setgeometry", ident)
        # dm-ioctl.c: dev_set_geometry, dm.c: dm_set_geometry
        m = re.fullmatch(r"\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", " ".join(args[:4]))
        log = self.state.log
        if m is None:
            log.emit("ioctl", "Unable to interpret geometry settings.")
            self.ioctl_error("setgeometry", ident, 22)
            return False
        cyl, heads, sectors, start = (int(g) for g in m.groups())
        if cyl > 65535 or heads > 255 or sectors > 255 or start >= 1 << 64:
            log.emit("ioctl", "Geometry exceeds range limits.")
            self.ioctl_error("setgeometry", ident, 22)
            return False
        if start > cyl * heads * sectors:
            log.emit("core", "Start sector is beyond the geometry limits.")
            self.ioctl_error("setgeometry", ident, 22)
            return False
        dev.geometry = (cyl, heads, sectors, start)
        return True

    # -- informational commands ------------------------------------------------------------

    def _cmd_help(self, cmd, args, name, multiple) -> bool:
        self.io.err(usage_text())
        if self.on("columns"):
            self.sw["sort"] = 0
            self._report_init("help", help_=True)
            self.report = None
        return True

    def _cmd_version(self, cmd, args, name, multiple) -> bool:
        self.out(f"Library version:   {DMSETUP_LIBRARY}\n")
        self.out(f"Driver version:    {DM_DRIVER}\n")
        self.report = None
        return True

    def _cmd_targets(self, cmd, args, name, multiple) -> bool:
        for tname, (a, b, c) in dm.TARGET_VERSIONS:
            self.out(f"{tname:<16} v{a}.{b}.{c}\n")
        return True

    def _cmd_target_version(self, cmd, args, name, multiple) -> bool:
        target = args[0]
        versions = dict(dm.TARGET_VERSIONS)
        if target not in versions:
            if target in dm.UNSIMULATED_TARGETS:
                self.io.err(f"thinsim: dmsetup: the {target} target is not simulated\n")
                return False
            self.ioctl_error("target-version", {"name": target}, 22)
            return False
        a, b, c = versions[target]
        self.out(f"{target:<16} v{a}.{b}.{c}\n")
        return True

    def _cmd_mknodes(self, cmd, args, name, multiple) -> bool:
        """dm_mknodes: a /dev/mapper node for the device (every device without a name) that
        udev has not linked (one without a table)."""
        self._mknodes(args[0] if args else None)
        return True

    def _mknodes(self, name: str | None) -> None:
        if name is None:
            devices = list(self.state.dm.values())
        else:
            dev = self.state.dm.get(name)
            devices = [dev] if dev is not None else []
        for dev in devices:
            if not dev.disk_added:
                dev.mknod = True

    def _cmd_mangle(self, cmd, args, name, multiple) -> bool:
        if name is None:
            if not args and not self.on("uuid") and not self.on("major"):
                return self._process_all(cmd, args, False, self._cmd_mangle)
            name = args[0] if args else None
        ident = self.task_device(name, "status")
        dev = self.find("status", ident, quiet_missing=True)
        if dev is None:
            return False
        name = name if name is not None else dev.name
        uuid = dev.uuid
        mode = self.args.get("manglename", "auto").lower() if self.on("manglename") else "auto"
        if mode == "auto":
            if "\\x5cx" in name:
                self.err(
                    f'The name "{name}" seems to be mangled more than once. Manual '
                    "intervention required to rename the device."
                )
                return False
            if "\\x5cx" in uuid:
                self.err(
                    f'The UUID "{uuid}" seems to be mangled more than once. Manual '
                    "intervention required to correct the device UUID."
                )
                return False
        if mode == "none":
            new_name, new_uuid = _unmangle(dev.name), _unmangle(uuid)
        else:
            new_name, new_uuid = _mangle(dev.name, mode), _mangle(uuid, mode)
        if uuid != new_uuid:
            self.err(f"{name}: {uuid}: UUID in incorrect form. ")
            self.err("Unable to change device UUID. The device must be deactivated first.")
            return False
        if name == new_name:
            self.out(
                f"{name}: {uuid or '[no UUID]'}: name {'and UUID ' if uuid else ''}"
                "already in correct form\n"
            )
            return True
        self.out(f"{name}: renaming to {new_name}\n")
        self.kernel_call("rename", {"name": name}, dm.dm_rename, self.state, name, new_name)
        return True

    def _cmd_splitname(self, cmd, args, name, multiple) -> bool:
        split = _split_name(args[1] if len(args) == 2 else "LVM", args[0], "\0")
        try:
            self.report.is_selected(lambda t: split if t == DR_NAME else None)
        except ReportFieldError:
            return False
        return True

    def _cookie_value(self, text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            value = 0
        if not value or value > 0xFFFFFFFF or value < 0:
            self.err("Incorrect cookie value.")
            return 0
        return value

    def _cmd_udevflags(self, cmd, args, name, multiple) -> bool:
        cookie = self._cookie_value(args[0])
        if not cookie:
            return False
        flags = cookie >> DM_UDEV_FLAGS_SHIFT
        names = (
            "DISABLE_DM_RULES",
            "DISABLE_SUBSYSTEM_RULES",
            "DISABLE_DISK_RULES",
            "DISABLE_OTHER_RULES",
            "LOW_PRIORITY",
            "DISABLE_LIBRARY_FALLBACK",
            "PRIMARY_SOURCE",
        )
        half = DM_UDEV_FLAGS_SHIFT // 2
        for i in range(DM_UDEV_FLAGS_SHIFT):
            if flags & (1 << i):
                if i < half and i < len(names):
                    self.out(f"DM_UDEV_{names[i]}_FLAG='1'\n")
                elif i < half:
                    self.out(f"DM_UDEV_FLAG{i}='1'\n")
                else:
                    self.out(f"DM_SUBSYSTEM_UDEV_FLAG{i - half}='1'\n")
        return True

    def _cmd_udevcookies(self, cmd, args, name, multiple) -> bool:
        # the simulated host has no udev notification semaphores
        self.out("Cookie       Semid      Value      Last semop time           Last change time\n")
        return True

    def _cmd_udevcomplete_all(self, cmd, args, name, multiple) -> bool:
        age = 0
        if len(args) == 1:
            m = re.match(r"\s*\+?(\d+)", args[0])
            if m is None:
                self.err("Failed to read age_in_minutes parameter.")
                return False
            age = int(m.group(1))
        magic = f"{DM_COOKIE_MAGIC} (0x{DM_COOKIE_MAGIC:x})"
        if not self.on("yes"):
            older = f"older than {age} minutes " if age else ""
            self.err(
                f"WARNING: This operation will destroy all semaphores {older}with keys that "
                f"have a prefix {magic}."
            )
            if self._yes_no_prompt("Do you really want to continue? [y/n]: ") == "n":
                self.out(f"Semaphores with keys prefixed by {magic} NOT destroyed.\n")
                return True
        self.out(f"0 semaphores with keys prefixed by {magic} destroyed. 0 skipped.\n")
        return True

    def _yes_no_prompt(self, prompt: str) -> str:
        c = ""
        ret = ""
        while True:
            if c in ("\n", ""):
                self.out(prompt)
                self.io.stdout.flush()
            ch = self.io.stdin.read(1)
            if ch == "":
                ret, c = "n", None
                break
            c = ch.lower()
            if c in ("y", "n"):
                ret = c
            if ret and c == "\n":
                break
        if c != "\n":
            self.out("\n")
        return ret

    def _cmd_udevcomplete(self, cmd, args, name, multiple) -> bool:
        cookie = self._cookie_value(args[0])
        if not cookie:
            return False
        self.out(f"DM_COOKIE_COMPLETED=0x{cookie:<10x}\n")
        if not cookie & 0xFFFF:
            return True
        return unsupported(self.io, "dmsetup", "udev notification semaphores") == 0

    def _cmd_udevcreatecookie(self, cmd, args, name, multiple) -> bool:
        return unsupported(self.io, "dmsetup", "udev notification semaphores") == 0

    _cmd_udevreleasecookie = _cmd_udevcreatecookie

    def _stats(self, args: list[str]) -> int:
        """dmsetup stats: help, version and list (there are never any regions: the
        simulation has no dm statistics); the other subcommands are refused."""
        sub = args[0]
        self.sw["columns"] = self.sw.get("columns", 0) + 1
        if sub not in _STATS_SUBCOMMANDS:
            self.err("Unknown stats command.")
            self._stats_help()
            self.err("Command failed.")
            return 1
        if sub == "help":
            self._stats_help()
            return 0
        if sub == "version":
            self._cmd_version(None, [], None, False)
            return 0
        if sub != "list":
            return unsupported(self.io, "dmsetup", f"stats {sub}")
        for name in args[1:]:
            try:
                ident = self.task_device(name, "message")
                self.find("message", ident)
            except _Fail:
                self.err("Command failed.")
                return 1
        return 0

    def _stats_help(self) -> None:
        """_stats_help: the stats usage, then (stats always report in columns) the field
        list."""
        self.io.err(stats_usage_text())
        self._report_init("stats-help", help_=True)
        self.report = None

    # -- ls --tree (dmsetup.c tree drawing over libdm-deptree.c) ------------------------------

    def _deptree(self):
        if self.dtree is None:
            self.dtree = _DepTree(self.state)
            for name in sorted(self.state.dm):
                self.dtree.add_dev(f"{DM_MAJOR}:{self.state.dm[name].minor}")
        return self.dtree

    def _display_tree(self) -> bool:
        if not self.state.dm:
            self.out("No devices found\n")
            return True
        tree = self._deptree()
        self._tree_width = [0] * 100
        self._tree_more = [0] * 100
        self._cur_x = 1
        self._last_char = 0
        self._buf = bytearray()
        self._walk(tree, _ROOT, 0)
        _write_bytes(self.io, bytes(self._buf))
        return True

    def _out_char(self, c: int) -> None:
        if (c & 0xC0) != 0x80:
            self._cur_x += 1
        if not self.tree_switches.get("truncate"):
            self._buf.append(c)
            return
        if self._cur_x <= self.termwidth:
            self._buf.append(c)
        if self._cur_x == self.termwidth + 1 and (c & 0xC0) != 0x80:
            if self._last_char or c & 0x80:
                self._buf += b"..."
            else:
                self._last_char = c
                self._cur_x -= 1

    def _out_string(self, s: str | bytes) -> None:
        for c in s.encode() if isinstance(s, str) else s:
            self._out_char(c)

    def _out_newline(self) -> None:
        if self._last_char and self._cur_x == self.termwidth:
            self._buf.append(self._last_char)
        self._last_char = 0
        self._buf += b"\n"
        self._cur_x = 1

    def _out_prefix(self, depth: int) -> None:
        for d in range(depth):
            for _ in range(self._tree_width[d] + 1):
                self._out_char(0x20)
            if d == depth - 1:
                self._out_string(self.tsym[3] if not self._tree_more[depth] else self.tsym[1])
            else:
                self._out_string(self.tsym[2] if self._tree_more[d + 1] else self.tsym[0])

    def _walk(self, tree, node, depth: int) -> None:
        inverted = bool(self.tree_switches.get("bottomup"))
        children = tree.children(node, inverted)
        for i, child in enumerate(children):
            has_children = bool(tree.children(child, inverted))
            self._display_node(tree, child, depth, i == len(children) - 1, has_children)
            if has_children:
                self._walk(tree, child, depth + 1)

    def _display_node(self, tree, node, depth, last_child, has_children) -> None:
        ts = self.tree_switches
        attrs = any(ts.get(k) for k in ("active", "rw", "open", "uuid"))
        targets = any(ts.get(k) for k in ("table", "status"))
        compact = ts.get("compact") and not attrs and not targets
        if depth + 2 > 100:
            return
        name = tree.name(node)
        if not name and not ts.get("device") and not ts.get("blkdevname"):
            return
        self._tree_more[depth] = 0 if last_child else 1
        self._tree_width[depth] = 0
        first_on_line = self._cur_x == 1
        if not compact or first_on_line:
            self._out_prefix(depth)
        offset = self._cur_x
        if compact and not first_on_line:
            self._out_string(self.tsym[5] if self._tree_more[depth] else self.tsym[4])
        self._out_string(name)
        major, _, minor = node.partition(":")
        if ts.get("blkdevname"):
            kname = dm.blkdev_name(self.state, node)
            if kname is not None:
                self._out_string(" <" if name is not None else "<")
                self._out_string(kname)
                self._out_char(ord(">"))
        if ts.get("device"):
            self._out_string(f" ({major}:{minor})")
        if attrs:
            self._display_tree_attributes(tree, node)
        if compact:
            self._tree_width[depth] = self._cur_x - offset
        if not compact or not has_children:
            self._out_newline()
        if targets:
            self._tree_more[depth + 1] = 1 if has_children else 0

    def _display_tree_attributes(self, tree, node) -> None:
        dev = tree.device(node)
        if dev is None:
            return
        ts = self.tree_switches
        parts = []
        if ts.get("active"):
            parts.append("SUSPENDED" if dev.suspended else "ACTIVE")
        if ts.get("rw"):
            parts.append("RO" if dev.read_only else "RW")
        if ts.get("open"):
            parts.append(str(dm.dm_open_count(self.state, dev)))
        if ts.get("uuid"):
            parts.append(dev.uuid)
        if parts:
            self._out_string(" [" + ", ".join(parts) + "]")


# -- the dependency tree (libdm-deptree.c: _add_dev, dm_tree_next_child) -----------------------

_ROOT = "0:0"


class _DepTree:
    def __init__(self, state: HostState) -> None:
        self.state = state
        self.uses: dict[str, list[str]] = {_ROOT: []}
        self.used_by: dict[str, list[str]] = {_ROOT: []}

    def device(self, node: str) -> DmDevice | None:
        major, _, minor = node.partition(":")
        if int(major) != DM_MAJOR:
            return None
        return devices.dm_by_minor(self.state, int(minor))

    def name(self, node: str) -> str:
        dev = self.device(node)
        return dev.name if dev is not None else ""

    def children(self, node: str, inverted: bool) -> list[str]:
        """dm_tree_next_child's list; empty for a node at the edge (dm_tree_node_num_children
        counts none where the node is linked with the root that way)."""
        if inverted:
            return [] if node in self.uses[_ROOT] and node != _ROOT else self.used_by[node]
        return [] if _ROOT in self.uses[node] else self.uses[node]

    def _link(self, parent: str, child: str) -> None:
        if child in self.uses[parent]:
            return
        self.uses[parent].append(child)
        self.used_by[child].append(parent)

    def _unlink(self, parent: str, child: str) -> None:
        if child in self.uses[parent]:
            self.uses[parent].remove(child)
            self.used_by[child].remove(parent)

    def _link_tree_nodes(self, parent: str, child: str) -> None:
        if parent == _ROOT:
            if self.children(child, True):
                return
        else:
            self._unlink(_ROOT, child)
        if child == _ROOT:
            if self.children(parent, False):
                return
        else:
            self._unlink(parent, _ROOT)
        self._link(parent, child)

    def add_dev(self, node: str, parent: str = _ROOT) -> None:
        new = node not in self.uses
        if new:
            self.uses[node] = []
            self.used_by[node] = []
        self._link_tree_nodes(parent, node)
        if not new:
            return
        dev = self.device(node)
        deps = dm.table_devnos(dev) if dev is not None else []
        if not deps:
            self._link_tree_nodes(node, _ROOT)
            return
        for d in deps:
            self.add_dev(d, node)


# -- report fields (dmsetup.c: _report_fields) ----------------------------------------------

DR_TASK, DR_INFO, DR_DEPS, DR_TREE, DR_NAME, DR_STATS, DR_STATS_META = 1, 2, 4, 8, 16, 32, 64

_REPORT_TYPES = [
    ObjectType(DR_TASK, "Mapped Device Name", "name_"),
    ObjectType(DR_INFO, "Mapped Device Information", "info_"),
    ObjectType(DR_DEPS, "Mapped Device Relationship Information", "deps_"),
    ObjectType(DR_TREE, "Mapped Device Relationship Information", "tree_"),
    ObjectType(DR_NAME, "Mapped Device Name Components", "splitname_"),
    ObjectType(DR_STATS, "Mapped Device Statistics", "stats_"),
    ObjectType(DR_STATS_META, "Mapped Device Statistics Region Information", "region_"),
]


def _s(value: str):
    return value, value


def _n(value: int):
    return str(value), value


def _blkdevname(info: _Info, prefer_kernel: bool = True):
    name = dm.blkdev_name(info.dmsetup.state, info.dev.devno)
    if name is None:
        raise ReportFieldError(f"Could not resolve block device name for {DM_MAJOR}:{info.minor}.")
    return _s(name)


def _read_ahead_field(info: _Info):
    value = info.dmsetup.read_ahead(info)
    return _n(value if value is not None else 0)


def _tree_names(obj, inverted: bool):
    tree, node = obj
    names = [tree.name(n) for n in tree.children(node, inverted)]
    return _s(",".join(n for n in names if n))


def _tree_devs(obj):
    tree, node = obj
    return _s(",".join(n for n in tree.children(node, True) if n != _ROOT))


def _deps_names(devnos, kernel_names: bool, dms):
    out = []
    for d in devnos:
        if kernel_names:
            name = dm.blkdev_name(dms.state, d)
            if name is None:
                raise ReportFieldError(f"Could not resolve block device name for {d}.")
            out.append(name)
        else:
            out.append(d)
    return _s(",".join(out))


_STATS_FIELDS = [
    (NUM, "#Reads", 6, "read_count", "Count of reads completed."),
    (NUM, "#RdMrgs", 7, "reads_merged_count", "Count of read requests merged."),
    (NUM, "#RdSectors", 10, "read_sector_count", "Count of sectors read."),
    (NUM, "AccRdTime", 11, "read_time", "Accumulated duration of all read requests (ns)."),
    (NUM, "#Writes", 7, "write_count", "Count of writes completed."),
    (NUM, "#WrMrgs", 7, "writes_merged_count", "Count of write requests merged."),
    (NUM, "#WrSectors", 10, "write_sector_count", "Count of sectors written."),
    (NUM, "AccWrTime", 11, "write_time", "Accumulated duration of all writes (ns)."),
    (NUM, "#InProg", 7, "in_progress_count", "Count of requests currently in progress."),
    (NUM, "IoTicks", 7, "io_ticks", "Nanoseconds spent servicing requests."),
    (NUM, "QueueTicks", 10, "queue_ticks", "Total nanoseconds spent in queue."),
    (NUM, "RdTicks", 7, "read_ticks", "Nanoseconds spent servicing reads."),
    (NUM, "WrTicks", 7, "write_ticks", "Nanoseconds spent servicing writes."),
    (NUM, "RMrg/s", 6, "reads_merged_per_sec", "Read requests merged per second."),
    (NUM, "WMrg/s", 6, "writes_merged_per_sec", "Write requests merged per second."),
    (NUM, "R/s", 3, "reads_per_sec", "Reads per second."),
    (NUM, "W/s", 3, "writes_per_sec", "Writes per second."),
    (NUM, "RSz/s", 5, "read_size_per_sec", "Size of data read per second."),
    (NUM, "WSz/s", 5, "write_size_per_sec", "Size of data written per second."),
    (NUM, "AvgRqSz", 7, "avg_request_size", "Average request size."),
    (NUM, "QSize", 5, "queue_size", "Average queue size."),
    (NUM, "AWait", 5, "await", "Averate wait time."),
    (NUM, "RdAWait", 7, "read_await", "Averate read wait time."),
    (NUM, "WrAWait", 7, "write_await", "Averate write wait time."),
    (NUM, "Throughput", 10, "throughput", "Throughput."),
    (NUM, "SvcTm", 5, "service_time", "Service time."),
    (NUM, "Util%", 5, "util", "Utilization."),
    (STR, "Histogram Counts", 16, "hist_count", "Latency histogram counts."),
    (
        STR,
        "Histogram Counts",
        16,
        "hist_count_bounds",
        "Latency histogram counts with bin boundaries.",
    ),
    (STR, "Histogram Counts", 16, "hist_count_ranges", "Latency histogram counts with bin ranges."),
    (STR, "Histogram%", 10, "hist_percent", "Relative latency histogram."),
    (
        STR,
        "Histogram%",
        10,
        "hist_percent_bounds",
        "Relative latency histogram with bin boundaries.",
    ),
    (STR, "Histogram%", 10, "hist_percent_ranges", "Relative latency histogram with bin ranges."),
    (NUM, "IntervalNs", 10, "interval_ns", "Sampling interval in nanoseconds."),
    (NUM, "Interval", 8, "interval", "Sampling interval."),
]
_REGION_FIELDS = [
    (NUM, "RgID", 4, "region_id", "Region ID."),
    (4, "RgStart", 7, "region_start", "Region start."),
    (4, "RgSize", 6, "region_len", "Region length."),
    (NUM, "ArID", 4, "area_id", "Area ID."),
    (4, "ArStart", 7, "area_start", "Area offset from start of device."),
    (4, "ArSize", 6, "area_len", "Area length."),
    (4, "ArOff", 5, "area_offset", "Area offset from start of region."),
    (NUM, "#Areas", 6, "area_count", "Area count."),
    (NUM, "GrpID", 5, "group_id", "Group ID."),
    (STR, "ProgID", 6, "program_id", "Program ID."),
    (STR, "UserData", 8, "user_data", "Auxiliary data."),
    (STR, "Precise", 7, "precise", "Set if nanosecond precision counters are enabled."),
    (STR, "#Bins", 9, "hist_bins", "The number of histogram bins configured."),
    (STR, "Histogram Bounds", 16, "hist_bounds", "Latency histogram bin boundaries."),
    (STR, "Histogram Ranges", 16, "hist_ranges", "Latency histogram bin ranges."),
    (STR, "Name", 16, "stats_name", "Stats name of current object."),
    (STR, "ObjType", 7, "obj_type", "Type of stats object being reported."),
]


def _report_fields() -> list[FieldType]:
    def f(t, flags, heading, width, fid, desc, fn):
        return FieldType(t, flags, heading, width, fid, desc, fn)

    fields = [
        f(DR_TASK, STR, "Name", 16, "name", "Name of mapped device.", lambda i: _s(i.name)),
        f(
            DR_TASK,
            STR,
            "MangledName",
            16,
            "mangled_name",
            "Mangled name of mapped device.",
            lambda i: _s(_mangle(i.name, "auto")),
        ),
        f(
            DR_TASK,
            STR,
            "UnmangledName",
            16,
            "unmangled_name",
            "Unmangled name of mapped device.",
            lambda i: _s(_unmangle(i.name)),
        ),
        f(
            DR_TASK,
            STR,
            "UUID",
            32,
            "uuid",
            "Unique (optional) identifier for mapped device.",
            lambda i: _s(i.uuid),
        ),
        f(
            DR_TASK,
            STR,
            "MangledUUID",
            32,
            "mangled_uuid",
            "Mangled unique (optional) identifier for mapped device.",
            lambda i: _s(_mangle(i.uuid, "auto")),
        ),
        f(
            DR_TASK,
            STR,
            "UnmangledUUID",
            32,
            "unmangled_uuid",
            "Unmangled unique (optional) identifier for mapped device.",
            lambda i: _s(_unmangle(i.uuid)),
        ),
        f(DR_TASK, NUM, "RAhead", 6, "read_ahead", "Read ahead value.", _read_ahead_field),
        f(DR_INFO, STR, "BlkDevName", 16, "blkdevname", "Name of block device.", _blkdevname),
        f(
            DR_INFO,
            STR,
            "Stat",
            4,
            "attr",
            "(L)ive, (I)nactive, (s)uspended, (r)ead-only, read-(w)rite.",
            lambda i: _s(
                ("L" if i.live_table else "-")
                + ("I" if i.inactive_table else "-")
                + ("s" if i.suspended else "-")
                + ("r" if i.read_only else "w")
            ),
        ),
        f(
            DR_INFO,
            STR,
            "Tables",
            6,
            "tables_loaded",
            "Which of the live and inactive table slots are filled.",
            lambda i: _s(
                ("Both" if i.inactive_table else "Live")
                if i.live_table
                else ("Inactive" if i.inactive_table else "None")
            ),
        ),
        f(
            DR_INFO,
            STR,
            "Suspended",
            9,
            "suspended",
            "Whether the device is suspended.",
            lambda i: _s("Suspended" if i.suspended else "Active"),
        ),
        f(
            DR_INFO,
            STR,
            "Read-only",
            9,
            "readonly",
            "Whether the device is read-only or writeable.",
            lambda i: _s("Read-only" if i.read_only else "Writeable"),
        ),
        f(
            DR_INFO,
            STR,
            "DevNo",
            5,
            "devno",
            "Device major and minor numbers",
            lambda i: _s(f"{i.major}:{i.minor}"),
        ),
        f(DR_INFO, NUM, "Maj", 3, "major", "Block device major number.", lambda i: _n(i.major)),
        f(DR_INFO, NUM, "Min", 3, "minor", "Block device minor number.", lambda i: _n(i.minor)),
        f(
            DR_INFO,
            NUM,
            "Open",
            4,
            "open",
            "Number of references to open device, if requested.",
            lambda i: _n(i.open_count),
        ),
        f(
            DR_INFO,
            NUM,
            "Targ",
            4,
            "segments",
            "Number of segments in live table, if present.",
            lambda i: _n(i.target_count),
        ),
        f(
            DR_INFO,
            NUM,
            "Event",
            6,
            "events",
            "Number of most recent event.",
            lambda i: _n(i.event_nr),
        ),
        f(
            DR_DEPS,
            NUM,
            "#Devs",
            5,
            "device_count",
            "Number of devices used by this one.",
            lambda d: _n(len(d)),
        ),
        f(
            DR_TREE,
            STR,
            "DevNamesUsed",
            16,
            "devs_used",
            "List of names of mapped devices used by this one.",
            lambda t: _tree_names(t, False),
        ),
        f(
            DR_DEPS,
            STR,
            "DevNosUsed",
            16,
            "devnos_used",
            "List of device numbers of devices used by this one.",
            lambda d: _s(",".join(d)),
        ),
        f(
            DR_DEPS,
            STR,
            "BlkDevNamesUsed",
            16,
            "blkdevs_used",
            "List of names of block devices used by this one.",
            None,
        ),
        f(
            DR_TREE,
            NUM,
            "#Refs",
            5,
            "device_ref_count",
            "Number of mapped devices referencing this one.",
            lambda t: _n(len([n for n in t[0].children(t[1], True) if n != _ROOT])),
        ),
        f(
            DR_TREE,
            STR,
            "RefNames",
            8,
            "names_using_dev",
            "List of names of mapped devices using this one.",
            lambda t: _tree_names(t, True),
        ),
        f(
            DR_TREE,
            STR,
            "RefDevNos",
            9,
            "devnos_using_dev",
            "List of device numbers of mapped devices using this one.",
            _tree_devs,
        ),
        f(
            DR_NAME,
            STR,
            "Subsys",
            6,
            "subsystem",
            "Userspace subsystem responsible for this device.",
            lambda s: _s(s[0]),
        ),
        f(DR_NAME, STR, "VG", 4, "vg_name", "LVM Volume Group name.", lambda s: _s(s[1])),
        f(DR_NAME, STR, "LV", 4, "lv_name", "LVM Logical Volume name.", lambda s: _s(s[2])),
        f(DR_NAME, STR, "LVLayer", 7, "lv_layer", "LVM device layer.", lambda s: _s(s[3])),
    ]
    fields += [f(DR_STATS, fl, h, w, i, d, None) for fl, h, w, i, d in _STATS_FIELDS]
    fields += [f(DR_STATS_META, fl, h, w, i, d, None) for fl, h, w, i, d in _REGION_FIELDS]
    return fields


_REPORT_FIELDS = _report_fields()


def _fix_blkdevs_used() -> None:
    # blkdevs_used needs the dmsetup run (for the state): the getter hands it over
    i = next(n for n, f in enumerate(_REPORT_FIELDS) if f.id == "blkdevs_used")
    old = _REPORT_FIELDS[i]
    _REPORT_FIELDS[i] = FieldType(
        old.type,
        old.flags,
        old.heading,
        old.width,
        old.id,
        old.desc,
        lambda d: _deps_names(d, True, _CURRENT[0]),
    )


_CURRENT: list = [None]
_fix_blkdevs_used()


# -- helpers ---------------------------------------------------------------------------------

_TSYM_ASCII = ("  ", "|-", "| ", "`-", "---", "-+-")
_TSYM_UTF = ("  ", "\u251c\u2500", "\u2502 ", "\u2514\u2500", "\u2500" * 3, "\u2500\u252c\u2500")
_VT_BEG, _VT_END = "\033(0\017", "\033(B"
_TSYM_VT100 = (
    "  ",
    f"{_VT_BEG}tq{_VT_END}",
    f"{_VT_BEG}x{_VT_END} ",
    f"{_VT_BEG}mq{_VT_END}",
    f"{_VT_BEG}qqq{_VT_END}",
    f"{_VT_BEG}qwq{_VT_END}",
)


def _codeset_is_utf8() -> bool:
    """nl_langinfo(CODESET) after setlocale(LC_ALL, "").  Python coerces a C locale to
    C.UTF-8 by setting LC_CTYPE (PEP 538), so the locale is read from the environment as
    the script set it."""
    import locale

    env = os.environ
    name = env.get("LC_ALL") or ""
    if not name:
        ctype = env.get("LC_CTYPE") or ""
        coerced = ctype == "C.UTF-8" and (env.get("LANG") or "C") in ("C", "POSIX")
        name = (ctype if not coerced else "") or env.get("LANG") or "C"
    try:
        old = locale.setlocale(locale.LC_CTYPE)
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return locale.nl_langinfo(locale.CODESET) == "UTF-8"
        finally:
            locale.setlocale(locale.LC_CTYPE, old)
    except locale.Error:
        return False


def _write_bytes(io: IO, data: bytes) -> None:
    stream = io.stdout
    if hasattr(stream, "buffer"):
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()
    else:
        stream.write(data.decode("utf-8", "surrogateescape"))


def _option_words(options: str) -> list[str]:
    """The comma-separated words of -o, as dmsetup's option loops walk them."""
    words = []
    i = 0
    while i < len(options):
        j = options.find(",", i)
        if j < 0:
            words.append(options[i:])
            break
        words.append(options[i:j])
        i = j + 1
    return words


def _prefix_match(word: str, names) -> str | None:
    """strncmp(s, NAME, len) == 0 with len the word's length: the first name the word is a
    prefix of (an empty word matches the first)."""
    for name in names:
        if name[: len(word)] == word and len(word) <= len(name):
            return name
    return None


def _quoted(text: str) -> str:
    """_print_string_quoted: backslash before , ; and \\."""
    return "".join("\\" + c if c in ",;\\" else c for c in text)


def _split_name(uuid: str, name: str, separator: str):
    """_get_split_name: the subsystem (the uuid up to the separator), and an LVM name's VG,
    LV and layer (dm_split_lvm_name)."""
    cut = uuid.find(separator) if separator != "\0" else len(uuid)
    subsystem = uuid[:cut] if cut >= 0 else ""
    if subsystem != "LVM":
        return (subsystem, "", "", "")
    vg, rest = _unquote(name)
    lv, rest = _unquote(rest)
    layer, _ = _unquote(rest)
    return (subsystem, vg, lv, layer)


def _unquote(text: str) -> tuple[str, str]:
    """libdm-string.c: _unquote -- up to the first single '-', with '--' read as '-'."""
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if i + 1 < len(text) and c == "-":
            if text[i + 1] == "-":
                i += 1
            else:
                break
        out.append(text[i])
        i += 1
    rest = text[i + 1 :] if i < len(text) else ""
    return "".join(out), rest


def _whitelisted(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "#+-.:=@_")


def _mangle(text: str, mode: str) -> str:
    """libdm-common.c: mangle_string (auto/hex): \\xNN for characters udev does not take."""
    out = []
    i = 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        c = chr(raw[i])
        if mode == "auto" and raw[i : i + 2] == b"\\x" and re.match(rb"\\x[0-9a-fA-F]{2}", raw[i:]):
            out.append(raw[i : i + 4].decode())
            i += 4
            continue
        out.append(c if _whitelisted(c) else f"\\x{raw[i]:02x}")
        i += 1
    return "".join(out)


def _unmangle(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def dmsetup(state: HostState, argv: list[str], io: IO) -> int:
    if io.defer:
        io.stdio_buffered()  # see IO.run: --exec's commands write between its flushes
    run = Dmsetup(state, io)
    _CURRENT[0] = run
    _Info.dmsetup = run
    try:
        return run.main(argv)
    finally:
        _CURRENT[0] = None
        if not io.pending:  # else stdout stays in its buffer until after --exec's commands
            try:
                io.stdout.flush()
                if sys.stdout is not None:  # None: closed (>&-)
                    sys.stdout.flush()
            except (OSError, ValueError):
                pass  # the shim's exit (_exit_as) decides what an unwritable stdout means
