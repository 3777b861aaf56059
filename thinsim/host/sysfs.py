"""The block devices' part of sysfs in the simulated host's private mount namespace: a
directory for every loop and device-mapper device with the attribute files scripts read (`cat
/sys/block/dm-1/queue/discard_granularity`), kept in step with the devices after every
simulated command.

thinsim/host/sandbox.py mounts a tmpfs ("thinsim-sys") on each sysfs folder that names
block devices (/sys/block, /sys/class/block, /sys/dev/block, /sys/devices/virtual/block, and
their backing_dev_info: /sys/class/bdi, /sys/devices/virtual/bdi) and sets
THINSIM_PRIVATE_SYS.  That hides the real host's loop and dm devices everywhere a path could
reach them, so a script neither sees a real loop0 where the simulated one should be nor
writes a real device's attributes.  The layout is the kernel's: the device folders live in
devices/virtual/block (and devices/virtual/bdi), the other folders hold symlinks to them.
Nothing is written unless /proc/self/mountinfo shows thinsim's tmpfs on /sys/block: never
the real sysfs.  /proc/partitions and /proc/diskstats are files bound from
THINSIM_PRIVATE_PROC, rewritten here too.

Values are what Debian 12's 6.1 kernel shows: queue limits as loop.c and dm-thin.c
(pool_io_hints, thin_io_hints) set them; loop/ exists only while a loop device is bound.
"""

from __future__ import annotations

import os
import shutil

from ..constants import SECTOR_SIZE as SECTOR
from ..model import blockio, loopfile
from ..model.devices import device_size
from .state import DmDevice, HostState, LoopDevice

MAX_SECTORS_KB = 1280
LOOP_MAX_DISCARD = (0xFFFFFFFF >> 9) << 9  # loop_config_discard: UINT_MAX >> 9 sectors
THIN_MAX_DISCARD = 2048 * 1024 * 16 * SECTOR  # thin_io_hints: 16 GiB
FS_BLOCK = 4096  # the backing file system's block size: a loop device's discard granularity


def _queue(state: HostState, dev) -> dict[str, str]:
    from .tools.blockdev import _ioctl, _pool_block_bytes

    logical = getattr(dev, "block_size", SECTOR)
    granularity = max_discard = 0
    if isinstance(dev, LoopDevice):
        if dev.number in state.loops:
            granularity, max_discard = FS_BLOCK, LOOP_MAX_DISCARD
    else:
        block = _pool_block_bytes(state, dev)
        if block and blockio.discard_granularity(state, dev):
            granularity, max_discard = block, THIN_MAX_DISCARD
    return {
        "logical_block_size": str(logical),
        "physical_block_size": str(logical),
        "hw_sector_size": str(logical),
        "minimum_io_size": str(_ioctl(state, dev, "BLKIOMIN")),
        "optimal_io_size": str(_ioctl(state, dev, "BLKIOOPT")),
        "discard_granularity": str(granularity),
        "discard_max_bytes": str(max_discard),
        "discard_max_hw_bytes": str(max_discard),
        "discard_zeroes_data": "0",
        "max_sectors_kb": str(MAX_SECTORS_KB),
        "read_ahead_kb": str(getattr(dev, "read_ahead", 256) // 2),
        "rotational": "0",
    }


def _attributes(state: HostState, dev) -> dict[str, str]:
    size = device_size(state, dev) // SECTOR
    ro = getattr(dev, "bd_read_only", False) or getattr(dev, "read_only", False)
    files = {"size": str(size), "ro": "1" if ro else "0", "removable": "0"}
    files.update({f"queue/{k}": v for k, v in _queue(state, dev).items()})
    if isinstance(dev, LoopDevice):
        files["dev"] = f"7:{dev.number}"
        if dev.number in state.loops:
            files.update(
                {
                    "loop/backing_file": loopfile.backing_name(dev),
                    "loop/offset": str(dev.offset),
                    "loop/sizelimit": str(dev.sizelimit),
                    "loop/autoclear": "1" if dev.autoclear else "0",
                    "loop/partscan": "1" if dev.partscan else "0",
                    "loop/dio": "1" if dev.dio else "0",
                }
            )
    else:
        files["dev"] = dev.devno
        files["dm/name"] = dev.name
        files["dm/uuid"] = dev.uuid
        files["dm/suspended"] = "1" if dev.suspended else "0"
    return files


SYS = "/sys"
SOURCE = "thinsim-sys"  # sandbox.py's tmpfs
DEVICES = "devices/virtual/block"  # where the kernel keeps loop and dm devices' folders
LINKS = ("block", "class/block", "dev/block")  # symlinks to them, by name or MAJOR:MINOR
BDI = "devices/virtual/bdi"  # each disk's backing_dev_info, by MAJOR:MINOR
BDI_LINKS = "class/bdi"
PRIVATE = (DEVICES, *LINKS, BDI, BDI_LINKS)  # the folders sandbox.py gives a tmpfs
PROC_FILES = ("partitions", "diskstats")


def private_mounts(root: str = SYS) -> set[str]:
    """Which of the block-device folders under ROOT have thinsim's tmpfs on top in this mount
    namespace (the last mount on a point is the one seen)."""
    top: dict[str, bool] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields, _, tail = line.partition(" - ")
                point = fields.split()[4].replace("\\040", " ")
                fstype, source = (tail.split() + ["", ""])[:2]
                top[point] = fstype == "tmpfs" and source == SOURCE
    except OSError:
        return set()
    return {d for d in PRIVATE if top.get(os.path.join(root, d))}


def _devices(state: HostState) -> dict[str, object]:
    """Every device with a disk: loop0-7 and the other loop nodes made, bound or not, and
    each dm device from its first table load (dm.c adds the gendisk then)."""
    devices: dict[str, object] = {}
    for n in sorted(set(getattr(state, "loop_nodes", range(8))) | set(state.loops)):
        devices[f"loop{n}"] = state.loops.get(n) or LoopDevice(n, "", 0, 0)
    for dev in state.dm.values():
        if isinstance(dev, DmDevice) and getattr(dev, "disk_added", True):
            devices[f"dm-{dev.minor}"] = dev
    return devices


def sync(state: HostState, root: str = SYS) -> None:
    """Rewrite the private block-device folders; does nothing unless THINSIM_PRIVATE_SYS names
    ROOT and thinsim's tmpfs is on ROOT/block.

    Called after every simulated command, so it writes only what changed since the last
    call in this process (most commands change no attribute: writing every file of every
    device each time took 8 of the 14 ms a `dmsetup status` cost); a new set of devices,
    or a tmpfs other than the one written last, gets every folder written again."""
    if os.environ.get("THINSIM_PRIVATE_SYS") != root:
        return
    mounted = private_mounts(root)
    if "block" not in mounted:
        return  # the real sysfs: not ours to write
    # a host without devices/virtual/block keeps the folders in /sys/block itself
    home = DEVICES if DEVICES in mounted else "block"
    devices = _devices(state)
    try:
        where = os.stat(os.path.join(root, home))
        folders = {name: _attributes(state, dev) for name, dev in devices.items()}
        wanted = _Wanted(
            (where.st_dev, where.st_ino, home, frozenset(mounted)),
            folders,
            _bdi_files(devices, folders) if BDI in mounted else {},
            _proc_files(state, devices),
        )
        last = _written.pop(root, None)
        if last is not None and last.same_layout(wanted):
            _write_changed(root, home, last, wanted)
        else:
            _write_all(root, home, mounted, devices, wanted)
        _written[root] = wanted
    except OSError:
        pass  # a full tmpfs: the names just stay unseen; the next call writes all again


class _Wanted:
    """What the private folders should hold: WHERE (the tmpfs and its layout), each device's
    attribute files (name -> path within its folder -> value), each bdi's files (MAJOR:MINOR
    -> attribute -> value), and the /proc files' text."""

    def __init__(self, where, folders, bdi, proc) -> None:
        self.where, self.folders, self.bdi, self.proc = where, folders, bdi, proc

    def same_layout(self, other: _Wanted) -> bool:
        """The same tmpfs, devices and files, whatever their values."""
        return (
            self.where == other.where
            and self.folders.keys() == other.folders.keys()
            and all(self.folders[n].keys() == other.folders[n].keys() for n in self.folders)
            and self.bdi.keys() == other.bdi.keys()
        )


#: per ROOT, what this process wrote there last
_written: dict[str, _Wanted] = {}


def _write_changed(root: str, home: str, last: _Wanted, wanted: _Wanted) -> None:
    for name, files in wanted.folders.items():
        for rel, value in files.items():
            if last.folders[name][rel] != value:
                _write(os.path.join(root, home, name, rel), value)
    for devno, files in wanted.bdi.items():
        for attr, value in files.items():
            if last.bdi[devno][attr] != value:
                _write(os.path.join(root, BDI, devno, attr), value)
    if wanted.proc != last.proc:
        _write_proc(wanted.proc)


def _write_all(root, home, mounted, devices, wanted: _Wanted) -> None:
    _write_folders(os.path.join(root, home), wanted.folders)
    for folder in LINKS:
        if folder in mounted and folder != home:
            names = {
                dev.devno if folder == "dev/block" else name: name for name, dev in devices.items()
            }
            _write_links(os.path.join(root, folder), os.path.join(root, home), names)
    if BDI in mounted:
        _write_bdi(root, wanted.bdi, BDI_LINKS in mounted)
    _write_proc(wanted.proc)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value + "\n")


def refresh_names(host: str, argv: list[str], root: str = SYS) -> None:
    """Before a command that is not simulated reads files under ROOT (cat, head ...): make
    each bound loop device's loop/backing_file say the name its file has now, as the
    kernel's attribute does at read time (a mv or rm since the last simulated command
    changed it)."""
    if os.environ.get("THINSIM_PRIVATE_SYS") != root:
        return
    top = os.path.join(root, "")
    if not any(
        os.path.realpath(part).startswith(top) for a in argv for part in {a, a.split("=", 1)[-1]}
    ):
        return
    mounted = private_mounts(root)
    if "block" not in mounted:
        return  # the real sysfs: not ours to write
    from .state import open_host

    with open_host(host, write=False) as state:
        _refresh(state, root, mounted)


def reads_names(argv: list[str], root: str = SYS) -> bool:
    """Whether a command that is not simulated may read a loop device's backing_file (an
    argument under ROOT, the private /sys)."""
    if os.environ.get("THINSIM_PRIVATE_SYS") != root:
        return False
    top = os.path.join(root, "")
    return any(
        os.path.realpath(part).startswith(top) for a in argv for part in {a, a.split("=", 1)[-1]}
    )


def refresh_names_of(state, argv: list[str], root: str = SYS) -> None:
    """refresh_names with the host's state in hand (the host's process: server.py)."""
    if not reads_names(argv, root):
        return
    mounted = private_mounts(root)
    if "block" in mounted:
        _refresh(state, root, mounted)


def _refresh(state, root: str, mounted) -> None:
    home = DEVICES if DEVICES in mounted else "block"
    for n, loop in state.loops.items():
        path = os.path.join(root, home, f"loop{n}", "loop", "backing_file")
        text = loopfile.backing_name(loop) + "\n"
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError:
            pass  # no such folder (yet): the next simulated command writes it


def _bdi_files(devices: dict[str, object], folders) -> dict[str, dict[str, str]]:
    """Every disk's backing_dev_info (mm/backing-dev.c bdi_dev_attrs, named MAJOR:MINOR by
    device_add_disk), where `echo N > /sys/class/bdi/7:0/read_ahead_kb` goes: its
    read-ahead is the queue's, from the device's own files (FOLDERS)."""
    return {
        dev.devno: {
            "read_ahead_kb": folders[name]["queue/read_ahead_kb"],
            "min_ratio": "0",
            "max_ratio": "100",
            "stable_pages_required": "0",
        }
        for name, dev in devices.items()
    }


def _write_bdi(root: str, bdi: dict[str, dict[str, str]], links: bool) -> None:
    base = os.path.join(root, BDI)
    _prune(base, bdi)
    for devno, files in bdi.items():
        os.makedirs(os.path.join(base, devno), exist_ok=True)
        for attr, value in files.items():
            _write(os.path.join(base, devno, attr), value)
    if links:
        _write_links(os.path.join(root, BDI_LINKS), base, {d: d for d in bdi})


def _proc_files(state: HostState, devices: dict[str, object]) -> dict[str, str]:
    """The simulated disks in /proc/partitions (block/genhd.c show_partition: those with a
    size) and /proc/diskstats (diskstats_show: every disk; the simulated host counts no I/O,
    so the counters stay 0).  The kernel lists disks in the order they were added; here loop
    devices come first, then dm devices in the order they were made."""
    partitions = ["major minor  #blocks  name\n\n"]
    diskstats = []
    for name, dev in devices.items():
        major, minor = (int(x) for x in dev.devno.split(":"))
        sectors = device_size(state, dev) // SECTOR
        if sectors:
            partitions.append(f"{major:4d}  {minor:7d} {sectors >> 1:10d} {name}\n")
        diskstats.append(f"{major:4d} {minor:7d} {name}" + " 0" * 17 + "\n")
    return {"partitions": "".join(partitions), "diskstats": "".join(diskstats)}


def _write_proc(files: dict[str, str]) -> None:
    """Written in place: the files are bound on /proc."""
    folder = os.environ.get("THINSIM_PRIVATE_PROC")
    if not folder or not os.path.isdir(folder):
        return
    for file, text in files.items():
        with open(os.path.join(folder, file), "w") as f:
            f.write(text)


def _prune(folder: str, keep) -> None:
    """Remove every entry of FOLDER whose name is not in KEEP (devices gone since last time)."""
    for entry in os.listdir(folder):
        if entry not in keep:
            _remove(os.path.join(folder, entry))


def _write_folders(base: str, folders: dict[str, dict[str, str]]) -> None:
    _prune(base, folders)
    for name, files in folders.items():
        folder = os.path.join(base, name)
        shutil.rmtree(os.path.join(folder, "loop"), ignore_errors=True)
        for rel, value in files.items():
            path = os.path.join(folder, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write(path, value)


def _write_links(folder: str, home: str, names: dict[str, str]) -> None:
    """FOLDER's symlinks: each key of NAMES links to the device folder named by its value."""
    _prune(folder, names)
    for entry, name in names.items():
        path = os.path.join(folder, entry)
        target = os.path.relpath(os.path.join(home, name), folder)
        if os.path.islink(path) and os.readlink(path) == target:
            continue
        _remove(path)
        os.symlink(target, path)


def _remove(path: str) -> None:
    """Whatever is at PATH (what a script may have put there too: a file, a folder)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)
