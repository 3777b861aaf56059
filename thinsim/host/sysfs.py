"""/sys/block in the simulated host's private mount namespace: a directory for every loop
and device-mapper device with the attribute files scripts read (`cat
/sys/block/dm-1/queue/discard_granularity`), kept in step with the devices after every
simulated command.  thinsim/host/private_dev.sh mounts a tmpfs on /sys/block (hiding the
real host's devices) and sets THINSIM_PRIVATE_SYS; without it nothing is written.

Values are what Debian 12's 6.1 kernel shows: queue limits as loop.c and dm-thin.c
(pool_io_hints, thin_io_hints) set them; loop/ exists only while a loop device is bound.
"""

from __future__ import annotations

import os
import shutil

from . import kernel
from .state import DmDevice, HostState, LoopDevice

SYS_BLOCK = "/sys/block"
SECTOR = 512
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
        thins = [t for t in dev.live or [] if t.type in ("thin", "thin-pool")]
        if (
            thins
            and block
            and all(t.obj.pool.pf.discard_enabled for t in thins if t.type == "thin")
        ):
            pools = [t.obj for t in thins if t.type == "thin-pool"]
            if all(p.pf.discard_enabled for p in pools):
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
    size = kernel.device_size(state, dev) // SECTOR
    ro = getattr(dev, "bd_read_only", False) or getattr(dev, "read_only", False)
    files = {"size": str(size), "ro": "1" if ro else "0", "removable": "0"}
    files.update({f"queue/{k}": v for k, v in _queue(state, dev).items()})
    if isinstance(dev, LoopDevice):
        files["dev"] = f"7:{dev.number}"
        if dev.number in state.loops:
            files.update(
                {
                    "loop/backing_file": dev.backing_file,
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


def sync(state: HostState, root: str = SYS_BLOCK) -> None:
    """Rewrite the private /sys/block; does nothing unless THINSIM_PRIVATE_SYS names it."""
    if os.environ.get("THINSIM_PRIVATE_SYS") != root:
        return
    devices: dict[str, object] = {}
    for n in sorted(set(getattr(state, "loop_nodes", range(8))) | set(state.loops)):
        devices[f"loop{n}"] = state.loops.get(n) or LoopDevice(n, "", 0, 0)
    for dev in state.dm.values():
        if isinstance(dev, DmDevice) and getattr(dev, "disk_added", True):
            devices[f"dm-{dev.minor}"] = dev
    try:
        for entry in os.listdir(root):
            if entry not in devices:
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        for name, dev in devices.items():
            base = os.path.join(root, name)
            shutil.rmtree(os.path.join(base, "loop"), ignore_errors=True)
            for rel, value in _attributes(state, dev).items():
                path = os.path.join(base, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(value + "\n")
    except OSError:
        pass  # not ours to write (no private /sys/block): the names just stay unseen
