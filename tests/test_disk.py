"""Metadata the model writes is dm-thin metadata: Debian's own thin_check accepts it, and
its thin_dump prints what the model's thin_dump prints."""

import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinsim.backends.model import ModelPool
from thinsim.model.disk import (
    MetadataDevice,
    bm_checksum,
    crc32c_raw,
    crc32c_raw_table,
    encode_node,
    encode_node_reference,
    parse_node,
    write_metadata,
)
from thinsim.thin_dump import dump_xml

MiB, GiB, BLOCK = 1 << 20, 1 << 30, 64 << 10

needs_tools = pytest.mark.skipif(
    shutil.which("thin_check") is None and not os.environ.get("CI"),
    reason="thin-provisioning-tools is not installed (make test installs it)",
)


def test_checksums_are_the_kernels_crc32c_with_its_xor():
    # crc32c of "123456789" is 0xE3069283; the kernel's register is its complement
    assert bm_checksum(b"123456789", 0) == 0xE3069283 ^ 0xFFFFFFFF


@given(st.binary(max_size=4096), st.integers(0, 0xFFFFFFFF))
def test_the_crc32c_in_c_is_the_kernels_byte_table(data, crc):
    assert crc32c_raw(data, crc) == crc32c_raw_table(data, crc)


_u64 = st.integers(0, (1 << 64) - 1)


@st.composite
def _nodes(draw):
    from array import array

    from thinsim.model.btree import Node, calc_max_entries

    leaf = draw(st.booleans())
    vsize = draw(st.sampled_from([8, 4, 24])) if leaf else 8
    max_entries = calc_max_entries(vsize)
    n = draw(st.integers(0, max_entries))
    keys = array("Q", sorted(draw(st.lists(_u64, min_size=n, max_size=n, unique=True))))
    if vsize == 24:
        u32 = st.integers(0, (1 << 32) - 1)
        values = draw(st.lists(st.tuples(_u64, _u64, u32, u32), min_size=n, max_size=n))
    else:
        value = _u64 if vsize == 8 else st.integers(0, (1 << 32) - 1)
        values = array("Q", draw(st.lists(value, min_size=n, max_size=n)))
    return Node(leaf, max_entries, vsize, keys, values)


@given(_nodes(), st.integers(0, (1 << 40) - 1))
def test_a_node_encoded_from_whole_arrays_is_the_one_packed_entry_by_entry(node, b):
    """The fast encoding writes exactly the bytes of the struct one, and reads back as the
    node it was."""
    data = encode_node(b, node)
    assert data == encode_node_reference(b, node)
    back = parse_node(data, b)
    assert (back.leaf, back.max_entries, back.keys) == (node.leaf, node.max_entries, node.keys)
    assert list(back.values) == list(node.values)


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
    """dev/kernel/make-metadata.sh made these on Debian's 6.1 kernel; NAME.xml is what
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


# -- a commit is atomic on disk ----------------------------------------------------------


class _DeviceFailingAt(MetadataDevice):
    """A metadata device whose block writes fail from the ``fail_at``-th on (0-based):
    what a writer killed there, or a disk gone bad there, leaves behind."""

    def __init__(self, path, fail_at: int) -> None:
        super().__init__(path)
        self.fail_at = fail_at
        self.writes = 0

    def pwrite(self, fd, data, offset):
        if self.writes >= self.fail_at:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.writes += 1
        return os.pwrite(fd, data, offset)

    def pwritev(self, fd, buffers, offset):
        """A run of blocks written a block at a time, stopping where a write fails:
        the bytes written before it (a short write), or the error at the first."""
        done = 0
        for data in buffers:
            try:
                done += self.pwrite(fd, data, offset + done)
            except OSError:
                if done:
                    return done
                raise
        return done


def _pool_with_a_transaction(path, fail_at=None):
    """A busy pool whose commits go to ``path``, with a transaction after the last that
    moves, shares and frees blocks; its commit fails from write ``fail_at`` on.  Returns
    (pool, what Debian's thin_dump prints for the commit on disk)."""
    pool = _busy_pool()
    pmd = pool.target.pmd
    pmd.tm.dirty = set()
    write_metadata(pmd, path)
    pmd.device = MetadataDevice(path)
    pool.create_snap(200, 3)
    pool.delete(9)
    thin = pool.activate(3, GiB)
    thin.write(5 * BLOCK, b"n" * BLOCK)
    thin.write(0, b"m" * (20 * BLOCK))
    pool.activate(0, GiB).discard(0, 40 * BLOCK)
    before = _tool("thin_dump", str(path)).stdout
    if fail_at is not None:
        pmd.device = _DeviceFailingAt(path, fail_at)
    return pool, before


@needs_tools
def test_a_commit_that_stops_at_any_write_leaves_the_last_commit_or_the_new_one(tmp_path):
    path = tmp_path / "meta"
    path.write_bytes(bytes(4 * MiB))
    pool, before = _pool_with_a_transaction(path)
    counted = _DeviceFailingAt(path, 1 << 30)
    pool.target.pmd.device = counted
    pool.commit()
    after = "\n".join(dump_xml(pool.target.pmd)) + "\n"
    assert after != before
    total = counted.writes
    seen = []
    for n in range(total + 1):
        path.write_bytes(bytes(4 * MiB))
        pool, _ = _pool_with_a_transaction(path, fail_at=n)
        pool.commit()
        r = _tool("thin_check", str(path))
        assert r.returncode == 0, (n, r.stderr)
        dumped = _tool("thin_dump", str(path)).stdout
        assert dumped in (before, after), n
        seen.append(dumped == after)
        if n < total:
            # the pool knows its commit failed: the kernel's metadata_operation_failed
            assert pool.target.status().split()[4] == "ro", n
    # the superblock is the last block written: every stop before it keeps the last commit
    assert seen == [False] * total + [True]


def _commit_in_a_child_killed_at(folder, md, n: int) -> int:
    """Run ``create_snap`` on the simulated host in a child process that SIGKILLs itself
    when it is about to make its ``n``-th write to the metadata file; its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        try:
            real = os.pwrite
            count = [0]

            def pwrite(fd, data, offset):
                if os.path.realpath(f"/proc/self/fd/{fd}") == str(md):
                    if count[0] == n:
                        os.kill(os.getpid(), signal.SIGKILL)
                    count[0] += 1
                return real(fd, data, offset)

            def pwritev(fd, buffers, offset):
                # a run of blocks, a write at a time: the kill may come in its middle
                done = 0
                for data in buffers:
                    done += pwrite(fd, data, offset + done)
                return done

            os.pwrite = pwrite
            os.pwritev = pwritev
            _host(folder, "dmsetup", "message", "pool", "0", "create_snap 7 0")
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def _host(folder, *argv):
    import io as _io

    from thinsim.host.state import open_host
    from thinsim.host.tools import COMMANDS, IO

    out = _io.StringIO()
    with open_host(folder) as state:
        status = COMMANDS[argv[0]](state, list(argv[1:]), IO(stdout=out, stderr=out))
    return status, out.getvalue()


@needs_tools
def test_a_host_command_killed_while_it_writes_metadata_leaves_a_valid_metadata_file(
    tmp_path, monkeypatch
):
    """SIGKILL at the first write, in the middle and at the last write of a commit."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    folder = tmp_path / "host"
    md, data = tmp_path / "meta", tmp_path / "data"
    md.write_bytes(b"")
    os.truncate(md, 4 * MiB)
    data.write_bytes(b"")
    os.truncate(data, GiB)
    assert _host(folder, "losetup", "-f", str(md))[0] == 0
    assert _host(folder, "losetup", "-f", str(data))[0] == 0
    table = "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 0"
    assert _host(folder, "dmsetup", "create", "pool", "--table", table)[0] == 0
    assert _host(folder, "dmsetup", "message", "pool", "0", "create_thin 0")[0] == 0
    thin = "0 2097152 thin /dev/mapper/pool 0"
    assert _host(folder, "dmsetup", "create", "thin", "--table", thin)[0] == 0
    for i in range(3):
        dd = ["dd", "if=/dev/urandom", "of=/dev/mapper/thin", "bs=64k", "count=40"]
        assert _host(folder, *dd, f"seek={i * 100}", "oflag=direct", "conv=fsync")[0] == 0
    before = _tool("thin_dump", str(md)).stdout
    assert 'dev_id="0"' in before
    dumps = []
    for n in range(200):  # until the child is not killed: it made fewer than n writes
        status = _commit_in_a_child_killed_at(folder, md, n)
        r = _tool("thin_check", str(md))
        assert r.returncode == 0, (n, r.stderr)
        dumps.append(_tool("thin_dump", str(md)).stdout)
        if not os.WIFSIGNALED(status):
            break
    after = dumps.pop()
    assert 'dev_id="7"' in after
    # every kill leaves the last commit; the superblock is the last write
    assert 3 < len(dumps) < 50
    assert dumps == [before] * len(dumps)
    assert _host(folder, "dmsetup", "message", "pool", "0", "create_snap 7 0")[0] == 1


def test_a_commit_on_a_big_pool_writes_only_the_blocks_it_changed(tmp_path):
    """1 TiB of data has 1,029 bitmaps: a commit of one new mapping writes the few blocks
    the copy-on-write metadata shadowed, and the superblock."""
    pool = ModelPool(1 << 40, 256 * MiB, 128, 0, [], store="accounting")
    pmd = pool.target.pmd
    pmd.tm.dirty = set()
    path = tmp_path / "meta"
    with open(path, "wb") as f:
        f.truncate(256 * MiB)
    pmd.device = counted = _DeviceFailingAt(path, 1 << 30)
    pool.create_thin(0)
    thin = pool.activate(0, 1 << 40)
    thin.write(0, b"x" * BLOCK)
    pool.commit()
    counted.writes = 0
    thin.write(700 * GiB, b"y" * BLOCK)
    pool.commit()
    assert len(pmd.data_sm.ll.bitmaps) == 1029
    assert counted.writes < 12
