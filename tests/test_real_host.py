"""thinsim run --backend kernel and thinsim diff, without a VM: the masking, the diff text,
the simulated side's private /run/thinsim/work, and the way results come back from the VM."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_ci

from thinsim import vm
from thinsim.host import diff, real
from thinsim.host.real import Result, mask


def test_dd_timings_and_dmesg_timestamps_are_masked_and_nothing_else():
    text = (
        "10485760 bytes (10 MB, 10 MiB) copied, 0.0123 s, 853 MB/s\n"
        "1 byte copied, 0.000123 s, 8.1 kB/s\n"
        "[   12.930224] device-mapper: uevent: version 1.0.3\n"
        "copied, 0.5 s\n"
    )
    assert mask(text) == (
        "10485760 bytes (10 MB, 10 MiB) copied, <time>\n"
        "1 byte copied, <time>\n"
        "[<time>] device-mapper: uevent: version 1.0.3\n"
        "copied, 0.5 s\n"
    )


def test_identical_runs_give_an_empty_diff_even_when_dd_took_other_times():
    a = Result("5 bytes copied, 0.1 s, 50 B/s\n", "", 0)
    b = Result("5 bytes copied, 0.3 s, 17 B/s\n", "", 0)
    assert diff.unified("s.sh", a, b) == ""


def test_the_diff_goes_from_the_real_host_to_the_simulated_one_stream_by_stream():
    real_run = Result("a\nb\n", "", 0)
    simulated = Result("a\nc", "oops\n", 1)
    assert diff.unified("s.sh", real_run, simulated) == (
        "--- real s.sh (stdout)\n"
        "+++ simulated s.sh (stdout)\n"
        "@@ -1,2 +1,2 @@\n"
        " a\n"
        "-b\n"
        "+c\n"
        "\\ No newline at end of file\n"
        "--- real s.sh (stderr)\n"
        "+++ simulated s.sh (stderr)\n"
        "@@ -0,0 +1 @@\n"
        "+oops\n"
        "--- real s.sh (exit status)\n"
        "+++ simulated s.sh (exit status)\n"
        "@@ -1 +1 @@\n"
        "-0\n"
        "+1\n"
    )


def test_the_simulated_run_is_in_an_empty_run_thinsim_work_with_the_recorders_environment(
    tmp_path,
):
    script = tmp_path / "s.sh"
    script.write_text('pwd; ls -A; echo "$HOME $LANG $USER"; echo to-stderr >&2; exit 3\n')
    got = diff.run_simulated(script)
    assert got == Result("/run/thinsim/work\n/root C.UTF-8 root\n", "to-stderr\n", 3)


def test_diff_of_a_missing_script_says_so_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "thinsim.cli", "diff", str(tmp_path / "none.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.stdout, proc.stderr, proc.returncode) == (
        "",
        f"thinsim diff: {tmp_path / 'none.sh'}: no such script\n",
        2,
    )


def test_without_dm_thin_here_the_scripts_run_in_one_vm_and_come_back_in_order(
    monkeypatch, tmp_path
):
    # The VM is played by running the guest's entry point here, with a fake run_here.
    boots = []

    def fake_vm_run(argv, rwdirs, modules, capture):
        boots.append((modules, rwdirs))
        assert argv[:3] == [sys.executable, "-m", "thinsim.host.real"]
        jobs = json.loads(Path(argv[3]).read_text())["jobs"]
        assert [Path(s).name for s, _ in jobs] == ["a.sh", "b.sh"]
        real._guest_main(argv[3:])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(real, "in_vm", lambda: False)
    monkeypatch.setattr(real, "dm_thin_here", lambda: "not root")
    monkeypatch.setattr(vm, "run", fake_vm_run)
    monkeypatch.setattr(
        real, "run_here", lambda s, a, t: Result(f"ran {s.name} {a}\n", "", len(s.name))
    )
    results = real.run_scripts([(tmp_path / "a.sh", ["x"]), (tmp_path / "b.sh", [])])
    assert results == [Result("ran a.sh ['x']\n", "", 4), Result("ran b.sh []\n", "", 4)]
    assert len(boots) == 1
    assert boots[0][0] == ["brd rd_nr=1 rd_size=2097152"]


def test_backing_file_device_and_inode_numbers_do_not_count_as_a_difference():
    # The VM keeps the files on an ext4 on /dev/ram0; the simulated host on its own disk.
    real_run = Result("/dev/loop0: [0256]:13 (/run/thinsim/work/a)\n", "", 0)
    simulated = Result("/dev/loop0: [65024]:2171201 (/run/thinsim/work/a)\n", "", 0)
    assert diff.unified("s.sh", real_run, simulated) == ""


def test_a_different_backing_file_path_still_counts():
    real_run = Result("/dev/loop0: [0256]:13 (/run/thinsim/work/a)\n", "", 0)
    simulated = Result("/dev/loop0: [0256]:13 (/run/thinsim/work/b)\n", "", 0)
    assert diff.unified("s.sh", real_run, simulated) != ""


SCRIPT = """\
truncate -s 64M md data
losetup -f --show md >/dev/null
losetup -f --show data >/dev/null
dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 0"
dmsetup message pool 0 create_thin 1
dmsetup create thin1 --table "0 8192 thin /dev/mapper/pool 1"
dd if=/dev/zero of=/dev/mapper/thin1 bs=64k count=3 oflag=direct conv=fsync
dmsetup status thin1
pwd
"""


@pytest.mark.kernel
def test_on_a_host_with_dm_thin_a_script_leaves_no_device_behind_and_the_hosts_own_alone(
    tmp_path, monkeypatch
):
    reason = real.dm_thin_here()
    if reason is not None:
        if in_ci():
            pytest.fail(f"CI must run this on a kernel with dm-thin, but: {reason}", pytrace=False)
        pytest.skip(f"needs root and dm-thin ({reason}): run inside thinsim vm")
    # A device the host had before: the script's clean-up must not touch it.
    subprocess.run(["dmsetup", "create", "theirs", "--table", "0 8 zero"], check=True)
    try:
        monkeypatch.setattr(real, "in_vm", lambda: False)  # the guest, as a host with dm-thin
        # The guest's root is read-only: the private folder goes on its scratch tmpfs.
        monkeypatch.setenv("THINSIM_REAL_DIR", os.environ.get("THINSIM_SCRATCH", "/tmp"))
        script = tmp_path / "s.sh"
        script.write_text(SCRIPT)
        loops_before = real.loop_devices()
        got = real.run_scripts([(script, [])])[0].masked()
        assert got == Result(
            "0 8192 thin 384 383\n/run/thinsim/work\n",
            "3+0 records in\n3+0 records out\n196608 bytes (197 kB, 192 KiB) copied, <time>\n",
            0,
        )
        assert real.dm_devices() == ["theirs"]
        assert real.loop_devices() == loops_before
    finally:
        subprocess.run(["dmsetup", "remove", "theirs"], check=False)
