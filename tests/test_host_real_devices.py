"""Simulated devices as real block devices under ``thinsim run`` (thinsim/host/realdev.py,
thinsim/host/fuse.py): any program reads and writes them, every byte through the model, and
the real loop devices behind them are thinsim's own, gone with the run however it ends.

These tests bind real loop devices of this machine (and one decoy of their own, which must
come out untouched); they need root, /dev/fuse and the loop driver, and skip elsewhere.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from thinsim.host import realdev
from thinsim.host.run import this_thinsim

pytestmark = pytest.mark.skipif(
    realdev.unavailable() is not None, reason=f"no real devices here: {realdev.unavailable()}"
)

# the name of every file thinsim's FUSE file system serves (realdev.Attached)
OURS = re.compile(r"(loop|dm-)[0-9]+\.[0-9a-f]{12}\.[0-9]+")
THIN = """
truncate -s 64M data.img; truncate -s 4M meta.img
losetup -f data.img; losetup -f meta.img
dmsetup create pool --table "0 131072 thin-pool /dev/loop1 /dev/loop0 128 0"
dmsetup message pool 0 "create_thin 1"
dmsetup message pool 0 "create_thin 2"
dmsetup create thin --table "0 65536 thin /dev/mapper/pool 1"
dmsetup create thin2 --table "0 65536 thin /dev/mapper/pool 2"
"""


def run(tmp_path: Path, script: str, env=None, timeout: float = 120):
    path = tmp_path / "script.sh"
    path.write_text(textwrap.dedent(script))
    environ = {k: v for k, v in os.environ.items() if k != "THINSIM_HOST"}
    environ.update(env or {})
    proc = subprocess.Popen(
        this_thinsim("thinsim.cli", "run", str(path)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the run did not finish in {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def bound_loops() -> dict[int, str]:
    """The host's bound loop devices: number -> backing file's name."""
    out = {}
    for entry in os.listdir("/sys/devices/virtual/block"):
        path = f"/sys/devices/virtual/block/{entry}/loop/backing_file"
        if entry.startswith("loop") and os.path.exists(path):
            try:
                out[int(entry[4:])] = os.path.basename(Path(path).read_text().strip())
            except OSError:
                pass
    return out


def ours() -> set[tuple[int, str]]:
    """thinsim's loop devices bound now, as (number, file): a number alone may be another
    run's before and this run's after (a test suite running beside this one)."""
    return {(n, name) for n, name in bound_loops().items() if OURS.fullmatch(name)}


def real_dd() -> str:
    return shutil.which("dd", path="/usr/bin:/bin")


@pytest.fixture
def decoy(tmp_path):
    """A loop device of the host bound by the test itself, over a file of known bytes: it
    must stay bound to it and unchanged, whatever thinsim does."""
    image = tmp_path / "decoy.img"
    image.write_bytes(os.urandom(1 << 20))
    losetup = shutil.which("losetup", path="/usr/sbin:/sbin:/usr/bin:/bin")
    device = subprocess.run(
        [losetup, "-f", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    before = image.read_bytes()
    number = int(device.removeprefix("/dev/loop"))
    try:
        yield number
        assert bound_loops().get(number) == "decoy.img"
        assert image.read_bytes() == before
    finally:
        subprocess.run([losetup, "-d", device], check=False)


def test_a_write_through_a_real_node_provisions_blocks_as_the_simulated_dd_does(tmp_path):
    r = run(
        tmp_path,
        THIN
        + f"""
        printf x > /dev/mapper/thin
        dmsetup status thin
        {real_dd()} if=/dev/urandom of=/dev/mapper/thin2 bs=64K count=3 oflag=direct status=none
        dmsetup status thin2
        dd if=/dev/urandom of=/dev/mapper/thin2 bs=64K count=3 seek=8 oflag=direct status=none
        dmsetup status thin2
        dd if=/dev/mapper/thin bs=1 count=1 status=none; echo
        dmsetup ls | sort
        test -b /dev/dm-1 && stat -c '%t' /dev/dm-1 /dev/loop0
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "0 65536 thin 128 127\n"
        "0 65536 thin 384 383\n"
        "0 65536 thin 768 1407\n"
        "x\n"
        "pool\t(254:0)\nthin\t(254:1)\nthin2\t(254:2)\n"
        "7\n7\n"  # the nodes are the loop devices of the host behind them
    )


def test_cmp_md5sum_hexdump_and_python_read_what_the_model_holds(tmp_path):
    r = run(
        tmp_path,
        THIN
        + f"""
        dd if=/dev/urandom of=/dev/mapper/thin bs=64K count=3 oflag=direct status=none
        cmp /dev/mapper/thin /dev/mapper/thin2 >/dev/null; echo cmp=$?
        {real_dd()} if=/dev/mapper/thin of=/dev/mapper/thin2 bs=1M oflag=direct status=none
        cmp /dev/mapper/thin /dev/dm-2 && echo equal
        dmsetup status thin2
        a=$(md5sum < /dev/mapper/thin | cut -c1-32)
        b=$(dd if=/dev/mapper/thin2 bs=1M status=none | md5sum | cut -c1-32)
        test "$a" = "$b" && echo same sums
        python3 -c "import sys; f = open('/dev/mapper/thin2', 'rb'); f.seek(1 << 20); \\
        print(f.read(4) == bytes(4), len(f.read()))"
        # the pool's first data block is the thin's first
        test "$(hexdump -C /dev/loop0 | head -1)" = "$(hexdump -C /dev/dm-1 | head -1)" && echo hd
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("cmp=1\nequal\n0 65536 thin 65536 65535\nsame sums\nTrue 32505852\nhd\n")


def test_a_discard_from_the_loop_driver_unmaps_the_whole_blocks_in_it_only(tmp_path):
    blkdiscard = shutil.which("blkdiscard", path="/usr/sbin:/sbin")
    r = run(
        tmp_path,
        THIN
        + f"""
        dd if=/dev/urandom of=/dev/mapper/thin bs=64K count=4 oflag=direct status=none
        dmsetup status thin
        {blkdiscard} -o 32768 -l 98304 /dev/mapper/thin  # half of block 0, all of block 1
        dmsetup status thin
        {real_dd()} if=/dev/mapper/thin bs=64K skip=1 count=1 status=none | tr -d '\\0' | wc -c
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "0 65536 thin 512 511\n0 65536 thin 384 511\n0\n"


def test_an_ext4_made_mounted_filled_emptied_and_trimmed_provisions_and_frees_blocks(tmp_path):
    r = run(
        tmp_path,
        """
        truncate -s 1G data.img; truncate -s 16M meta.img
        losetup -f data.img; losetup -f meta.img
        dmsetup create pool --table "0 2097152 thin-pool /dev/loop1 /dev/loop0 128 0"
        dmsetup message pool 0 "create_thin 1"
        dmsetup create thin --table "0 1048576 thin /dev/mapper/pool 1"
        mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0,nodiscard /dev/mapper/thin
        blkid -s TYPE -o value /dev/mapper/thin
        mkdir mnt
        mount /dev/mapper/thin mnt
        findmnt -n -o FSTYPE mnt; findmnt -n -o OPTIONS mnt | tr , '\\n' | grep -E '^(rw|no(suid|dev))$'
        a=$(dmsetup status thin | cut -d' ' -f4)
        head -c 64M /dev/urandom > mnt/file; sync
        b=$(dmsetup status thin | cut -d' ' -f4)
        rm mnt/file; sync
        c=$(dmsetup status thin | cut -d' ' -f4)
        fstrim mnt
        d=$(dmsetup status thin | cut -d' ' -f4)
        dmsetup remove thin; dmsetup info -c --noheadings -o open thin
        umount mnt && echo unmounted
        echo $(( (b - a) >= 131072 )) $(( c == b )) $(( d < a ))
        e2fsck -fn /dev/mapper/thin > /dev/null 2>&1 && echo clean
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ext4\next4\nrw\nnosuid\nnodev\n1\nunmounted\n1 1 1\nclean\n"
    # a mounted thin is busy, as on the kernel
    assert (
        r.stderr
        == "device-mapper: remove ioctl on thin  failed: Device or resource busy\nCommand failed.\n"
    )
    assert "thinsim" not in Path("/proc/self/mountinfo").read_text()  # the host's table


@pytest.mark.skipif(shutil.which("mkfs.xfs", path="/usr/sbin:/sbin") is None, reason="no xfsprogs")
def test_an_xfs_made_mounted_filled_emptied_and_trimmed_provisions_and_frees_blocks(tmp_path):
    r = run(
        tmp_path,
        """
        truncate -s 1G data.img; truncate -s 16M meta.img
        losetup -f data.img; losetup -f meta.img
        dmsetup create pool --table "0 2097152 thin-pool /dev/loop1 /dev/loop0 128 0"
        dmsetup message pool 0 "create_thin 1"
        # 512 MiB: mkfs.xfs wants 300 MiB at least
        dmsetup create big --table "0 1048576 thin /dev/mapper/pool 1"
        mkfs.xfs -q /dev/mapper/big; echo mkfs=$?
        blkid -s TYPE -o value /dev/mapper/big
        mkdir mnt snap
        mount /dev/mapper/big mnt
        findmnt -n -o FSTYPE mnt
        a=$(dmsetup status big | cut -d' ' -f4)
        head -c 16M /dev/urandom > mnt/file; sync
        b=$(dmsetup status big | cut -d' ' -f4)
        rm mnt/file; sync
        c=$(dmsetup status big | cut -d' ' -f4)
        fstrim mnt
        d=$(dmsetup status big | cut -d' ' -f4)
        umount mnt && echo unmounted
        echo $(( (b - a) >= 32768 )) $(( c == b )) $(( d < b ))
        # a snapshot of it has the same UUID: xfs mounts it with nouuid only
        dmsetup suspend big; dmsetup message pool 0 "create_snap 3 1"; dmsetup resume big
        dmsetup create bigsnap --table "0 1048576 thin /dev/mapper/pool 3"
        mount /dev/mapper/big mnt
        mount -o nouuid /dev/mapper/bigsnap snap && echo snapshot mounted
        umount snap; umount mnt
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "mkfs=0\nxfs\nxfs\nunmounted\n1 1 1\nsnapshot mounted\n"
    assert r.stderr == ""


def test_blkid_fdisk_and_sfdisk_read_and_write_a_simulated_device(tmp_path):
    if shutil.which("sfdisk", path="/usr/sbin:/sbin") is None:
        pytest.skip("no fdisk (Debian's fdisk package)")
    r = run(
        tmp_path,
        THIN
        + """
        blkid /dev/mapper/thin; echo blkid=$?
        printf 'label: dos\nlabel-id: 0x12345678\n,16M,83\n' | sfdisk -q /dev/mapper/thin
        dmsetup status thin
        sfdisk -d /dev/mapper/thin
        fdisk -l /dev/dm-1 | grep -E '^(Disk|Disklabel|/dev)'
        blkid -o export /dev/mapper/thin
        """,
    )
    assert r.stdout == (
        "blkid=2\n"
        "0 65536 thin 128 127\n"  # the label's block, provisioned
        "label: dos\nlabel-id: 0x12345678\ndevice: /dev/mapper/thin\nunit: sectors\n"
        "sector-size: 512\n\n"
        "/dev/mapper/thin-part1 : start=        2048, size=       32768, type=83\n"
        "Disk /dev/dm-1: 32 MiB, 33554432 bytes, 65536 sectors\n"
        "Disklabel type: dos\nDisk identifier: 0x12345678\n"
        "/dev/mapper/thin-part1       2048 34815   32768  16M 83 Linux\n"
        "DEVNAME=/dev/mapper/thin\nPTUUID=12345678\nPTTYPE=dos\n"
    )


def test_mkfs_xfs_runs_only_on_the_runs_devices_and_names_no_other_file(tmp_path):
    r = run(
        tmp_path,
        THIN
        + """
        truncate -s 300M plain.img
        mkfs.xfs -q plain.img 2>&1 | head -1; echo rc=$?
        mkfs.xfs -q -l logdev=/dev/null /dev/mapper/thin; echo rc=$?
        mkfs.xfs -q -d name=/dev/null /dev/mapper/thin; echo rc=$?
        mkfs.xfs -q /dev/mapper/thin /dev/mapper/thin2; echo rc=$?
        """,
    )
    assert r.stderr == (
        "thinsim: mkfs.xfs: option -l logdev=/dev/null is not simulated: refused\n"
        "thinsim: mkfs.xfs: option -d name=/dev/null is not simulated: refused\n"
        "thinsim: mkfs.xfs: give one simulated device: refused\n"
    )
    assert r.stdout == "rc=0\nrc=1\nrc=1\nrc=1\n"  # a plain file is mkfs.xfs's own business


def test_a_kept_hosts_devices_are_real_from_the_scripts_first_line(tmp_path):
    host = tmp_path / "host"
    first = tmp_path / "first.sh"
    first.write_text(THIN + "printf hello > /dev/mapper/thin\n")
    second = tmp_path / "second.sh"
    second.write_text("stat -c %t /dev/dm-1\nhead -c 5 /dev/mapper/thin; echo\n")
    environ = {k: v for k, v in os.environ.items() if k != "THINSIM_HOST"}
    for script in (first, second):
        r = subprocess.run(
            this_thinsim("thinsim.cli", "run", "--host", str(host), str(script)),
            cwd=tmp_path, capture_output=True, text=True, env=environ, timeout=120, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    assert r.stdout == "7\nhello\n"  # a loop device of the host before any command ran


def test_the_init_mounts_only_the_runs_devices_and_unmounts_only_their_file_systems(tmp_path):
    r = run(
        tmp_path,
        THIN
        + """
        mkdir mnt
        umount /proc; echo rc=$?
        mount -o remount,rw /sys; echo rc=$?
        mount --bind /tmp mnt 2>/dev/null; echo rc=$?
        mount -o dev /dev/mapper/thin mnt; echo rc=$?
        mount -t proc /dev/mapper/thin mnt; echo rc=$?
        fstrim /; echo rc=$?
        """,
    )
    assert r.stdout == "rc=32\nrc=32\nrc=32\nrc=32\nrc=32\nrc=1\n"
    assert r.stderr == (
        "thinsim: umount: /proc: not a file system on a simulated device: refused\n"
        # what names no device is the real mount's, without the capability
        "mount: /sys: permission denied.\n"
        "       dmesg(1) may have more information after failed mount system call.\n"
        "thinsim: mount: mount option dev is not simulated: refused\n"
        "thinsim: mount: file system type proc is not simulated: refused\n"
        "thinsim: fstrim: /: not a file system on a simulated device: refused\n"
    )


def test_the_loop_devices_go_with_the_run_and_no_other_is_touched(tmp_path, decoy):
    before = ours()
    r = run(
        tmp_path,
        THIN
        + """
        ls /sys/block > /dev/null
        dmsetup remove thin2
        test -e /dev/dm-2 || echo gone
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "gone\n"
    assert ours() <= before  # this run's are detached; another run's may be running


def test_a_run_whose_hosts_process_stops_answering_still_ends_and_leaves_no_device(tmp_path, decoy):
    # the unmount at the run's end flushes ext4 through FUSE to the host's process: were
    # it deadlocked, the run would never end and the flush would stay in D state for good
    before = ours()
    r = run(
        tmp_path,
        THIN
        + """
        mkfs.ext4 -q /dev/mapper/thin && mkdir m && mount /dev/mapper/thin m
        echo data > m/file
        kill -STOP $(pgrep -f server_main)
        echo stopped
        """,
        env={"THINSIM_FINISH_SECONDS": "3"},
    )
    assert r.stdout == "stopped\n", r.stderr
    assert ours() <= before


def run_killed(tmp_path: Path, then) -> None:
    """Start a run that binds loop devices, kill -9 it, and call THEN(); afterwards none of
    that run's loop devices is bound."""
    script = tmp_path / "script.sh"
    script.write_text(textwrap.dedent(THIN) + "echo ready\nsleep 600\n")
    env = {k: v for k, v in os.environ.items() if k != "THINSIM_HOST"}
    before = ours()
    proc = subprocess.Popen(
        this_thinsim("thinsim.cli", "run", "--host", str(tmp_path / "host"), str(script)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline() == b"ready\n"
        left = ours() - before
        assert left  # the run's loop devices: pool, thin, thin2 and the two loops
        # every process of the run at once, its namespace's init too: nothing of the run
        # is left to clean up (kill -9 of thinsim run alone lets the init detach them)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for _ in range(100):  # the namespace dies a moment after thinsim run
            if subprocess.run(
                ["pgrep", "-s", str(proc.pid)], capture_output=True, check=False
            ).returncode:
                break
            time.sleep(0.1)
        assert left <= set(bound_loops().items())  # nothing ran to detach them
        then()
        assert not left & ours()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_the_next_run_detaches_what_a_run_killed_by_sigkill_left(tmp_path, decoy):
    def next_run():
        (tmp_path / "next").mkdir()
        assert run(tmp_path / "next", "true\n").returncode == 0

    run_killed(tmp_path, next_run)


def test_host_stop_detaches_what_a_run_killed_by_sigkill_left(tmp_path, decoy):
    def stop():
        done = subprocess.run(
            this_thinsim("thinsim.cli", "host", "stop", str(tmp_path / "host")),
            check=False,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr

    run_killed(tmp_path, stop)


def test_a_record_never_detaches_a_loop_device_bound_to_another_file(tmp_path, decoy):
    # a dead run's record that names the decoy's number (its device was detached and the
    # number taken again since): the sweep checks the file behind it and leaves it
    records = tmp_path / "records"
    records.mkdir()
    (records / "1.loops").write_text(f"{decoy} dm-0.0123456789ab.1\n")
    assert realdev.sweep(str(records)) == []
    assert not (records / "1.loops").exists()


def test_without_real_devices_the_nodes_stay_major_0_and_the_refusal_says_why(tmp_path):
    r = run(
        tmp_path,
        THIN + "stat -c '%t' /dev/dm-1\nmd5sum /dev/mapper/thin; echo rc=$?\n",
        env={"THINSIM_REAL_DEVICES": "0"},
    )
    assert r.stdout == "0\nrc=1\n"
    assert r.stderr == (
        "thinsim: md5sum on /dev/mapper/thin is not simulated: refused, so that it cannot "
        "reach the real device (no real block devices in this run: THINSIM_REAL_DEVICES=0)\n"
    )


def test_what_is_missing_is_named(monkeypatch):
    real_stat = os.stat

    def stat(path, *a, **kw):
        if path == "/dev/fuse":
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(os, "stat", stat)
    assert realdev.unavailable() == "no /dev/fuse (the fuse module)"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert realdev.unavailable() == "not root"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
