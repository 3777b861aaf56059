"""``thinsim bench``: the model's speed and memory, in accounting mode.

Figures (issue 2): random 4 KiB writes that provision new blocks in a 1 TiB thin;
whole-block writes in 1 GiB requests; create_snap of a fully mapped 100 GiB origin;
memory per mapping in a fully provisioned 1 TiB pool.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import time

from .model.pool import Pool, PoolTable
from .model.thin import Thin

GiB = 1 << 30
TiB = 1 << 40
BLOCK = 64 << 10


def _pool(data_bytes: int, md_bytes: int = 16 * GiB) -> Pool:
    table = PoolTable.parse(["/dev/loop0", "/dev/loop1", "128", "0"])
    pool = Pool(
        table, length_sectors=data_bytes // 512, metadata_bytes=md_bytes, data_bytes=data_bytes
    )
    pool.resume()
    return pool


def _thin(pool: Pool, dev: int, size: int) -> Thin:
    pool.message(f"create_thin {dev}")
    return Thin(pool, dev, size // 512)


def random_4k_writes(n: int = 200_000) -> float:
    pool = _pool(TiB)
    thin = _thin(pool, 0, TiB)
    rng = random.Random(42)
    blocks = rng.sample(range(TiB // BLOCK), n)
    buf = bytes(4096)
    write = thin.write
    t0 = time.perf_counter()
    for b in blocks:
        write(b * BLOCK, buf)
    return n / (time.perf_counter() - t0)


def seq_blocks(total: int = 100 * GiB) -> float:
    pool = _pool(total)
    thin = _thin(pool, 0, total)
    chunk = bytes(GiB)
    t0 = time.perf_counter()
    for off in range(0, total, GiB):
        thin.write(off, chunk)
    return (total // BLOCK) / (time.perf_counter() - t0)


def snaps(n: int = 20_000, origin_size: int = 100 * GiB) -> float:
    pool = _pool(origin_size)
    thin = _thin(pool, 0, origin_size)
    chunk = bytes(GiB)
    for off in range(0, origin_size, GiB):
        thin.write(off, chunk)
    pool.commit()
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        pool.message(f"create_snap {i} 0")
    return n / (time.perf_counter() - t0)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bytes_per_mapping(size: int = TiB) -> float:
    gc.collect()
    before = _rss()
    pool = _pool(size)
    thin = _thin(pool, 0, size)
    chunk = bytes(GiB)
    for off in range(0, size, GiB):
        thin.write(off, chunk)
    pool.commit()
    gc.collect()
    used = _rss() - before
    mappings = thin.td.mapped_blocks
    del thin, pool, chunk
    return used / mappings


def run_all(quick: bool = False) -> dict:
    if quick:
        return {
            "random_4k_writes_per_s": round(random_4k_writes(20_000)),
            "seq_blocks_per_s": round(seq_blocks(4 * GiB)),
            "snaps_per_s": round(snaps(2_000, 4 * GiB)),
            "bytes_per_mapping": round(bytes_per_mapping(16 * GiB), 1),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        }
    return {
        "random_4k_writes_per_s": round(random_4k_writes()),
        "seq_blocks_per_s": round(seq_blocks()),
        "snaps_per_s": round(snaps()),
        "bytes_per_mapping": round(bytes_per_mapping(), 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
    }
