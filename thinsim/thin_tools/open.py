"""How the tools open their input and parse numbers (base/file_utils.cc,
persistent-data/file_utils.cc, base/application.cc), with the same failures."""

from __future__ import annotations

import os

from .common import MD_BLOCK_SIZE, Files, ToolError
from .metadata import BlockManager

U64 = (1 << 64) - 1


def get_file_length(files: Files, path: str) -> int:
    """file_utils::get_file_length."""
    try:
        info = files.stat(path)
    except OSError:
        raise ToolError("Couldn't stat path") from None
    if info.kind in ("reg", "blk"):
        return info.size
    raise ToolError("bad path")


def check_file_exists(files: Files, path: str, must_be_regular_file: bool = True) -> None:
    """file_utils::check_file_exists."""
    try:
        info = files.stat(path)
    except OSError:
        raise ToolError("Couldn't stat file") from None
    if must_be_regular_file and info.kind != "reg":
        raise ToolError("Not a regular file")


def open_file(files: Files, path: str, *, write: bool = False, excl: bool = False):
    """file_utils::file_descriptor: open with O_DIRECT."""
    try:
        return files.open(path, write=write, excl=excl)
    except OSError as e:
        raise ToolError(
            f"syscall 'open' failed: {os.strerror(e.errno)}\n"
            "Note: you cannot run this tool with these options on live metadata."
        ) from None


def open_bm(files: Files, path: str, *, excl: bool = True, write: bool = False) -> BlockManager:
    """persistent_data::open_bm: the device's size in whole blocks, then the open."""
    nr_blocks = get_file_length(files, path) // MD_BLOCK_SIZE
    handle = open_file(files, path, write=write, excl=excl)
    return BlockManager(handle, nr_blocks)


def lexical_uint64(text: str) -> int | None:
    """boost::lexical_cast<uint64_t>: an optional sign then digits only; a minus wraps
    (``-1`` is 18446744073709551615); None where boost throws bad_lexical_cast."""
    s = text
    neg = False
    if s[:1] in ("+", "-"):
        neg = s[0] == "-"
        s = s[1:]
    if not s or not s.isascii() or not s.isdigit():
        return None
    v = int(s)
    if v > U64:
        return None
    return (-v) & U64 if neg else v


def parse_uint64(text: str, desc: str) -> int:
    """command::parse_uint64: raises ToolError("Couldn't parse DESC: 'TEXT'")."""
    v = lexical_uint64(text)
    if v is None:
        raise ToolError(f"Couldn't parse {desc}: '{text}'")
    return v
