"""``thinsim run``, ``thinsim shell`` and ``thinsim diff``'s simulated side killed at a random
point leave nothing behind, and the host folder still loads.

The tests kill the command with SIGTERM, SIGINT, SIGHUP or SIGKILL at a random moment of a
phase: the sandbox's set-up, a simulated command (a shim is running), or a real command (a
``sleep`` of the script is running); thinsim run in each phase in turn, the others in one
phase drawn at random.  Afterwards no process of the run is left (found by a
token in their environment or argv, not by name), no thinsim folder or socket is left in
$TMPDIR (a run killed by SIGKILL runs no handler: the next run removes what it left), and the
next run on the same --host folder sees the devices the setup committed.  The random seed is
in every failure's message.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from thinsim.host.run import ROOT, this_thinsim

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's root is the host's")

SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL]
PHASES = ["set-up", "simulated", "real"]
SHIM = b"/dev/.thinsim/bin/"  # a simulated command's argv[1]

SETUP = """\
truncate -s 4M meta.img; truncate -s 64M data.img
losetup -f meta.img; losetup -f data.img
dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 0"
dmsetup message pool 0 create_thin 0
dmsetup create thin --table "0 65536 thin /dev/mapper/pool 0"
"""
COMMITTED = "pool\t(254:0)\nthin\t(254:1)\n"

# simulated and real commands by turns; the token file in the working folder tells a folder
# of this run's from another's
LOOP = """\
export KILL_TEST_TOKEN={token}
touch {token}.here
while :; do
  dd if=/dev/zero of=/dev/mapper/thin bs=4k count=1 seek=$((RANDOM % 1000)) status=none
  dmsetup status pool > /dev/null
  sleep 0.2
done
"""
CHECK = "dmsetup ls; dmsetup status pool > /dev/null; echo status rc=$?\n"


def _default_signals() -> None:
    for sig in SIGNALS[:-1]:
        signal.signal(sig, signal.SIG_DFL)


def _processes_of(token: str) -> list[int]:
    """The processes whose environment or argv holds TOKEN (the run's: thinsim run, unshare,
    the namespace's init, bash, the shims, the script's commands)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            text = Path(f"/proc/{entry}/environ").read_bytes()
            text += Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in text:
            found.append(int(entry))
    return found


def _argvs_of(token: str) -> list[bytes]:
    argvs = []
    for pid in _processes_of(token):
        try:
            argvs.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    return argvs


def _exes_of(token: str) -> list[str]:
    exes = []
    for pid in _processes_of(token):
        try:
            exes.append(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            pass
    return exes


def _wait_for(what, seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.01)


def _wait_for_phase(phase: str, token: str, proc: subprocess.Popen, why: str) -> None:
    def reached() -> bool:
        assert proc.poll() is None, f"{why}: it ended before {phase} ({proc.returncode})"
        argvs = _argvs_of(token)
        if phase == "set-up":  # the namespace's init runs (the script starts after it)
            return any(b"thinsim.host.sandbox" in a for a in argvs)
        if phase == "simulated":  # a Python shim, or the compiled client (server.py)
            return any(SHIM in a for a in argvs) or any(
                "/thinsim/client-" in exe for exe in _exes_of(token)
            )
        return any(a.split(b"\0")[0] in (b"sleep", b"/usr/bin/sleep") for a in argvs)

    _wait_for(reached, 120, f"{why}: {phase} never came")


def _kill_all(token: str) -> None:
    for pid in _processes_of(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Run:
    """A host folder with committed devices and a $TMPDIR of its own, for one test."""

    def __init__(self, tmp_path: Path, seed: int) -> None:
        self.tmp_path, self.seed = tmp_path, seed
        self.random = random.Random(seed)
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.host = tmp_path / "host"
        self.token = f"thinsim-kill-{uuid.uuid4().hex}"
        self.env = {**os.environ, "TMPDIR": str(self.tmp), "KILL_TEST_TOKEN": self.token}
        r = self.run_script("setup.sh", SETUP + "dmsetup ls\n")
        assert (r.stdout, r.stderr) == (COMMITTED, ""), self.why

    @property
    def why(self) -> str:
        return f"seed {self.seed}"

    def script(self, name: str, text: str) -> Path:
        path = self.tmp_path / name
        path.write_text(text)
        return path

    def run_script(self, name: str, text: str) -> subprocess.CompletedProcess[str]:
        argv = ["run", "--host", str(self.host), "--workdir", "/run/thinsim"]
        return subprocess.run(
            this_thinsim("thinsim.cli", *argv, str(self.script(name, text))),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def kill(self, proc: subprocess.Popen, phase: str, sig: int) -> None:
        _wait_for_phase(phase, self.token, proc, self.why)
        time.sleep(self.random.uniform(0, 0.05 if phase == "simulated" else 0.3))
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def check_no_process(self) -> None:
        _wait_for(
            lambda: not _processes_of(self.token),
            30,
            f"{self.why}: processes of the run outlived it: {_argvs_of(self.token)}",
        )

    def check_left_nothing(self, sig: int) -> None:
        """No process of the run, the host loads with its devices, nothing in $TMPDIR."""
        self.check_no_process()
        if sig != signal.SIGKILL:  # the handlers removed it all
            assert list(self.tmp.iterdir()) == [], self.why
        self.env["KILL_TEST_TOKEN"] = "after"  # the next run is not the killed one
        r = self.run_script("check.sh", CHECK)
        assert (r.stdout, r.stderr, r.returncode) == (COMMITTED + "status rc=0\n", "", 0), self.why
        assert list(self.tmp.iterdir()) == [], f"{self.why}: the next run left them"
        assert sorted(p.name for p in self.host.iterdir()) == ["lock", "state.pickle"], self.why


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_thinsim_run_killed_at_random_points_leaves_nothing_and_its_host_loads(tmp_path, sig):
    # one host, killed in each phase in turn (a run killed outright leaves its folder to the
    # next run, the next phase's), then a run that checks it
    run = Run(tmp_path, random.randrange(1 << 32))
    argv = ["run", "--host", str(run.host), "--workdir", "/run/thinsim"]
    script = run.script("loop.sh", LOOP.format(token=run.token))
    for phase in PHASES:
        proc = subprocess.Popen(
            this_thinsim("thinsim.cli", *argv, str(script)),
            env=run.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        why = f"{run.why}, {phase}"
        try:
            run.kill(proc, phase, sig)
            assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), why
            assert proc.stderr.read() == b"", why  # no traceback, no complaint
            run.check_no_process()
            if sig != signal.SIGKILL:
                assert list(run.tmp.iterdir()) == [], why
        finally:
            proc.kill()
            proc.wait()
            _kill_all(run.token)
    run.check_left_nothing(sig)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_thinsim_shell_killed_at_a_random_point_leaves_nothing_and_its_host_loads(tmp_path, sig):
    run = Run(tmp_path, random.randrange(1 << 32))
    phase = run.random.choice(PHASES)
    script = run.script("loop.sh", LOOP.format(token=run.token))
    proc = subprocess.Popen(
        this_thinsim("thinsim.cli", "shell", "--host", str(run.host)),
        env=run.env,
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        proc.stdin.write(f"source {script}\n".encode())
        proc.stdin.flush()
        run.kill(proc, phase, sig)
        assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), run.why
        run.check_left_nothing(sig)
    finally:
        proc.kill()
        proc.wait()
        _kill_all(run.token)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_thinsim_diff_killed_at_a_random_point_leaves_no_process_and_no_folder(tmp_path, sig):
    # thinsim diff's simulated side (its real side needs a kernel with dm-thin) in a process
    # of its own: run_simulated gives thinsim run a fixed environment and /tmp
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    phase = rng.choice(PHASES)
    token = f"thinsim-kill-{uuid.uuid4().hex}"
    script = tmp_path / f"{token}.sh"
    script.write_text(SETUP + LOOP.format(token=token))
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); from pathlib import Path; "
        f"from thinsim.host.diff import run_simulated; run_simulated(Path({str(script)!r}))"
    )
    # with the signals' default actions, whatever this process was started with (nohup, or a
    # shell's & ignoring SIGINT): an ignored signal is inherited, and Python keeps it ignored
    diff = subprocess.Popen(
        [sys.executable, "-c", code],
        stderr=subprocess.PIPE,
        preexec_fn=_default_signals,  # noqa: PLW1509 (no threads here)
    )
    try:
        _wait_for_phase(phase, token, diff, f"seed {seed}")
        time.sleep(rng.uniform(0, 0.05 if phase == "simulated" else 0.3))
        diff.send_signal(sig)
        diff.wait(timeout=60)
        _wait_for(lambda: not _processes_of(token), 30, f"seed {seed}: processes outlived it")
        assert b"Traceback" not in diff.stderr.read() or sig == signal.SIGINT, f"seed {seed}"
        # thinsim run removes its folder last, on the SIGTERM its parent's death sends it
        _wait_for(
            lambda: not [p for p in Path("/tmp").glob("thinsim-*") if (p / "work").is_dir()
                         and (p / "work" / f"{token}.here").exists()],
            30,
            f"seed {seed}: thinsim run's folder outlived thinsim diff",
        )  # fmt: skip
    finally:
        diff.kill()
        diff.wait()
        _kill_all(token)


def test_a_folder_of_a_run_killed_outright_goes_with_the_next_run_and_a_live_ones_stays(
    tmp_path,
):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    script = tmp_path / "s.sh"
    script.write_text("touch here; sleep 60\n")
    argv = this_thinsim("thinsim.cli", "run", "--workdir", "/run/thinsim", str(script))
    live = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    killed = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(list(tmp.glob("*/work/here"))) == 2, 120, "the scripts never ran")
        (killed_folder,) = [p for p in tmp.iterdir() if str(killed.pid) in _holders(p)]
        (live_folder,) = set(tmp.iterdir()) - {killed_folder}
        killed.kill()
        killed.wait()
        assert killed_folder.exists()  # SIGKILL: no handler removed it
        script.write_text("true\n")
        r = subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
        assert r.returncode == 0
        assert list(tmp.iterdir()) == [live_folder]
        assert live.poll() is None
    finally:
        for proc in (live, killed):
            proc.kill()
            proc.wait()


def _holders(folder: Path) -> list[str]:
    """The pids that have FOLDER open (the run holding its lock)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fds = os.listdir(f"/proc/{entry}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{entry}/fd/{fd}") == str(folder):
                        pids.append(entry)
                except OSError:
                    pass
    return pids


def test_a_half_written_state_file_of_a_killed_command_goes_with_the_next_run(tmp_path):
    host = tmp_path / "host"
    script = tmp_path / "s.sh"
    script.write_text("dmsetup ls\n")
    argv = this_thinsim("thinsim.cli", "run", "--host", str(host), str(script))
    assert subprocess.run(argv, capture_output=True, timeout=120, check=False).returncode == 0
    # what _save_state leaves when its command is killed before the rename
    (host / "state.pickle.4242.tmp").write_bytes(b"half")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert (r.returncode, r.stdout) == (0, "No devices found\n")
    assert sorted(p.name for p in host.iterdir()) == ["lock", "state.pickle"]


# The host's process killed outright (kill -9) at random moments of a script that writes
# and flushes: a command in flight when it dies ends with an error (it is not run again: a dd
# may have read its input already), the next command starts a new process, and every write
# a dd flushed and reported done reads back.
KILLED_PROCESS = """\
RANDOM={seed}
( for k in $(seq 1 6); do
    sleep 0.$((RANDOM % 6 + 1))
    pkill -9 -f thinsim.host.server || :
  done ) &
killer=$!
for i in $(seq 1 30); do
  printf 'block %d\\n' $i | dd of=/dev/mapper/thin bs=4K seek=$((i * 16)) conv=sync,fsync \\
    status=none && echo $i >> flushed
  dmsetup message pool 0 create_thin $i > /dev/null 2>&1
done
wait $killer
"""
READ_BACK = """\
for i in $(cat flushed); do dd if=/dev/mapper/thin bs=4K skip=$((i * 16)) count=1 status=none \\
  | head -n1; done
dmsetup ls; dmsetup status pool > /dev/null; echo status rc=$?
"""


def test_the_hosts_process_killed_outright_mid_command_loses_nothing_committed(tmp_path):
    seed = random.randrange(1 << 15)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    host = tmp_path / "host"
    env = {**os.environ, "TMPDIR": str(tmp)}

    def run(text: str) -> subprocess.CompletedProcess[str]:
        script = tmp_path / "script.sh"
        script.write_text(text)
        argv = this_thinsim("thinsim.cli", "run", "--host", str(host), str(script))
        return subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
        )

    r = run(SETUP + KILLED_PROCESS.format(seed=seed))
    why = f"seed {seed}: {r.stderr}"
    assert r.returncode == 0, why
    for line in r.stderr.splitlines():  # the commands the process was running
        assert line in (
            f"thinsim: {name}: the host's process died while it ran the command; the host "
            "goes on from what it had committed"
            for name in ("dd", "dmsetup")
        ), why
    flushed = (tmp_path / "flushed").read_text().split()
    assert set(flushed) <= {str(i) for i in range(1, 31)}, why
    # every flushed block reads back, the pool answers, on a new process
    r = run(READ_BACK)
    expected = "".join(f"block {i}\n" for i in flushed) + COMMITTED + "status rc=0\n"
    assert (r.stdout, r.stderr, r.returncode) == (expected, "", 0), why
    # the metadata as the pool committed it passes Debian's thin_check (make test installs
    # thin-provisioning-tools; CI must have it)
    if shutil.which("thin_check") or os.environ.get("CI"):
        check = subprocess.run(
            ["thin_check", str(tmp_path / "meta.img")], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, f"{why}: {check.stdout}{check.stderr}"
    assert list(tmp.iterdir()) == [], why
    assert sorted(p.name for p in host.iterdir()) == ["lock", "state.pickle"], why
