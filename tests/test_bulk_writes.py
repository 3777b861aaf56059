"""Whole-block writes in big requests take a fast path; it must leave exactly what
block-by-block writes leave."""

import pytest
from helpers import GiB, MiB, make_pool, make_thin
from hypothesis import given
from hypothesis import strategies as st

# add_many in C and in Python (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("add_many_both_ways")

BLOCK = 64 * 1024


def _signature(pool):
    tm = pool.pmd.tm
    nodes = sorted(
        (b, n.leaf, tuple(n.keys), tuple(n.values))
        for b, n in tm.blocks.items()
        if hasattr(n, "keys")
    )
    return (
        pool.status(),
        nodes,
        pool.pmd.metadata_sm.ll.counts(),
        pool.pmd.data_sm.ll.counts(),
        pool.log.lines,
        pool.event_nr,
        pool.store.pages if hasattr(pool.store, "pages") else None,
    )


@given(
    runs=st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 3000), st.integers(1, 1500)),
        min_size=1,
        max_size=6,
    ),
    lwm=st.sampled_from([0, 1000, 4000, 6000]),
    flush_between=st.booleans(),
)
def test_big_whole_block_writes_leave_the_metadata_block_by_block_writes_leave(
    runs, lwm, flush_between
):
    pools = [make_pool(data=512 * MiB, md=8 * MiB, lwm=lwm) for _ in range(2)]
    thins = [[make_thin(p, 0, GiB), make_thin(p, 1, GiB)] for p in pools]
    for dev, first, count in runs:
        data = bytes([dev + 1]) * (count * BLOCK)
        errors = []
        for k, (pool, th) in enumerate(zip(pools, thins)):
            try:
                if k == 0:
                    th[dev].write(first * BLOCK, data)
                else:
                    for i in range(count):
                        th[dev].write((first + i) * BLOCK, data[i * BLOCK : (i + 1) * BLOCK])
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - compared below
                errors.append(type(e))
            if flush_between:
                th[dev].flush()
        assert errors[0] == errors[1]
    assert _signature(pools[0]) == _signature(pools[1])
    pools[0].pmd._check()


def test_a_sequential_fill_packs_closed_leaves_to_248_entries():
    pool = make_pool(data=1 * GiB, md=4 * MiB)
    thin = make_thin(pool, 0)
    thin.write(0, bytes(1000 * BLOCK))
    # spec 7.5: T(1000) = 2 + ceil((1000 - 252) / 248) = 6 nodes; fresh L = 10, + 6 - 1
    assert pool.status().split()[1] == f"{10 + 6 + 102}/1024"
