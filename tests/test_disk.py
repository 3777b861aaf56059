"""Metadata the model writes is dm-thin metadata: Debian's own thin_check accepts it, and
its thin_dump prints what the model's thin_dump prints."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from thinsim.backends.model import ModelPool
from thinsim.model.disk import bm_checksum, write_metadata
from thinsim.thin_dump import dump_xml

MiB, GiB, BLOCK = 1 << 20, 1 << 30, 64 << 10

needs_tools = pytest.mark.skipif(
    shutil.which("thin_check") is None and not os.environ.get("CI"),
    reason="thin-provisioning-tools is not installed (make test installs it)",
)


def test_checksums_are_the_kernels_crc32c_with_its_xor():
    # crc32c of "123456789" is 0xE3069283; the kernel's register is its complement
    assert bm_checksum(b"123456789", 0) == 0xE3069283 ^ 0xFFFFFFFF


def _busy_pool():
    pool = ModelPool(GiB, 4 * MiB, 128, 0, [], store="memory")
    pool.create_thin(0)
    thin = pool.activate(0, GiB)
    thin.write(0, b"x" * (300 * BLOCK))
    thin.write(900 * BLOCK, b"y" * 4096)
    pool.create_snap(1, 0)
    thin.write(0, b"z" * 512)
    pool.set_transaction_id(0, 5)
    for i in range(2, 140):  # more than a details-tree leaf holds
        pool.create_snap(i, 1)
    thin.discard(10 * BLOCK, 20 * BLOCK)
    pool.delete(7)
    pool.commit()
    return pool


def _tool(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@needs_tools
def test_debians_thin_check_passes_on_metadata_the_model_wrote(tmp_path):
    pool = _busy_pool()
    path = tmp_path / "meta"
    path.write_bytes(bytes(4 * MiB))
    write_metadata(pool.target.pmd, path)
    r = _tool("thin_check", str(path))
    assert r.returncode == 0, r.stderr
    r = _tool("thin_dump", str(path))
    assert r.stdout == "\n".join(dump_xml(pool.target.pmd)) + "\n"


@needs_tools
def test_debians_thin_dump_reads_the_held_metadata_snapshot_as_the_model_does(tmp_path):
    pool = _busy_pool()
    pool.reserve_metadata_snap()
    pool.activate(2, GiB).write(0, b"w" * BLOCK)
    pool.commit()
    path = tmp_path / "meta"
    path.write_bytes(bytes(4 * MiB))
    write_metadata(pool.target.pmd, path)
    assert _tool("thin_check", str(path)).returncode == 0
    r = _tool("thin_dump", "-m", str(path))
    assert r.stdout == "\n".join(dump_xml(pool.target.pmd, metadata_snap=True)) + "\n"


KERNEL_METADATA = os.path.join(os.path.dirname(__file__), "kernel", "metadata")


@pytest.mark.parametrize("name", ["basic", "held"])
def test_metadata_a_real_kernel_wrote_opens_in_the_model(name):
    """tests/kernel/metadata/make.sh made these on Debian's 6.1 kernel; NAME.xml is what
    Debian's thin_dump printed for them and NAME.status the pool's last status line."""
    from thinsim.model.disk import read_metadata

    md = os.path.join(KERNEL_METADATA, f"{name}.md")
    pmd = read_metadata(md)
    pmd._check()
    with open(os.path.join(KERNEL_METADATA, f"{name}.xml")) as f:
        assert "\n".join(dump_xml(pmd)) + "\n" == f.read()
    with open(os.path.join(KERNEL_METADATA, f"{name}.status")) as f:
        used, total = f.read().split()[4].split("/")
    assert int(used) == pmd.live_metadata_blocks() + pmd.metadata_reserve
    assert int(total) == pmd.metadata_dev_size()


@needs_tools
def test_a_pool_reopened_on_kernel_metadata_goes_on_and_stays_valid(tmp_path):
    from thinsim.model.disk import read_metadata
    from thinsim.model.pool import Pool, PoolTable

    md = tmp_path / "meta"
    md.write_bytes(Path(KERNEL_METADATA, "basic.md").read_bytes())
    pmd = read_metadata(md)
    table = PoolTable.parse(["7:0", "7:1", "128", "0"])
    pool = Pool(
        table, length_sectors=524288, metadata_bytes=2 * MiB, data_bytes=256 * MiB, metadata=pmd
    )
    pool.resume()
    pool.message("create_thin 500")
    pool.message("create_snap 501 0")
    from thinsim.model.thin import Thin

    thin = Thin(pool, 501, 524288)
    thin.write(0, b"q" * BLOCK)
    pool.commit()
    pmd._check()
    write_metadata(pmd, md)
    assert _tool("thin_check", str(md)).returncode == 0
    assert _tool("thin_dump", str(md)).stdout == "\n".join(dump_xml(pmd)) + "\n"
