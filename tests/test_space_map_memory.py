"""Memory follows what a pool uses, not the size of its devices (issue 11).

The kernel keeps reference counts on disk, in bitmap blocks of 16,320 entries read through
the block manager, and reads metadata blocks as it needs them; the model keeps a bitmap's
entries only once one of them is non-zero and opens existing metadata a block at a time.
The limits are checked in a subprocess under an address-space limit (RLIMIT_AS), so a
regression fails with MemoryError instead of swapping the machine.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40


def _run_limited(code: str, limit: int) -> str:
    """Run ``code`` in a fresh interpreter whose address space is capped at ``limit``
    bytes; returns its stdout (the test fails with its stderr when it fails)."""
    prologue = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_a_pool_of_a_pebibyte_of_data_is_created_written_far_apart_and_reports_its_status():
    out = _run_limited(
        """
        from thinsim.backends.model import ModelPool
        PiB, BLOCK = 1 << 50, 64 << 10
        pool = ModelPool(PiB, 16 << 30)
        print(pool.status())
        pool.message("create_thin 0")
        thin = pool.activate(0, PiB)
        offsets = [PiB - BLOCK, 0, 1 << 40, (1 << 49) + 12345 * BLOCK]
        for off in offsets:
            thin.write(off, b"x" * 4096)
        pmd = pool.target.pmd
        td = pmd.devices[0]
        print([pmd.lookup(td, off // BLOCK)[0] for off in offsets])
        print(pool.status())
        pool.target.pmd._check()
        """,
        GiB,
    )
    created, landed, status = out.splitlines()
    # 2^34 data blocks take 1,052,689 bitmaps, each a metadata block, and an index btree
    # over them; what they take is counted, as the kernel counts it at pool_ctr
    PiB = 1 << 50
    blocks = PiB // (64 << 10)
    assert created.split()[:4] == ["0", str(PiB // 512), "thin-pool", "0"]
    used_md, total_md = map(int, created.split()[4].split("/"))
    assert total_md == 255 * 16320  # DM_SM_METADATA_MAX_BLOCKS: 16 GiB is past it
    assert used_md > -(-blocks // 16320)
    assert created.split()[5] == f"0/{blocks}"
    # next fit from the start of the data device, whatever the virtual offset
    assert landed == "[0, 1, 2, 3]"
    assert status.split()[5] == f"4/{blocks}"


def test_a_mostly_empty_pool_of_15_tib_pickles_small_and_runs_in_a_small_address_space():
    out = _run_limited(
        """
        import pickle
        from thinsim.backends.model import ModelPool
        size = 15 << 40
        pool = ModelPool(size, 16 << 30)
        pool.message("create_thin 0")
        thin = pool.activate(0, size)
        for i in range(64):
            thin.write(i * (size // 64), b"y" * 4096)
        pool.commit()
        print(len(pickle.dumps(pool.target)))
        print(pool.status())
        """,
        GiB,
    )
    pickled, status = out.splitlines()
    # the old byte a data block took 252 MB for these 251,658,240 blocks
    assert int(pickled) < 2 * MiB
    assert status.split()[5] == f"64/{(15 << 40) // (64 << 10)}"


def _write_sparse_metadata(path: Path, md_size: int) -> str:
    """Metadata of a pool on a ``md_size`` metadata device with a few thins, written by
    the model into a sparse file of that size; returns the pool's status."""
    from thinsim.backends.model import ModelPool
    from thinsim.model.disk import write_metadata

    pool = ModelPool(100 * GiB, md_size)
    for dev in range(5):
        pool.message(f"create_thin {dev}")
        thin = pool.activate(dev, 10 * GiB)
        for i in range(0, 2000, 7):
            thin.write(i * (64 << 10), b"z" * 4096)
    pool.message("create_snap 9 0")
    pool.commit()
    with open(path, "wb") as f:
        f.truncate(md_size)
    write_metadata(pool.target.pmd, path)
    return pool.status()


def test_a_pool_reopened_on_a_2_gib_metadata_file_reads_only_the_blocks_in_use(tmp_path):
    path = tmp_path / "tmeta"
    status = _write_sparse_metadata(path, 2 * GiB)
    out = _run_limited(
        f"""
        from thinsim.model.disk import read_metadata
        from thinsim.model.pool import Pool, PoolTable
        pmd = read_metadata({str(path)!r})
        pmd._check()
        table = PoolTable.parse(["7:0", "7:1", "128", "0"])
        pool = Pool(
            table, length_sectors={100 * GiB // 512}, metadata_bytes={2 * GiB},
            data_bytes={100 * GiB}, metadata=pmd,
        )
        pool.resume()
        print(pool.status())
        """,
        GiB,
    )
    # the same counts as the pool that wrote it (a re-opened pool's status: pool_ctr)
    assert out.strip() == status.split(" ", 3)[3].strip()
