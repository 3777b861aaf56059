"""The interface contract, written once against ``thinsim.interface`` and run on every
backend through the ``backend`` fixture (tests/conftest.py): the model everywhere, the real
kernel where root and dm-thin are (inside the VM ``make test`` boots).

The expected lines are what Debian 12's kernel (6.1.0-56, thin-pool v1.22.0) prints; the kernel
run in the VM is what keeps them honest.  Tables name devices by number: the model's pool is
always on 7:0 and 7:1 and is 254:0, a real host's are whatever it gave (``backend.devices``).
"""

import errno

import pytest

from thinsim.errors import ThinsimError

MiB, GiB = 1 << 20, 1 << 30
BLOCK = 64 * 1024


@pytest.fixture
def make_pool(backend):
    def make(data_size=1 * GiB, metadata_size=4 * MiB, features=(), lwm=0):
        return backend.pool(data_size, metadata_size, 128, lwm, features)

    return make


def errno_of(fn, *args):
    with pytest.raises(ThinsimError) as e:
        fn(*args)
    return e.value.errno


def test_a_fresh_pool_reports_the_kernels_status_and_table_lines(make_pool, backend):
    pool = make_pool()
    meta, data, _ = backend.devices(pool)
    assert pool.status() == (
        "0 2097152 thin-pool 0 112/1024 0/16384 - rw discard_passdown queue_if_no_space - 256 "
    )
    assert pool.table() == f"0 2097152 thin-pool {meta} {data} 128 0 0 "


def test_a_4k_write_provisions_one_block_and_reads_back(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    thin.write(4096, b"a" * 4096)
    assert thin.status() == "0 2097152 thin 128 127"
    assert thin.read(0, 8192) == bytes(4096) + b"a" * 4096
    assert pool.status().split()[5] == "1/16384"


def test_a_thin_table_names_the_pool_device_and_the_thin_id(make_pool, backend):
    pool = make_pool()
    _, _, pool_dev = backend.devices(pool)
    pool.create_thin(3)
    thin = pool.activate(3, GiB)
    assert thin.table() == f"0 2097152 thin {pool_dev} 3"


def test_unmapped_reads_return_zeros_and_allocate_nothing(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    assert thin.read(10 * MiB, BLOCK) == bytes(BLOCK)
    assert thin.status() == "0 2097152 thin 0 -"


def test_a_write_of_a_few_bytes_inside_a_sector_keeps_the_bytes_around_it(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    thin.write(BLOCK + 100, b"abc")
    assert thin.read(BLOCK, 512) == bytes(100) + b"abc" + bytes(409)
    assert thin.read(BLOCK + 101, 1) == b"b"
    assert thin.status() == "0 2097152 thin 128 255"


def test_a_write_past_the_end_or_running_past_it_fails_with_enospc_and_writes_nothing(
    make_pool,
):
    pool = make_pool()
    pool.create_thin(0)
    thin = pool.activate(0, MiB)
    assert errno_of(thin.write, MiB, b"x" * 512) == errno.ENOSPC
    assert errno_of(thin.write, MiB - 512, b"y" * 1024) == errno.ENOSPC
    assert thin.read(MiB - 512, 1024) == bytes(512)
    assert thin.status() == "0 2048 thin 0 -"
    thin.write(MiB - 512, b"y" * 512)
    assert thin.read(MiB - 512, 1024) == b"y" * 512
    assert thin.status() == "0 2048 thin 128 2047"


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


def test_the_transaction_id_shows_in_the_status_line(make_pool):
    pool = make_pool()
    pool.set_transaction_id(0, 7)
    assert pool.status().split()[3] == "7"


def test_a_second_metadata_snapshot_reserve_fails_with_ebusy(make_pool):
    pool = make_pool()
    pool.reserve_metadata_snap()
    assert errno_of(pool.reserve_metadata_snap) == errno.EBUSY
    held = pool.status().split()[6]
    assert held != "-"
    pool.release_metadata_snap()
    assert pool.status().split()[6] == "-"


def test_activating_a_thin_the_pool_does_not_have_fails_with_enodata(make_pool):
    pool = make_pool()
    assert errno_of(pool.activate, 4, GiB) == errno.ENODATA


def test_a_deactivated_thin_can_be_deleted_and_its_blocks_come_back(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    thin.write(0, b"d" * (3 * BLOCK))
    assert pool.status().split()[5] == "3/16384"
    thin.deactivate()
    pool.delete(0)
    assert pool.status().split()[5] == "0/16384"


def test_ignore_discard_makes_discards_fail_with_eopnotsupp(make_pool):
    pool = make_pool(features=["ignore_discard"])
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    thin.write(0, b"x" * BLOCK)
    assert errno_of(thin.discard, 0, BLOCK) == errno.EOPNOTSUPP


def test_discards_must_be_sector_aligned_and_inside_the_device(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    assert errno_of(thin.discard, 1, 512) == errno.EINVAL
    assert errno_of(thin.discard, 0, 100) == errno.EINVAL
    assert errno_of(thin.discard, GiB - 512, 1024) == errno.EINVAL


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


def test_crossing_the_low_water_mark_raises_one_event(make_pool):
    pool = make_pool(data_size=16 * BLOCK, lwm=4)
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    before = pool.event_nr
    thin.write(0, b"w" * (11 * BLOCK))
    assert pool.event_nr == before
    thin.write(11 * BLOCK, b"w" * (2 * BLOCK))
    assert pool.event_nr == before + 1


def test_growing_the_data_device_adds_free_blocks(make_pool):
    pool = make_pool(data_size=64 * MiB)
    pool.reload(data_size=128 * MiB)
    assert pool.status().split()[5] == "0/2048"


def test_a_reload_with_new_features_shows_them_in_the_table(make_pool, backend):
    pool = make_pool()
    meta, data, _ = backend.devices(pool)
    pool.reload(features=["skip_block_zeroing", "error_if_no_space"])
    assert pool.table() == (
        f"0 2097152 thin-pool {meta} {data} 128 0 2 skip_block_zeroing error_if_no_space "
    )
    assert pool.status().split()[9] == "error_if_no_space"


def test_a_suspended_pool_still_reports_its_status(make_pool):
    pool = make_pool()
    pool.create_thin(0)
    pool.suspend()
    assert pool.status(noflush=True) == pool.status()
    pool.resume()
    assert pool.status().split()[4] == "113/1024"
