"""Metadata read when it is needed (issue 11 part 2, issue 12 part 5): a pool whose commits
go to a metadata file keeps a bounded cache of btree nodes, as dm-bufio does, and reads
clean ones back from the file when they are touched; re-opening a pool reads only the
superblock and the space maps.  What the model computes stays exactly what it computes
with every node in memory: the same blocks, the same bytes on disk."""

import random

import pytest

from thinsim.model.disk import (
    MetadataDevice,
    keep_metadata_on_file,
    metadata_blocks,
    read_metadata,
)
from thinsim.model.pool import Pool, PoolTable
from thinsim.model.thin import Thin
from thinsim.model.transaction import BlockCache

MiB, GiB, BLOCK = 1 << 20, 1 << 30, 64 << 10
DATA = 4 * GiB
CACHE = 64


def _pool(md_path=None, scratch=False) -> Pool:
    table = PoolTable.parse(["/dev/loop0", "/dev/loop1", "128", "0"])
    pool = Pool(
        table,
        length_sectors=DATA // 512,
        metadata_bytes=64 * MiB,
        data_bytes=DATA,
        track_metadata_writes=md_path is not None,
    )
    if scratch:
        keep_metadata_on_file(pool.pmd)
        pool.pmd.tm.blocks.limit = CACHE
    elif md_path is not None:
        md_path.write_bytes(b"")
        with open(md_path, "r+b") as f:
            f.truncate(64 * MiB)
        pool.pmd.device = MetadataDevice(md_path)
        pool.pmd.device.write_all(pool.pmd)
        pool.pmd.tm.blocks.limit = CACHE
    pool.resume()
    return pool


def _workload(pool: Pool, rng: random.Random, at_rest: bool = False):
    """A thin filled (thousands of leaves), snapshots, copy-on-write writes and a delete,
    with commits between; yields after each commit.  ``at_rest``: the transaction manager
    is told after each write that no one holds a node (as the planner tells it)."""
    pool.message("create_thin 0")
    thin = Thin(pool, 0, DATA // 2 // 512)
    nb = DATA // 2 // BLOCK
    rest = pool.pmd.tm.at_rest if at_rest else lambda: None
    for off in range(0, DATA // 2, 256 * MiB):
        thin.write(off, bytes(256 * MiB))
        rest()
    pool.commit()
    yield thin
    for day in range(1, 4):
        pool.message(f"create_snap {day} 0")
        for b in rng.sample(range(nb), 600):
            thin.write(b * BLOCK + 4096 * (b % 16), b"x" * 4096)
            rest()
        pool.commit()
        yield thin
    pool.message("delete 2")
    pool.commit()
    yield thin


@pytest.mark.parametrize("scratch", [False, True], ids=["its file", "a scratch file"])
def test_a_pool_with_committed_metadata_on_a_file_keeps_few_nodes_and_computes_the_same(
    tmp_path, scratch
):
    """The same operations on a pool whose nodes all stay in memory and on one that keeps 64
    leave the same metadata, block for block, and the latter never holds many more nodes
    than its cache's size after a commit, while it reads every mapping back."""
    in_memory = _pool()
    on_file = _pool(None if scratch else tmp_path / "meta", scratch=scratch)
    cache = on_file.pmd.tm.blocks
    assert isinstance(cache, BlockCache)
    for _ in zip(
        _workload(in_memory, random.Random(7)), _workload(on_file, random.Random(7)), strict=True
    ):
        assert len(cache) <= CACHE
        assert metadata_blocks(on_file.pmd) == metadata_blocks(in_memory.pmd)
    assert cache.loads > 1000  # nodes were dropped and read back
    a, b = in_memory.pmd, on_file.pmd
    for dev in (0, 1, 3):
        ra, rb = a.thin_roots()[dev], b.thin_roots()[dev]
        assert list(b.device_mappings(rb)) == list(a.device_mappings(ra))
        assert len(cache) <= CACHE + CACHE // 4 + 8  # reads evict as they go
    assert on_file.status() == in_memory.status()
    b._check()


def test_a_transaction_s_nodes_written_before_its_commit_leave_the_same_file_byte_for_byte(
    tmp_path,
):
    """A pool told between writes that no one holds a node writes its transaction's oldest
    dirty nodes to its file and drops them once its cache is full (as dm-bufio writes dirty
    buffers back): it holds about its cache's size all through a transaction, and each
    commit leaves the file, block for block, as a pool that kept them until the commit."""
    kept = _pool(tmp_path / "kept")
    early = _pool(tmp_path / "early")
    cache = early.pmd.tm.blocks
    for _ in zip(
        _workload(kept, random.Random(7)),
        _workload(early, random.Random(7), at_rest=True),
        strict=True,
    ):
        assert (tmp_path / "early").read_bytes() == (tmp_path / "kept").read_bytes()
        assert metadata_blocks(early.pmd) == metadata_blocks(kept.pmd)
        assert not early.pmd.tm.spilled
    assert cache.saved > 1000  # dirty nodes were written early and read back
    assert cache.saved > len(kept.pmd.tm.blocks) - CACHE
    assert early.status() == kept.status()
    early.pmd._check()


def test_a_cache_that_cannot_write_its_nodes_early_looks_at_them_again_only_as_it_grows(
    tmp_path, monkeypatch
):
    """A full cache whose early writes fail (the nodes stay, the commit writes them) is not
    scanned again at every bio: only once it has grown by a quarter of its size.  The commit
    then leaves the file as a pool that kept every node."""
    kept = _pool(tmp_path / "kept")
    early = _pool(tmp_path / "early")
    nb = DATA // 2 // BLOCK
    thins = []
    for pool in (kept, early):
        pool.message("create_thin 0")
        thin = Thin(pool, 0, DATA // 2 // 512)
        for off in range(0, DATA // 2, 256 * MiB):
            thin.write(off, bytes(256 * MiB))
        pool.commit()
        pool.message("create_snap 1 0")
        thins.append(thin)
    cache = early.pmd.tm.blocks
    monkeypatch.setattr(cache, "save", lambda nodes: False)
    calls = []
    evict = BlockCache.evict
    monkeypatch.setattr(
        BlockCache, "evict", lambda c, spill=False: (calls.append(spill), evict(c, spill))
    )
    peak = 0
    for b in range(0, nb, 3):  # every leaf shadowed, in order
        for thin in thins:
            thin.write(b * BLOCK, b"x" * 4096)
        early.pmd.tm.at_rest()
        peak = max(peak, len(cache))
    assert peak > 2 * CACHE  # the dirty nodes stayed
    assert 0 < calls.count(True) <= 4 * peak // CACHE < nb // 30
    for pool in (kept, early):
        pool.commit()
    assert (tmp_path / "early").read_bytes() == (tmp_path / "kept").read_bytes()


def test_an_abort_or_a_pickle_mid_transaction_with_nodes_written_early_loses_nothing(tmp_path):
    """Nodes written before their commit are the transaction's: an abort drops them (zeros
    over them, as over every block the transaction wrote) and a pickle taken mid-transaction
    carries them, so the copy commits what the original commits."""
    import pickle

    pools = {name: _pool(tmp_path / name) for name in ("kept", "early")}
    for name, pool in pools.items():
        steps = _workload(pool, random.Random(3), at_rest=name == "early")
        next(steps)
        next(steps)
    rng = random.Random(4)
    nb = DATA // 2 // BLOCK
    blocks = [rng.randrange(nb) for _ in range(600)]

    def churn(pool, rest, snap=9):
        pool.message(f"create_snap {snap} 0")
        thin = Thin(pool, 0, DATA // 2 // 512)
        for b in blocks:
            thin.write(b * BLOCK, b"z" * 4096)
            if rest:
                pool.pmd.tm.at_rest()

    churn(pools["kept"], False)
    churn(pools["early"], True)
    assert pools["early"].pmd.tm.spilled
    copy = pickle.loads(pickle.dumps(pools["early"]))
    copy.pmd.device = None  # the file is the original's
    for pool in (*pools.values(), copy):
        pool.commit()
    assert metadata_blocks(copy.pmd) == metadata_blocks(pools["kept"].pmd)
    assert metadata_blocks(pools["early"].pmd) == metadata_blocks(pools["kept"].pmd)
    churn(pools["kept"], False, 10)
    churn(pools["early"], True, 10)
    assert pools["early"].pmd.tm.spilled
    for pool in pools.values():
        pool.pmd.abort()
    assert not pools["early"].pmd.tm.spilled
    assert (tmp_path / "early").read_bytes() == (tmp_path / "kept").read_bytes()
    assert metadata_blocks(pools["early"].pmd) == metadata_blocks(pools["kept"].pmd)
    pools["early"].pmd._check()


def test_a_full_cache_shadows_a_clean_node_by_moving_it_and_reads_the_original_back(tmp_path):
    """Where a full cache drops a clean node it shadows, the node object itself becomes the
    shadow (no copy): the original, which the last commit (and a snapshot) still maps, is
    read back from the file as the commit wrote it, and an abort goes back to it."""
    pool = _pool(tmp_path / "meta")
    steps = _workload(pool, random.Random(7))
    next(steps)
    next(steps)  # a snapshot shares every leaf of thin 0 now
    pmd = pool.pmd
    tm = pmd.tm
    before = metadata_blocks(pmd)
    root = pmd.thin_roots()[0]
    leaf_blocks = [b for b in pmd.bl_info.node_blocks(root) if tm.blocks[b].leaf]
    b = leaf_blocks[len(leaf_blocks) // 2]
    node = tm.blocks[b]
    committed = (node.keys.tobytes(), node.values.tobytes())
    assert len(tm.blocks) > tm.blocks.limit // 2 and b not in tm.dirty
    loads = tm.blocks.loads
    new, _ = tm.shadow_block(b)
    assert tm.blocks[new] is node and b not in tm.blocks
    node.values[0] += 1 << 24  # the shadow changes; the original does not
    again = tm.blocks[b]
    assert tm.blocks.loads == loads + 1 and again is not node
    assert (again.keys.tobytes(), again.values.tobytes()) == committed
    pmd.abort()
    assert metadata_blocks(pmd) == before
    pmd._check()


def test_a_reopened_pool_reads_the_superblock_and_space_maps_then_nodes_on_demand(tmp_path):
    """read_metadata reads no node of the mapping or details trees; they come from the file
    when used, and the pool goes on exactly as one that never left memory."""
    md = tmp_path / "meta"
    pool = _pool(md)
    rng = random.Random(3)
    steps = _workload(pool, rng)
    next(steps)
    next(steps)
    pmd = read_metadata(md)
    cache = pmd.tm.blocks
    assert isinstance(cache, BlockCache)
    mapping_nodes = set(pool.pmd.bl_info.node_blocks(pool.pmd.thin_roots()[0]))
    assert len(mapping_nodes) > 100
    assert not mapping_nodes & set(cache)  # nothing of the thin's tree was read
    held = len(cache)
    assert held < 20, held
    # every mapping reads back as the pool that stayed in memory has it
    assert pmd.thin_roots() == pool.pmd.thin_roots()
    for root in pmd.thin_roots().values():
        assert list(pmd.device_mappings(root)) == list(pool.pmd.device_mappings(root))
    assert pmd.all_details() == pool.pmd.all_details()
    assert metadata_blocks(pmd) == metadata_blocks(pool.pmd)
    pmd._check()


def test_a_reopened_pool_with_a_small_cache_goes_on_as_one_read_whole(tmp_path):
    """Two pools opened on copies of one metadata file, one holding every node it reads and
    one holding 64, take the same snapshots and writes and commit the same bytes."""
    md = tmp_path / "meta"
    pool = _pool(md)
    steps = _workload(pool, random.Random(5))
    next(steps)
    next(steps)
    copy = tmp_path / "copy"
    copy.write_bytes(md.read_bytes())
    pools = []
    for path, limit in ((md, CACHE), (copy, 1 << 20)):
        pmd = read_metadata(path)
        pmd.tm.blocks.limit = limit
        table = PoolTable.parse(["/dev/loop0", "/dev/loop1", "128", "0"])
        p = Pool(
            table,
            length_sectors=DATA // 512,
            metadata_bytes=64 * MiB,
            data_bytes=DATA,
            metadata=pmd,
        )
        pmd.device = MetadataDevice(path)
        p.resume()
        pools.append(p)
    rng = random.Random(11)
    nb = DATA // 2 // BLOCK
    blocks = [rng.randrange(nb) for _ in range(800)]
    for p in pools:
        thin = Thin(p, 0, DATA // 2 // 512)
        p.message("create_snap 9 0")
        for b in blocks:
            thin.write(b * BLOCK, b"y" * 4096)
        p.commit()
    small, whole = pools
    assert metadata_blocks(small.pmd) == metadata_blocks(whole.pmd)
    assert md.read_bytes() == copy.read_bytes()
    assert small.status() == whole.status()
    assert len(small.pmd.tm.blocks) <= CACHE < len(whole.pmd.tm.blocks)
    small.pmd._check()


def test_a_pickled_pool_carries_the_nodes_its_cache_dropped(tmp_path):
    """The host's per-command path pickles pools whole: the nodes read on demand come along,
    and the unpickled pool computes what the original computes."""
    import pickle

    pool = _pool(tmp_path / "meta")
    steps = _workload(pool, random.Random(5))
    next(steps)
    next(steps)
    copy = pickle.loads(pickle.dumps(pool))
    assert type(copy.pmd.tm.blocks) is dict
    copy.pmd.device = None  # the file is the original's
    for p in (pool, copy):
        p.message("create_snap 9 0")
        p.commit()
    assert metadata_blocks(copy.pmd) == metadata_blocks(pool.pmd)
    copy.pmd._check()


def test_a_node_that_fails_its_checks_when_read_back_is_corrupt_metadata_not_a_missing_key(
    tmp_path,
):
    """dm-bufio's read of a bad block fails the operation with -EILSEQ; here it is
    CorruptMetadata, never the KeyError the model's callers take for a missing key."""
    from thinsim.model.disk import CorruptMetadata

    md = tmp_path / "meta"
    pool = _pool(md)
    next(_workload(pool, random.Random(1)))
    pmd = read_metadata(md)
    leaf = next(b for b, _ in pool.pmd.bl_info.leaves(pool.pmd.thin_roots()[0]))
    with open(md, "r+b") as f:
        f.seek(leaf * 4096 + 100)
        f.write(b"\xff")
    with pytest.raises(CorruptMetadata):
        list(pmd.device_mappings(pmd.thin_roots()[0]))
