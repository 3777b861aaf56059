"""The simulator's thin tools print what Debian's thin-provisioning-tools 0.9.0 prints.

Differential tests: the same command line runs through Debian's binaries and through
thinsim.thin_tools, on metadata the model wrote, metadata a real kernel wrote
(tests/kernel/metadata), metadata Debian's thin_restore wrote, and damaged copies of them;
stdout, stderr and the exit status must be identical, and so must every file the tools
write.  They need the real tools (``make test`` installs them; CI has them)."""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from thinsim.backends.model import ModelPool
from thinsim.model.disk import BTREE_CSUM_XOR, bm_checksum, write_metadata
from thinsim.thin_tools import Output, RealFiles, run_tool
from thinsim.thin_tools.common import _on_tmpfs
from thinsim.thin_tools.metadata import Superblock

MiB, GiB, BLOCK = 1 << 20, 1 << 30, 64 << 10
KERNEL_METADATA = Path(__file__).parent / "kernel" / "metadata"
# deeper trees, hundreds of thins, data shared three ways, a held snapshot:
# dev/thin_tools/make-metadata.sh ran in the VM on Debian's kernel
MORE_KERNEL_METADATA = Path(__file__).parent / "thin_tools_metadata"
KERNEL_MADE = ["deep", "many", "shared-held"]
HAVE_TOOLS = shutil.which("thin_check") is not None
pytestmark = pytest.mark.skipif(
    not HAVE_TOOLS and not os.environ.get("CI"),
    reason="Debian's thin-provisioning-tools are not installed (make test installs them)",
)


def real(cwd: Path, name: str, *argv: str):
    r = subprocess.run([name, *argv], cwd=cwd, capture_output=True, text=True, check=False)
    return r.stdout, r.stderr, r.returncode


def ours(cwd: Path, name: str, *argv: str):
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        rc = run_tool(name, list(argv), Output(out, err), RealFiles())
    finally:
        os.chdir(old)
    return out.getvalue(), err.getvalue(), rc


def agree(cwd: Path, name: str, *argv: str):
    want = real(cwd, name, *argv)
    got = ours(cwd, name, *argv)
    assert got == want, f"{name} {' '.join(argv)}"
    return got


# -- the metadata corpus -------------------------------------------------------------------


def _model_pool(md_bytes=4 * MiB):
    return ModelPool(GiB, md_bytes, 128, 0, [], store="memory")


def _busy(pool):
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
    return pool


def _scattered(pool):
    # thousands of scattered mappings: mapping trees several levels deep
    pool.create_thin(3)
    thin = pool.activate(3, GiB)
    r = random.Random(3)
    for b in r.sample(range(16000), 2500):
        thin.write(b * BLOCK, b"s" * 512)
    pool.create_snap(4, 3)
    for b in r.sample(range(16000), 300):
        thin.write(b * BLOCK, b"t" * 512)
    pool.create_thin(8)
    return pool


def _write(pool, path: Path, size: int) -> Path:
    pool.commit()
    path.write_bytes(b"")
    os.truncate(path, size)
    write_metadata(pool.target.pmd, path)
    return path


def _set_flags(path: Path, flags: int) -> None:
    data = bytearray(path.read_bytes()[:4096])
    sb = Superblock.unpack(bytes(data))
    sb.flags = flags
    with open(path, "r+b") as f:
        f.write(sb.pack())


def _reseal_node(path: Path, b: int, edit) -> None:
    with open(path, "r+b") as f:
        f.seek(b * 4096)
        block = bytearray(f.read(4096))
        edit(block)
        struct.pack_into("<I", block, 0, bm_checksum(bytes(block[4:]), BTREE_CSUM_XOR))
        f.seek(b * 4096)
        f.write(block)


def _set_md_count(path: Path, which: str, count: int) -> None:
    """Set a metadata block's count in the metadata space map's bitmap (resealed): a free
    block past the last used one, or the details root."""
    from thinsim.model.disk import BITMAP_CSUM_XOR
    from thinsim.thin_tools.check import MetadataSpaceMap
    from thinsim.thin_tools.open import open_bm

    bm = open_bm(RealFiles(), str(path), excl=False)
    sb = Superblock.unpack(bm.raw(0))
    sm = MetadataSpaceMap(bm, sb.metadata_space_map_root)
    counts = sm.counts()
    b = max(i for i, c in enumerate(counts) if c) + 5 if which == "free" else _node(path, which)
    bitmap = sm.entries[0]
    bm.handle.close()
    with open(path, "r+b") as f:
        f.seek(bitmap * 4096)
        data = bytearray(f.read(4096))
        hi, lo = 16 + (2 * b >> 3), 16 + ((2 * b + 1) >> 3)
        data[hi] = (data[hi] & ~(1 << (2 * b & 7))) | ((count >> 1) << (2 * b & 7))
        data[lo] = (data[lo] & ~(1 << ((2 * b + 1) & 7))) | ((count & 1) << ((2 * b + 1) & 7))
        struct.pack_into("<I", data, 0, bm_checksum(bytes(data[4:]), BITMAP_CSUM_XOR))
        f.seek(bitmap * 4096)
        f.write(data)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        c = f.read(1)
        f.seek(offset)
        f.write(bytes([c[0] ^ 0xFF]))


def _node(path: Path, which: str) -> int:
    """A block of the metadata: the details root, the mapping root, or the first mapping
    leaf below it."""
    sb = Superblock.unpack(path.read_bytes()[:4096])
    if which == "details":
        return sb.device_details_root
    if which == "top":
        return sb.data_mapping_root
    if which == "index":
        return struct.unpack_from("<Q", sb.metadata_space_map_root, 16)[0]
    data = path.read_bytes()
    top = data[sb.data_mapping_root * 4096 : (sb.data_mapping_root + 1) * 4096]
    mx = struct.unpack_from("<I", top, 20)[0]
    while struct.unpack_from("<I", top, 4)[0] & 1:
        child = struct.unpack_from("<Q", top, 32 + 8 * mx)[0]
        top = data[child * 4096 : (child + 1) * 4096]
        mx = struct.unpack_from("<I", top, 20)[0]
    return struct.unpack_from("<Q", top, 32 + 8 * mx)[0]


@pytest.fixture(scope="module")
def corpus():
    """A folder of metadata files, on a file system that takes O_DIRECT."""
    base = tempfile.mkdtemp(prefix="thin-tools-")
    if _on_tmpfs(base):
        shutil.rmtree(base)
        base = tempfile.mkdtemp(prefix=".thin-tools-", dir=Path(__file__).parent)
    d = Path(base)
    _write(_busy(_model_pool()), d / "busy.md", 4 * MiB)
    pool = _busy(_model_pool())
    pool.reserve_metadata_snap()
    pool.activate(2, GiB).write(0, b"w" * BLOCK)
    _write(pool, d / "held.md", 4 * MiB)
    _write(_scattered(_model_pool(8 * MiB)), d / "scattered.md", 8 * MiB)
    for name in ("basic", "held"):
        shutil.copy(KERNEL_METADATA / f"{name}.md", d / f"kernel-{name}.md")
    for name in KERNEL_MADE:
        shutil.copy(MORE_KERNEL_METADATA / f"{name}.md", d / f"kernel-{name}.md")
    shutil.copy(d / "busy.md", d / "needs-check.md")
    _set_flags(d / "needs-check.md", 1)
    (d / "zero.md").write_bytes(bytes(4 * MiB))
    (d / "small.md").write_bytes(bytes(2048))
    (d / "empty.md").write_bytes(b"")
    # damage, each kind the checkers know
    damage = {
        "sb-csum": lambda p: _flip(p, 100),
        "details-csum": lambda p: _flip(p, _node(p, "details") * 4096 + 200),
        "top-csum": lambda p: _flip(p, _node(p, "top") * 4096 + 200),
        "leaf-csum": lambda p: _flip(p, _node(p, "leaf") * 4096 + 300),
        "index-csum": lambda p: _flip(p, _node(p, "index") * 4096 + 40),
        "leaf-blocknr": lambda p: _reseal_node(
            p, _node(p, "leaf"), lambda b: struct.pack_into("<Q", b, 8, 3)
        ),
        "leaf-order": lambda p: _reseal_node(
            p, _node(p, "leaf"), lambda b: struct.pack_into("<QQ", b, 32, 9, 9)
        ),
        "leaf-too-many": lambda p: _reseal_node(
            p, _node(p, "leaf"), lambda b: struct.pack_into("<I", b, 16, 400)
        ),
        "leaf-value-size": lambda p: _reseal_node(
            p, _node(p, "leaf"), lambda b: struct.pack_into("<I", b, 24, 16)
        ),
        "leaf-max": lambda p: _reseal_node(
            p, _node(p, "leaf"), lambda b: struct.pack_into("<I", b, 20, 250)
        ),
        "leaf-type": lambda p: _reseal_node(
            p, _node(p, "leaf"), lambda b: struct.pack_into("<I", b, 4, 0)
        ),
        "details-few": lambda p: _reseal_node(
            p, _node(p, "details"), lambda b: struct.pack_into("<I", b, 16, 1)
        ),
        "leak-1": lambda p: _set_md_count(p, "free", 1),
        "leak-2": lambda p: _set_md_count(p, "free", 2),
        "overcount": lambda p: _set_md_count(p, "details", 2),
        "undercount": lambda p: _set_md_count(p, "details", 0),
        "top-out-of-range": lambda p: _reseal_node(
            p, _node(p, "top"), lambda b: struct.pack_into("<Q", b, 32 + 8 * 252, 1 << 40)
        ),
    }
    for name, spoil in damage.items():
        for src in ("busy", "scattered"):
            path = d / f"{src}-{name}.md"
            shutil.copy(d / f"{src}.md", path)
            spoil(path)
    (d / "dump.xml").write_text(real(d, "thin_dump", "busy.md")[0])
    shutil.copy(d / "dump.xml", d / "xml.md")  # thin_check knows XML when it sees it
    yield d
    shutil.rmtree(d, ignore_errors=True)


GOOD = ["busy", "held", "scattered", "kernel-basic", "kernel-held", "needs-check"] + [
    f"kernel-{name}" for name in KERNEL_MADE
]
DAMAGED = [
    f"{src}-{name}"
    for src in ("busy", "scattered")
    for name in [
        "sb-csum",
        "details-csum",
        "top-csum",
        "leaf-csum",
        "index-csum",
        "leaf-blocknr",
        "leaf-order",
        "leaf-too-many",
        "leaf-value-size",
        "leaf-max",
        "leaf-type",
        "details-few",
        "top-out-of-range",
        "leak-1",
        "leak-2",
        "overcount",
        "undercount",
    ]
]
BROKEN = ["zero", "small", "empty", "missing", ".", "xml"]


def _path(name: str) -> str:
    return name if name in (".",) else f"{name}.md"


# -- thin_check ----------------------------------------------------------------------------

CHECK_OPTIONS = [
    [],
    ["-q"],
    ["--super-block-only"],
    ["--skip-mappings"],
    ["--ignore-non-fatal-errors"],
    ["-m"],
    ["--metadata-snap", "-q"],
    ["--override-mapping-root", "1"],
    ["--clear-needs-check-flag", "-m"],
    ["--auto-repair", "--skip-mappings"],
    ["--clear-needs-check-flag", "--ignore-non-fatal-errors"],
]


@pytest.mark.parametrize("opts", CHECK_OPTIONS, ids=" ".join)
@pytest.mark.parametrize("name", GOOD + DAMAGED + BROKEN)
def test_thin_check_says_what_debians_says(corpus, name, opts):
    agree(corpus, "thin_check", *opts, _path(name))


@pytest.mark.parametrize("fix", ["--clear-needs-check-flag", "--auto-repair"])
@pytest.mark.parametrize(
    "name",
    GOOD
    + ["busy-leaf-csum", "zero"]
    + [f"{src}-{d}" for src in ("busy", "scattered") for d in ("leak-1", "leak-2", "overcount")],
)
def test_thin_check_repairs_what_debians_repairs(corpus, name, fix):
    for who in ("real", "ours"):
        shutil.copy(corpus / _path(name), corpus / f"{who}-clear.md")
    want = real(corpus, "thin_check", fix, "real-clear.md")
    got = ours(corpus, "thin_check", fix, "ours-clear.md")
    assert got == want
    assert (corpus / "ours-clear.md").read_bytes() == (corpus / "real-clear.md").read_bytes()


# -- thin_dump ------------------------------------------------------------------------------

DUMP_OPTIONS = [
    [],
    ["-f", "human_readable"],
    ["--format=xml"],
    ["--skip-mappings"],
    ["--dev-id", "1"],
    ["--dev-id", "3", "--dev-id", "140", "-fhuman_readable"],
    ["-r"],
    ["-m"],
    ["--metadata-snap", "--skip-mappings"],
    ["-m5"],
    ["--transaction-id", "9", "--nr-data-blocks", "77"],
    ["--data-block-size", "x"],
    ["-f", "custom"],
    ["--dev-id", "x"],
    ["-mjunk"],
]


@pytest.mark.parametrize("opts", DUMP_OPTIONS, ids=" ".join)
@pytest.mark.parametrize("name", GOOD + DAMAGED + BROKEN)
def test_thin_dump_prints_what_debians_prints(corpus, name, opts):
    agree(corpus, "thin_dump", *opts, _path(name))


@pytest.mark.parametrize("name", ["held", "kernel-held", "kernel-shared-held"])
def test_thin_dump_through_the_named_snapshot_block_is_debians(corpus, name):
    snap = Superblock.unpack((corpus / _path(name)).read_bytes()[:4096]).metadata_snap
    agree(corpus, "thin_dump", f"-m{snap}", _path(name))
    agree(corpus, "thin_dump", f"--metadata-snap={snap + 1}", _path(name))


def test_thin_dump_writes_its_output_file_as_debians_does(corpus):
    assert ours(corpus, "thin_dump", "-o", "ours.xml", "busy.md") == real(
        corpus, "thin_dump", "-o", "real.xml", "busy.md"
    )
    assert (corpus / "ours.xml").read_text() == (corpus / "real.xml").read_text()


# -- thin_ls --------------------------------------------------------------------------------

LS_OPTIONS = [
    [],
    ["--no-headers"],
    ["-m"],
    ["-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS"],
    ["-o", "EXCLUSIVE_SECTORS,SHARED_SECTORS,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES"],
    ["--format", "MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME", "--no-headers"],
    ["-o", "DEV,"],
    ["-o", "DEV,,MAPPED"],
    ["-o", "dev"],
]


@pytest.mark.parametrize("opts", LS_OPTIONS, ids=" ".join)
@pytest.mark.parametrize("name", GOOD + DAMAGED + BROKEN)
def test_thin_ls_prints_debians_table(corpus, name, opts):
    agree(corpus, "thin_ls", *opts, _path(name))


# -- thin_delta -----------------------------------------------------------------------------

DELTA_PAIRS = [("0", "1"), ("1", "0"), ("3", "4"), ("4", "3"), ("0", "0"), ("2", "9999"),
               ("8", "3"), ("140", "2"), ("-1", "0"), ("+3", "4"), ("7", "10"), ("9", "8"), ("2", "1")]  # fmt: skip


@pytest.mark.parametrize("verbose", [[], ["--verbose"]], ids=["", "verbose"])
@pytest.mark.parametrize("pair", DELTA_PAIRS, ids="-".join)
@pytest.mark.parametrize("name", GOOD + ["busy-leaf-csum", "scattered-leaf-order", "zero"])
def test_thin_delta_prints_debians_differences(corpus, name, pair, verbose):
    agree(corpus, "thin_delta", *verbose, "--snap1", pair[0], "--thin2", pair[1], _path(name))


@pytest.mark.parametrize("name", ["held", "kernel-held", "busy", "kernel-shared-held"])
def test_thin_delta_through_the_metadata_snapshot_is_debians(corpus, name):
    agree(corpus, "thin_delta", "-m", "--snap1", "0", "--snap2", "1", _path(name))
    agree(corpus, "thin_delta", "-m7", "--snap1", "3", "--snap2", "3", _path(name))


# -- thin_restore and thin_repair -----------------------------------------------------------


def _random_xml(seed: int, ndev: int, nmap: int, nr_data: int, version: bool = True) -> str:
    r = random.Random(seed)
    out = [
        (
            f'<superblock uuid="u{seed}" time="{r.randint(0, 9)}" transaction="{r.randint(0, 99)}" '
            f'flags="{r.randint(0, 1)}"{" version=" + chr(34) + "2" + chr(34) if version else ""} '
            f'data_block_size="128" nr_data_blocks="{nr_data}">'
        )
    ]
    for d in sorted(r.sample(range(1000), ndev)):
        keys = sorted(r.sample(range(nmap * 4 + 10), r.randint(0, nmap)))
        out.append(f'  <device dev_id="{d}" mapped_blocks="0" transaction="{r.randint(0, 5)}" '
                   f'creation_time="{r.randint(0, 5)}" snap_time="{r.randint(0, 5)}">')  # fmt: skip
        for k in keys:
            data = r.randrange(min(nr_data, 3 * nmap + 5))
            if r.random() < 0.2:
                out.append(f'    <range_mapping origin_begin="{k * 8}" data_begin="{data}" '
                           f'length="3" time="{r.randint(0, 3)}"/>')  # fmt: skip
            else:
                out.append(f'    <single_mapping origin_block="{k * 8}" data_block="{data}" '
                           f'time="{r.randint(0, 3)}"/>')  # fmt: skip
        out.append("  </device>")
    out.append("</superblock>")
    return "\n".join(out) + "\n"


RESTORE_INPUTS = {
    "one-device": (1, 1, 5, 100),
    "snapshots": (2, 3, 300, 16384),
    "splits": (3, 40, 600, 100000),
    "many-devices": (4, 300, 20, 50000),
    "deep": (5, 2, 5000, 40000),
    "many-bitmaps": (6, 5, 50, 3000000),
    "no-version": (7, 4, 30, 1000),
}


@pytest.mark.parametrize("case", list(RESTORE_INPUTS))
def test_thin_restore_writes_the_file_debians_writes(corpus, case):
    seed, ndev, nmap, nr_data = RESTORE_INPUTS[case]
    (corpus / f"{case}.xml").write_text(
        _random_xml(seed, ndev, nmap, nr_data, case != "no-version")
    )
    for who in ("real", "ours"):
        (corpus / f"{who}-{case}.img").write_bytes(b"")
        os.truncate(corpus / f"{who}-{case}.img", 80 * MiB)
    want = real(corpus, "thin_restore", "-i", f"{case}.xml", "-o", f"real-{case}.img")
    got = ours(corpus, "thin_restore", "-i", f"{case}.xml", "-o", f"ours-{case}.img")
    assert got == want
    assert (corpus / f"ours-{case}.img").read_bytes() == (corpus / f"real-{case}.img").read_bytes()
    # and the other way: Debian's tools read what ours wrote as what they wrote
    assert real(corpus, "thin_check", f"ours-{case}.img")[2] == 0
    assert real(corpus, "thin_dump", f"ours-{case}.img") == real(
        corpus, "thin_dump", f"real-{case}.img"
    )


BAD_XML = {
    "broken": "<superblock>\n",
    "junk": "not xml at all\n",
    "unclosed": '<superblock uuid="" time="1" transaction="1" data_block_size="128" '
    'nr_data_blocks="10">\n',
    "beyond": '<superblock uuid="" time="1" transaction="1" data_block_size="128" '
    'nr_data_blocks="10"><device dev_id="1" mapped_blocks="0" transaction="0" '
    'creation_time="0" snap_time="0"><single_mapping origin_block="0" data_block="10" '
    'time="0"/></device></superblock>\n',
    "twice": '<superblock uuid="" time="1" transaction="1" data_block_size="128" '
    'nr_data_blocks="10"><device dev_id="1" mapped_blocks="0" transaction="0" '
    'creation_time="0" snap_time="0"/><device dev_id="1" mapped_blocks="0" transaction="0" '
    'creation_time="0" snap_time="0"/></superblock>\n',
    "bad-number": '<superblock uuid="" time="x" transaction="1" data_block_size="128" '
    'nr_data_blocks="10"/>\n',
    "negative": '<superblock uuid="" time="1" transaction="-1" data_block_size="-1" '
    'nr_data_blocks="10"/>\n',
    "unknown-tag": '<superblock uuid="" time="1" transaction="1" data_block_size="128" '
    'nr_data_blocks="10"><thing/></superblock>\n',
    "no-superblock": '<device dev_id="1" mapped_blocks="0" transaction="0" '
    'creation_time="0" snap_time="0"/>\n',
    "empty": "",
}


@pytest.mark.parametrize("case", list(BAD_XML))
def test_thin_restore_refuses_bad_xml_as_debians_does(corpus, case):
    (corpus / f"bad-{case}.xml").write_text(BAD_XML[case])
    for who in ("real", "ours"):
        shutil.copy(corpus / "busy.md", corpus / f"{who}-bad.img")
    want = real(corpus, "thin_restore", "-i", f"bad-{case}.xml", "-o", "real-bad.img")
    got = ours(corpus, "thin_restore", "-i", f"bad-{case}.xml", "-o", "ours-bad.img")
    assert got == want
    assert (corpus / "ours-bad.img").read_bytes() == (corpus / "real-bad.img").read_bytes()


RESTORE_ARGS = [
    [],
    ["-i", "dump.xml"],
    ["-o", "target.img"],
    ["-i", "missing.xml", "-o", "target.img"],
    ["-i", "dump.xml", "-o", "missing.img"],
    ["-i", "dump.xml", "-o", "tiny.img"],
    ["-i", "dump.xml", "-o", "empty.md"],
    ["-i", "dump.xml", "-o", "target.img", "extra"],
    ["-i", "dump.xml", "-o", "target.img", "--transaction-id", "x"],
    ["-h"],
    ["-V"],
    ["--bogus"],
    ["--inp", "dump.xml", "--out", "target.img", "-q"],
    ["-i"],
]


@pytest.mark.parametrize("args", RESTORE_ARGS, ids=" ".join)
def test_thin_restore_command_line_is_debians(corpus, args):
    (corpus / "tiny.img").write_bytes(bytes(8192))
    (corpus / "target.img").write_bytes(bytes(4 * MiB))
    want = real(corpus, "thin_restore", *args)
    target = (corpus / "target.img").read_bytes()
    (corpus / "target.img").write_bytes(bytes(4 * MiB))
    assert ours(corpus, "thin_restore", *args) == want
    assert (corpus / "target.img").read_bytes() == target


@pytest.mark.parametrize(
    "name",
    GOOD
    + ["zero", "missing", "small"]
    + [
        f"{src}-{d}"
        for src in ("busy", "scattered")
        for d in ("sb-csum", "details-csum", "top-csum", "leaf-csum")
    ],
)
@pytest.mark.parametrize("opts", [[], ["--transaction-id", "4", "--data-block-size", "128",
                                       "--nr-data-blocks", "9000"]], ids=["", "overrides"])  # fmt: skip
def test_thin_repair_writes_what_debians_writes(corpus, name, opts):
    for who in ("real", "ours"):
        (corpus / f"{who}-repaired.img").write_bytes(bytes(8 * MiB))
    want = real(corpus, "thin_repair", *opts, "-i", _path(name), "-o", "real-repaired.img")
    got = ours(corpus, "thin_repair", *opts, "-i", _path(name), "-o", "ours-repaired.img")
    assert got == want
    assert (corpus / "ours-repaired.img").read_bytes() == (
        corpus / "real-repaired.img"
    ).read_bytes()


@pytest.mark.parametrize("args", [[], ["-i", "busy.md"], ["-o", "x.img"], ["-h"], ["-V"],
                                  ["--bogus"], ["-i", "busy.md", "-o", "missing.img"]],
                         ids=" ".join)  # fmt: skip
def test_thin_repair_command_line_is_debians(corpus, args):
    agree(corpus, "thin_repair", *args)


# -- command lines --------------------------------------------------------------------------

USAGE_CASES = [
    ("thin_check", []),
    ("thin_check", ["-h"]),
    ("thin_check", ["--version"]),
    ("thin_check", ["-x", "busy.md"]),
    ("thin_check", ["--quie", "busy.md"]),
    ("thin_check", ["--override-mapping-root"]),
    ("thin_check", ["--override-mapping-root", "x", "busy.md"]),
    ("thin_check", ["-q"]),
    ("thin_check", ["busy.md", "--super"]),
    ("thin_check", ["--s", "busy.md"]),
    ("thin_dump", []),
    ("thin_dump", ["-h", "--bogus"]),
    ("thin_dump", ["--bogus", "-h"]),
    ("thin_dump", ["--format"]),
    ("thin_dump", ["-f"]),
    ("thin_dump", ["--help=yes"]),
    ("thin_dump", ["-V"]),
    ("thin_dump", ["--", "busy.md"]),
    ("thin_dump", ["-m", "1", "busy.md"]),
    ("thin_dump", ["--skip", "busy.md", "--dev", "0"]),
    ("thin_ls", []),
    ("thin_ls", ["-h"]),
    ("thin_ls", ["-V"]),
    ("thin_ls", ["--no"]),
    ("thin_ls", ["-o"]),
    ("thin_delta", []),
    ("thin_delta", ["-h"]),
    ("thin_delta", ["--snap", "1", "busy.md"]),
    ("thin_delta", ["--snap1", "0"]),
    ("thin_delta", ["--snap1", "0", "busy.md"]),
    ("thin_delta", ["--snap1", "x", "--snap2", "0", "busy.md"]),
    ("thin_delta", ["--snap1=0", "--snap2=1", "-m", "busy.md"]),
    ("thin_delta", ["--snap1", "0", "--snap2", "1", "-mx", "busy.md"]),
    ("thin_delta", ["--snap1", "0", "--snap2", "1", "missing.md"]),
    ("thin_delta", ["--verbose=1", "busy.md"]),
]


@pytest.mark.parametrize("case", USAGE_CASES, ids=lambda c: f"{c[0]} {' '.join(c[1])}")
def test_usage_and_option_errors_are_debians(corpus, case):
    agree(corpus, case[0], *case[1])


SIZES = []
for b in (
    "64k",
    "128s",
    "1m",
    "2g",
    "96k",
    "64K",
    "65536b",
    "junk",
    "64",
    "0",
    "4096kibibytes",
    "64ki",
    "1kilo",
):
    for s in ("100G", "1T", "209715200s", "1k", "10g", "-1G", "16T", "1p", "5zebibytes"):
        SIZES.append(["-b", b, "-s", s, "-m", "1000"])
for u in "bskKmMgGtTpPeEzZyYx":
    SIZES.append(["-b", "64k", "-s", "100G", "-m", "10", "-u", u])
    SIZES.append(["-b", "64k", "-s", "100G", "-m", "10", "-n", "-u", u])
SIZES += [
    ["-b", "64k", "-s", "100G", "-m", "1k"],
    ["-b", "64k", "-s", "100G", "-m", "10", "-nshort"],
    ["-b", "64k", "-s", "100G", "-m", "10", "--numeric-only=long", "-u", "k"],
    ["-b", "64k", "-s", "100G", "-m", "10", "-nlo"],
    ["-b", "64k", "-s", "100G", "-m", "10", "-nx"],
    ["-b", "64k", "-s", "100G", "-m", "10", "-n", "-n"],
    ["-b", "64k", "-b", "64k"],
    ["-u", "k", "-b", "64", "-s", "100G", "-m", "10"],
    ["-u", "", "-b", "64k", "-s", "100G", "-m", "10"],
    ["-u", "mebi", "-b", "64k", "-s", "100G", "-m", "10"],
    ["--block=64k", "--pool=1g", "--max=5"],
    ["-b", "64k", "-s", "100G", "-m", "10", "extra"],
    ["-b"],
    ["-h"],
    ["-x"],
]


@pytest.mark.parametrize("args", SIZES, ids=" ".join)
def test_thin_metadata_size_is_debians(corpus, args):
    agree(corpus, "thin_metadata_size", *args)


def test_the_corpus_is_on_a_file_system_that_takes_o_direct(corpus):
    # the real tools open with O_DIRECT, which Debian 12's tmpfs refuses
    assert not _on_tmpfs(str(corpus))
    assert stat.S_ISREG(os.stat(corpus / "busy.md").st_mode)


@pytest.mark.parametrize("name", KERNEL_MADE)
def test_the_model_opens_what_a_kernel_wrote_as_debians_thin_dump_reads_it(corpus, name):
    from thinsim.model.disk import read_metadata
    from thinsim.thin_dump import dump_xml

    pmd = read_metadata(corpus / f"kernel-{name}.md")
    pmd._check()
    assert "\n".join(dump_xml(pmd)) + "\n" == real(corpus, "thin_dump", f"kernel-{name}.md")[0]
    used, total = (MORE_KERNEL_METADATA / f"{name}.status").read_text().split()[4].split("/")
    assert int(used) == pmd.live_metadata_blocks() + pmd.metadata_reserve
    assert int(total) == pmd.metadata_dev_size()
