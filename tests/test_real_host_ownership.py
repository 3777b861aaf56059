"""The real-kernel paths touch only devices they can prove they made.

- Only a guest that ``thinsim vm`` booted wipes its devices: proven by the nonce its kernel
  was booted with, never by an environment variable (THINSIM_IN_VM=1 once sufficed).
- ``thinsim run --backend kernel`` on a host with dm-thin removes afterwards only the loop
  devices on files of its own folder and the dm devices its dmsetup wrote down, never
  "what appeared during the run"; a runner killed outright is cleaned up by the next run.
- The kernel backend's ledger detaches a loop device only when it is on the very file the
  ledger made (device, inode and file handle), not on a namesake.

Most of these use this machine's real loop devices (root; no device-mapper needed): decoy
loop devices of another owner are attached with the real losetup and must stay bound to the
same file throughout.  The dm side runs in the VM (marker ``kernel``).
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import in_ci

from thinsim import vm
from thinsim.backends import ledger
from thinsim.backends.identity import FileId, backing_file, loop_file
from thinsim.host import real

ROOT = Path(__file__).resolve().parent.parent


def _loops_here() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/loop-control"):
        return "needs loop devices"
    return None


loops = pytest.mark.skipif(_loops_here() is not None, reason=str(_loops_here()))


class Decoy:
    """A loop device of another owner: attached with the real losetup to a file of its own,
    detached after the test if (and only if) it is still on that file."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / name
        self.path.write_bytes(b"\0" * (1 << 20))
        st = self.path.stat()
        self.id = (st.st_dev, st.st_ino)
        self.dev = subprocess.run(
            ["losetup", "-f", "--show", str(self.path)], capture_output=True, text=True, check=True
        ).stdout.strip()

    def bound(self) -> bool:
        return loop_file(self.dev) == self.id and backing_file(self.dev) == str(self.path)

    def remove(self) -> None:
        if loop_file(self.dev) == self.id:
            subprocess.run(["losetup", "-d", self.dev], check=False)


@pytest.fixture
def decoys(tmp_path):
    made: list[Decoy] = []
    folder = tmp_path / "theirs"
    folder.mkdir()

    def make(name: str = "decoy") -> Decoy:
        made.append(Decoy(folder, f"{name}{len(made)}"))
        return made[-1]

    yield make
    for decoy in made:
        decoy.remove()


@pytest.fixture
def where(tmp_path, monkeypatch):
    """The runs' folder ($THINSIM_REAL_DIR); what a failed test left there is cleaned up."""
    folder = tmp_path / "runs"
    folder.mkdir()
    monkeypatch.setenv("THINSIM_REAL_DIR", str(folder))
    yield folder
    release_all(folder)


def run_script(tmp_path: Path, text: str, name: str = "s.sh", **kw) -> real.Result:
    script = tmp_path / name
    script.write_text(text)
    return real.run_on_host(script, **kw)


def when_ready(where: Path, action, marker: str = "ready") -> threading.Thread:
    """In a thread: once a run's script has made MARKER in its working folder, do ACTION,
    then make ``go`` there (the script waits for it)."""

    def wait() -> None:
        work = wait_for(where, marker)
        action()
        (work / "go").touch()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


WAIT_FOR_GO = "touch ready; while [ ! -e go ]; do sleep 0.05; done\n"
SCRIPT_LOOPS = "truncate -s 1M a b\nlosetup -f a\nlosetup -f b\n"


# -- the VM's wipe needs the VM's proof ---------------------------------------------------


def test_only_a_kernel_booted_with_the_nonce_of_this_boots_file_is_a_thinsim_vm_guest(
    tmp_path, monkeypatch
):
    nonce = "0123456789abcdef0123456789abcdef"
    (tmp_path / "nonce").write_text(nonce)
    cmdline = tmp_path / "cmdline"
    monkeypatch.setenv(vm.NONCE_FILE, str(tmp_path / "nonce"))
    cmdline.write_text(f"console=ttyS0 thinsim.vm={nonce} quiet\n")
    assert vm.in_guest(cmdline)
    for line in (
        "console=ttyS0 quiet\n",  # a real host: booted without the parameter
        f"thinsim.vm={'f' * 32}\n",  # another boot's nonce
        "thinsim.vm=1\n",
        f"thinsim.vm={nonce} thinsim.vm={nonce}\n",
        f"thinsim_vm={nonce}\n",
    ):
        cmdline.write_text(line)
        assert not vm.in_guest(cmdline), line
    cmdline.write_text(f"thinsim.vm={nonce}\n")
    (tmp_path / "nonce").write_text("f" * 32)  # the file of another boot
    assert not vm.in_guest(cmdline)
    monkeypatch.delenv(vm.NONCE_FILE)
    assert not vm.in_guest(cmdline)


def test_no_environment_makes_this_host_a_thinsim_vm_guest(tmp_path, monkeypatch):
    (tmp_path / "nonce").write_text("0123456789abcdef0123456789abcdef")
    for key, value in {
        "THINSIM_IN_VM": "1",
        "THINSIM_SCRATCH": vm.SCRATCH,
        vm.NONCE_FILE: str(tmp_path / "nonce"),
    }.items():
        monkeypatch.setenv(key, value)
    assert "thinsim.vm=" not in Path("/proc/cmdline").read_text()
    assert not real.in_vm()


def test_each_boot_gets_a_fresh_nonce_on_its_kernel_command_line_and_in_a_shared_file(
    monkeypatch,
):
    booted = []

    def fake_run(argv, capture, timeout, **_):
        nonce = argv[argv.index("--append") + 1].removeprefix("thinsim.vm=")
        # --exec names the guest's script, a file beside the nonce file (vm.vng_argv).
        script = Path(argv[argv.index("--exec") + 1].removeprefix("exec /bin/sh ")).read_text()
        path = re.search(f"{vm.NONCE_FILE}=([^ ;]+)", script)[1]
        assert Path(path).read_text() == nonce
        assert argv[argv.index(os.path.dirname(path)) - 1] == "--rwdir"
        booted.append((nonce, path))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setenv("THINSIM_VM_ACCEL", "tcg")
    monkeypatch.setattr(vm.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(vm, "_run", fake_run)
    vm.accelerator.cache_clear()
    vm.run("true", kernel="/boot/k")
    vm.run("true", kernel="/boot/k")
    vm.accelerator.cache_clear()
    (n1, p1), (n2, p2) = booted
    assert len(n1) == 32 and n1 != n2
    assert not os.path.exists(p1) and not os.path.exists(p2)  # gone with the boot


@loops
def test_thinsim_in_vm_set_on_a_host_wipes_no_loop_device_in_a_kernel_run_or_a_diff(
    tmp_path, decoys
):
    # What once made a kernel run or a diff run `losetup -D` here (and delete every loop
    # device, and mkfs /dev/ram0): THINSIM_IN_VM=1 with the rest of a guest's environment.
    decoy = decoys()
    (tmp_path / "nonce").write_text("0123456789abcdef0123456789abcdef")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("vng", "qemu-system-x86_64"):  # a VM that never boots: nothing runs
        (bin_ / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_ / tool).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "THINSIM_IN_VM": "1",
        "THINSIM_SCRATCH": vm.SCRATCH,
        vm.NONCE_FILE: str(tmp_path / "nonce"),
        "THINSIM_VM_ACCEL": "tcg",
        "THINSIM_REAL_DIR": str(tmp_path),
    }
    script = tmp_path / "s.sh"
    script.write_text("echo hi\n")
    for argv in (["run", "--backend", "kernel", str(script)], ["diff", str(script)]):
        proc = subprocess.run(
            [sys.executable, "-m", "thinsim.cli", *argv],
            capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert decoy.bound(), (argv, proc.stderr)
        assert proc.returncode == 2, proc.stderr
        assert "the VM ran no script" in proc.stderr


@loops
def test_the_vms_wipe_refuses_to_run_outside_a_guest_of_thinsim_vm(decoys, monkeypatch):
    decoy = decoys()
    monkeypatch.setenv("THINSIM_IN_VM", "1")
    with pytest.raises(real.RealHostError, match="not in a guest of thinsim vm"):
        real.clean_devices()
    assert decoy.bound()


# -- a run on a host: only what it made ---------------------------------------------------


@loops
def test_a_run_detaches_its_own_loop_devices_and_none_another_owner_attached_before_or_during(
    tmp_path, where, decoys
):
    before = decoys("before")
    during = []
    thread = when_ready(where, lambda: during.append(decoys("during")))
    got = run_script(tmp_path, SCRIPT_LOOPS + WAIT_FOR_GO + "losetup -j a | wc -l\n")
    thread.join()
    assert got == real.Result("1\n", "", 0)
    assert before.bound() and during[0].bound()
    assert not [d for d in ledger.bound_loops() if (backing_file(d) or "").endswith("/work/a")]
    assert list(where.iterdir()) == []


@loops
@pytest.mark.parametrize("ending", ["fails", "times out"])
def test_a_run_that_fails_or_times_out_leaves_another_owners_loop_devices_too(
    tmp_path, where, decoys, ending
):
    before = decoys("before")
    during = []
    thread = when_ready(where, lambda: during.append(decoys("during")))
    tail = "exit 3\n" if ending == "fails" else "sleep 60\n"
    got = run_script(tmp_path, SCRIPT_LOOPS + WAIT_FOR_GO + tail, timeout=5)
    thread.join()
    assert got.returncode == (3 if ending == "fails" else "timeout")
    assert before.bound() and during[0].bound()
    assert list(where.iterdir()) == []


def waiting(marker: str) -> str:
    """Script lines: make MARKER, then wait for the file go-MARKER."""
    return f"touch {marker}; while [ ! -e go-{marker} ]; do sleep 0.05; done\n"


def wait_for(where: Path, marker: str, seconds: float = 300) -> Path:
    """The working folder of the run whose script made MARKER (emulated VMs are slow)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = list(where.glob(f"thinsim-real-*/**/{marker}"))
        if found:
            return found[0].parent
        time.sleep(0.05)
    raise AssertionError(f"no run made {marker}")


def release_all(where: Path, seconds: float = 300) -> None:
    """Let every waiting script of ``where`` go, and wait for their runs to end (after a
    failed assertion: no run is left to die with pytest, uncleaned)."""
    for marker in where.glob("thinsim-real-*/**/ready*"):
        (marker.parent / f"go-{marker.name}").touch()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and list(where.glob("thinsim-real-*/ledger")):
        real.recover_runs(where)
        time.sleep(0.1)


@loops
def test_concurrent_runs_each_detach_only_their_own_loop_devices(tmp_path, where, decoys):
    before = decoys("before")
    results = {}

    def run(name: str, text: str) -> None:
        results[name] = run_script(tmp_path, text, f"{name}.sh")

    # A and B both hold loop devices; A ends first, then B.
    a = threading.Thread(target=run, args=("a", SCRIPT_LOOPS + waiting("ready-a")), daemon=True)
    b = threading.Thread(
        target=run, args=("b", "truncate -s 1M c\nlosetup -f c\n" + waiting("ready-b")), daemon=True
    )
    a.start()
    work_a = wait_for(where, "ready-a")
    b.start()
    work_b = wait_for(where, "ready-b")
    loops_a = [d for d in ledger.bound_loops() if loop_file(d) in real.run_files(work_a)]
    loops_b = [d for d in ledger.bound_loops() if loop_file(d) in real.run_files(work_b)]
    (work_a / "go-ready-a").touch()
    a.join()
    assert [loop_file(d) for d in loops_a] == [None, None]
    st = (work_b / "c").stat()
    assert [loop_file(d) for d in loops_b] == [(st.st_dev, st.st_ino)]
    (work_b / "go-ready-b").touch()
    b.join()
    assert results == {"a": real.Result("", "", 0), "b": real.Result("", "", 0)}
    assert loop_file(loops_b[0]) is None
    assert before.bound()
    assert list(where.iterdir()) == []


KILLED_RUNNER = """
import sys
from pathlib import Path
from thinsim.host import real
real.run_on_host(Path(sys.argv[1]))
"""


@loops
def test_a_runner_killed_outright_takes_its_script_along_and_the_next_run_removes_only_its_loops(
    tmp_path, where, decoys
):
    before = decoys("before")
    script = tmp_path / "killed.sh"
    script.write_text(SCRIPT_LOOPS + "echo $$ > pid\n" + WAIT_FOR_GO + "sleep 600\n")
    runner = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUNNER, str(script)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    during = []
    when_ready(where, lambda: during.append(decoys("during"))).join()
    (work,) = where.glob("thinsim-real-*/mnt/work")
    pid = int((work / "pid").read_text())
    runner.kill()
    runner.wait()
    for _ in range(100):  # the script dies with its runner (parent-death signal)
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.05)
    alive = os.path.exists(f"/proc/{pid}")
    try:
        os.killpg(pid, signal.SIGKILL)  # what the script started is not this test's concern
    except ProcessLookupError:
        pass
    assert not alive
    left = [d for d in ledger.bound_loops() if loop_file(d) in real.run_files(work.parent)]
    assert len(left) == 2  # nobody cleaned up yet
    after = decoys("after")
    assert run_script(tmp_path, "echo next\n") == real.Result("next\n", "", 0)
    assert [loop_file(d) for d in left] == [None, None]
    assert before.bound() and during[0].bound() and after.bound()
    assert list(where.iterdir()) == []


@loops
def test_a_loop_on_a_file_the_script_deleted_is_left_and_said_so(tmp_path, where, capfd):
    got = run_script(tmp_path, "truncate -s 1M a\nlosetup -f a\nlosetup -j a | cut -d: -f1\nrm a\n")
    dev = got.stdout.strip()
    try:
        assert backing_file(dev).endswith("/work/a (deleted)")
        assert f"thinsim: left {dev}: its backing file " in capfd.readouterr().err
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_a_dm_device_is_the_runs_only_under_the_number_and_name_its_dmsetup_wrote_down():
    text = (
        "+ 254:0 pool\n"
        "+ 254:1 thin\n"
        "~ 254:1 renamed\n"  # the run renamed its thin
        "~ 254:7 mine\n"  # a rename of a device the run did not make grants nothing
        "+ 254:2 gone\n"
        "- 254:2\n"  # removed by the run: its number may go to someone else
        "- 254:9\n"
    )
    assert real.recorded_dm(text) == {"254:0": "pool", "254:1": "renamed"}


def test_a_file_with_a_link_outside_the_runs_folder_is_not_the_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "a").write_text("a")
    (run / "b").write_text("b")
    os.link(run / "b", run / "b2")  # both links inside: still the run's
    (tmp_path / "theirs").write_text("t")
    os.link(tmp_path / "theirs", run / "t")  # someone else's file linked in
    os.symlink(tmp_path / "theirs", run / "s")
    ids = {name: (p.stat().st_dev, p.stat().st_ino) for name in "ab" for p in [run / name]}
    assert real.run_files(run) == set(ids.values())


# -- the kernel backend's ledger ----------------------------------------------------------


def dead_ledger(folder: Path, path: Path) -> Path:
    """A ledger as a KernelPool killed after attaching ``path`` leaves it: returns the loop
    device; the ledger's lock is released (its run is dead)."""
    book = ledger.Ledger("deadbeef", folder)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    book.add("file", str(path))
    book.add("id", str(FileId.of_fd(fd)), str(path))
    os.ftruncate(fd, 1 << 20)
    os.close(fd)
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    book.add("loop", dev, str(path))
    os.close(book._fd)  # dead: no close(), the flock goes with the descriptor
    return Path(dev)


@loops
def test_a_dead_runs_ledger_does_not_detach_or_delete_a_namesake_on_its_loop_number(tmp_path):
    path = tmp_path / "meta"
    dev = str(dead_ledger(tmp_path / "ledgers", path))
    # Someone detaches it, deletes the file and makes their own under the same name (ext4
    # gives it the freed inode number), and attaches it: the kernel hands out the same loop.
    subprocess.run(["losetup", "-d", dev], check=True)
    path.unlink()
    path.write_bytes(b"\0" * (1 << 20))
    theirs = (path.stat().st_dev, path.stat().st_ino)
    subprocess.run(["losetup", dev, str(path)], check=True)
    try:
        ledger.recover(tmp_path / "ledgers")
        assert loop_file(dev) == theirs
        assert path.exists()
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@loops
def test_a_dead_runs_loop_is_detached_even_after_someone_deleted_its_file(tmp_path):
    path = tmp_path / "meta"
    dev = str(dead_ledger(tmp_path / "ledgers", path))
    path.unlink()
    try:
        assert backing_file(dev) == f"{path} (deleted)"
        assert ledger.recover(tmp_path / "ledgers") == [f"loop {dev}"]
        assert loop_file(dev) is None
    finally:
        if backing_file(dev) == f"{path} (deleted)":
            subprocess.run(["losetup", "-d", dev], check=False)


def test_a_ledger_file_is_deleted_only_while_its_path_names_that_very_file(tmp_path):
    folder, path = tmp_path / "ledgers", tmp_path / "data"
    book = ledger.Ledger("cafe0001", folder)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    book.add("file", str(path))
    book.add("id", str(FileId.of_fd(fd)), str(path))
    os.close(fd)
    path.unlink()
    path.write_text("theirs")
    assert ledger.teardown(book.entries()) == []
    assert path.read_text() == "theirs"
    book.close()


# -- on a host with dm-thin (the VM) ------------------------------------------------------


@pytest.fixture
def dm_host(tmp_path, monkeypatch):
    """The VM's guest as a host with dm-thin (run_on_host), runs' folders on its tmpfs."""
    reason = real.dm_thin_here()
    if reason is not None:
        if in_ci():
            pytest.fail(f"CI must run this on a kernel with dm-thin, but: {reason}", pytrace=False)
        pytest.skip(f"needs root and dm-thin ({reason}): run inside thinsim vm")
    monkeypatch.setattr(real, "in_vm", lambda: False)
    folder = Path(os.environ.get("THINSIM_SCRATCH") or tmp_path) / f"runs-{tmp_path.name}"
    folder.mkdir()
    monkeypatch.setenv("THINSIM_REAL_DIR", str(folder))
    made: list[str] = []

    def theirs(name: str, table: str) -> None:
        subprocess.run(["dmsetup", "create", name, "--table", table], check=True)
        made.append(name)

    yield folder, theirs
    release_all(folder)
    for name in reversed(made):
        subprocess.run(["dmsetup", "remove", name], check=False)


def dm_state(names) -> dict[str, tuple[str, str]]:
    """name -> (MAJOR:MINOR, table) of dm devices."""
    numbers = {name: number for number, name in real.dm_names().items()}
    state = {}
    for name in names:
        table = subprocess.run(
            ["dmsetup", "table", name], capture_output=True, text=True, check=False
        )
        state[name] = (numbers.get(name, ""), table.stdout)
    return state


def pool_script(tag: str, tail: str) -> str:
    """A pool, a thin (renamed), and a zero device made twice, all named -TAG; then TAIL."""
    return f"""\
truncate -s 64M md data
md=$(losetup -f --show md)
data=$(losetup -f --show data)
dmsetup create pool-{tag} --table "0 131072 thin-pool $md $data 128 0"
dmsetup message pool-{tag} 0 create_thin 1
dmsetup create thin-{tag} --table "0 8192 thin /dev/mapper/pool-{tag} 1"
dmsetup rename thin-{tag} renamed-{tag}
dmsetup create zero-{tag} --table "0 8 zero"
dmsetup remove zero-{tag}
echo "0 8 zero" | dmsetup create zero-{tag}
dmsetup suspend pool-{tag}
{waiting("ready-" + tag)}{tail}"""


def linear_script(tag: str, tail: str) -> str:
    """Two loop devices and a suspended linear device over one, named -TAG; then TAIL."""
    return f"""\
truncate -s 1M a b
losetup -f b
dmsetup create lin-{tag} --table "0 1024 linear $(losetup -f --show a) 0"
dmsetup suspend lin-{tag}
{waiting("ready-" + tag)}{tail}"""


def theirs_left(state) -> None:
    assert dm_state(state) == state


def ours_gone(tag: str) -> bool:
    return not [n for n in real.dm_names().values() if n.endswith(f"-{tag}")]


@pytest.mark.kernel
def test_on_a_host_with_dm_thin_runs_remove_only_the_dm_and_loop_devices_they_made(
    tmp_path, dm_host, decoys
):
    # A (fails) and B run at once; C's runner is killed outright while A and B live; A
    # ends, then D's start cleans up C while B still runs, then B ends.  Devices of another
    # owner, made before and during, stay the same throughout: bound, same numbers, tables.
    where, theirs = dm_host
    loop = decoys("before")
    theirs("theirs-zero", "0 8 zero")
    theirs("theirs-lin", f"0 1024 linear {loop.dev} 0")
    results = {}

    def run(tag: str, text: str) -> None:
        results[tag] = run_script(tmp_path, text, f"{tag}.sh", timeout=1800)  # slow VMs

    a = threading.Thread(target=run, args=("a", pool_script("a", "exit 3\n")), daemon=True)
    a.start()
    work_a = wait_for(where, "ready-a")
    b = threading.Thread(target=run, args=("b", linear_script("b", "")), daemon=True)
    b.start()
    work_b = wait_for(where, "ready-b")
    during = decoys("during")
    theirs("theirs-during", f"0 1024 linear {loop.dev} 1024")
    state = dm_state(["theirs-zero", "theirs-lin", "theirs-during"])
    script = tmp_path / "c.sh"
    script.write_text(linear_script("c", "sleep 600\n"))
    runner = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUNNER, str(script)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    work_c = wait_for(where, "ready-c")
    runner.kill()
    runner.wait()
    loops = {
        tag: [d for d in ledger.bound_loops() if loop_file(d) in real.run_files(work)]
        for tag, work in (("a", work_a), ("b", work_b), ("c", work_c))
    }
    assert [len(v) for v in loops.values()] == [2, 2, 2]
    (work_a / "go-ready-a").touch()
    a.join()
    assert results["a"] == real.Result("", "", 3)
    assert ours_gone("a") and not ours_gone("b") and not ours_gone("c")
    assert [loop_file(d) for d in loops["a"]] == [None, None]
    theirs_left(state)
    assert run_script(tmp_path, "echo d\n") == real.Result("d\n", "", 0)  # recovers C
    assert ours_gone("c") and not ours_gone("b")
    assert [loop_file(d) for d in loops["c"]] == [None, None]
    assert all(loop_file(d) is not None for d in loops["b"])
    theirs_left(state)
    (work_b / "go-ready-b").touch()
    b.join()
    assert results["b"] == real.Result("", "", 0)
    assert ours_gone("b")
    assert [loop_file(d) for d in loops["b"]] == [None, None]
    theirs_left(state)
    assert loop.bound() and during.bound()
    assert list(where.iterdir()) == []
