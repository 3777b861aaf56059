"""The simulated host's sandbox holds against a root script, and a run ends whole.

A script under ``thinsim run`` is root, but in its own PID and mount namespaces without the
capabilities that reach devices or change mounts (thinsim/host/sandbox.py): no path, no
namespace and no new node leads it to the host's real block devices, and /proc and /sys show
the simulated devices only.  Killing ``thinsim run`` (or the timeout of ``thinsim diff``)
ends every process of the script and leaves no folder behind.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_host import LOOPS, thinsim_run

from thinsim.host.diff import run_simulated
from thinsim.host.run import ROOT, this_thinsim

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's root is the host's")

LOOP0 = "/dev/loop0"
needs_loop0 = pytest.mark.skipif(not os.path.exists(LOOP0), reason="the host has no loop0")


@needs_loop0
def test_a_root_script_cannot_open_the_hosts_loop0_through_another_processs_root(tmp_path):
    # /proc/PID/root of a process outside the run (its parent was one) is the host's /
    r = thinsim_run(
        tmp_path,
        """
for p in /proc/$PPID/root /proc/1/root; do
  (: < "$p/dev/loop0") 2>/dev/null && echo opened || echo refused
  stat -L -c '%t:%T' "$p/dev/loop0" 2>/dev/null
done
""",
    )
    assert r.stdout == "refused\n" * 2  # a070bf3: "opened\n7:0\n" through $PPID


def test_a_root_script_sees_no_process_outside_its_run_and_cannot_enter_their_namespaces(
    tmp_path,
):
    env = {**os.environ, "OUTSIDE": str(os.getpid())}
    r = thinsim_run(
        tmp_path,
        """
echo "$$ $PPID"
kill -0 "$OUTSIDE" 2>/dev/null; echo kill rc=$?
test -e "/proc/$OUTSIDE" || echo "no /proc/$OUTSIDE"
nsenter -t "$PPID" -m true 2>/dev/null; echo nsenter rc=$?
nsenter -t "$PPID" -m -p true 2>/dev/null; echo nsenter rc=$?
""",
        env,
    )
    # bash's parent is the namespace's init (PID 1); what bash's own number is depends on
    # what the init started first
    first, rest = r.stdout.split("\n", 1)
    assert first.split()[1] == "1"
    assert rest == f"kill rc=1\nno /proc/{os.getpid()}\nnsenter rc=1\nnsenter rc=1\n"


def test_a_root_script_cannot_make_a_device_node(tmp_path):
    r = thinsim_run(
        tmp_path,
        "mknod blk b 7 0; echo rc=$?\nmknod /dev/blk b 7 0; echo rc=$?\n"
        "mknod chr c 1 1; echo rc=$?\nls /dev | grep -c blk\n",
    )
    assert r.stdout == "rc=1\nrc=1\nrc=1\n0\n"
    assert r.stderr.count("Operation not permitted") == 3
    assert not (tmp_path / "blk").exists()


def test_a_root_script_cannot_mount_devtmpfs_sysfs_or_proc(tmp_path):
    r = thinsim_run(
        tmp_path,
        "mkdir d\nfor t in devtmpfs sysfs proc tmpfs; do mount -t $t none d; echo $t rc=$?; done\n"
        "ls d | wc -l\n",
    )
    assert r.stdout == "devtmpfs rc=32\nsysfs rc=32\nproc rc=32\ntmpfs rc=32\n0\n"


def _user_namespaces() -> bool:
    probe = subprocess.run(["unshare", "-U", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _user_namespaces(), reason="this kernel makes no user namespaces")
def test_a_root_script_in_a_user_namespace_of_its_own_still_cannot_mount_or_unmount(tmp_path):
    # root in a new user namespace may mount sysfs and proc only where the mounts it has are
    # fully visible (fs/namespace.c mnt_already_visible): the sandbox's are covered, and
    # covered for good (the mounts are locked together in the new mount namespace)
    r = thinsim_run(
        tmp_path,
        "mkdir d\nunshare -U -r -m -n -p -f sh -c 'for t in sysfs proc devtmpfs; do "
        "mount -t $t none d; echo $t rc=$?; done; umount /sys/block; echo umount rc=$?'\n",
    )
    assert r.stdout == "sysfs rc=32\nproc rc=32\ndevtmpfs rc=32\numount rc=32\n"


def test_proc_partitions_and_diskstats_list_the_simulated_disks_only(tmp_path):
    r = thinsim_run(
        tmp_path,
        """
truncate -s 4M meta.img; truncate -s 64M data.img
losetup -f meta.img; losetup -f data.img
dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 0"
cat /proc/partitions
cut -c1-40 /proc/diskstats | awk '{print $1, $2, $3, $4}' | tr '\\n' ' '
""",
    )
    assert r.stdout == (
        "major minor  #blocks  name\n\n"
        "   7        0       4096 loop0\n"
        "   7        1      65536 loop1\n"
        " 254        0      65536 dm-0\n"
        + "".join(f"7 {n} loop{n} 0 " for n in range(8))
        + "254 0 dm-0 0 "
    )


BDI = Path("/sys/class/bdi/7:0/read_ahead_kb")


def test_sys_class_bdi_lists_the_simulated_disks_and_a_write_there_reaches_no_real_one(
    tmp_path,
):
    before = BDI.read_text() if BDI.exists() else None
    try:
        r = thinsim_run(
            tmp_path,
            """
truncate -s 4M meta.img; losetup -f meta.img
dmsetup create lin --table "0 8192 linear /dev/loop0 0"
ls /sys/class/bdi | tr '\\n' ' '; echo
readlink /sys/class/bdi/254:0; cat /sys/class/bdi/7:0/read_ahead_kb
echo 4000 > /sys/class/bdi/7:0/read_ahead_kb
""",
        )
        assert r.stdout.splitlines() == [
            f"254:0 {LOOPS.replace('loop', '7:')}",
            "../../devices/virtual/bdi/254:0",
            "128",
        ]
        if before is not None:
            assert BDI.read_text() == before
    finally:
        if before is not None and BDI.read_text() != before:
            BDI.write_text(before)  # what the unsandboxed run changed


def _host_disks() -> list[str]:
    disks = []
    for name in sorted(os.listdir("/sys/class/block")):
        path = os.path.realpath(f"/sys/class/block/{name}")
        if "/virtual/" not in path and os.path.exists(f"{path}/queue"):
            disks.append(path)
    return disks


def test_sys_shows_no_real_disk_and_nothing_under_it_is_writable(tmp_path):
    disks = _host_disks()
    env = {**os.environ, "DISKS": " ".join(disks)}
    r = thinsim_run(
        tmp_path,
        """
for d in $DISKS; do ls "$d" 2>&1 | grep -c queue; done
ls /sys/firmware | wc -l
for f in /sys/kernel/mm/transparent_hugepage/enabled /sys/power/state /sys/kernel/uevent_helper
do test -w "$f" && echo "writable $f"; done
echo end
""",
        env,
    )
    assert r.stdout == "0\n" * len(disks) + "0\nend\n"


def test_the_kernels_knobs_in_proc_are_read_only_and_its_memory_hidden(tmp_path):
    r = thinsim_run(
        tmp_path,
        """
swappiness=$(cat /proc/sys/vm/swappiness)
echo "$swappiness" > /proc/sys/vm/swappiness && echo wrote
for f in /proc/sysrq-trigger /proc/sys/kernel/hostname; do test -w $f && echo "writable $f"; done
for f in /proc/kcore /proc/timer_list /proc/keys; do test -e $f && wc -c < $f; done
echo end
""",
    )
    hidden = [f for f in ("kcore", "timer_list", "keys") if os.path.exists(f"/proc/{f}")]
    assert r.stdout == "0\n" * len(hidden) + "end\n"
    assert "Read-only file system" in r.stderr


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in argv:
                found.append(int(entry))
    return found


def _kill_all(token: str) -> None:
    for pid in _processes_with(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _gone(token: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while _processes_with(token):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def looping_script(tmp_path: Path, token: str, marker: Path) -> Path:
    """A script that keeps touching MARKER, and a background bash whose argv carries TOKEN."""
    script = tmp_path / f"loop-{token}.sh"
    script.write_text(
        f"bash -c 'while :; do touch {marker}; sleep 0.05; done' {token} &\n"
        f"while :; do touch {marker}; sleep 0.05; done\n"
    )
    return script


def _still(marker: Path) -> bool:
    """MARKER is no longer touched."""
    before = marker.stat().st_mtime_ns
    time.sleep(0.5)
    return marker.stat().st_mtime_ns == before


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_killing_thinsim_run_ends_the_whole_script_and_leaves_no_folder(tmp_path, sig):
    token = f"thinsim-test-{uuid.uuid4().hex}"
    marker = tmp_path / "marker"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = looping_script(tmp_path, token, marker)
    run = subprocess.Popen(
        this_thinsim("thinsim.cli", "run", str(script)),
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not _processes_with(token):
            assert time.monotonic() < deadline and run.poll() is None, "the script never ran"
            time.sleep(0.05)
        run.send_signal(sig)
        assert run.wait(timeout=30) == (-sig if sig == signal.SIGKILL else 128 + sig)
        assert _gone(token), "a process of the script outlived thinsim run"
        assert _still(marker)
        assert list(tmp.iterdir()) == []
        assert run.stderr.read() == b""  # no traceback, no complaint
    finally:
        run.kill()
        run.wait()
        _kill_all(token)


def test_the_timeout_of_thinsim_diff_ends_the_whole_simulated_script_and_its_folder(tmp_path):
    token = f"thinsim-test-{uuid.uuid4().hex}"
    marker = tmp_path / "marker"
    script = looping_script(tmp_path, token, marker)
    folders = set(Path("/tmp").glob("thinsim-work-*"))
    try:
        r = run_simulated(script, timeout=30)  # a loaded machine takes seconds to start it
        assert r.returncode == "timeout"
        assert marker.exists(), "the script never ran"
        assert _gone(token, 0.5), "a process of the script outlived the timeout"
        assert _still(marker)
        assert set(Path("/tmp").glob("thinsim-work-*")) - folders == set()
    finally:
        _kill_all(token)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_thinsim_diff_ends_the_simulated_script_and_its_folder(tmp_path, sig):
    # what thinsim diff runs for each script's simulated side, in a process of its own
    token = f"thinsim-test-{uuid.uuid4().hex}"
    marker = tmp_path / "marker"
    script = looping_script(tmp_path, token, marker)
    folders = set(Path("/tmp").glob("thinsim-work-*"))
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); from pathlib import Path; "
        f"from thinsim.host.diff import run_simulated; run_simulated(Path({str(script)!r}))"
    )
    diff = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not _processes_with(token):
            assert time.monotonic() < deadline and diff.poll() is None, "the script never ran"
            time.sleep(0.05)
        diff.send_signal(sig)
        diff.wait(timeout=30)
        assert _gone(token), "a process of the script outlived thinsim diff"
        assert _still(marker)
        deadline = time.monotonic() + 10  # thinsim run removes its folder last
        while set(Path("/tmp").glob("thinsim-work-*")) - folders:
            assert time.monotonic() < deadline, "thinsim run's folder outlived thinsim diff"
            time.sleep(0.05)
    finally:
        diff.kill()
        diff.wait()
        _kill_all(token)


def test_sys_attributes_follow_each_command_and_those_no_command_changed_stay_unwritten(
    tmp_path,
):
    # sysfs.sync runs after every simulated command: rewriting every file of every device
    # each time was 8 of the 14 ms a `dmsetup status` took
    r = thinsim_run(
        tmp_path,
        """
truncate -s 4M meta.img; losetup -f meta.img
dmsetup create lin --table "0 8192 linear /dev/loop0 0"
d=/sys/block/dm-0
name=$(stat -c %.9Y $d/dm/name); size=$(stat -c %.9Y $d/size)
dmsetup suspend lin; cat $d/dm/suspended
dmsetup resume lin; cat $d/dm/suspended
dmsetup reload lin --table "0 4096 linear /dev/loop0 0"; dmsetup resume lin; cat $d/size
dmsetup status lin > /dev/null
test "$(stat -c %.9Y $d/dm/name)" = "$name" && echo name untouched
test "$(stat -c %.9Y $d/size)" != "$size" && echo size rewritten
""",
    )
    assert r.stdout.splitlines() == ["1", "0", "4096", "name untouched", "size rewritten"]
