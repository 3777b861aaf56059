"""Copy-on-write with snapshots takes fast paths in the data space map (a bitmap shadowed
once for a run of blocks in it, counts of 3 and more set in the reference-count btree's
leaf in place) and in the mapping tree (a write's new value set in the leaf its lookup
found, where the insert would change nothing else: ``PoolMetadata.overwrite_in_place``);
they must leave exactly what one ``set_count`` a block and one insert walk a write leave:
the same metadata blocks, block numbers, counts, status lines and log lines, failures
included."""

import pytest
from helpers import GiB, MiB
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinsim.errors import ThinsimError
from thinsim.model.metadata import PoolMetadata
from thinsim.model.pool import Pool, PoolTable
from thinsim.model.space_map import DiskSpaceMap
from thinsim.model.thin import Thin

# add_many in C and in Python (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("add_many_both_ways")

BLOCK = 64 * 1024


def _one_block_at_a_time(mp) -> None:
    """The data space map's inc_many and dec_many as they were: one set_count a block."""

    def inc_many(self, blocks, shift=0):
        ll = self.ll
        for v in blocks:
            b = int(v) >> shift
            ll.set_count(b, ll.get_count(b) + 1)

    def dec_many(self, blocks, shift=0):
        ll = self.ll
        for v in blocks:
            b = int(v) >> shift
            ll.set_count(b, ll.get_count(b) - 1)

    mp.setattr(DiskSpaceMap, "inc_many", inc_many)
    mp.setattr(DiskSpaceMap, "dec_many", dec_many)
    # ... and every write's insert walks down from the root (dm_thin_insert_block)
    mp.setattr(PoolMetadata, "overwrite_in_place", lambda self, td, block, data_block: False)


def _pool(md: int, fill: int) -> tuple[Pool, list[Thin]]:
    pool = Pool(
        PoolTable.parse(["/dev/loop0", "/dev/loop1", "128", "0"]),
        length_sectors=GiB // 512,
        metadata_bytes=md,
        data_bytes=GiB,
    )
    pool.resume()
    pool.message("create_thin 0")
    thin = Thin(pool, 0, (GiB // 2) // 512)
    thin.write(0, bytes(fill * BLOCK))
    pool.commit()
    return pool, [thin]


def _signature(pool: Pool):
    tm = pool.pmd.tm
    nodes = sorted(
        (b, n.leaf, tuple(n.keys), tuple(n.values))
        for b, n in tm.blocks.items()
        if hasattr(n, "keys")
    )
    dll = pool.pmd.data_sm.ll
    return (
        pool.status(),
        nodes,
        pool.pmd.metadata_sm.ll.counts(),
        dll.counts(),
        dll.ref_root,
        dict(dll.dirty),
        list(dll.bitmaps),
        pool.log.lines,
    )


def _step(pool: Pool, thins: list[Thin], op: tuple, snaps: list[int], fill: int):
    kind, a, b = op
    try:
        if kind == "snap":
            dev = 100 + len(snaps)
            pool.message(f"create_snap {dev} 0")
            snaps.append(dev)
        elif kind == "delete" and snaps:
            pool.message(f"delete {snaps.pop(a % len(snaps))}")
        elif kind == "commit":
            pool.commit()
        elif kind == "writes":
            # mostly within the filled blocks, whose leaves are shared
            thin = thins[0]
            nb = fill + fill // 8
            for i in range(a):
                vb = (b + i * 7919) % nb
                thin.write(vb * BLOCK + 4096 * (i % 16), bytes(4096))
        elif kind == "ascending":
            # as the planner issues a day's writes: a leaf's writes together
            thin = thins[0]
            nb = fill + fill // 8
            for vb in sorted({(b + i * 7919) % nb for i in range(a)}):
                thin.write(vb * BLOCK + 4096 * (vb % 16), bytes(4096))
        elif kind == "discard":
            thins[0].discard(b % 4000 * BLOCK, (1 + a % 50) * BLOCK)
        return None
    except ThinsimError as e:
        return type(e), str(e)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    md=st.sampled_from([1 * MiB, 2 * MiB, 16 * MiB]),
    fill=st.integers(300, 4000),
    days=st.lists(
        st.tuples(st.integers(50, 800), st.booleans(), st.booleans()), min_size=1, max_size=5
    ),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["snap", "snap", "writes", "writes", "ascending", "commit"])
            | st.sampled_from(["delete", "discard"]),
            st.integers(1, 400),
            st.integers(0, 1 << 20),
        ),
        max_size=10,
    ),
)
def test_writes_that_break_sharing_leave_what_one_count_at_a_time_leaves(md, fill, days, ops):
    """Days of a snapshot then 4 KiB writes all over the thin, in random or ascending order
    (leaves shared by up to six snapshots: counts of 3 and more, a reference-count btree
    of several leaves), then anything; on 1 MiB of metadata it runs out."""
    steps = []
    for i, (writes, commit, ascending) in enumerate(days):
        steps += [("snap", 1, 0), ("ascending" if ascending else "writes", writes, i * 104729)]
        if commit:
            steps.append(("commit", 1, 0))
    steps += ops
    runs = []
    for reference in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            if reference:
                _one_block_at_a_time(mp)
            pool, thins = _pool(md, fill)
            snaps: list[int] = []
            results = [_step(pool, thins, op, snaps, fill) for op in steps]
            runs.append((results, _signature(pool), pool))
    (r0, s0, _), (r1, s1, fast) = runs
    assert r0 == r1
    assert s0 == s1
    if not any(r for r in r1):
        fast.pmd._check()
