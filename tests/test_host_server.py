"""The host's process (thinsim/host/server.py): commands served at once, pipes between
simulated commands, one process per host folder, and ``thinsim host stop``."""

import os
import subprocess
import sys
import time

import pytest

from thinsim.bench import full_pool_setup
from thinsim.host.run import ROOT, this_thinsim

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's root is the host's")

SETUP = """\
truncate -s 4M meta.img; truncate -s 64M data.img
losetup -f meta.img; losetup -f data.img
dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 0"
dmsetup message pool 0 create_thin 0
dmsetup message pool 0 create_thin 1
dmsetup create a --table "0 65536 thin /dev/mapper/pool 0"
dmsetup create b --table "0 65536 thin /dev/mapper/pool 1"
printf 'hello from a\\n' | dd of=/dev/mapper/a bs=4K conv=sync status=none
"""


def _run(tmp_path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.sh"
    script.write_text(text)
    return subprocess.run(
        this_thinsim("thinsim.cli", "run", *args, str(script)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_pipe_from_one_simulated_device_to_another_copies_the_block(tmp_path):
    r = _run(
        tmp_path,
        SETUP + "dd if=/dev/mapper/a bs=1M count=2 status=none | dd of=/dev/mapper/b bs=1M "
        "iflag=fullblock status=none\n"
        "dd if=/dev/mapper/b bs=13 count=1 status=none\n",
    )
    assert (r.stdout, r.stderr, r.returncode) == ("hello from a\n", "", 0)


def test_two_simulated_devices_compared_through_process_substitution(tmp_path):
    r = _run(
        tmp_path,
        SETUP + "dd if=/dev/mapper/a of=/dev/mapper/b bs=1M count=2 status=none\n"
        "cmp <(dd if=/dev/mapper/a bs=1M count=2 status=none) "
        "<(dd if=/dev/mapper/b bs=1M count=2 status=none) && echo same\n"
        "dmsetup message pool 0 create_thin 2\n"
        "dmsetup create c --table '0 65536 thin /dev/mapper/pool 2'\n"
        "cmp <(dd if=/dev/mapper/a bs=1M count=2 status=none) "
        "<(dd if=/dev/mapper/c bs=1M count=2 status=none); echo rc=$?\n",
    )
    assert r.stdout == "same\n/dev/fd/63 /dev/fd/62 differ: byte 1, line 1\nrc=1\n"
    assert (r.stderr, r.returncode) == ("", 0)


def test_commands_started_at_once_all_run_on_one_host(tmp_path):
    r = _run(
        tmp_path,
        SETUP + "for i in $(seq 2 21); do dmsetup message pool 0 create_thin $i & done; wait\n"
        "dmsetup status pool | cut -d' ' -f6\n",
    )
    assert (r.stdout, r.stderr, r.returncode) == ("1/1024\n", "", 0)


def test_one_process_serves_a_host_folder_and_host_stop_ends_it(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    env = dict(os.environ, THINSIM_HOST=str(host))
    # outside a run's sandbox: the Python shim starts the process and asks it
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); from thinsim.host.run import shim_main; "
        "sys.exit(shim_main('dmsetup', ['ls']))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert outs == ["No devices found\n"] * 4
    servers = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and _cmdline(pid).count(str(host)) and "server_main" in _cmdline(pid)
    ]
    assert len(servers) == 1
    r = subprocess.run(
        this_thinsim("thinsim.cli", "host", "stop", str(host)), capture_output=True, check=False
    )
    assert r.returncode == 0
    assert not os.path.exists(f"/proc/{servers[0]}/cmdline") or "server_main" not in _cmdline(
        servers[0]
    )
    # what stays is the state: the process unlinked its socket before it ended
    assert sorted(p.name for p in host.iterdir()) == ["lock", "state.pickle"]


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def test_the_hosts_process_killed_outright_loses_no_finished_command(tmp_path):
    # the process is in the run's PID namespace: pgrep there sees only the run's processes
    r = _run(
        tmp_path,
        SETUP + "kill -9 $(pgrep -f thinsim.host.server); sleep 0.2\n"
        "dmsetup ls\n"
        "dmsetup message pool 0 create_thin 7 && dmsetup status pool | cut -d' ' -f6\n"
        "dd if=/dev/mapper/a bs=13 count=1 status=none\n",
    )
    assert r.stdout == "a\t(254:1)\nb\t(254:2)\npool\t(254:0)\n1/1024\nhello from a\n"
    assert (r.stderr, r.returncode) == ("", 0)


def _stop(host) -> None:
    r = subprocess.run(
        this_thinsim("thinsim.cli", "host", "stop", str(host)), capture_output=True, check=False
    )
    assert r.returncode == 0


_BLOCKS = (10 << 30) // (64 << 10)
FULL = full_pool_setup(10 << 30, "10G", "64M")  # a fully mapped 10 GiB thin, as bench does


def test_a_fully_mapped_pool_stays_out_of_the_host_state_file(tmp_path):
    host = tmp_path / "host"
    r = _run(
        tmp_path,
        FULL + "dmsetup status pool | cut -d' ' -f6\n"
        "printf 'last block\\n' | dd of=/dev/mapper/thin bs=4K seek=$(("
        f"{_BLOCKS} * 16 - 1)) conv=sync,fsync status=none\n"
        "dmsetup status pool | cut -d' ' -f6\n",
        "--host",
        str(host),
    )
    assert r.stdout == f"{_BLOCKS}/{_BLOCKS}\n{_BLOCKS}/{_BLOCKS}\n"
    assert (r.stderr, r.returncode) == ("", 0)
    # the pool's in-core metadata (every mapping of 163,840 blocks) is not in the state
    assert (host / "state.pickle").stat().st_size < 64 * 1024
    _stop(host)
    # a new process re-opens the pool from its metadata device: the mapping is there
    r = _run(
        tmp_path,
        "dmsetup status pool | cut -d' ' -f6\n"
        f"dd if=/dev/mapper/thin bs=4K skip=$(({_BLOCKS} * 16 - 1)) count=1 status=none "
        "| head -c 11\n",
        "--host",
        str(host),
    )
    assert (r.stdout, r.stderr, r.returncode) == (
        f"{_BLOCKS}/{_BLOCKS}\nlast block\n",
        "",
        0,
    )


def test_the_hosts_process_killed_mid_script_then_a_command_sees_what_the_pool_committed(
    tmp_path,
):
    r = _run(
        tmp_path,
        SETUP + "dmsetup message pool 0 create_thin 7\n"
        "printf 'on seven\\n' > seven.txt\n"
        "dmsetup create c --table '0 65536 thin /dev/mapper/pool 7'\n"
        "dd if=seven.txt of=/dev/mapper/c bs=4K conv=sync,fsync status=none\n"
        "dmsetup message pool 0 set_transaction_id 0 5\n"
        "kill -9 $(pgrep -f thinsim.host.server); sleep 0.2\n"
        "dmsetup status pool | cut -d' ' -f4,6\n"
        "dd if=/dev/mapper/c bs=9 count=1 status=none\n"
        "dmsetup remove c && dmsetup message pool 0 delete 7 && echo deleted\n",
    )
    assert r.stdout == "5 2/1024\non seven\ndeleted\n"
    assert (r.stderr, r.returncode) == ("", 0)


def test_a_pool_whose_metadata_file_is_gone_opens_failed_and_its_io_ends_in_eio(tmp_path):
    host = tmp_path / "host"
    work = tmp_path / "work"
    work.mkdir()
    r = _run(work, SETUP, "--host", str(host))
    assert (r.stderr, r.returncode) == ("", 0)
    _stop(host)
    for name in ("meta.img", "data.img", "script.sh"):
        (work / name).unlink()
    r = _run(
        tmp_path,
        "dmsetup status pool; dmsetup status a\n"
        "dd if=/dev/mapper/a bs=4K count=1 status=none of=/dev/null; echo rc=$?\n"
        "dmsetup ls\n",
        "--host",
        str(host),
    )
    assert r.stdout == (
        "0 131072 thin-pool Fail\n0 65536 thin Fail\nrc=1\na\t(254:1)\nb\t(254:2)\npool\t(254:0)\n"
    )
    assert r.stderr == "dd: error reading '/dev/mapper/a': Input/output error\n"
    assert r.returncode == 0


def test_a_write_to_a_suspended_device_waits_for_its_resume_while_other_commands_run(tmp_path):
    # as on a real host: the bio waits in the suspended device (dd holds it open meanwhile,
    # so it cannot be removed) and goes through at the resume another command makes
    r = _run(
        tmp_path,
        SETUP + "dmsetup suspend b\n"
        "printf 'written while suspended\\n' | dd of=/dev/mapper/b bs=4K conv=sync "
        "oflag=direct status=none &\n"
        'until [ "$(dmsetup info -c --noheadings -o open b)" = 1 ]; do sleep 0.1; done\n'
        "dmsetup status b\n"
        "dmsetup remove b\n"
        "dmsetup resume b\n"
        'wait $!; echo "dd: $?"\n'
        "dmsetup status b\n"
        "dd if=/dev/mapper/b bs=24 count=1 status=none\n"
        "dmsetup info -c --noheadings -o open b\n",
    )
    assert r.stdout == (
        "0 65536 thin 0 -\ndd: 0\n0 65536 thin 128 127\nwritten while suspended\n0\n"
    )
    assert r.stderr == (
        "device-mapper: remove ioctl on b  failed: Device or resource busy\nCommand failed.\n"
    )
    assert r.returncode == 0


def test_a_read_of_a_suspended_device_waits_for_its_resume(tmp_path):
    r = _run(
        tmp_path,
        SETUP + "dmsetup suspend a\n"
        "dd if=/dev/mapper/a bs=13 count=1 status=none > out &\n"
        'until [ "$(dmsetup info -c --noheadings -o open a)" = 1 ]; do sleep 0.1; done\n'
        "cat out; dmsetup resume a; wait $!; cat out\n",
    )
    assert (r.stdout, r.stderr, r.returncode) == ("hello from a\n", "", 0)


def test_a_write_through_a_linear_device_waits_for_the_resume_of_the_device_under_it(tmp_path):
    r = _run(
        tmp_path,
        SETUP + 'dmsetup create lin --table "0 65536 linear /dev/mapper/b 0"\n'
        "dmsetup suspend b\n"
        "printf 'via linear\\n' | dd of=/dev/mapper/lin bs=4K conv=sync oflag=direct "
        "status=none &\n"
        'until [ "$(dmsetup info -c --noheadings -o open lin)" = 1 ]; do sleep 0.1; done\n'
        "dmsetup status b; dmsetup resume b; wait $!; dmsetup status b\n"
        "dd if=/dev/mapper/b bs=11 count=1 status=none\n",
    )
    assert r.stdout == "0 65536 thin 0 -\n0 65536 thin 128 127\nvia linear\n"
    assert (r.stderr, r.returncode) == ("", 0)


def test_a_deferred_remove_of_a_device_a_waiting_write_holds_is_done_at_its_close(tmp_path):
    r = _run(
        tmp_path,
        SETUP + "dmsetup suspend b\n"
        "printf 'x\\n' | dd of=/dev/mapper/b bs=4K conv=sync oflag=direct status=none &\n"
        'until [ "$(dmsetup info -c --noheadings -o open b)" = 1 ]; do sleep 0.1; done\n'
        "dmsetup remove --deferred b; dmsetup ls; dmsetup resume b; wait $!; dmsetup ls\n",
    )
    assert r.stdout == ("a\t(254:1)\nb\t(254:2)\npool\t(254:0)\n" + "a\t(254:1)\npool\t(254:0)\n")
    assert (r.stderr, r.returncode) == ("", 0)


COPY_SETUP = """\
truncate -s 4M meta.img; truncate -s 1G data.img
losetup -f meta.img; losetup -f data.img
dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 0"
dmsetup message pool 0 create_thin 0
dmsetup message pool 0 create_thin 1
dmsetup create src --table "0 2097152 thin /dev/mapper/pool 0"
dmsetup create dst --table "0 2097152 thin /dev/mapper/pool 1"
"""


def test_a_status_of_a_device_runs_between_two_bios_of_a_long_copy_between_devices(tmp_path):
    # as on a real host, where each bio of dd is served on its own: the status does not
    # wait for the whole copy (8,192 bios), it sees the copy partway through
    r = _run(
        tmp_path,
        COPY_SETUP + "dd if=/dev/mapper/src of=/dev/mapper/dst bs=64K count=8192 status=none &\n"
        'until [ "$(dmsetup status dst | cut -d" " -f4)" != 0 ]; do :; done\n'
        'mapped=$(dmsetup status dst | cut -d" " -f4)\n'
        '[ "$mapped" -lt 1048576 ] && echo "the status saw the copy partway through"\n'
        'wait $!; echo "dd: $?"\n'
        "dmsetup status dst\n",
    )
    assert r.stdout == (
        "the status saw the copy partway through\ndd: 0\n0 2097152 thin 1048576 1048575\n"
    )
    assert (r.stderr, r.returncode) == ("", 0)


def test_a_dd_opening_a_fifo_lets_other_commands_run_until_its_writer_comes(tmp_path):
    # open(2) of a FIFO waits for the writer, here the script itself, after the status:
    # the dd waits there with the machine let go
    r = _run(
        tmp_path,
        SETUP + "mkfifo in.fifo\n"
        "dd if=in.fifo of=/dev/mapper/b bs=4K conv=sync status=none &\n"
        "dmsetup status a\n"
        "echo 'through a fifo' > in.fifo\n"
        'wait $!; echo "dd: $?"; dd if=/dev/mapper/b bs=15 count=1 status=none\n',
    )
    assert r.stdout == "0 65536 thin 128 127\ndd: 0\nthrough a fifo\n"
    assert (r.stderr, r.returncode) == ("", 0)


def test_host_stop_ends_the_commands_blocked_reading_a_pipe_that_never_closes(tmp_path):
    # a real host's shutdown does not wait for a process blocked in read(2): each ends as
    # at a kill of the host's process (its client says so), and what was committed stays
    host = tmp_path / "host"
    work = tmp_path / "work"
    work.mkdir()
    script = work / "script.sh"
    script.write_text(
        SETUP + "mkfifo in.fifo\n"
        "dd of=/dev/mapper/b bs=4K status=none < <(sleep 1000) & dd=$!\n"
        'until [ "$(dmsetup info -c --noheadings -o open b)" = 1 ]; do sleep 0.1; done\n'
        "dd if=in.fifo of=/dev/mapper/a bs=4K status=none & fifo=$!\n"
        "exec 3>in.fifo\n"
        "echo ready > ready\n"
        'wait $dd; echo "dd: $?"\n'
        'wait $fifo; echo "dd: $?"\n'
        "dmsetup status a b\n"
        "dd if=/dev/mapper/a bs=13 count=1 status=none\n"
    )
    run = subprocess.Popen(
        this_thinsim("thinsim.cli", "run", "--host", str(host), str(script)),
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not (work / "ready").exists() and run.poll() is None:
            time.sleep(0.1)
        _stop(host)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert out == "dd: 1\ndd: 1\na: 0 65536 thin 128 127\nb: 0 65536 thin 0 -\nhello from a\n"
    died = (
        "the host's process died while it ran the command; the host goes on from what it "
        "had committed"
    )
    assert sorted(err.splitlines()) == [f"thinsim: dd: {died}"] * 2
    assert run.returncode == 0


# overwrites the leaf of thin 0's mappings on meta.img with a pattern (kill -9 of the host's
# process first: the node is read back from the file when it is next used)
SMASH_LEAF = """\
python3 - <<'PY'
import struct
with open("meta.img", "r+b") as f:
    def block(b):
        f.seek(b * 4096)
        return f.read(4096)
    root = struct.unpack_from("<Q", block(0), 320)[0]
    top = block(root)
    leaf = struct.unpack_from("<Q", top, 32 + 8 * struct.unpack_from("<I", top, 20)[0])[0]
    f.seek(leaf * 4096)
    f.write(b"\\xa5" * 4096)
PY
"""


def test_a_mapping_node_overwritten_on_the_metadata_file_fails_the_io_as_the_kernel_does(tmp_path):
    # node_check fails (the block says it is another): the bio ends with EIO and the pool
    # stays in write mode; the worker logs its failed lookup the first time only, then
    # dm-bufio holds the bad block and thin_map fails the bios on it; thin_status says Error
    r = _run(
        tmp_path,
        SETUP
        + "kill -9 $(pgrep -f thinsim.host.server); sleep 0.2\n"
        + SMASH_LEAF
        + "dd if=/dev/mapper/a bs=13 count=1 status=none; echo rc=$?\n"
        "dd if=/dev/zero of=/dev/mapper/a bs=64K count=1 seek=3 oflag=direct status=none; "
        "echo rc=$?\n"
        "dmsetup status a b pool\n"
        "dd if=/dev/mapper/b bs=4K count=1 status=none | od -An -c | head -1\n"
        "dmesg | cut -c16-\n",
    )
    # 0xa5a5a5a5a5a5a5a5 where the node's own block number (25) should be
    node = (
        "device-mapper: btree spine: node_check failed: blocknr 11936128518282651045 != "
        "wanted 25\n"
        "device-mapper: block manager: btree_node validator check failed for block 25\n"
    )
    assert r.stdout == (
        "rc=1\nrc=1\n"
        "a: 0 65536 thin Error\n"
        "b: 0 65536 thin 0 -\n"
        "pool: 0 131072 thin-pool 0 113/1024 1/1024 - rw discard_passdown queue_if_no_space - "
        "256 \n"
        "  \\0  \\0  \\0  \\0  \\0  \\0  \\0  \\0  \\0  \\0  \\0  \\0  \\0  \\0  \\0  \\0\n"
        + node
        + "device-mapper: thin: process_cell: dm_thin_find_block() failed: error = -15\n"
        + node
        + node
        + "device-mapper: thin: dm_thin_get_highest_mapped_block returned -15\n"
    )
    assert r.stderr == (
        "dd: error reading '/dev/mapper/a': Input/output error\n"
        "dd: error writing '/dev/mapper/a': Input/output error\n"
    )
    assert r.returncode == 0
