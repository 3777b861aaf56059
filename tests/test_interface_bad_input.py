"""Bad arguments to the Python API: each raises a thinsim error with the kernel's errno and a
message saying what was wrong, before anything is touched, on every backend (the ``backend``
fixture, tests/conftest.py: the model everywhere, the real kernel inside the VM)."""

import errno
import os

import pytest

from thinsim.backends.kernel import KernelPool
from thinsim.backends.model import ModelPool
from thinsim.errors import ThinsimError

MiB, GiB = 1 << 20, 1 << 30
FRESH = "0 2097152 thin-pool 0 112/1024 0/16384 - rw discard_passdown queue_if_no_space - 256 "


def error_of(fn, *args, **kwargs) -> ThinsimError:
    with pytest.raises(ThinsimError) as e:
        fn(*args, **kwargs)
    return e.value


@pytest.mark.parametrize(
    "args, kwargs, words",
    [
        (("1G", 4 * MiB), {}, "data_size must be an int, not str"),
        ((GiB, "4M"), {}, "metadata_size must be an int, not str"),
        ((GiB, None), {}, "metadata_size must be an int, not NoneType"),
        ((-GiB, 4 * MiB), {}, "data_size must be at least 0"),
        ((GiB, -1), {}, "metadata_size must be at least 0"),
        ((GiB, 4 * MiB, "128"), {}, "data_block_size_sectors must be an int"),
        ((GiB, 4 * MiB, 128, -1), {}, "low_water_mark_blocks must be at least 0"),
        ((GiB, 4 * MiB, 128, 0, "skip_block_zeroing"), {}, "features must be a sequence"),
        ((GiB, 4 * MiB, 128, 0, [None]), {}, "a feature must be a str"),
        ((0, 4 * MiB), {}, "zero-length target"),
        ((GiB, 4 * MiB), {"length_sectors": 0}, "zero-length target"),
        ((GiB, 4 * MiB), {"length_sectors": -8}, "length_sectors must be at least 0"),
        ((GiB, 4 * MiB), {"length_sectors": 2097160}, "data device too small for target"),
    ],
)
def test_a_pool_made_with_a_bad_argument_raises_einval_saying_which(backend, args, kwargs, words):
    cls = ModelPool if backend.name == "model" else KernelPool
    e = error_of(cls, *args, **kwargs)
    assert e.errno == errno.EINVAL
    assert words in str(e)


def test_a_message_that_is_not_a_str_raises_einval_and_changes_nothing(backend):
    pool = backend.pool()
    for text in (None, 5, b"create_thin 0", ["create_thin", "0"]):
        e = error_of(pool.message, text)
        assert e.errno == errno.EINVAL and "a message must be a str" in str(e)
    assert error_of(pool.message, "  ").errno == errno.EINVAL
    assert error_of(pool.create_thin, None).errno == errno.EINVAL
    assert error_of(pool.create_snap, 1, "0").errno == errno.EINVAL
    assert error_of(pool.delete, 0.0).errno == errno.EINVAL
    assert error_of(pool.set_transaction_id, "0", 1).errno == errno.EINVAL
    assert pool.status() == FRESH


@pytest.mark.parametrize(
    "dev_id, length, words",
    [
        (0, 0, "length must be at least 512, not 0"),
        (0, -512, "length must be at least 512, not -512"),
        (0, 100, "length must be at least 512, not 100"),
        (0, 1000, "length must be a multiple of 512 bytes"),
        (0, "1G", "length must be an int, not str"),
        (None, GiB, "dev_id must be an int, not NoneType"),
        ("0", GiB, "dev_id must be an int, not str"),
    ],
)
def test_activating_with_a_bad_id_or_length_raises_einval_and_makes_no_device(
    backend, dev_id, length, words
):
    pool = backend.pool()
    pool.create_thin(0)
    e = error_of(pool.activate, dev_id, length)
    assert e.errno == errno.EINVAL and words in str(e)
    assert pool.status() == FRESH.replace("112/1024", "113/1024")
    # nothing half made: the thin can still be deleted (no device holds it)
    pool.delete(0)


def test_a_write_of_data_that_is_not_bytes_raises_einval_and_provisions_nothing(backend):
    pool = backend.pool()
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    for data in ("abc", None, [1, 2, 3], 7):
        e = error_of(thin.write, 4096, data)
        assert e.errno == errno.EINVAL and "data must be bytes-like" in str(e)
    assert thin.status() == "0 2097152 thin 0 -"
    assert pool.status().split()[5] == "0/16384"
    thin.write(4096, bytearray(b"b" * 512))
    thin.write(8192, memoryview(b"c" * 512))
    assert thin.read(4096, 4608) == b"b" * 512 + bytes(3584) + b"c" * 512
    assert pool.status().split()[5] == "1/16384"


@pytest.mark.parametrize(
    "call, args, words",
    [
        ("read", ("0", 512), "offset must be an int, not str"),
        ("read", (0, None), "length must be an int, not NoneType"),
        ("read", (-1, 512), "offset must be at least 0"),
        ("write", ("0", b"x"), "offset must be an int, not str"),
        ("write", (-512, b"x"), "offset must be at least 0"),
        ("discard", (0, "4096"), "length must be an int, not str"),
        ("discard", (0.0, 4096), "offset must be an int, not float"),
    ],
)
def test_io_with_arguments_of_the_wrong_type_raises_einval(backend, call, args, words):
    pool = backend.pool()
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    e = error_of(getattr(thin, call), *args)
    assert e.errno == errno.EINVAL and words in str(e)
    assert thin.status() == "0 2097152 thin 0 -"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"metadata_size": "8M"}, "metadata_size must be an int"),
        ({"data_size": 2.0 * GiB}, "data_size must be an int, not float"),
        ({"length_sectors": "x"}, "length_sectors must be an int"),
        ({"length_sectors": 0}, "zero-length target"),
        ({"length_sectors": 2097153}, "data device too small for target"),
        ({"data_size": 2 * GiB, "length_sectors": 4194305}, "data device too small"),
        ({"low_water_mark_blocks": -1}, "low_water_mark_blocks must be at least 0"),
        ({"features": "ignore_discard"}, "features must be a sequence"),
    ],
)
def test_a_reload_with_a_bad_argument_raises_einval_and_changes_nothing(backend, kwargs, words):
    pool = backend.pool()
    table = pool.table()
    e = error_of(pool.reload, **kwargs)
    assert e.errno == errno.EINVAL and words in str(e)
    assert pool.table() == table
    assert pool.status() == FRESH


# -- the model's data store ------------------------------------------------------------


def test_a_store_named_by_a_bare_word_is_refused_and_no_file_is_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for store in ("bogus", "memroy", ""):
        e = error_of(ModelPool, GiB, 4 * MiB, store=store)
        assert e.errno == errno.EINVAL and "unknown store" in str(e)
    e = error_of(ModelPool, GiB, 4 * MiB, store=5)
    assert e.errno == errno.EINVAL and "not int" in str(e)
    assert os.listdir(tmp_path) == []


def test_a_store_in_a_missing_folder_raises_enoent_and_makes_no_folder(tmp_path):
    path = tmp_path / "missing" / "data"
    e = error_of(ModelPool, GiB, 4 * MiB, store=str(path))
    assert e.errno == errno.ENOENT and str(tmp_path / "missing") in str(e)
    assert os.listdir(tmp_path) == []
    e = error_of(ModelPool, GiB, 4 * MiB, store=tmp_path)
    assert e.errno == errno.EISDIR


def test_a_store_file_is_made_for_a_path_and_removed_when_the_pool_cannot_be(tmp_path):
    pool = ModelPool(GiB, 4 * MiB, store=tmp_path / "data")
    assert os.path.getsize(tmp_path / "data") == GiB
    pool.close()
    e = error_of(ModelPool, GiB, 4 * MiB, 100, store=str(tmp_path / "other"))
    assert e.errno == errno.EINVAL
    assert sorted(os.listdir(tmp_path)) == ["data"]


# -- a metadata device too small to format ---------------------------------------------
#
# What Debian's 6.1 printed for each size (tests/host/recorded/32_small_metadata): the pool's
# creation fails with the errno of the step of __format_metadata, or of the first resume's
# data resize, that ran out of blocks; from 10 blocks on the pool is made (read-only at 10).


@pytest.mark.parametrize(
    "metadata_size, err",
    [
        (512, errno.EIO),  # no whole block: the superblock cannot be read
        (4096, errno.EINVAL),  # the space map's own blocks run past the end
        (8192, errno.EINVAL),
        (12288, errno.ENOSPC),  # dm_sm_metadata_create
        (20480, errno.ENOSPC),  # sm_disk_create
        (24576, errno.ENOSPC),  # the mapping tree's root
        (28672, errno.ENOSPC),  # the devices tree's root
        (32768, errno.ENOSPC),  # the first resume's data resize
        (36864, errno.ENOSPC),
    ],
)
def test_a_metadata_device_too_small_to_format_fails_with_the_kernels_errno(
    backend, metadata_size, err
):
    assert error_of(backend.pool, 64 * MiB, metadata_size).errno == err


def test_the_smallest_metadata_device_a_pool_is_made_on_leaves_it_read_only(backend):
    pool = backend.pool(64 * MiB, 40960)
    assert pool.status() == (
        "0 131072 thin-pool 0 9/10 0/0 - ro discard_passdown queue_if_no_space needs_check 2 "
    )
    assert error_of(pool.create_thin, 0).errno == errno.EOPNOTSUPP


def test_a_store_file_is_removed_when_the_metadata_is_too_small_to_format(tmp_path):
    for size in (4096, 36864):
        e = error_of(ModelPool, GiB, size, store=str(tmp_path / "data"))
        assert e.errno in (errno.EINVAL, errno.ENOSPC)
        assert os.listdir(tmp_path) == []
