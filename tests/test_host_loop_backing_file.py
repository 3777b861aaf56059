"""A simulated loop device holds its backing file open, as loop.c's lo_backing_file does: its
name follows a rename and reads " (deleted)" after an unlink, and its I/O (data and a pool's
metadata) goes to that file, never to a new file of the same name.  And a simulated command
that runs another one (dmsetup --exec) never waits for itself.  The texts are from
tests/host/recorded/31_loop_backing_file."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from thinsim.errors import ThinsimError
from thinsim.host.run import this_thinsim
from thinsim.host.state import HostState
from thinsim.host.tools import IO
from thinsim.host.tools.losetup import losetup
from thinsim.model import blockio, loopfile


def run(tool, state, *argv):
    out, err = io.StringIO(), io.StringIO()
    status = tool(state, list(argv), IO(io.StringIO(), out, err))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def host(tmp_path, monkeypatch):
    """An in-process host (this process holds the files) with loop0 on a.img (1 MiB)."""
    monkeypatch.delenv("THINSIM_HOST", raising=False)
    monkeypatch.chdir(tmp_path)
    Path("a.img").write_bytes(bytes(1 << 20))
    state = HostState()
    assert run(losetup, state, "-f", "--show", "a.img") == (0, "/dev/loop0\n", "")
    return state


def listing(state) -> str:
    loop = state.loops[0]
    return f"/dev/loop0: [{loop.device:04d}]:{loop.inode} ({os.getcwd()}/"


def test_after_mv_the_loop_device_is_named_after_the_file_and_writes_go_to_it(host):
    os.rename("a.img", "b.img")
    assert run(losetup, host, "-a") == (0, listing(host) + "b.img)\n", "")
    assert run(losetup, host, "-j", "b.img")[1] == listing(host) + "b.img)\n"
    blockio.write(host, host.loops[0], 4096, b"moved")
    assert Path("b.img").read_bytes()[4096:4101] == b"moved"
    assert not Path("a.img").exists()


def test_after_rm_the_loop_device_reads_and_writes_its_deleted_file(host):
    blockio.write(host, host.loops[0], 0, b"before")
    os.unlink("a.img")
    assert run(losetup, host, "-a") == (0, listing(host) + "a.img (deleted))\n", "")
    assert blockio.read(host, host.loops[0], 0, 6) == b"before"
    # a new file of the same name is another file: the device never touches it
    Path("a.img").write_bytes(bytes(1 << 20))
    blockio.write(host, host.loops[0], 512, b"after")
    assert blockio.read(host, host.loops[0], 512, 5) == b"after"
    assert Path("a.img").read_bytes() == bytes(1 << 20)
    assert run(losetup, host, "-j", "a.img") == (0, "", "")
    assert run(losetup, host, "-l", "--raw", "-O", "NAME,BACK-FILE")[1].endswith(
        "/a.img\\x20(deleted)\n"
    )


def test_set_capacity_takes_the_size_of_the_file_the_device_holds(host):
    os.rename("a.img", "b.img")
    os.truncate("b.img", 2 << 20)
    Path("a.img").write_bytes(bytes(4 << 20))
    assert run(losetup, host, "-c", "/dev/loop0") == (0, "", "")
    assert host.loops[0].size == 2 << 20


def test_detach_closes_the_file_the_device_held(host):
    fd = host.loops[0].holder_fd
    assert run(losetup, host, "-d", "/dev/loop0") == (0, "", "")
    with pytest.raises(OSError):
        os.fstat(fd)


def lose_holder(loop) -> None:
    """The holder is gone (a host folder opened again after its run ended)."""
    os.close(loop.holder_fd)
    loopfile._local.pop(loop.holder_fd)


def test_without_its_holder_a_loop_device_takes_its_file_back_by_name_if_it_is_the_same(host):
    loop = host.loops[0]
    lose_holder(loop)
    assert run(losetup, host, "-a")[1] == listing(host) + "a.img)\n"
    blockio.write(host, loop, 0, b"same file")
    assert Path("a.img").read_bytes()[:9] == b"same file"
    os.rename("a.img", "b.img")  # held again: the device follows the file from now on
    assert run(losetup, host, "-a")[1] == listing(host) + "b.img)\n"
    assert blockio.read(host, loop, 0, 9) == b"same file"


def test_without_its_holder_a_loop_device_whose_name_is_another_file_fails_with_eio(host):
    loop = host.loops[0]
    lose_holder(loop)
    Path("new.img").write_bytes(bytes(1 << 20))
    os.rename("new.img", "a.img")  # another file (another inode) under the name
    with pytest.raises(ThinsimError) as e:
        blockio.write(host, loop, 0, b"lost")
    assert e.value.errno == 5  # EIO: the kernel would have had no file either
    assert Path("a.img").read_bytes() == bytes(1 << 20)
    assert run(losetup, host, "-a")[1] == listing(host) + "a.img (deleted))\n"


def thinsim_run(tmp_path: Path, script: str, timeout: float = 300):
    path = tmp_path / "script.sh"
    path.write_text(textwrap.dedent(script))
    env = {k: v for k, v in os.environ.items() if k != "THINSIM_HOST"}
    proc = subprocess.Popen(
        this_thinsim("thinsim.cli", "run", str(path)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # a run that hangs goes as a whole
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the run did not finish in {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


POOL = """\
    set -e
    dd if=/dev/zero of=md.img bs=1M count=4 status=none
    dd if=/dev/zero of=data.img bs=1M count=0 seek=64 status=none
    losetup -f md.img
    losetup -f data.img
    dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 0"
    dmsetup message pool 0 create_thin 0
    dmsetup create thin0 --table "0 65536 thin /dev/mapper/pool 0"
"""


def test_a_pools_metadata_and_data_go_to_its_files_after_they_are_renamed_and_deleted(tmp_path):
    r = thinsim_run(
        tmp_path,
        POOL
        + """\
    seq 1 100000 | head -c 131072 > pattern
    mv md.img md2.img
    rm data.img
    dd if=pattern of=/dev/mapper/thin0 bs=64K count=2 oflag=direct conv=fsync status=none
    dmsetup message pool 0 create_thin 1
    dmsetup status pool
    thin_check md2.img
    rm md2.img
    dd if=/dev/zero of=md2.img bs=1M count=4 status=none
    dd if=/dev/zero of=data.img bs=1M count=64 status=none
    dmsetup message pool 0 create_thin 2
    dmsetup status pool
    cmp -n 4194304 md2.img /dev/zero && echo new md2.img untouched
    cmp -n 67108864 data.img /dev/zero && echo new data.img untouched
    dmsetup remove thin0
    dmsetup remove pool
    thin_ls /dev/loop0
    dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 0"
    dmsetup create thin0 --table "0 65536 thin /dev/mapper/pool 0"
    dd if=/dev/mapper/thin0 bs=64K count=2 status=none | cmp - pattern && echo same data
    losetup -a | sed 's/^[^(]*(//'
    """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "0 131072 thin-pool 0 113/1024 2/1024 - rw discard_passdown queue_if_no_space - 256 \n"
        "TRANSACTION_ID=0\nMETADATA_FREE_BLOCKS=1023\n"
        "0 131072 thin-pool 0 114/1024 2/1024 - rw discard_passdown queue_if_no_space - 256 \n"
        "new md2.img untouched\nnew data.img untouched\n"
        "DEV MAPPED CREATE_TIME SNAP_TIME \n"
        "  0 128KiB           0         0 \n"
        "  1      0           0         0 \n"
        "  2      0           0         0 \n"
        "same data\n"
        f"{tmp_path}/data.img (deleted))\n{tmp_path}/md2.img (deleted))\n"
    )


def test_dmsetup_exec_runs_simulated_commands_after_releasing_the_host(tmp_path):
    # on a070bf3 the first --exec waited for the lock its own dmsetup held, for ever
    (tmp_path / "nested.sh").write_text('#!/bin/sh\necho "nested $1"; dmsetup status "$1"\n')
    (tmp_path / "nested.sh").chmod(0o755)
    r = thinsim_run(
        tmp_path,
        POOL
        + """\
    set +e
    dmsetup ls --exec thin_dump
    echo "rc=$?"
    dmsetup ls --target thin --exec "blockdev --getsize64"
    dmsetup ls --exec "dmsetup info -c --noheadings"
    dmsetup -v ls --target thin-pool --exec "dmsetup table"
    dmsetup ls --exec ./nested.sh
    dmsetup ls --exec no-such-command
    echo "rc=$?"
    """,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "rc=0\n"
        "33554432\n"
        "pool:254:0:L--w:1:1:0:\nthin0:254:1:L--w:0:1:0:\n"
        # dmsetup's own line waits in its stdout buffer until it exits (a pipe here)
        "0 131072 thin-pool 7:0 7:1 128 0 0 \npool\t(254, 0)\n"
        "nested /dev/mapper/pool\n"
        "0 131072 thin-pool 0 112/1024 0/1024 - rw discard_passdown queue_if_no_space - 256 \n"
        "nested /dev/mapper/thin0\n0 65536 thin 0 -\n"
        "rc=0\n"
    )
    assert r.stderr == (
        "syscall 'open' failed: Device or resource busy\n"
        "Note: you cannot run this tool with these options on live metadata.\n"
        "bad checksum in superblock, wanted 1490015127\n"
    )


def test_sysfs_backing_file_names_the_file_as_it_is_named_when_read(tmp_path):
    # the kernel's attribute is the open file's d_path at read time: a mv or rm between two
    # simulated commands shows in it as soon as cat reads it
    r = thinsim_run(
        tmp_path,
        """\
    truncate -s 1M a.img
    losetup -f a.img
    cat /sys/block/loop0/loop/backing_file
    mv a.img b.img
    cat /sys/block/loop0/loop/backing_file
    rm b.img
    head -n 1 /sys/dev/block/7:0/loop/backing_file
    """,
    )
    assert (r.stderr, r.returncode) == ("", 0)
    assert r.stdout == f"{tmp_path}/a.img\n{tmp_path}/b.img\n{tmp_path}/b.img (deleted)\n"
