"""blockdev and blkdiscard, as util-linux 2.38 print."""

from __future__ import annotations

import os

from ...errors import ThinsimError
from .. import blockio, kernel
from ..state import HostState
from .common import IO, unsupported


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
