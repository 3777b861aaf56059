"""Writes to blocks a device has not mapped (a container's random 4 KiB writes) take faster
paths than the kernel's steps one at a time: the insert made in the leaf the write's lookup
found (``PoolMetadata.insert_in_place``), the data block allocated in its bitmap's shadow
in one step (``_DiskLowLevel.new_in_place``), the pool's commonest case inline and
the planner's writes made by the pool in one loop (``Pool.write_each_fast``,
``Simulation._write_each_in_block``).  They must leave exactly what those steps leave:
every metadata block's bytes, the space maps' counts, the data blocks given out later, the
status, the log, failures included (data or metadata running out mid-write).  The
discards among them (a container's removal) are held to the kernel's steps too, with the
runs a discard takes from the left edge counted in one pass before their passdowns
(``Pool._dec_inc_runs``)."""

import contextlib
import hashlib
from itertools import chain

import pytest
from helpers import GiB, MiB, make_pool, make_thin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_discard_paths import _digest
from test_discard_paths import _one_at_a_time as discards_one_at_a_time

from thinsim import plan
from thinsim.errors import ThinsimError
from thinsim.model.disk import CorruptNode, metadata_blocks
from thinsim.model.metadata import PoolMetadata
from thinsim.model.pool import Pool
from thinsim.model.space_map import DiskSpaceMap, NoSpace, _DiskLowLevel
from thinsim.model.store import AccountingStore
from thinsim.model.thin import Thin
from thinsim.plan.engine import Simulation

BLOCK = 64 * 1024


# -- the kernel's steps, one at a time (the model before the fast paths) ---------------------


def _write_each_in_block(self, v, offsets, io):
    """``write_in_block`` for each offset, as ``write_each`` called it."""
    for off in offsets:
        if not self.write_in_block(v, off, io) and self.stopped:
            return False
    return True


def _write_each_fast(self, td, offsets, start, data, seen, peak):
    """``write_block`` for each offset, with the engine's bookkeeping after each."""
    bb = self.block_bytes
    for k in range(start, len(offsets)):
        try:
            self.write_block(td, *divmod(offsets[k], bb), data)
        except ThinsimError as e:
            return k + 1, peak, e
        peak = max(peak, self.pmd.data_sm.ll.nr_allocated)
        if len(self.log.lines) != seen:
            return k + 1, peak, None
        self.pmd.tm.at_rest()
    return len(offsets), peak, None


_REFERENCE = (
    (PoolMetadata, "insert_in_place", lambda self, td, block, data_block: False),
    (_DiskLowLevel, "new_in_place", lambda self, begin: None),
    (Pool, "write_each_fast", _write_each_fast),
    (Simulation, "_write_each_in_block", _write_each_in_block),
)


@contextlib.contextmanager
def _one_at_a_time():
    """The writes' steps one at a time, and the discards' (test_discard_paths)."""
    old = [(cls, name, cls.__dict__[name]) for cls, name, _ in _REFERENCE]
    try:
        for cls, name, fn in _REFERENCE:
            setattr(cls, name, fn)
        with discards_one_at_a_time():
            yield
    finally:
        for cls, name, fn in old:
            setattr(cls, name, fn)


# -- the pool ---------------------------------------------------------------------------------


def _run(ops, data, md, lwm, features, fill):
    """The ops on a pool of ``data`` and ``md`` bytes whose thin 0 has ``fill`` blocks
    mapped; everything a write may change, as a tuple."""
    p = make_pool(data=data, md=md, lwm=lwm, features=features, store=AccountingStore())
    size = GiB
    nblocks = size // BLOCK
    thins = {0: make_thin(p, 0, size)}
    thins[0].write(0, bytes(fill * BLOCK))
    p.commit()
    outcome = []
    commits = []  # at each commit, what it wrote (a later change may hide it)
    for op in ops:
        kind = op[0]
        try:
            if kind == "writes":
                # 4 KiB writes at random, as the planner issues a container's
                _, dev, n, seed, through_thin = op
                th = thins[sorted(thins)[dev % len(thins)]]
                offsets = [
                    (seed + i * 2654435761) % nblocks * BLOCK + 4096 * (i % 16) for i in range(n)
                ]
                if through_thin:
                    for off in offsets:
                        th.write(off, b"\x01" * 4096)
                else:
                    k = peak = 0
                    while k < len(offsets):
                        k, peak, e = p.write_each_fast(
                            th.td, offsets, k, b"\x01" * 4096, len(p.log.lines), peak
                        )
                        outcome.append((k, peak, e and (type(e), str(e))))
            elif kind == "snap":
                origin = sorted(thins)[op[1] % len(thins)]
                new = max(thins) + 1
                p.message(f"create_snap {new} {origin}")
                thins[new] = Thin(p, new, size // 512)
            elif kind == "thin":
                new = max(thins) + 1
                thins[new] = make_thin(p, new, size)
            elif kind == "discard":
                _, dev, block, n = op
                thins[sorted(thins)[dev % len(thins)]].discard(block * BLOCK, n * BLOCK)
            else:
                p.commit()
                commits.append(_digest(p))
            outcome.append(None)
        except ThinsimError as e:
            outcome.append((type(e), str(e)))
    p.commit()
    dll = p.pmd.data_sm
    after = Thin(p, 0, size // 512)
    try:
        after.write((nblocks - 1) * BLOCK, bytes(4096))
    except ThinsimError:
        pass
    return (
        outcome,
        p.status(),
        metadata_blocks(p.pmd),
        p.pmd.metadata_sm.ll.counts(),
        dll.ll.counts(),
        p.pmd.lookup(after.td, nblocks - 1),
        {dev: (th.td.mapped_blocks, th.td.changed) for dev, th in thins.items()},
        p.log.lines,
        p.event_nr,
        commits,
    )


_op = st.one_of(
    st.tuples(
        st.just("writes"),
        st.integers(0, 7),
        st.integers(1, 1500),
        st.integers(0, 1 << 20),
        st.booleans(),
    ),
    st.tuples(st.just("snap"), st.integers(0, 7)),
    st.tuples(st.just("discard"), st.integers(0, 7), st.integers(0, 16000), st.integers(1, 4000)),
    st.tuples(st.just("thin")),
    st.tuples(st.just("commit")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(_op, min_size=1, max_size=12),
    data=st.sampled_from([96 * MiB, 256 * MiB, GiB]),
    md=st.sampled_from([256 * 1024, 512 * 1024, 1 * MiB, 8 * MiB]),
    lwm=st.sampled_from([0, 100, 1000]),
    features=st.sampled_from([(), ("skip_block_zeroing",), ("error_if_no_space",)]),
    fill=st.integers(0, 1200),
)
def test_writes_to_unmapped_blocks_leave_what_the_kernels_steps_one_at_a_time_leave(
    ops, data, md, lwm, features, fill
):
    """Random 4 KiB writes into thins and snapshots of thins with mappings, over several
    transactions; with little data space or metadata they run out in the middle."""
    ops = [("snap", 0), ("writes", 1, 600, 7, False), *ops]
    fast = _run(ops, data, md, lwm, features, fill)
    with _one_at_a_time():
        slow = _run(ops, data, md, lwm, features, fill)
    assert fast == slow


def test_a_snapshot_written_until_the_data_runs_out_matches_the_kernels_steps():
    """Past the low water mark, then out of data space (queued, then failed), with the
    metadata nearly full too."""
    ops = [("snap", 0), ("commit",), ("writes", 1, 3000, 11, False), ("commit",)]
    ops += [("writes", 1, 2000, 5, False), ("writes", 0, 500, 3, True)]
    for features in ((), ("error_if_no_space",)):
        fast = _run(ops, 96 * MiB, 1 * MiB, 200, features, 1000)
        with _one_at_a_time():
            slow = _run(ops, 96 * MiB, 1 * MiB, 200, features, 1000)
        assert fast == slow
        assert "out-of-data-space" in "".join(fast[7])


def test_snapshots_written_until_the_metadata_runs_out_match_the_kernels_steps():
    """Each snapshot's writes shadow leaves of its own until the metadata is full: the
    allocation's commit before the reserve is used, then a failed commit."""
    ops = [("snap", 0), ("writes", 1, 2000, 11, False), ("snap", 0), ("writes", 2, 2000, 5, True)]
    ops += [("snap", 1), ("writes", 3, 3000, 3, False), ("snap", 0), ("writes", 4, 3000, 3, False)]
    fast = _run(ops, GiB, 256 * 1024, 0, (), 1000)
    with _one_at_a_time():
        slow = _run(ops, GiB, 256 * 1024, 0, (), 1000)
    assert fast == slow
    assert "switching pool to read-only mode" in "".join(fast[7])


def test_a_device_whose_tree_starts_above_the_block_or_is_empty_matches_the_kernels_steps():
    """Writes below every key of an internal node (the insert lowers its first key), into
    an empty thin, into a thin with one leaf."""
    ops = [("thin",), ("writes", 1, 5, 0, False), ("snap", 0), ("commit",)]
    ops += [("writes", 2, 300, 1 << 19, False), ("writes", 2, 50, 0, False)]
    fast = _run(ops, GiB, 8 * MiB, 0, (), 3000)
    with _one_at_a_time():
        slow = _run(ops, GiB, 8 * MiB, 0, (), 3000)
    assert fast == slow


def test_the_reference_steps_are_the_ones_replaced():
    """The one-at-a-time functions stand in for exactly the model's functions they
    replace (a rename would leave the comparison comparing a path with itself)."""
    for cls, name, _ in _REFERENCE:
        assert name in cls.__dict__, (cls, name)


# -- a failure in a discard's count changes -------------------------------------------------


def _discard_blocks_run_by_run(self, td, begin: int, end: int) -> None:
    """Pool._discard_blocks as it was before ``_dec_inc_runs``: each run's counts, then
    its passdown, one run after the other."""
    pmd = self.pmd
    if not self.pf.discard_passdown:
        pmd.remove_range(td, begin, end)
        return
    # break_up_discard_bio
    bb = self.block_bytes
    data_sm = pmd.data_sm
    pinned = []
    get_count = data_sm.get_count
    ll = data_sm.ll
    discard = self.store.discard
    while begin < end:
        try:
            runs = pmd.take_leftmost_runs(td, begin, end)
        except CorruptNode as e:
            # nodes of this transaction only; the ordinary path meets it as the kernel
            if not e.again:
                e.forget()
            runs = None
        if runs is not None:
            # each run's steps after its removal walks (see take_leftmost_runs)
            for vb, ve, db, maybe_shared in runs:
                de = db + (ve - vb)
                # remove_range's decrements, a mapping at a time, then the pin
                # (dm_pool_inc_data_range)
                if not ll.dec_inc_runs_in_place([(0, de - db, db, maybe_shared)], 0):
                    if de - db == 1:
                        data_sm.dec(db)
                    else:
                        data_sm.dec_many(range(db, de))
                    data_sm.inc_many(range(db, de))
                pinned.append((db, de))
                b = db
                while b < de:
                    if maybe_shared:
                        while b < de and get_count(b) > 1:
                            b += 1
                        if b == de:
                            break
                        e = b + 1
                        while e < de and get_count(e) <= 1:
                            e += 1
                    else:
                        e = de
                    discard(b * bb, (e - b) * bb)
                    b = e
            begin = ve
            continue
        try:
            run = pmd.find_mapped_range(td, begin, end)
        except CorruptNode as e:
            # break_up_discard_bio: "silently fail, letting any mappings we've
            # created complete" (the discard bio ends well)
            e.log(self.log)
            break
        if run is None:
            break
        vb, ve, db, maybe_shared = run
        de = db + (ve - vb)
        pmd.remove_range(td, vb, ve)
        data_sm.inc_many(range(db, de))  # dm_pool_inc_data_range
        pinned.append((db, de))
        # passdown (double checking the shared status when maybe shared)
        b = db
        while b < de:
            if maybe_shared:
                while b < de and data_sm.get_count(b) > 1:
                    b += 1
                if b == de:
                    break
                e = b + 1
                while e < de and data_sm.get_count(e) <= 1:
                    e += 1
            else:
                e = de
            self.store.discard(b * bb, (e - b) * bb)
            b = e
        begin = ve
    # dm_pool_dec_data_range of each run in turn
    data_sm.dec_many(chain.from_iterable(range(db, de) for db, de in pinned))


def test_a_failure_in_a_discards_count_changes_leaves_the_runs_before_it_passed_down():
    """Runs shared by three devices (counts of 3: the space map's calls, not in place)
    and one-block runs of the device's own, discarded whole; the metadata fails at one
    of the calls (NoSpace from the n-th ``inc_many``): the runs before it were passed
    down, the transaction is aborted, as when each run's counts and passdown came in turn."""
    seen = []
    for fail_at in (1, 2, 3, 5):
        outcomes = []
        for reference in (False, True):
            with pytest.MonkeyPatch.context() as mp:
                if reference:
                    mp.setattr(Pool, "_discard_blocks", _discard_blocks_run_by_run)
                calls = [0]
                inc_many = DiskSpaceMap.inc_many

                def failing(
                    self, blocks, shift=0, calls=calls, inc_many=inc_many, fail_at=fail_at
                ):
                    calls[0] += 1
                    if calls[0] == fail_at:
                        raise NoSpace
                    inc_many(self, blocks, shift)

                p = make_pool(data=GiB, md=8 * MiB, store=AccountingStore())
                discards = []
                p.store.discard = lambda off, n, discards=discards: discards.append((off, n))
                th = make_thin(p, 0, GiB)
                th.write(0, bytes(600 * BLOCK))
                p.message("create_snap 1 0")
                p.message("create_snap 2 0")
                snap = Thin(p, 1, GiB // 512)
                for i in range(300):
                    snap.write((i * 2654435761) % 16384 * BLOCK, bytes(4096))
                p.commit()
                snap.write(7 * BLOCK, bytes(4096))  # the top level shadowed: runs taken
                mp.setattr(DiskSpaceMap, "inc_many", failing)
                try:
                    snap.discard(0, GiB)
                    outcome = None
                except ThinsimError as e:
                    outcome = e.errno
                mp.undo()
                outcomes.append(
                    (outcome, discards, p.status(), metadata_blocks(p.pmd), p.log.lines)
                )
        assert outcomes[0] == outcomes[1]
        seen.append((outcomes[0][0], len(outcomes[0][1])))
    assert all(errno is not None for errno, _ in seen)
    assert any(n for _, n in seen)  # some runs were passed down before the failure


# -- the planner ------------------------------------------------------------------------------

DOCKER = """\
[plan]
horizon = "{horizon}"

[docker]
mkfs_bytes = "4MiB"

[pool]
data = "{data}"
metadata = "{metadata}"
low_water_mark = {lwm}

[[activities]]
type = "docker_pull"
every = "1d"
layers = ["12MiB", "4MiB"]
shared_layers = 1
keep = 2

[[activities]]
type = "docker_run"
every = "6h"
writes = "{writes}"
lifetime = "1d"
"""


def _plan_run(**kw):
    sim = Simulation(plan.parse(DOCKER.format(**kw), "docker.toml"))
    result = sim.run()
    pool = sim.pool.target
    pool.commit()
    blocks = metadata_blocks(pool.pmd)
    digest = hashlib.sha256(b"".join(blocks[b] for b in sorted(blocks))).hexdigest()
    return result, sim.events, pool.status(), sim.log.lines, digest


def test_a_plans_container_writes_leave_what_one_write_in_block_a_write_leaves():
    """Docker's containers writing 4 KiB at random over the planner's days, until the
    pool runs out: the result, the events, the metadata, the status and the log."""
    for kw in (
        {"horizon": "3d", "data": "1GiB", "metadata": "16MiB", "lwm": 0, "writes": "16MiB"},
        {"horizon": "4d", "data": "128MiB", "metadata": "4MiB", "lwm": 300, "writes": "24MiB"},
    ):
        fast = _plan_run(**kw)
        with _one_at_a_time():
            slow = _plan_run(**kw)
        assert fast == slow


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.tuples(st.integers(0, 40000), st.integers(0, 4)), max_size=60),
    ranges=st.lists(st.tuples(st.integers(0, 40000), st.integers(1, 20000)), max_size=8),
)
def test_a_passdowns_runs_of_unshared_blocks_are_what_get_count_tells_block_by_block(
    counts, ranges
):
    """``runs_at_most_one`` over bitmaps some of which are empty, and across their ends,
    against ``get_count`` block by block (counts of 3 and more in the btree)."""
    p = make_pool(data=3 * GiB, md=8 * MiB, store=AccountingStore())
    ll = p.pmd.data_sm.ll
    for b, c in counts:
        ll.set_count(b, c)
    for b, n in ranges:
        e = min(b + n, ll.nr_blocks)
        expect = []
        x = b
        while x < e:
            while x < e and ll.get_count(x) > 1:
                x += 1
            if x == e:
                break
            y = x + 1
            while y < e and ll.get_count(y) <= 1:
                y += 1
            expect.append((x, y))
            x = y
        assert ll.runs_at_most_one(b, e) == expect
