"""dd on simulated device nodes, as coreutils 9.1 prints."""

from __future__ import annotations

import os
import time

from ...errors import ThinsimError
from .. import blockio, kernel
from ..state import HostState, is_device_path
from .common import IO, unsupported


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
