"""The typed API on every backend (the ``backend`` fixture: the model here, the real kernel
in the VM): status as dataclasses, thin_ls-like usage, the kernel's log lines, pools as
context managers, and every misuse an error with the kernel's errno and reason."""

import errno

import pytest

from thinsim.backends.kernel import KernelPool
from thinsim.backends.model import ModelPool
from thinsim.errors import ThinsimError
from thinsim.status import PoolStatus, ThinStatus, ThinUsage

MiB = 1 << 20
BLOCK = 64 * 1024


def raised(fn, *args, **kwargs) -> ThinsimError:
    with pytest.raises(ThinsimError) as e:
        fn(*args, **kwargs)
    return e.value


def test_status_info_is_the_status_line_parsed(backend):
    pool = backend.pool(64 * MiB, 4 * MiB)
    pool.create_thin(1)
    thin = pool.activate(1, 16 * MiB)
    thin.write(3 * BLOCK, b"x" * 512)
    info = pool.status_info()
    assert info == PoolStatus.parse(pool.status())
    assert info == PoolStatus(
        0, 131072, "rw", 0, 112, 1024, 1, 1024, None, "discard_passdown", "queue_if_no_space",
        False, 256,
    )  # fmt: skip
    assert thin.status_info() == ThinStatus(0, 32768, "ok", 128, 511)


def test_a_held_metadata_snapshot_shows_as_its_root_block(backend):
    pool = backend.pool(64 * MiB, 4 * MiB)
    pool.reserve_metadata_snap()
    held = pool.status_info().held_metadata_root
    assert isinstance(held, int) and held > 0
    pool.release_metadata_snap()
    assert pool.status_info().held_metadata_root is None


def test_thin_usage_counts_mapped_exclusive_and_shared_blocks_as_thin_ls(backend):
    pool = backend.pool(64 * MiB, 4 * MiB)
    pool.create_thin(1)
    origin = pool.activate(1, 16 * MiB)
    origin.write(0, b"a" * (3 * BLOCK))
    pool.create_snap(2, 1)
    snap = pool.activate(2, 16 * MiB)
    snap.write(0, b"b" * 512)  # the snapshot's own copy of block 0
    snap.write(10 * BLOCK, b"c" * 512)  # and a block of its own
    assert pool.thin_usage() == {
        1: ThinUsage(1, 3, 1, 2, 0, 0, 1),
        2: ThinUsage(2, 4, 2, 2, 0, 1, 1),
    }


def test_the_pools_log_lines_are_the_kernels_since_the_last_call(backend):
    pool = backend.pool(4 * BLOCK, 4 * MiB, 128, 0, ["error_if_no_space"])
    pool.log_lines()
    pool.create_thin(1)
    thin = pool.activate(1, MiB)
    thin.write(0, b"x" * (4 * BLOCK))
    assert pool.log_lines() == []
    assert raised(thin.write, 4 * BLOCK, b"y" * 512).errno == errno.ENOSPC
    _, _, dev = backend.devices(pool)
    assert pool.log_lines() == [
        f"device-mapper: thin: {dev}: reached low water mark for data device: sending event.",
        f"device-mapper: thin: {dev}: switching pool to out-of-data-space (error IO) mode",
    ]
    assert pool.log_lines() == []


def test_both_pools_are_context_managers_that_close_at_the_end(backend):
    with backend.pool(64 * MiB, 4 * MiB) as pool:
        pool.create_thin(1)
    assert pool.closed
    assert raised(pool.create_thin, 2).errno == errno.ENXIO


def test_every_call_after_close_fails_with_enxio_and_close_again_is_fine(backend):
    pool = backend.pool(64 * MiB, 4 * MiB)
    pool.create_thin(1)
    thin = pool.activate(1, MiB)
    pool.close()
    for call in (
        lambda: pool.message("create_thin 2"),
        lambda: pool.activate(1, MiB),
        lambda: pool.status(),
        lambda: pool.status_info(),
        lambda: pool.table(),
        lambda: pool.suspend(),
        lambda: pool.resume(),
        lambda: pool.commit(),
        lambda: pool.reload(data_size=128 * MiB),
        lambda: pool.metadata_dump(),
        lambda: pool.log_lines(),
        lambda: thin.write(0, b"x" * 512),
        lambda: thin.read(0, 512),
        lambda: thin.status(),
    ):
        assert raised(call).errno == errno.ENXIO
    pool.close()


def test_every_call_on_a_deactivated_thin_fails_with_enxio(backend):
    pool = backend.pool(64 * MiB, 4 * MiB)
    pool.create_thin(1)
    thin = pool.activate(1, MiB)
    thin.write(0, b"x" * 512)
    thin.deactivate()
    for call in (
        lambda: thin.write(0, b"y" * 512),
        lambda: thin.read(0, 512),
        lambda: thin.discard(0, BLOCK),
        lambda: thin.flush(),
        lambda: thin.status(),
        lambda: thin.table(),
        lambda: thin.suspend(),
        lambda: thin.deactivate(),
    ):
        e = raised(call)
        assert e.errno == errno.ENXIO and "deactivated" in str(e)
    # the thin is still in the pool: activated again, it has its data
    assert pool.activate(1, MiB).read(0, 512) == b"x" * 512


def test_a_pool_of_no_data_and_str_write_data_are_refused_with_einval(backend):
    cls = ModelPool if backend.name == "model" else KernelPool
    e = raised(cls, 0, 4 * MiB)
    # dm-table.c's reason (dm_table_add_target), before any device or file is made
    assert e.errno == errno.EINVAL and str(e).startswith("zero-length target")
    pool = backend.pool(64 * MiB, 4 * MiB)
    pool.create_thin(1)
    e = raised(pool.activate(1, MiB).write, 0, "text")
    assert e.errno == errno.EINVAL and "bytes-like" in str(e)


def test_shrinking_the_data_device_is_refused_with_the_line_the_kernel_logs(backend):
    pool = backend.pool(64 * MiB, 4 * MiB)
    _, _, dev = backend.devices(pool)
    before = (pool.status(), pool.table())
    e = raised(pool.reload, data_size=32 * MiB)
    assert e.errno == errno.EINVAL
    assert (
        str(e) == f"device-mapper: thin: {dev}: pool target (512 blocks) too small: expected 1024"
    )
    assert e.kernel_log == (str(e),)
    e = raised(pool.reload, length_sectors=65536)
    assert e.errno == errno.EINVAL and "pool target (512 blocks) too small" in str(e)
    e = raised(pool.reload, metadata_size=2 * MiB)
    assert e.errno == errno.EINVAL
    assert str(e) == (
        f"device-mapper: thin: {dev}: metadata device (512 blocks) too small: expected 1024"
    )
    assert (pool.status(), pool.table()) == before  # nothing touched: still live, same table


def test_a_refusal_carries_the_kernels_log_lines(backend):
    pool = backend.pool(64 * MiB, 4 * MiB)
    pool.create_thin(1)
    e = raised(pool.create_thin, 1)
    assert e.errno == errno.EEXIST
    assert e.kernel_log == (
        "device-mapper: thin: Creation of new thinly-provisioned device with id 1 failed.",
    )
    assert str(e).endswith(e.kernel_log[0])
    pool.activate(1, MiB)
    e = raised(pool.delete, 1)
    assert e.errno == errno.EBUSY
    assert e.kernel_log == ("device-mapper: thin: Deletion of thin device 1 failed.",)


# messages the kernel refuses, what it returns and what it logs (tests/kernel/recorded/messages.txt)
REFUSED_MESSAGES = [
    ("bogus", errno.EINVAL, ["thin: Unrecognised thin pool target message received: bogus"]),
    ("create_thin 1a", errno.EINVAL, ["thin: Message received with invalid device id: 1a"]),
    ("create_thin", errno.EINVAL, ["thin: Message received with 1 arguments instead of 2."]),
    ("create_snap 2 5", errno.ENODATA, ["thin: Creation of new snapshot 2 of device 5 failed."]),
    ("delete 5", errno.ENODATA, ["thin: Deletion of thin device 5 failed."]),
    (
        "set_transaction_id 1 2",
        errno.EINVAL,
        [
            "thin metadata: mismatched transaction id",
            "thin: Failed to change transaction id from 1 to 2.",
        ],
    ),
    (
        "release_metadata_snap",
        errno.EINVAL,
        [
            "thin metadata: No pool metadata snapshot found: nothing to release.",
            "thin: release_metadata_snap message failed.",
        ],
    ),
]


@pytest.mark.parametrize(
    "text, code, lines", REFUSED_MESSAGES, ids=[m[0] for m in REFUSED_MESSAGES]
)
def test_a_refused_message_says_the_kernels_reason_not_only_its_errno(backend, text, code, lines):
    pool = backend.pool(64 * MiB, 4 * MiB)
    pool.create_thin(1)
    e = raised(pool.message, text)
    assert e.errno == code
    assert e.kernel_log == tuple(f"device-mapper: {line}" for line in lines)
    assert all(line in str(e) for line in e.kernel_log)


def test_the_write_a_full_pool_refuses_first_says_why(backend):
    # 16 blocks, error_if_no_space: the 17th block's write fails as the pool switches mode
    pool = backend.pool(1 * MiB, 4 * MiB, features=["error_if_no_space"])
    _, _, dev = backend.devices(pool)
    pool.create_thin(1)
    thin = pool.activate(1, 4 * MiB)
    thin.write(0, b"x" * MiB)
    e = raised(thin.write, MiB, b"y" * 4096)
    assert e.errno == errno.ENOSPC
    assert e.kernel_log == (
        f"device-mapper: thin: {dev}: reached low water mark for data device: sending event.",
        f"device-mapper: thin: {dev}: switching pool to out-of-data-space (error IO) mode",
    )
    assert str(e).endswith(e.kernel_log[-1])
    # the next one: the kernel logs nothing new; the status says it
    e = raised(thin.write, MiB, b"y" * 4096)
    assert e.errno == errno.ENOSPC and e.kernel_log == ()
    assert pool.status_info().mode == "out_of_data_space"


def test_a_rejected_table_carries_the_kernels_reason(backend):
    cls = ModelPool if backend.name == "model" else KernelPool
    e = raised(cls, 64 * MiB, 4 * MiB, 100)
    assert e.errno == errno.EINVAL
    assert e.kernel_log[-2:][0].endswith(": thin-pool: Invalid block size (-EINVAL)")
    assert "Invalid block size (-EINVAL)" in str(e)
