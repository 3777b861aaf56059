"""The interface contract, written once against ``thinsim.interface``; the fixture gives
each backend (the model now; the kernel backend joins in issue 4)."""

import errno

import pytest

from thinsim.backends.model import ModelPool
from thinsim.errors import ThinsimError

MiB, GiB = 1 << 20, 1 << 30
BLOCK = 64 * 1024


@pytest.fixture(params=["model"])
def make_pool(request):
    pools = []

    def make(data_size=1 * GiB, metadata_size=4 * MiB, features=(), lwm=0):
        pool = ModelPool(data_size, metadata_size, 128, lwm, features, store="memory")
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def errno_of(fn, *args):
    with pytest.raises(ThinsimError) as e:
        fn(*args)
    return e.value.errno


def test_a_fresh_pool_reports_the_kernels_status_and_table_lines(make_pool):
    pool = make_pool()
    assert pool.status() == (
        "0 2097152 thin-pool 0 112/1024 0/16384 - rw discard_passdown queue_if_no_space - 256 "
    )
    assert pool.table() == "0 2097152 thin-pool 7:0 7:1 128 0 0 "


def test_a_4k_write_provisions_one_block_and_reads_back(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    thin.write(4096, b"a" * 4096)
    assert thin.status() == "0 2097152 thin 128 127"
    assert thin.read(0, 8192) == bytes(4096) + b"a" * 4096
    assert pool.status().split()[5] == "1/16384"


def test_unmapped_reads_return_zeros_and_allocate_nothing(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    assert thin.read(10 * MiB, BLOCK) == bytes(BLOCK)
    assert thin.status() == "0 2097152 thin 0 -"


def test_a_snapshot_keeps_the_origins_old_contents(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    origin = pool.activate(0, GiB)
    origin.write(0, b"o" * BLOCK)
    pool.create_snap(1, 0)
    snap = pool.activate(1, GiB)
    origin.write(0, b"n" * 512)
    assert snap.read(0, 512) == b"o" * 512
    assert origin.read(0, 1024) == b"n" * 512 + b"o" * 512
    assert pool.status().split()[5] == "2/16384"


def test_messages_fail_with_the_kernels_errno_and_change_nothing(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    pool.activate(0, GiB)
    before = pool.status()
    assert errno_of(pool.create_thin, 0) == errno.EEXIST
    assert errno_of(pool.create_snap, 1, 7) == errno.ENODATA
    assert errno_of(pool.delete, 0) == errno.EBUSY
    assert errno_of(pool.delete, 5) == errno.ENODATA
    assert errno_of(pool.set_transaction_id, 3, 4) == errno.EINVAL
    assert errno_of(pool.release_metadata_snap) == errno.EINVAL
    assert errno_of(pool.message, "create_thin 16777216") == errno.EINVAL
    assert errno_of(pool.message, "frobnicate") == errno.EINVAL
    assert pool.status() == before


def test_ignore_discard_makes_discards_fail_with_eopnotsupp(make_pool):
    pool = make_pool(features=["ignore_discard"])
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    thin.write(0, b"x" * BLOCK)
    assert errno_of(thin.discard, 0, BLOCK) == errno.EOPNOTSUPP


def test_a_whole_block_discard_unmaps_and_a_partial_one_does_nothing(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    thin.write(0, b"x" * (2 * BLOCK))
    thin.discard(512, BLOCK)
    assert thin.status() == "0 2097152 thin 256 255"
    thin.discard(0, BLOCK)
    assert thin.status() == "0 2097152 thin 128 255"


def test_error_if_no_space_fails_writes_at_once_with_enospc(make_pool):
    pool = make_pool(data_size=4 * BLOCK, features=["error_if_no_space"])
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    thin.write(0, b"x" * (4 * BLOCK))
    assert errno_of(thin.write, 4 * BLOCK, b"y" * 512) == errno.ENOSPC
    assert pool.status().split()[7] == "out_of_data_space"


def test_growing_the_data_device_adds_free_blocks(make_pool):
    pool = make_pool(data_size=64 * MiB)
    pool.reload(data_size=128 * MiB)
    assert pool.status().split()[5] == "0/2048"
