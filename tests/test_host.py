"""The simulated host: scripts run with bash, the simulated commands answer, and nothing
reaches the real host's devices."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def thinsim_run(tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    path = tmp_path / "script.sh"
    path.write_text(script)
    return subprocess.run(
        [sys.executable, "-m", "thinsim.cli", "run", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_exit_status_of_run_is_the_scripts(tmp_path):
    assert thinsim_run(tmp_path, "exit 7\n").returncode == 7


def test_a_script_builds_a_pool_and_a_thin_and_sees_the_kernels_numbers(tmp_path):
    r = thinsim_run(
        tmp_path,
        """
truncate -s 4M meta.img; truncate -s 1G data.img
losetup -f --show meta.img
losetup -f --show data.img
dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 0"
dmsetup message /dev/mapper/pool 0 "create_thin 0"
dmsetup create thin --table "0 2097152 thin /dev/mapper/pool 0"
dd if=/dev/zero of=/dev/mapper/thin bs=4k count=1 oflag=direct conv=fsync status=none
dmsetup status
dmsetup message pool 0 create_thin 0
echo rc=$?
""",
    )
    assert r.stdout == (
        "/dev/loop0\n/dev/loop1\n"
        "pool: 0 2097152 thin-pool 0 113/1024 1/16384 - rw discard_passdown "
        "queue_if_no_space - 256 \n"
        "thin: 0 2097152 thin 128 127\n"
        "rc=1\n"
    )
    assert r.stderr == (
        "device-mapper: message ioctl on pool  failed: File exists\nCommand failed.\n"
    )


@pytest.mark.skipif(not os.path.exists("/dev/loop0"), reason="the host has no /dev/loop0")
def test_commands_the_host_does_not_simulate_never_reach_a_real_device_node(tmp_path):
    before = os.stat("/dev/loop0")
    r = thinsim_run(tmp_path, "mkfs -t ext2 /dev/loop0; echo rc=$?\necho hi > /dev/loop0\n")
    assert "rc=1" in r.stdout
    assert "mkfs on /dev/loop0 is not simulated" in r.stderr
    after = os.stat("/dev/loop0")
    assert stat.S_ISBLK(after.st_mode)
    assert (after.st_rdev, after.st_mtime) == (before.st_rdev, before.st_mtime)


def test_dev_shows_the_simulated_devices_under_their_names_and_no_node_opens_a_real_device(
    tmp_path,
):
    # What a real host shows (tests/host/recorded/04_seed_linear.out): /dev/mapper/control,
    # a mapper/NAME symlink to ../dm-N per device, loop0-7 from boot; removed devices go.
    r = thinsim_run(
        tmp_path,
        """
truncate -s 100M disk.img
losetup -f disk.img
dmsetup create one --table "0 1000 linear /dev/loop0 0"
dmsetup create two --table "0 1000 linear /dev/loop0 1000"
dmsetup remove one
ls /dev/mapper; readlink /dev/mapper/two; readlink -f /dev/mapper/two
ls /dev | grep -E '^(loop|dm-)' | tr '\\n' ' '; echo
test -b /dev/dm-1 && test -b /dev/loop0 && echo block devices
echo hi > /dev/dm-1 || echo rc=$?
""",
    )
    assert r.stdout == (
        "control\ntwo\n../dm-1\n/dev/dm-1\n"
        "dm-1 loop-control loop0 loop1 loop2 loop3 loop4 loop5 loop6 loop7 \n"
        "block devices\nrc=1\n"
    )
    assert r.stderr.endswith("/dev/dm-1: No such device or address\n")
