"""A simulated host whose files cannot be written (a full file system, a failing disk)
does what a real one does, and its own state file is written whole and trusted only when
this user wrote it."""

import os
import pickle
import subprocess
from pathlib import Path

import pytest

MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs to fill (needs root, as the simulated host's tests have)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, bytes(4096)):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


# What Debian's 6.1 kernel did (tests/kernel/enospc/recorded.txt, recorded in thinsim vm by
# dev/kernel/record-enospc.sh): the metadata file of a pool on a full
# 8 MiB tmpfs, then a create_thin (the message succeeds, its commit fails).
KERNEL_DM_LINES = [
    "device-mapper: thin: 254:0: metadata operation 'dm_pool_commit_metadata' failed: error = -5",
    "device-mapper: thin: 254:0: aborting current metadata transaction",
    "device-mapper: thin: 254:0: switching pool to read-only mode",
]


def _run(tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    """``thinsim run`` on the host kept in TMP_PATH/host, from TMP_PATH."""
    from thinsim.host.run import this_thinsim

    path = tmp_path / "script.sh"
    path.write_text(script)
    argv = this_thinsim("thinsim.cli", "run", "--host", str(tmp_path / "host"), str(path))
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"))
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_a_full_file_system_under_the_metadata_turns_the_pool_read_only_as_the_kernel_does(
    tmp_path, small_fs
):
    r = _run(
        tmp_path,
        f"""
truncate -s 4M {small_fs}/meta; truncate -s 256M data
losetup /dev/loop0 {small_fs}/meta; losetup /dev/loop1 data
dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 0"
dmsetup message pool 0 "create_thin 0"
dmsetup create thin --table "0 2097152 thin /dev/mapper/pool 0"
dd if=/dev/urandom of=/dev/mapper/thin bs=64k count=4 oflag=direct conv=fsync status=none
dmsetup status pool
""",
    )
    assert r.stdout == (
        "0 524288 thin-pool 0 112/1024 4/4096 - rw discard_passdown queue_if_no_space - 256 \n"
    )
    _fill(small_fs)
    r = _run(
        tmp_path,
        """
dmsetup message pool 0 "create_thin 1"; echo rc=$?
dmsetup status pool
dmsetup message pool 0 "create_thin 2"; echo rc=$?
dd if=/dev/urandom of=/dev/mapper/thin bs=64k count=1 seek=500 oflag=direct status=none
echo rc=$?
dd if=/dev/urandom of=/dev/mapper/thin bs=4k count=1 seek=1 oflag=direct status=none
echo rc=$?
dmesg | grep -e 254:0 -e loop:
""",
    )
    assert r.stderr == (
        "device-mapper: message ioctl on pool  failed: Operation not supported\n"
        "Command failed.\n"
        "dd: error writing '/dev/mapper/thin': Input/output error\n"
    )
    out = r.stdout.splitlines()
    assert out[:5] == [
        "rc=0",
        (
            "0 524288 thin-pool 0 112/1024 4/4096 - ro discard_passdown queue_if_no_space "
            "needs_check 256 "
        ),
        "rc=1",
        "rc=1",
        "rc=0",
    ]
    log = [line.split("] ", 1)[1] for line in out[5:]]
    assert log[0].startswith("loop: Write error at byte offset ")
    assert [line for line in log if line.startswith("device-mapper:")] == [
        *KERNEL_DM_LINES,
        (
            "device-mapper: thin: 254:0: unable to service pool target messages in READ_ONLY or "
            "FAIL mode"
        ),
    ]
    # nothing committed is lost, and needs_check reaches the disk when the pool goes
    r = _run(
        tmp_path,
        """
dmsetup remove thin; dmsetup remove pool; echo rc=$?
thin_check -q /dev/loop0; echo rc=$?
thin_dump /dev/loop0
""",
    )
    assert r.stdout == (
        "rc=0\nrc=0\n"
        '<superblock uuid="" time="0" transaction="0" flags="1" version="2" '
        'data_block_size="128" nr_data_blocks="4096">\n'
        '  <device dev_id="0" mapped_blocks="4" transaction="0" creation_time="0" '
        'snap_time="0">\n'
        '    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>\n'
        "  </device>\n"
        "</superblock>\n"
    )


def test_a_full_file_system_under_the_data_fails_the_writes_that_need_it_with_eio(
    tmp_path, small_fs
):
    """As Debian's 6.1 did: each failed provisioning write leaves its block allocated."""
    r = _run(
        tmp_path,
        f"""
truncate -s 4M meta; truncate -s 256M {small_fs}/data
losetup /dev/loop0 meta; losetup /dev/loop1 {small_fs}/data
dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 0"
dmsetup message pool 0 "create_thin 0"
dmsetup create thin --table "0 2097152 thin /dev/mapper/pool 0"
dd if=/dev/urandom of=/dev/mapper/thin bs=64k count=4 oflag=direct conv=fsync status=none
""",
    )
    assert r.returncode == 0
    _fill(small_fs)
    r = _run(
        tmp_path,
        """
dd if=/dev/urandom of=/dev/mapper/thin bs=64k count=2 seek=100 oflag=direct conv=fsync \
  2>&1 | grep -v copied; dmsetup status pool
dd if=/dev/urandom of=/dev/mapper/thin bs=4k count=1 seek=4000 oflag=direct conv=fsync \
  2>&1 | grep -v copied; dmsetup status pool
dd if=/dev/urandom of=/dev/mapper/thin bs=64k count=1 seek=300 conv=fsync \
  2>&1 | grep -v copied; dmsetup status pool
dd if=/dev/urandom of=/dev/mapper/thin bs=4k count=1 seek=1 oflag=direct conv=fsync status=none
echo rc=$?
dmesg | grep loop: | cut -d] -f2-
""",
    )
    status = "0 524288 thin-pool 0 112/1024 {}/4096 - rw discard_passdown queue_if_no_space - 256 "
    assert r.stdout.splitlines() == [
        "dd: error writing '/dev/mapper/thin': Input/output error",
        "1+0 records in",
        "0+0 records out",
        status.format(5),
        "dd: error writing '/dev/mapper/thin': Input/output error",
        "1+0 records in",
        "0+0 records out",
        status.format(6),
        "dd: fsync failed for '/dev/mapper/thin': Input/output error",
        "1+0 records in",
        "1+0 records out",
        status.format(7),
        "rc=0",
        " loop: Write error at byte offset 262144, length 4096.",
        " loop: Write error at byte offset 327680, length 4096.",
        " loop: Write error at byte offset 393216, length 4096.",
    ]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_state_file_this_user_did_not_write_is_refused_without_running_it(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "state.pickle").write_bytes(pickle.dumps(_RunsCode()))
    r = _run(tmp_path, "dmsetup ls; echo rc=$?\n")
    assert not (tmp_path / "pwned").exists()
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        f"thinsim: {host}/state.pickle: not a host state this user's thinsim wrote "
        "(damaged, or written by someone else); refusing to load it\n"
    )


@pytest.mark.parametrize("damage", ["empty", "flipped"])
def test_a_damaged_state_file_is_refused_with_one_line_and_changes_nothing(tmp_path, damage):
    r = _run(tmp_path, "truncate -s 1M a; losetup -f a\n")
    assert r.returncode == 0
    state = tmp_path / "host" / "state.pickle"
    good = state.read_bytes()
    bad = {
        "empty": b"",
        "flipped": good[:-1] + bytes([good[-1] ^ 1]),
    }[damage]
    state.write_bytes(bad)
    r = _run(tmp_path, "losetup -a; echo rc=$?\n")
    assert (r.returncode, r.stdout) == (1, "")
    assert len(r.stderr.splitlines()) == 1
    assert "refusing to load it" in r.stderr
    assert state.read_bytes() == bad
    state.write_bytes(good)
    r = _run(tmp_path, "losetup -a\n")
    assert r.stdout.startswith("/dev/loop0: ") and r.stdout.endswith("/a)\n")


def test_a_state_file_others_can_write_is_refused(tmp_path):
    assert _run(tmp_path, "truncate -s 1M a; losetup -f a\n").returncode == 0
    state = tmp_path / "host" / "state.pickle"
    assert state.stat().st_mode & 0o777 == 0o600
    state.chmod(0o666)
    r = _run(tmp_path, "losetup -a\n")
    assert r.returncode == 1
    assert r.stderr == f"thinsim: {state}: the host state is writable by group or others\n"


def test_a_host_folder_that_fills_up_keeps_its_last_whole_state(tmp_path, small_fs):
    host = small_fs / "host"
    script = tmp_path / "script.sh"
    from thinsim.host.run import this_thinsim

    def run(text):
        script.write_text(text)
        argv = this_thinsim("thinsim.cli", "run", "--host", str(host), str(script))
        env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"))
        return subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )

    assert run("truncate -s 1M a; losetup -f a\n").returncode == 0
    good = (host / "state.pickle").read_bytes()
    _fill(small_fs)
    r = run("truncate -s 1M b; losetup -f b; echo rc=$?\n")
    assert "Traceback" not in r.stderr
    assert r.stdout == "rc=1\n"
    # the file keeps the last state saved; the run's process held the new one till its end
    assert r.stderr == (
        f"thinsim: {host}: cannot save the host state (No space left on device); the host's "
        "process goes on with it and saves it with the next command\n"
    )
    assert (host / "state.pickle").read_bytes() == good
    assert sorted(p.name for p in host.iterdir()) == ["lock", "state.pickle"]


def test_a_state_that_cannot_be_saved_stays_in_the_hosts_process_with_its_pools(tmp_path, small_fs):
    # The second dd provisions a block the pool has not committed yet (the flush before
    # committed the first one), and its state cannot be saved: the process keeps the host
    # as the command left it, pools and all, says so, and saves it with the next command.
    # (It used to load the state file again and re-open the pool from its last commit:
    # the block lost, though no crash happened.)
    from thinsim.host.run import this_thinsim

    host = small_fs / "host"
    script = tmp_path / "script.sh"
    script.write_text(
        "truncate -s 4M meta.img; truncate -s 64M data.img\n"
        "losetup -f meta.img; losetup -f data.img\n"
        'dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 0"\n'
        "dmsetup message pool 0 create_thin 0\n"
        'dmsetup create a --table "0 65536 thin /dev/mapper/pool 0"\n'
        "printf 'first\\n' | dd of=/dev/mapper/a bs=4K conv=sync,fsync status=none\n"
        f"cat /dev/zero > {small_fs}/filler 2>/dev/null\n"
        "printf 'second\\n' | dd of=/dev/mapper/a bs=4K seek=16 conv=sync status=none\n"
        "echo rc=$?\n"
        f"rm {small_fs}/filler\n"
        "dmsetup status a\n"
        "dd if=/dev/mapper/a bs=4K skip=16 count=1 status=none | head -c 7\n"
    )
    argv = this_thinsim("thinsim.cli", "run", "--host", str(host), str(script))
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"))
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert r.stdout == "rc=1\n0 65536 thin 256 255\nsecond\n"
    assert r.stderr == (
        f"thinsim: {host}: cannot save the host state (No space left on device); the host's "
        "process goes on with it and saves it with the next command\n"
    )
    assert r.returncode == 0
    assert sorted(p.name for p in host.iterdir()) == ["lock", "state.pickle"]
