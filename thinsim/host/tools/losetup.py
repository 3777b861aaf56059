"""losetup, as util-linux 2.38 prints."""

from __future__ import annotations

import os

from ...errors import ThinsimError
from .. import kernel
from ..state import HostState, LoopDevice, is_device_path
from .common import IO, unsupported


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
