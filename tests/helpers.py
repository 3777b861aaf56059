"""Small constructors shared by the tests."""

from thinsim.model.pool import Pool, PoolTable
from thinsim.model.store import MemoryStore
from thinsim.model.thin import Thin

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def make_pool(data=1 * GiB, md=4 * MiB, bs=128, lwm=0, features=(), store=None) -> Pool:
    argv = ["/dev/loop0", "/dev/loop1", str(bs), str(lwm)]
    if features:
        argv += [str(len(features)), *features]
    pool = Pool(
        PoolTable.parse(argv),
        length_sectors=data // 512,
        metadata_bytes=md,
        data_bytes=data,
        store=store if store is not None else MemoryStore(),
    )
    pool.resume()
    return pool


def make_thin(pool: Pool, dev: int, size=1 * GiB) -> Thin:
    pool.message(f"create_thin {dev}")
    return Thin(pool, dev, size // 512)
