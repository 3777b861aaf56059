"""The simulated host: scripts run with bash, the simulated commands answer, and nothing
reaches the real host's devices."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from thinsim.host.run import this_thinsim

HOST = Path(__file__).parent / "host"


def thinsim_run(tmp_path: Path, script: str, env=None) -> subprocess.CompletedProcess:
    """``thinsim run`` of this checkout (``python -m`` from TMP_PATH would import whichever
    thinsim is installed)."""
    path = tmp_path / "script.sh"
    path.write_text(script)
    return subprocess.run(
        this_thinsim("thinsim.cli", "run", str(path)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def decoy_thinsim(tmp_path: Path) -> str:
    """A folder with a thinsim package that fails on import: another checkout's install."""
    package = tmp_path / "decoy" / "thinsim"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise SystemExit('the decoy thinsim was imported')\n")
    return str(package.parent)


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
    # Without real devices (THINSIM_REAL_DEVICES=0, or a machine without FUSE or loop) the
    # nodes are major 0 and open nothing; with them, tests/test_host_real_devices.py.
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
        env={**os.environ, "THINSIM_REAL_DEVICES": "0"},
    )
    assert r.stdout == (
        "control\ntwo\n../dm-1\n/dev/dm-1\n"
        "dm-1 loop-control loop0 loop1 loop2 loop3 loop4 loop5 loop6 loop7 \n"
        "block devices\nrc=1\n"
    )
    assert r.stderr.endswith("/dev/dm-1: No such device or address\n")


LOOPS = "loop0 loop1 loop2 loop3 loop4 loop5 loop6 loop7 "
LOOP_NUMBERS = "7:0 7:1 7:2 7:3 7:4 7:5 7:6 7:7 "


def test_sys_shows_the_simulated_block_devices_where_the_kernel_puts_them_and_no_real_one(
    tmp_path,
):
    # 6.1 keeps loop and dm devices' folders in /sys/devices/virtual/block; /sys/block,
    # /sys/class/block and /sys/dev/block (by MAJOR:MINOR) link to them.  The real host's own
    # devices (this machine's loop0, vda ...) appear nowhere, and a loop device's loop/ folder
    # exists only while it is bound.
    r = thinsim_run(
        tmp_path,
        """
truncate -s 4M meta.img; truncate -s 64M data.img
losetup -f meta.img; losetup -f data.img
dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 0"
for d in block class/block dev/block devices/virtual/block; do ls /sys/$d | tr '\\n' ' '; echo; done
readlink /sys/block/loop0 /sys/class/block/dm-0 /sys/dev/block/254:0
cat /sys/dev/block/7:1/loop/backing_file /sys/class/block/dm-0/dm/name /sys/block/dm-0/dev
ls /sys/block/loop1 | tr '\\n' ' '; echo
dmsetup remove pool; losetup -d /dev/loop1
ls /sys/block | tr '\\n' ' '; echo; ls /sys/dev/block | tr '\\n' ' '; echo
ls /sys/block/loop1 | tr '\\n' ' '; echo
""",
    )
    assert (r.stderr, r.returncode) == ("", 0)
    assert r.stdout.splitlines() == [
        f"dm-0 {LOOPS}",
        f"dm-0 {LOOPS}",
        f"254:0 {LOOP_NUMBERS}",
        f"dm-0 {LOOPS}",
        "../devices/virtual/block/loop0",
        "../../devices/virtual/block/dm-0",
        "../../devices/virtual/block/dm-0",
        f"{tmp_path}/data.img",
        "pool",
        "254:0",
        "dev loop queue removable ro size ",
        LOOPS,
        LOOP_NUMBERS,
        "dev queue removable ro size ",
    ]


def test_every_sysfs_folder_that_names_block_devices_is_the_simulated_hosts_own(tmp_path):
    # a tmpfs each, so no path under /sys reads, or writes, a real device's attributes
    r = thinsim_run(
        tmp_path,
        "stat -f -c %T /sys/block /sys/class/block /sys/dev/block /sys/devices/virtual/block\n",
    )
    assert (r.stdout, r.stderr) == ("tmpfs\n" * 4, "")


def test_every_process_of_a_run_imports_the_thinsim_that_started_it(tmp_path):
    # A decoy thinsim first on PYTHONPATH plays another checkout's install: the run's shims
    # and its /dev set-up must not import it (a clone's tests once ran an older install).
    env = {**os.environ, "PYTHONPATH": decoy_thinsim(tmp_path)}
    r = thinsim_run(
        tmp_path, "truncate -s 1M f.img; losetup -f --show f.img; ls /sys/block/loop0/loop\n", env
    )
    assert (r.stdout, r.stderr) == (
        "/dev/loop0\nautoclear\nbacking_file\ndio\noffset\npartscan\nsizelimit\n",
        "",
    )


def test_a_run_keeps_its_private_dev_when_the_python3_on_path_has_no_thinsim(tmp_path):
    # the sandbox (thinsim/host/sandbox.py) sets /dev up with thinsim run's own python
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\nexit 1\n")
    (fake / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    r = thinsim_run(tmp_path, "ls /sys/block | tr '\\n' ' '; ls /dev/mapper\n", env)
    assert (r.stdout, r.stderr) == (f"{LOOPS}control\n", "")


def test_the_recordings_harness_runs_this_checkouts_thinsim_whatever_is_installed(
    tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(str(HOST))
    from harness import run_simulated

    monkeypatch.setenv("PYTHONPATH", decoy_thinsim(tmp_path))
    script = tmp_path / "s.sh"
    script.write_text("pwd; cat /sys/block/loop3/size\n")
    r = run_simulated(script)
    assert (r.stdout, r.stderr, r.returncode) == ("/run/thinsim/work\n0\n", "", 0)
