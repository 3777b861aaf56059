"""The private /dev of ``thinsim run`` looks like a Debian host's.

A script gets terminals from a devpts of its own (openpty, script), a /dev/shm of its own the
size of a default tmpfs (half of RAM), a /dev as big as devtmpfs makes it, the links udev and
systemd make (fd, stdin, stdout, stderr, ptmx), and the descriptors bash's process
substitution hands it (``thinsim run <(echo ...)``).
"""

import os
import shlex
import shutil
import subprocess

import pytest
from test_host import thinsim_run

from thinsim.host.run import this_thinsim

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's root is the host's")


def _default_tmpfs_bytes() -> int:
    # mm/shmem.c shmem_default_max_blocks: totalram_pages() / 2, in pages
    with open("/proc/meminfo") as f:
        total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    page = os.sysconf("SC_PAGE_SIZE")
    return total_kib * 1024 // page // 2 * page


def test_openpty_gives_a_terminal_of_the_runs_own_devpts(tmp_path):
    host_master, host_slave = os.openpty()  # the host has a terminal the run must not see
    try:
        r = thinsim_run(
            tmp_path,
            """
python3 -c 'import os; m, s = os.openpty(); print(os.ttyname(s))'
ls /dev/pts; readlink /dev/ptmx
awk -F' - ' '$1 ~ / \\/dev\\/pts / {print $2}' /proc/self/mountinfo | tail -1  # the top one
""",
        )
    finally:
        os.close(host_master)
        os.close(host_slave)
    assert r.stderr == ""
    assert r.stdout == (
        "/dev/pts/0\nptmx\npts/ptmx\ndevpts devpts rw,gid=5,mode=620,ptmxmode=666\n"
    )


@pytest.mark.skipif(shutil.which("script") is None, reason="no script(1)")
def test_script_runs_a_command_on_a_terminal_of_its_own(tmp_path):
    r = thinsim_run(tmp_path, "script -qec 'tty; echo in' /dev/null; echo rc=$?\n")
    assert r.stdout.replace("\r\n", "\n") == "/dev/pts/0\nin\nrc=0\n"


def test_dev_shm_is_the_runs_own_tmpfs_of_half_the_ram(tmp_path):
    name = f"thinsim-test-{os.getpid()}"
    r = thinsim_run(
        tmp_path,
        f"""
echo hi > /dev/shm/{name}; cat /dev/shm/{name}
stat -f -c '%T %b %S' /dev/shm
awk '$5 == "/dev/shm" {{print $6}}' /proc/self/mountinfo | tail -1
""",
    )
    assert not os.path.exists(f"/dev/shm/{name}")
    first, second, options = r.stdout.splitlines()
    assert first == "hi"
    fs, blocks, size = second.split()
    assert (fs, int(blocks) * int(size)) == ("tmpfs", _default_tmpfs_bytes())
    assert options == "rw,nosuid,nodev,relatime"


def test_dev_holds_a_file_of_megabytes_as_a_hosts_devtmpfs_does(tmp_path):
    # dd to a typo under /dev makes a plain file on a real host; e4b6105's /dev was 1 MiB
    r = thinsim_run(
        tmp_path,
        "dd if=/dev/zero of=/dev/mapper/typo bs=1M count=4 status=none; echo rc=$?\n"
        "stat -c %s /dev/mapper/typo; stat -f -c '%b %S' /dev\n",
    )
    rc, size, blocks = r.stdout.splitlines()
    assert (rc, size) == ("rc=0", str(4 << 20))
    assert int(blocks.split()[0]) * int(blocks.split()[1]) == _default_tmpfs_bytes()


def test_the_links_and_harmless_nodes_of_a_hosts_dev_are_there(tmp_path):
    r = thinsim_run(
        tmp_path,
        "for n in fd stdin stdout stderr ptmx; do echo $n $(readlink /dev/$n); done\n"
        "stat -c '%n %F %t:%T %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom "
        "/dev/tty\n",
    )
    assert r.stdout == (
        "fd /proc/self/fd\nstdin /proc/self/fd/0\nstdout /proc/self/fd/1\n"
        "stderr /proc/self/fd/2\nptmx pts/ptmx\n"
        "/dev/null character special file 1:3 666\n/dev/zero character special file 1:5 666\n"
        "/dev/full character special file 1:7 666\n"
        "/dev/random character special file 1:8 666\n"
        "/dev/urandom character special file 1:9 666\n/dev/tty character special file 5:0 666\n"
    )


def test_a_script_given_by_process_substitution_runs_with_its_arguments(tmp_path):
    run = shlex.join(this_thinsim("thinsim.cli", "run"))
    r = subprocess.run(
        ["bash", "-c", f"""{run} <(echo 'dmsetup ls; echo "$0"; cat "$1"') <(echo data)"""],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines()[0] == "No devices found"
    assert r.stdout.splitlines()[1].startswith("/dev/fd/")
    assert r.stdout.splitlines()[2:] == ["data"]


def test_a_descriptor_not_open_stays_a_missing_file(tmp_path):
    r = thinsim_run(tmp_path, 'cat "$0"\n')
    assert r.returncode == 0
    r = subprocess.run(
        this_thinsim("thinsim.cli", "run", "/dev/fd/77"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 127
    assert r.stderr == "bash: /dev/fd/77: No such file or directory\n"


@pytest.mark.skipif(shutil.which("script") is None, reason="no script(1)")
def test_a_run_from_a_terminal_gets_a_named_terminal_of_its_own_and_gives_the_users_back(
    tmp_path,
):
    # the host's terminals are not in the run's devpts: the run's init relays the user's
    # terminal to one of the run's own (as docker run -t), so the script's has a name
    (tmp_path / "t.sh").write_text("tty; stty size; ls /dev/pts | tr '\\n' ' '; echo\n")
    run = shlex.join(this_thinsim("thinsim.cli", "run", str(tmp_path / "t.sh")))
    host_master, host_slave = os.openpty()  # the user's terminal is not the host's first
    try:
        r = subprocess.run(
            ["script", "-qec", f"stty rows 33 cols 77; {run}; echo rc=$?; stty -a", "/dev/null"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(host_master)
        os.close(host_slave)
    out = r.stdout.replace("\r\n", "\n")
    assert out.startswith("/dev/pts/0\n33 77\n0 ptmx \nrc=0\n"), out
    settings = out.split("rc=0\n", 1)[1].split()
    assert "icanon" in settings and "echo" in settings  # not left raw
