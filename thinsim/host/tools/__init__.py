"""The simulated host's commands: what dmsetup, losetup, dd, blkdiscard, blockdev, dmesg,
sync, udevadm and the thin tools print, byte for byte as Debian 12's tools print them.

Each command is ``NAME(state, argv, io) -> exit status``, one module per tool.  A command or
option the simulator does not support says so on stderr and exits 1; it never pretends.
"""

from __future__ import annotations

from .blockdev import blkdiscard, blockdev
from .common import IO, Unsupported, unsupported
from .dd import dd
from .dmsetup import dmsetup
from .losetup import losetup
from .misc import dmesg, sync, udevadm
from .thintools import (
    thin_check,
    thin_delta,
    thin_dump,
    thin_ls,
    thin_metadata_size,
    thin_repair,
    thin_restore,
)

__all__ = ["COMMANDS", "GUARDED", "IO", "Unsupported", "unsupported"]

COMMANDS = {
    "dmsetup": dmsetup,
    "losetup": losetup,
    "blockdev": blockdev,
    "blkdiscard": blkdiscard,
    "dd": dd,
    "dmesg": dmesg,
    "sync": sync,
    "udevadm": udevadm,
    "thin_check": thin_check,
    "thin_dump": thin_dump,
    "thin_ls": thin_ls,
    "thin_delta": thin_delta,
    "thin_restore": thin_restore,
    "thin_repair": thin_repair,
    "thin_metadata_size": thin_metadata_size,
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
    "fstrim",
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
    "thin_trim",
    "thin_rmap",
)
