"""The simulated host's util-linux and coreutils commands (losetup, blockdev, blkdiscard, dd)
print what Debian 12's print: each expected text below is from a real-host recording
(tests/host/recorded/NAME.out and .err)."""

import io
import os

import pytest

from thinsim.host.state import HostState
from thinsim.host.tools import IO
from thinsim.host.tools.blockdev import _init_blocksize, blkdiscard, blockdev
from thinsim.host.tools.dd import human
from thinsim.host.tools.getopt import NO, REQUIRED, GetoptError, Long, getopt_long
from thinsim.host.tools.losetup import _kernfs_name_hash, losetup

TRY = "Try 'losetup --help' for more information.\n"


def run(tool, state, *argv):
    out, err = io.StringIO(), io.StringIO()
    status = tool(state, list(argv), IO(io.StringIO(), out, err))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, size in (("a.img", 64 << 20), ("b.img", 32 << 20), ("odd.img", 1001000)):
        with open(name, "wb") as f:
            f.truncate(size)
    (tmp_path / "empty.img").touch()
    (tmp_path / "dir").mkdir()
    return tmp_path


def test_losetup_lists_twelve_devices_in_sys_block_order_not_numeric_order():
    # 02_losetup_list: `losetup -l -n -O NAME` with loop0..loop11 bound
    order = sorted(range(12), key=lambda n: (_kernfs_name_hash(f"loop{n}"), f"loop{n}"))
    assert order == [1, 8, 6, 4, 11, 2, 0, 9, 7, 5, 3, 10]


def test_losetup_find_gives_the_first_free_device_and_show_prints_it(files):
    state = HostState()
    assert run(losetup, state, "-f") == (0, "/dev/loop0\n", "")
    assert run(losetup, state, "-f", "--show", "a.img") == (0, "/dev/loop0\n", "")
    assert run(losetup, state, "-f") == (0, "/dev/loop1\n", "")


def test_losetup_list_prints_the_recorded_columns_and_nothing_when_no_device_is_bound(files):
    state = HostState()
    assert run(losetup, state, "-l") == (0, "", "")
    run(losetup, state, "-r", "-f", "--show", "b.img")
    status, out, _ = run(losetup, state, "-l")
    path = f"{files}/b.img"
    assert status == 0
    # 02_losetup_list: BACK-FILE is padded to the longest path, numbers are right-aligned
    assert out == (
        f"NAME       SIZELIMIT OFFSET AUTOCLEAR RO {'BACK-FILE'.ljust(len(path))} DIO LOG-SEC\n"
        f"/dev/loop0         0      0         0  1 {path}   0     512\n"
    )


def test_losetup_list_of_an_unbound_device_shows_an_empty_row(files):
    # 03_losetup_errors: `losetup -l /dev/loop3`
    status, out, err = run(losetup, HostState(), "-l", "/dev/loop3")
    assert (status, err) == (0, "")
    assert out == (
        "NAME       SIZELIMIT OFFSET AUTOCLEAR RO BACK-FILE DIO LOG-SEC\n"
        "/dev/loop3                          0  0             0     512\n"
    )


@pytest.mark.parametrize(
    "argv, err",
    [
        (
            ["-f", "--show", "missing.img"],
            "losetup: missing.img: failed to set up loop device: No such file or directory\n",
        ),
        (["-f", "--show", "dir"], "losetup: dir: failed to set up loop device: Is a directory\n"),
        (["-d", "/dev/loop3"], "losetup: /dev/loop3: detach failed: No such device or address\n"),
        (["-d", "/dev/loop99"], "losetup: /dev/loop99: failed to use device: No such device\n"),
        (
            ["-d"],
            "losetup: option requires an argument -- 'd'\n" + TRY,
        ),
        (
            ["-c", "/dev/loop3"],
            "losetup: /dev/loop3: set capacity failed: No such device or address\n",
        ),
        (["/dev/loop3"], "losetup: /dev/loop3: No such file or directory\n"),
        (["--show", "a.img"], "losetup: a.img: failed to use device: No such device\n"),
        (["-f", "a.img", "b.img"], "losetup: unexpected arguments\n"),
        (
            ["--bogus"],
            "losetup: unrecognized option '--bogus'\nTry 'losetup --help' for more information.\n",
        ),
        (
            ["-o", "junk", "-f", "a.img"],
            "losetup: failed to parse offset: 'junk': Invalid argument\n",
        ),
        (["-O", "NAME,BOGUS"], "losetup: unknown column: BOGUS\n"),
        (["--output-all"], "losetup: no loop device specified\n"),
    ],
)
def test_losetup_errors_print_the_recorded_text_and_exit_1(files, argv, err):
    assert run(losetup, HostState(), *argv) == (1, "", err)


def test_losetup_warns_about_an_empty_file_but_attaches_it(files):
    status, out, err = run(losetup, HostState(), "-f", "--show", "empty.img")
    assert (status, out) == (0, "/dev/loop0\n")
    assert err == (
        "losetup: empty.img: Warning: file is smaller than 512 bytes; the loop device may be "
        "useless or invisible for system tools.\n"
    )


def test_losetup_a_shows_offset_and_sizelimit(files):
    state = HostState()
    run(losetup, state, "-o", "4096", "--sizelimit", "1048576", "-f", "a.img")
    st = os.stat("a.img")
    assert run(losetup, state, "-a")[1] == (
        f"/dev/loop0: [{st.st_dev:04d}]:{st.st_ino} ({files}/a.img), offset 4096, "
        "sizelimit 1048576\n"
    )


def test_getopt_rejects_a_missing_argument_and_an_unknown_long_option():
    longopts = [Long("detach", REQUIRED, "d"), Long("detach-all", NO, "D")]
    with pytest.raises(GetoptError, match="option requires an argument -- 'd'"):
        list(getopt_long(["-d"], "d:D", longopts, []))
    with pytest.raises(GetoptError, match="unrecognized option '--bogus'"):
        list(getopt_long(["--bogus"], "d:D", longopts, []))


def test_the_block_size_of_a_device_is_the_largest_power_of_two_up_to_4096_dividing_it():
    # 14_blockdev: --getbsz of a 16 MiB loop device, a 1001000-byte file, a 409601-sector thin
    assert _init_blocksize(16 << 20) == 4096
    assert _init_blocksize(1955 * 512) == 512
    assert _init_blocksize(409601 * 512) == 512


def test_blockdev_errors_print_the_recorded_text(files):
    state = HostState()
    assert run(blockdev, state) == (
        1,
        "",
        "blockdev: not enough arguments\nTry 'blockdev --help' for more information.\n",
    )
    assert run(blockdev, state, "--getsize64")[2] == (
        "blockdev: no device specified\nTry 'blockdev --help' for more information.\n"
    )
    assert run(blockdev, state, "--getsize64", "a.img") == (
        1,
        "",
        "blockdev: ioctl error on BLKGETSIZE64: Inappropriate ioctl for device\n",
    )
    assert run(blockdev, state, "--bogus", "/dev/loop0")[2] == (
        "blockdev: Unknown command: --bogus\nTry 'blockdev --help' for more information.\n"
    )
    assert run(blockdev, state, "--getsize64", "/dev/loop5") == (0, "0\n", "")


def test_blockdev_verbose_names_each_result(files):
    state = HostState()
    run(losetup, state, "-f", "a.img")
    assert run(blockdev, state, "-v", "--getsize64", "--getss", "--flushbufs", "/dev/loop0") == (
        0,
        "get size in bytes: 67108864\nget logical block (sector) size: 512\n"
        + "flush buffers succeeded.\n",
        "",
    )


def test_blkdiscard_checks_alignment_and_the_device_size(files):
    state = HostState()
    run(losetup, state, "-f", "a.img")
    assert run(blkdiscard, state, "-o", "1000", "-l", "512", "/dev/loop0")[2] == (
        "blkdiscard: /dev/loop0: offset 1000 is not aligned to sector size 512\n"
    )
    assert run(blkdiscard, state, "-o", "512", "-l", "1000", "/dev/loop0")[2] == (
        "blkdiscard: /dev/loop0: length 1000 is not aligned to sector size 512\n"
    )
    assert run(blkdiscard, state, "-o", "100007936", "/dev/loop0")[2] == (
        "blkdiscard: /dev/loop0: offset is greater than device size\n"
    )
    assert run(blkdiscard, state, "-s", "/dev/loop0")[2] == (
        "blkdiscard: /dev/loop0: BLKSECDISCARD ioctl failed: Operation not supported\n"
    )
    assert run(blkdiscard, state, "a.img")[2] == "blkdiscard: a.img: not a block device\n"
    assert run(blkdiscard, state) == (1, "", "blkdiscard: no device specified\n")
    assert run(blkdiscard, state, "-v", "-o", "0", "-l", "2M", "/dev/loop0") == (
        0,
        "/dev/loop0: Discarded 2097152 bytes from the offset 0\n",
        "",
    )


@pytest.mark.parametrize(
    "n, si, iec",
    [
        (262144, "262 kB", "256 KiB"),
        (65536, "66 kB", "64 KiB"),
        (3000, "3.0 kB", "2.9 KiB"),
        (2097152, "2.1 MB", "2.0 MiB"),
        (10485760, "10 MB", "10 MiB"),
        (65011712, "65 MB", "62 MiB"),
        (1000, "1.0 kB", "1000 B"),
        (512, "512 B", "512 B"),
    ],
)
def test_dd_prints_byte_counts_rounded_as_gnulib_human_readable_does(n, si, iec):
    # 01_seed_loop, 15_dd_io: "N bytes (SI, IEC) copied"
    assert (human(n, 1000), human(n, 1024)) == (si, iec)
