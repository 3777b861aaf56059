"""A run of small writes handed to the pool at once (``Pool.write_blocks``, the planner's
churn) sets the writes into a leaf already shadowed in place, without the lookup's and the
insert's walks; it must leave exactly what ``write_block`` one write at a time leaves, with
the caller's rest (``tm.at_rest``) after each: the same metadata blocks and bytes, block
numbers, counts, data operations, status and log lines, where each line appears, and the
same failures (data or metadata running out mid-run, the low water mark, a small node
cache writing nodes out between writes)."""

import os

import pytest
from helpers import GiB, MiB
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from thinsim.errors import ThinsimError
from thinsim.model.disk import keep_metadata_on_file
from thinsim.model.pool import Pool, PoolTable
from thinsim.model.space_map import IE_CACHE_SIZE, ie_slot
from thinsim.model.store import AccountingStore
from thinsim.model.thin import Thin

BLOCK = 64 * 1024


@pytest.fixture(scope="module", autouse=True, params=["c", "python"])
def gather_both_ways(request):
    """The module's tests with ``Pool._leaf_run``'s gather and ``overwrite_leaf``'s walk
    in C (``_space_map.c``: leaf_gather, overwrite_walk), then with the Python loops they
    stand for (as THINSIM_NO_C=1 runs them): runs must leave what one write at a time
    leaves either way."""
    from thinsim.model import metadata, pool

    if request.param == "c" and (pool._C_GATHER is None or metadata._C_WALK is None):
        pytest.skip("the loops in C: no compiler or Python headers here, or THINSIM_NO_C set")
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "python":
            mp.setattr(pool, "_C_GATHER", None)
            mp.setattr(metadata, "_C_WALK", None)
        yield request.param


class RecordingStore(AccountingStore):
    """Every data operation, in order."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []

    def write(self, offset: int, data: bytes) -> None:
        self.ops.append(("w", offset, len(data)))

    def zero(self, offset: int, length: int) -> None:
        self.ops.append(("z", offset, length))

    def copy(self, src: int, dst: int, length: int) -> None:
        self.ops.append(("c", src, dst, length))

    def discard(self, offset: int, length: int) -> None:
        self.ops.append(("d", offset, length))


def _pool(md: int, data: int, lwm: int, cache: int | None, fill: int):
    args = ["/dev/loop0", "/dev/loop1", "128", str(lwm)]
    pool = Pool(
        PoolTable.parse(args),
        length_sectors=data // 512,
        metadata_bytes=md,
        data_bytes=data,
        store=RecordingStore(),
    )
    if cache is not None:
        # a small node cache: nodes written out between writes and read back
        keep_metadata_on_file(pool.pmd)
        pool.pmd.tm.blocks.limit = cache
    pool.resume()
    pool.message("create_thin 0")
    thin = Thin(pool, 0, GiB // 512)
    thin.write(0, bytes(fill * BLOCK))
    pool.commit()
    return pool, thin


def _one_at_a_time(pool: Pool, td, vblocks, withins, data, out) -> None:
    """The planner's loop as it was: write_block, then its bookkeeping, a write at a time."""
    tm = pool.pmd.tm
    ll = pool.pmd.data_sm.ll
    for k, (vb, within) in enumerate(zip(vblocks, withins)):
        try:
            pool.write_block(td, vb, within, data)
        except ThinsimError as e:
            out.append((k, "failed", e.errno, len(pool.log.lines)))
            continue
        out.append((k, "ok", ll.nr_allocated, len(pool.log.lines)))
        tm.at_rest()


def _in_runs(pool: Pool, td, vblocks, withins, data, out, limit: int) -> None:
    """The planner's loop now: runs of at most ``limit`` writes to Pool.write_blocks."""
    tm = pool.pmd.tm
    lines = pool.log.lines
    n = len(vblocks)
    i = 0
    while i < n:
        before = len(lines)
        done, peak, err = pool.write_blocks(td, vblocks, withins, data, i, min(n, i + limit), True)
        assert done or err is not None
        for k in range(i, i + done):
            # a line appears only at a run's last write (the caller reads it before the
            # next); the most blocks allocated is known at the run's end
            last = k == i + done - 1
            lines_now = len(lines) if last and err is None else before
            out.append((k, "ok", peak if last else None, lines_now))
        i += done
        if err is None:
            tm.at_rest()
        else:
            out.append((i, "failed", err.errno, len(lines)))
            i += 1


def _compare(ref, fast) -> None:
    """Per write: the same outcome, lines only where the one-at-a-time run logged them, and
    the most data blocks allocated as high at each run's end."""
    assert [(k, s) for k, s, *_ in ref] == [(k, s) for k, s, *_ in fast]
    peak = 0
    for (_k, s, a, lines), (_k2, _s2, a2, lines2) in zip(ref, fast):
        assert lines2 == lines
        if s == "failed":
            assert a == a2
            continue
        peak = max(peak, a)
        if a2 is not None:
            assert a2 == peak
            peak = 0


def _signature(pool: Pool):
    pmd = pool.pmd
    status = pool.status()  # commits
    tm = pmd.tm
    nodes = sorted(
        (b, n.leaf, tuple(n.keys), tuple(n.values))
        for b, n in tm.blocks.items()
        if hasattr(n, "keys")
    )
    dll = pmd.data_sm.ll
    disk = None
    if pmd.device is not None:
        dev = pmd.device
        fd = dev._file.fileno() if hasattr(dev, "_file") else None
        if fd is not None:
            disk = os.pread(fd, os.fstat(fd).st_size, 0)
    return (
        status,
        nodes,
        pmd.metadata_sm.ll.counts(),
        dll.counts(),
        list(dll.bitmaps),
        pool.log.lines,
        pool.store.ops,
        getattr(tm.blocks, "loads", None),
        getattr(tm.blocks, "saved", None),
        disk,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    md=st.sampled_from([1 * MiB, 2 * MiB, 16 * MiB]),
    data=st.sampled_from([4 * GiB, GiB // 4]),
    lwm=st.sampled_from([0, 0, 50, 3000]),
    cache=st.sampled_from([None, 8, 48, 2000]),
    fill=st.integers(300, 8000),
    limit=st.sampled_from([3, 50, 4097]),
    days=st.lists(
        st.tuples(
            st.integers(20, 600),  # writes
            st.integers(0, 1 << 20),  # where
            st.sampled_from(["snap", "snap", "none", "commit", "delete"]),
            st.booleans(),  # 4 KiB writes, or whole blocks
        ),
        min_size=1,
        max_size=5,
    ),
)
# metadata runs out over days: allocations mid-run commit (the leaf is no shadow then)
@example(
    md=MiB,
    data=4 * GiB,
    lwm=0,
    cache=None,
    fill=7000,
    limit=4097,
    days=[(600, 104729 * d, "snap", True) for d in range(5)],
)
@example(
    md=MiB,
    data=4 * GiB,
    lwm=0,
    cache=8,
    fill=8000,
    limit=50,
    days=[(600, 104729 * d, "snap", True) for d in range(5)],
)
def test_runs_of_writes_leave_what_one_write_at_a_time_leaves(
    md, data, lwm, cache, fill, limit, days
):
    """Days of a snapshot (or none, a commit, the oldest snapshot deleted) then ascending
    writes, some to blocks written already that day, some past the fill (unmapped),
    through both loops."""
    fill = min(fill, data // BLOCK - 64)
    states = []
    for runs in (False, True):
        pool, thin = _pool(md, data, lwm, cache, fill)
        td = thin.td
        outs = []
        nsnap = 0
        snaps: list[int] = []
        for writes, where, before, small in days:
            try:
                if before == "snap":
                    nsnap += 1
                    pool.message(f"create_snap {100 + nsnap} 0")
                    snaps.append(100 + nsnap)
                elif before == "delete" and snaps:
                    # blocks shared by the time that one device maps: freed by the writes
                    pool.message(f"delete {snaps.pop(0)}")
                elif before == "commit":
                    pool.commit()
            except ThinsimError as e:
                outs.append(("message", e.errno))
            nb = fill + fill // 8
            vbs = sorted((where + i * 7919) % nb for i in range(writes))
            if small:
                withins, data_ = [4096 * (vb % 16) for vb in vbs], bytes(4096)
            else:
                withins, data_ = [0] * len(vbs), bytes(BLOCK)
            out: list = []
            if runs:
                _in_runs(pool, td, vbs, withins, data_, out, limit)
            else:
                _one_at_a_time(pool, td, vbs, withins, data_, out)
            outs.append(out)
        states.append((outs, _signature(pool), pool))
    (o0, s0, _), (o1, s1, fast) = states
    assert len(o0) == len(o1)
    for a, b in zip(o0, o1):
        if isinstance(a, list):
            _compare(a, b)
        else:
            assert a == b
    assert s0 == s1
    if fast.mode == 0:
        fast.pmd._check()


def _after_a_snapshot_both_ways(fill: int, vbs, withins, data: bytes) -> list:
    """A thin of ``fill`` blocks, a snapshot of it, then the writes one at a time and in
    runs: the two pools."""
    pools = []
    for runs in (False, True):
        pool, thin = _pool(16 * MiB, GiB, 0, None, fill)
        pool.message("create_snap 1 0")
        out: list = []
        if runs:
            _in_runs(pool, thin.td, vbs, withins, data, out, 4097)
        else:
            _one_at_a_time(pool, thin.td, vbs, withins, data, out)
        pools.append(pool)
    return pools


def test_whole_block_runs_copy_nothing_and_match_one_at_a_time():
    """Whole-block writes into shared blocks: no copy, the same blocks as one at a time."""
    vbs = list(range(0, 1000, 3))
    pools = _after_a_snapshot_both_ways(1000, vbs, [0] * len(vbs), bytes(BLOCK))
    for pool in pools:
        assert not any(op[0] == "c" for op in pool.store.ops)
    assert _signature(pools[0]) == _signature(pools[1])


def test_the_first_write_into_a_leaf_a_snapshot_shares_shadows_it_where_the_walk_found_it(
    monkeypatch,
):
    """Once the nodes above the leaves are shadowed, the first write into each leaf a
    snapshot shares shadows the leaf without the lookup's and the insert's walks
    (``Pool._write_first_in_leaf``), leaving what one write at a time leaves."""
    taken = []
    real = Pool._write_first_in_leaf
    monkeypatch.setattr(
        Pool, "_write_first_in_leaf", lambda self, *a: taken.append(real(self, *a)) or taken[-1]
    )
    vbs = list(range(0, 6000, 40))
    pools = _after_a_snapshot_both_ways(6000, vbs, [4096] * len(vbs), bytes(4096))
    assert _signature(pools[0]) == _signature(pools[1])
    # a 6000-block fill is 24 leaves: the first write walks down, the others not
    assert taken.count(True) >= 20 and taken.count(False) <= 2


@pytest.mark.parametrize("cache", [None, 8])
def test_a_run_into_leaves_already_shadowed_takes_the_in_place_path(cache, monkeypatch):
    """After the first write into each leaf, the others of the leaf walk no more."""
    pool, thin = _pool(16 * MiB, GiB, 0, cache, 2000)
    pool.message("create_snap 1 0")
    walks = []
    real = type(pool.pmd).lookup_for_write
    monkeypatch.setattr(
        type(pool.pmd),
        "lookup_for_write",
        lambda self, td, b: walks.append(b) or real(self, td, b),
    )
    vbs = list(range(0, 2000, 10))
    done, _peak, err = pool.write_blocks(thin.td, vbs, [0] * len(vbs), bytes(4096), 0, len(vbs))
    assert (done, err) == (len(vbs), None)
    # a 2000-block fill is 9 leaves (a node the cache wrote out is read back by a walk)
    assert 1 <= len(walks) <= (12 if cache is None else 40)


def test_two_bitmaps_share_an_index_cache_slot_where_their_indexes_agree_modulo_its_size():
    """``Pool._leaf_run`` tells a release that would write the allocations' index entry
    back by its bitmap's index modulo the cache's size, not by ``ie_slot``: the same."""
    indexes = list(range(300)) + [6000 + i for i in range(200)] + [1 << 20, (1 << 20) + 64]
    for a in indexes:
        for b in indexes:
            assert (ie_slot(a) == ie_slot(b)) == ((a - b) % IE_CACHE_SIZE == 0)


@pytest.mark.parametrize("small", [True, False])
@pytest.mark.parametrize("far,snaps", [(64, 1), (192, 2)])
def test_a_release_into_a_bitmap_sharing_the_allocations_index_cache_slot_ends_a_run(
    small, far, snaps
):
    """A leaf whose blocks lie in two bitmaps 64 apart (one index-cache slot), the
    allocations in the first: a release into the other writes the allocations' entry back,
    so a run takes such a write as its last, and matches one write at a time."""
    entries = 16320  # ENTRIES_PER_BITMAP
    states = []
    for runs in (False, True):
        pool, thin = _pool(64 * MiB, (far + 2) * entries * BLOCK, 0, None, 0)
        dsm = pool.pmd.data_sm
        # runs of 24 blocks from bitmap 0, then 64, then 0...
        for vb in range(0, 600, 24):
            dsm.begin = far * entries + vb if vb % 48 else vb
            thin.write(vb * BLOCK, bytes(24 * BLOCK))
        for snap in range(snaps):
            pool.message(f"create_snap {snap + 1} 0")
        pool.commit()
        dsm.begin = 2000  # the allocations: in bitmap 0
        vbs = list(range(1, 600, 2))
        if small:
            withins, data = [4096 * (vb % 16) for vb in vbs], bytes(4096)
        else:
            withins, data = [0] * len(vbs), bytes(BLOCK)
        out: list = []
        if runs:
            _in_runs(pool, thin.td, vbs, withins, data, out, 4097)
        else:
            _one_at_a_time(pool, thin.td, vbs, withins, data, out)
        states.append((out, _signature(pool)))
    (o0, s0), (o1, s1) = states
    _compare(o0, o1)
    assert s0 == s1


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.integers(0, 400), min_size=1, max_size=60, unique=True),
    writes=st.lists(st.integers(0, 70), min_size=1, max_size=40),
    olds=st.lists(st.integers(0, 200 * 16320 - 1), min_size=60, max_size=60),
    times=st.lists(st.integers(0, 6), min_size=60, max_size=60),
    snapshotted=st.integers(0, 7),
    counts=st.lists(st.integers(0, 3), min_size=200, max_size=200),
    index=st.integers(0, 199),
    start=st.integers(0, 5),
    cap=st.integers(0, 50),
)
def test_the_gather_in_c_takes_the_writes_the_python_loop_takes(
    keys, writes, olds, times, snapshotted, counts, index, start, cap
):
    """``_space_map.c``'s leaf_gather and ``pool._leaf_gather`` (the reference) on the
    same leaf, writes and counts (bitmaps without entries, counts below 2, bitmaps whose
    ie-cache slot is the allocations'): the same old blocks and indexes."""
    from array import array

    from thinsim.model import pool
    from thinsim.model.metadata import TIME_BITS

    if pool._C_GATHER is None:
        pytest.skip("the gather in C: no compiler or Python headers here, or THINSIM_NO_C set")
    keys = sorted(keys)
    # most writes to mapped blocks (w below the leaf's size: the w-th key)
    writes = [keys[w] if w < len(keys) else 330 + w for w in writes]
    values = array("Q", ((o << TIME_BITS) | t for o, t in zip(olds, times)))[: len(keys)]
    maps = [None if c == 0 else bytearray([c]) * 16320 for c in counts]
    writes = sorted(writes) if start % 2 else writes  # ascending, or not
    start = min(start, len(writes) - 1)
    j = 0
    args = (writes, start, start + cap, array("Q", keys), values, j, snapshotted, TIME_BITS)
    assert pool._C_GATHER(*args, maps, index) == pool._leaf_gather(*args, maps, index)


@pytest.mark.parametrize("cache", [None, 48, 8])
def test_the_walk_in_c_finds_the_leaves_the_python_walk_finds(cache, monkeypatch):
    """``_space_map.c``'s overwrite_walk and ``overwrite_leaf``'s Python loop (the
    reference), block after block of a thin whose leaves are shadowed or not, held or
    written out, shared by a snapshot or not: the same leaf, index and walk, or None."""
    from thinsim.model import metadata

    c_walk = metadata._C_WALK
    if c_walk is None:
        pytest.skip("the walk in C: no compiler or Python headers here, or THINSIM_NO_C set")
    pool, thin = _pool(16 * MiB, GiB, 0, cache, 3000)
    pmd = pool.pmd
    td = thin.td
    found = 0
    for step in range(4):
        if step == 1:
            pool.message("create_snap 1 0")
        elif step == 3:
            pool.commit()
        for vb in range(0, 3400, 7):
            monkeypatch.setattr(metadata, "_C_WALK", c_walk)
            fast = pmd.overwrite_leaf(td, vb)
            monkeypatch.setattr(metadata, "_C_WALK", None)
            ref = pmd.overwrite_leaf(td, vb)
            if ref is None:
                assert fast is None
                continue
            found += 1
            (leaf, i, nodes), (leaf2, i2, nodes2) = ref, fast
            assert leaf2 is leaf and i2 == i
            assert [(b, id(n)) for b, n in nodes2] == [(b, id(n)) for b, n in nodes]
        # some of the leaves shadowed (a write into each tenth of them)
        for vb in range(step * 31, 3000, 250):
            pool.write_block(td, vb, 0, bytes(4096))
            pmd.tm.at_rest()
    assert found or cache == 8  # (8 nodes: each walk finds one written out)
