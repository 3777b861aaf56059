"""``thinsim run --explain`` (issue 14): after a simulated command that fails, the kernel log
lines that say why, which dmsetup alone does not print (its ``Invalid argument`` sends a
learner to dmesg without saying so).  Without the option the output is the real host's."""

import subprocess

from thinsim.host.run import this_thinsim

SCRIPT = """\
dd if=/dev/zero of=disk.img bs=1 count=0 seek=1G status=none
losetup -f --show disk.img
dmsetup create mydevice --table "0 2048 linear /dev/loop0 0"
dmsetup message mydevice 0 hello
echo "status $?"
dmsetup status mydevice
dmsetup remove mydevice
losetup -d /dev/loop0
"""


def _run(tmp_path, *options):
    (tmp_path / "t.sh").write_text(SCRIPT)
    argv = this_thinsim("thinsim.cli", "run", *options, "t.sh")
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)


def test_explain_prints_after_a_failed_message_the_kernel_lines_that_say_why(tmp_path):
    r = _run(tmp_path, "--explain")
    assert r.returncode == 0
    assert r.stdout == "/dev/loop0\nstatus 1\n0 2048 linear \n"
    assert r.stderr == (
        "device-mapper: message ioctl on mydevice  failed: Invalid argument\n"
        "Command failed.\n"
        "thinsim --explain: dmsetup failed; the kernel logged (dmesg):\n"
        "  device-mapper: ioctl: Target type does not support messages\n"
    )


def test_without_explain_a_failed_command_prints_only_what_the_real_one_prints(tmp_path):
    r = _run(tmp_path)
    assert r.stderr == (
        "device-mapper: message ioctl on mydevice  failed: Invalid argument\nCommand failed.\n"
    )


def test_explain_is_for_the_simulated_host(tmp_path):
    r = _run(tmp_path, "--backend", "kernel", "--explain")
    assert r.returncode == 2
    assert r.stderr == "thinsim run: --explain is for the simulated host\n"
