"""Bad tables and messages end in a thinsim error carrying the kernel's errno, and change
nothing."""

import errno

import pytest
from helpers import make_pool, make_thin
from hypothesis import given
from hypothesis import strategies as st

from thinsim.errors import ThinsimError
from thinsim.model.pool import PoolTable

words = st.one_of(
    st.sampled_from(
        [
            "create_thin",
            "create_snap",
            "delete",
            "set_transaction_id",
            "reserve_metadata_snap",
            "release_metadata_snap",
            "CREATE_THIN",
            "0",
            "1",
            "-1",
            "0x1",
            "16777215",
            "16777216",
            "+2",
            "",
            "18446744073709551616",
            "skip_block_zeroing",
            "ignore_discard",
        ]
    ),
    st.text(min_size=0, max_size=12),
)


@given(st.lists(words, max_size=6))
def test_random_messages_raise_only_thinsim_errors_and_leave_status_alone(argv):
    pool = make_pool()
    make_thin(pool, 0)
    before = pool.status()
    try:
        pool.message(" ".join(argv))
    except ThinsimError as e:
        assert e.errno in (errno.EINVAL, errno.EEXIST, errno.ENODATA, errno.EBUSY, errno.EOPNOTSUPP)
        assert pool.status() == before
    pool.pmd._check()


@given(st.lists(words, max_size=10))
def test_random_pool_tables_raise_only_thinsim_errors(argv):
    try:
        PoolTable.parse(argv)
    except ThinsimError as e:
        assert e.errno == errno.EINVAL


@pytest.mark.parametrize(
    "argv, text",
    [
        (["/dev/loop0", "/dev/loop1", "128"], "Invalid argument count"),
        (["/dev/loop0", "/dev/loop0", "128", "0"], "Error setting metadata or data device"),
        (["a", "b", "64", "0"], "Invalid block size"),
        (["a", "b", "185", "0"], "Invalid block size"),
        (["a", "b", "2097280", "0"], "Invalid block size"),
        (["a", "b", "128", "-1"], "Invalid low water mark"),
        (
            ["a", "b", "128", "0", "5", "a", "b", "c", "d", "e"],
            "Invalid number of pool feature arguments",
        ),
        (
            ["a", "b", "128", "0", "2", "skip_block_zeroing"],
            "Invalid number of pool feature arguments",
        ),
        (["a", "b", "128", "0", "1", "zero"], "Unrecognised pool feature requested"),
    ],
)
def test_a_bad_pool_table_gets_the_kernels_error(argv, text):
    with pytest.raises(ThinsimError) as e:
        PoolTable.parse(argv)
    assert e.value.ti_error == text
    assert e.value.errno == errno.EINVAL


def test_block_sizes_that_are_multiples_of_64k_are_accepted_even_when_not_powers_of_two():
    for bs in (128, 384, 2097152):
        assert PoolTable.parse(["a", "b", str(bs), "0"]).block_size == bs
