"""thinsim vm: how the VM is chosen and set up.  The boot itself (a minute under TCG) runs only
when THINSIM_BOOT_TESTS=1, since other tests and engineers share the machine's two cores."""

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thinsim import vm

ROOT = str(Path(__file__).resolve().parents[1])

boot = pytest.mark.skipif(
    os.environ.get("THINSIM_BOOT_TESTS") != "1", reason="boots a VM: set THINSIM_BOOT_TESTS=1"
)


def test_the_newest_kernel_image_is_booted_in_version_order(monkeypatch):
    monkeypatch.delenv("THINSIM_KERNEL", raising=False)
    images = ["/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-10-amd64"]
    monkeypatch.setattr(vm.glob, "glob", lambda pattern: images)
    assert vm.kernel_image() == "/boot/vmlinuz-6.1.0-10-amd64"


def test_a_missing_kernel_image_says_which_package_brings_it(monkeypatch):
    monkeypatch.delenv("THINSIM_KERNEL", raising=False)
    monkeypatch.setattr(vm.glob, "glob", lambda pattern: [])
    with pytest.raises(vm.VMError, match="apt-get install linux-image-amd64"):
        vm.kernel_image()


def test_missing_vng_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(vm.shutil, "which", lambda name: None)
    monkeypatch.setattr(vm.sys, "executable", str(tmp_path / "python"))  # no vng beside it
    with pytest.raises(vm.VMError, match=r"pip install virtme-ng.*apt-get install qemu"):
        vm.check_tools()


def test_vng_beside_this_python_is_found_when_it_is_not_on_path(monkeypatch, tmp_path):
    # .venv/bin/thinsim run by its path: pip put vng in .venv/bin, which is not on PATH
    (tmp_path / "vng").write_text("#!/bin/sh\n")
    (tmp_path / "vng").chmod(0o755)
    monkeypatch.setattr(vm.shutil, "which", lambda name: None)
    monkeypatch.setattr(vm.sys, "executable", str(tmp_path / "python"))
    assert vm.vng() == str(tmp_path / "vng")


def test_kvm_is_not_used_when_there_is_no_dev_kvm(monkeypatch):
    monkeypatch.setattr(vm.os.path, "exists", lambda path: False)
    assert vm.probe_kvm("/boot/vmlinuz") == (False, "/dev/kvm does not exist")


def test_a_kvm_guest_that_dies_at_start_means_software_emulation(monkeypatch, tmp_path):
    # What QEMU does on this project's machines: it aborts before the guest runs.
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text(
        "#!/bin/sh\necho 'qemu-system-x86_64: error: failed to set MSR 0x10a'\nexit 134\n"
    )
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(vm.os.path, "exists", lambda path: True)
    monkeypatch.setattr(vm.os, "access", lambda path, mode: True)
    usable, why = vm.probe_kvm("/boot/vmlinuz")
    assert not usable
    assert why == (
        "a KVM guest dies at start"
        " (qemu exit 134: qemu-system-x86_64: error: failed to set MSR 0x10a)"
    )


def test_the_accelerator_can_be_forced(monkeypatch):
    monkeypatch.setenv("THINSIM_VM_ACCEL", "tcg")
    vm.accelerator.cache_clear()
    assert vm.accelerator("/nonexistent") == "tcg"
    vm.accelerator.cache_clear()


def test_software_emulation_boots_with_kvm_disabled(monkeypatch):
    monkeypatch.setenv("THINSIM_VM_ACCEL", "tcg")
    monkeypatch.setattr(vm.shutil, "which", lambda name: "/usr/bin/" + name)
    vm.accelerator.cache_clear()
    argv = vm.vng_argv("true", kernel="/boot/k", rwdirs=["/a", "/a", "/b"], cwd="/c")
    vm.accelerator.cache_clear()
    assert argv[:10] == [
        "vng", "--run", "/boot/k", "--user", "root", "--memory", "2G", "--cpus", "2",
        "--disable-kvm",
    ]  # fmt: skip
    assert argv[10:14] == ["--rwdir", "/a", "--rwdir", "/b"]


def test_the_guest_loads_dm_thin_and_loop_and_mounts_a_scratch_tmpfs_before_the_command():
    line = vm.guest_script("echo 'a b'", cwd="/work x", modules=["brd rd_nr=1"], env={"A": "1 2"})
    assert line == (
        "{ modprobe dm-thin-pool && modprobe loop && modprobe brd rd_nr=1"
        " && mkdir -p /run/thinsim-scratch"
        " && mount -t tmpfs -o size=8g thinsim-scratch /run/thinsim-scratch; }"
        " || { echo 'thinsim vm: guest set-up failed' >&2; exit 125; };"
        " export THINSIM_SCRATCH=/run/thinsim-scratch A='1 2';"
        " cd '/work x' && exec /bin/sh -c 'echo '\"'\"'a b'\"'\"''"
    )


def test_the_guest_script_runs_the_command_in_the_folder_with_its_environment(tmp_path):
    # The same line under a plain sh, with the set-up commands stubbed: what the guest does.
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("modprobe", "mount", "mkdir"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
        (stubs / name).chmod(0o755)
    line = vm.guest_script("pwd; echo $A; echo e >&2; exit 3", cwd=str(tmp_path), env={"A": "1 2"})
    env = {"PATH": f"{stubs}:/usr/bin:/bin"}
    proc = subprocess.run(["sh", "-c", line], capture_output=True, text=True, env=env, check=False)
    assert (proc.stdout, proc.stderr, proc.returncode) == (f"{tmp_path}\n1 2\n", "e\n", 3)


def test_a_failed_guest_set_up_is_exit_status_125(tmp_path):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "modprobe").write_text("#!/bin/sh\nexit 1\n")
    (stubs / "modprobe").chmod(0o755)
    line = vm.guest_script("echo never", cwd="/")
    proc = subprocess.run(
        ["sh", "-c", line],
        capture_output=True,
        text=True,
        env={"PATH": f"{stubs}:/usr/bin:/bin"},
        check=False,
    )
    assert (proc.stdout, proc.stderr, proc.returncode) == (
        "",
        "thinsim vm: guest set-up failed\n",
        125,
    )


@boot
def test_a_command_in_the_vm_sees_dm_thin_and_returns_its_output_and_status():
    proc = vm.run("dmsetup targets | grep thin; echo to-stderr >&2; exit 7", timeout=600)
    assert (proc.stdout, proc.stderr, proc.returncode) == (
        "thin-pool        v1.22.0\nthin             v1.22.0\n",
        "to-stderr\n",
        7,
    )


@boot
def test_backing_files_go_on_a_tmpfs_in_the_vm():
    proc = vm.run('stat -f -c %T "$THINSIM_SCRATCH"', timeout=600)
    assert (proc.stdout, proc.returncode) == ("tmpfs\n", 0)


# QEMU opens the guest's stdout as a file (chardev file,path=/proc/self/fd/1), with O_TRUNC.
GUEST = "open('/proc/self/fd/1', 'w').write('guest out\\n'); print('guest err', file=__import__('sys').stderr)"
RUN_AS_QEMU = f"""
import sys
from thinsim import vm
vm.vng_argv = lambda *a, **k: [sys.executable, "-c", {GUEST!r}]
print("before the boot", flush=True)
sys.exit(vm.run("true", capture=False).returncode)
"""


def test_the_vms_output_follows_what_was_printed_before_the_boot_in_a_log_file(tmp_path):
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-c", RUN_AS_QEMU], stdout=out, stderr=subprocess.PIPE, check=False
        )
    assert (proc.returncode, proc.stderr) == (0, b"guest err\n")
    assert log.read_text() == "before the boot\nguest out\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_thinsim_vm_killed_by_a_signal_leaves_no_vm_running(signum, tmp_path):
    # The VM's processes stand in as two sleeps with a marker only they carry; they run in a
    # session of their own, as vng and QEMU do.
    marker = f"{secrets.randbelow(10**6) + 10**6}.{signum}"
    code = (
        "import sys\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from thinsim import vm\n"
        f"guest = ['sh', '-c', 'echo booted; sleep {marker} & sleep {marker}']\n"
        "vm.run = lambda line, **kw: vm._run(guest, False, None)\n"
        "sys.exit(vm.main(['--', 'true']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"booted\n"
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == -signum
    finally:
        proc.kill()
    assert _gone(f"sleep {marker}")


def _gone(pattern: str) -> bool:
    """No process matches PATTERN within 10 s: a process sent SIGKILL under load may take a
    moment to be scheduled and die (killpg does not wait for it).  Any left are killed."""
    for _ in range(100):
        left = subprocess.run(["pgrep", "-f", pattern], check=False, capture_output=True)
        if not left.stdout:
            return True
        time.sleep(0.1)
    subprocess.run(["pkill", "-KILL", "-f", pattern], check=False)
    return False


def test_the_guest_script_first_makes_the_file_that_says_the_boot_got_to_it(tmp_path):
    booted = tmp_path / "booted"
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("modprobe", "mount", "mkdir"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
        (stubs / name).chmod(0o755)
    line = vm.guest_script("echo ran", cwd=str(tmp_path), booted=str(booted))
    assert line.startswith(f": > {booted}; {{ modprobe")
    env = {"PATH": f"{stubs}:/usr/bin:/bin"}
    proc = subprocess.run(["sh", "-c", line], capture_output=True, text=True, env=env, check=False)
    assert (proc.stdout, proc.returncode, booted.exists()) == ("ran\n", 0, True)


def _fake_boots(tmp_path, hangs: int) -> tuple[list[str], Path]:
    """A stand-in for vng whose first ``hangs`` boots stop before the guest's script (they
    sleep and never make the booted file); the next one makes it and prints."""
    booted = tmp_path / "booted"
    count = tmp_path / "boots"
    code = (
        "import pathlib, sys, time\n"
        f"count = pathlib.Path({str(count)!r})\n"
        "n = int(count.read_text() or 0) + 1 if count.exists() else 1\n"
        "count.write_text(str(n))\n"
        f"if n <= {hangs}:\n"
        "    time.sleep(600)\n"
        f"pathlib.Path({str(booted)!r}).touch()\n"
        "print('guest out', n)\n"
        "sys.exit(3)\n"
    )
    return [sys.executable, "-c", code], booted


def test_a_boot_that_stops_before_the_guests_script_is_killed_and_the_vm_booted_again(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setattr(vm, "BOOT_TIMEOUT", 2)
    argv, booted = _fake_boots(tmp_path, hangs=1)
    proc = vm._run(argv, True, 60, booted=booted)
    assert (proc.stdout, proc.returncode) == ("guest out 2\n", 3)
    assert capsys.readouterr().err == (
        "thinsim vm: the guest had not started after 2 s (boot 1 of 3); killed it, booting again\n"
    )


def test_a_vm_that_never_boots_is_an_error_after_the_last_attempt_and_leaves_nothing_running(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setattr(vm, "BOOT_TIMEOUT", 1)
    monkeypatch.setattr(vm, "BOOT_ATTEMPTS", 2)
    argv, booted = _fake_boots(tmp_path, hangs=5)
    with pytest.raises(vm.VMError, match="did not start in 2 boots of 1 s each"):
        vm._run(argv, False, 60, booted=booted)
    assert (tmp_path / "boots").read_text() == "2"
    assert capsys.readouterr().err.splitlines() == [
        "thinsim vm: the guest had not started after 1 s (boot 1 of 2); killed it, booting again",
        "thinsim vm: the guest had not started after 1 s (boot 2 of 2); killed it",
    ]
    assert _gone(str(tmp_path / "boots"))


def test_a_long_command_goes_to_the_guest_in_a_file_not_on_the_kernels_command_line(
    monkeypatch, tmp_path
):
    # x86 cuts the kernel's command line at 2048 bytes, and vng puts --exec's script on it.
    monkeypatch.setenv("THINSIM_VM_ACCEL", "tcg")
    monkeypatch.setattr(vm.shutil, "which", lambda name: "/usr/bin/" + name)
    vm.accelerator.cache_clear()
    nonce = tmp_path / "nonce"
    nonce.write_text("0" * 32)
    command = "pytest " + " ".join(f"tests/test_{i:04}.py" for i in range(200))
    argv = vm.vng_argv(command, kernel="/boot/k", cwd="/c", nonce_file=nonce)
    vm.accelerator.cache_clear()
    script = tmp_path / vm.GUEST_SCRIPT
    assert argv[argv.index("--exec") + 1] == f"exec /bin/sh {script}"
    assert script.read_text() == (
        vm.guest_script(
            command,
            cwd="/c",
            env={"PATH": os.environ["PATH"], vm.NONCE_FILE: str(nonce)},
            booted=str(tmp_path / vm.BOOTED),
        )
        + "\n"
    )
