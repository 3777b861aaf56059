"""Pools through the typed API: the same assertions on the model and on the real kernel."""

import errno

import pytest

from thinsim.errors import ThinsimError

MiB = 1 << 20
BLOCK = 64 * 1024  # 128 sectors, the pool's data block


def test_a_fresh_pool_has_used_only_its_metadata_superstructure(thinsim_pool):
    pool = thinsim_pool(64 * MiB, 4 * MiB, block_size=128)
    status = pool.status_info()
    assert (status.mode, status.transaction_id, status.held_metadata_root) == ("rw", 0, None)
    assert (status.used_data_blocks, status.total_data_blocks) == (0, 1024)
    assert (status.used_metadata_blocks, status.total_metadata_blocks) == (111, 1024)
    assert (status.discards, status.no_space, status.needs_check) == (
        "discard_passdown",
        "queue_if_no_space",
        False,
    )


def test_a_write_provisions_whole_blocks_and_the_thin_reports_them(thinsim_pool):
    pool = thinsim_pool(64 * MiB, 4 * MiB)
    pool.create_thin(1)
    thin = pool.activate(1, 16 * MiB)
    thin.write(BLOCK + 512, b"x" * 4096)  # inside the second block
    thin.flush()
    status = thin.status_info()
    assert status.mapped_blocks(pool.data_block_size_sectors) == 1
    assert status.highest_mapped_block(pool.data_block_size_sectors) == 1
    assert pool.status_info().used_data_blocks == 1
    assert thin.read(BLOCK + 512, 4096) == b"x" * 4096


def test_a_snapshot_shares_its_origins_blocks_until_either_side_writes(thinsim_pool):
    with thinsim_pool(64 * MiB, 4 * MiB) as pool:  # a context manager too
        pool.create_thin(1)
        origin = pool.activate(1, 16 * MiB)
        origin.write(0, b"a" * (4 * BLOCK))
        pool.create_snap(2, 1)
        assert {d: (u.mapped_blocks, u.shared_blocks) for d, u in pool.thin_usage().items()} == {
            1: (4, 4),
            2: (4, 4),
        }
        origin.write(0, b"b" * 512)  # breaks the sharing of the first block
        usage = pool.thin_usage()
        assert (usage[1].exclusive_blocks, usage[1].shared_blocks) == (1, 3)
        assert (usage[2].exclusive_blocks, usage[2].shared_blocks) == (1, 3)


def test_a_full_pool_that_errors_when_out_of_space_fails_the_write_with_enospc(thinsim_pool):
    pool = thinsim_pool(4 * BLOCK, 4 * MiB, features=["error_if_no_space"])
    pool.create_thin(1)
    thin = pool.activate(1, 16 * MiB)
    thin.write(0, b"x" * (4 * BLOCK))
    with pytest.raises(ThinsimError) as e:
        thin.write(4 * BLOCK, b"y" * 512)
    assert e.value.errno == errno.ENOSPC
    assert pool.status_info().mode == "out_of_data_space"
    assert (
        f"device-mapper: thin: {pool.devno}: switching pool to out-of-data-space (error IO) mode"
        in pool.log_lines()
    )


def test_creating_a_thin_twice_fails_with_eexist_and_the_kernels_reason(thinsim_pool):
    pool = thinsim_pool(64 * MiB, 4 * MiB)
    pool.create_thin(1)
    with pytest.raises(ThinsimError) as e:
        pool.create_thin(1)
    assert e.value.errno == errno.EEXIST
    assert "Creation of new thinly-provisioned device with id 1 failed." in str(e.value)


def test_shrinking_the_data_device_is_refused_with_the_kernels_reason(thinsim_pool):
    pool = thinsim_pool(64 * MiB, 4 * MiB)
    with pytest.raises(ThinsimError) as e:
        pool.reload(data_size=32 * MiB)
    assert e.value.errno == errno.EINVAL
    assert str(e.value) == (
        f"device-mapper: thin: {pool.devno}: pool target (512 blocks) too small: expected 1024"
    )
    pool.reload(data_size=128 * MiB)  # growing is fine
    assert pool.status_info().total_data_blocks == 2048


def test_a_deactivated_thin_and_a_closed_pool_refuse_every_call_with_enxio(thinsim_pool):
    pool = thinsim_pool(64 * MiB, 4 * MiB)
    pool.create_thin(1)
    thin = pool.activate(1, MiB)
    thin.deactivate()
    with pytest.raises(ThinsimError) as e:
        thin.write(0, b"x" * 512)
    assert e.value.errno == errno.ENXIO
    pool.close()
    with pytest.raises(ThinsimError) as e:
        pool.create_thin(2)
    assert e.value.errno == errno.ENXIO


@pytest.mark.thinsim_model_only
def test_the_model_keeps_a_100_gib_pool_in_a_few_mib_of_memory(thinsim_pool):
    # only the model: a real host would need the backing files' room for what is written
    pool = thinsim_pool(100 << 30, 2 << 30, store="accounting")
    pool.create_thin(1)
    thin = pool.activate(1, 10 << 30)
    for i in range(0, 10 << 30, 1 << 30):
        thin.write(i, b"x" * 512)
    assert pool.status_info().used_data_blocks == 10


@pytest.mark.thinsim_kernel_only
def test_on_the_kernel_the_data_file_holds_only_the_blocks_written(thinsim_pool):
    pool = thinsim_pool(64 * MiB, 4 * MiB, features=["skip_block_zeroing"])
    pool.create_thin(1)
    pool.activate(1, 16 * MiB).write(0, b"x" * BLOCK)
    pool.commit()
    assert pool.allocated_bytes() == BLOCK
