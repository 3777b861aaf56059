"""A real dm-thin kernel for hosts that have none: Debian's kernel booted with virtme-ng.

    thinsim vm [--rwdir DIR]... [--module 'NAME ARGS']... -- COMMAND [ARG...]

boots the newest ``/boot/vmlinuz-*-amd64`` (or ``$THINSIM_KERNEL``) under QEMU through
``vng`` (virtme-ng), and runs COMMAND inside the guest as root, in the
caller's working folder, with ``dm-thin-pool`` and ``loop`` loaded and a fresh tmpfs mounted
on :data:`SCRATCH` (``$THINSIM_SCRATCH`` in the guest) for backing files.  The guest sees the
host's root file system read-only (the same Python, the same checkout); only ``--rwdir``
folders are writable.  COMMAND's stdout, stderr and exit status are the command's own: vng
passes them through.  One boot serves the whole COMMAND, so batch work into one call.

The guest can prove it is one (:func:`in_guest`): every boot draws a random nonce, writes it
to a fresh file on the host and boots the kernel with ``thinsim.vm=NONCE``; only a kernel
booted so has it in /proc/cmdline, and only this boot's file holds it.  No environment
variable counts: one can be copied to any host.

Acceleration is detected, not assumed: KVM is used only when ``/dev/kvm`` is usable and a
probe boot of the same kernel under KVM gets to the end of its boot (on some machines KVM
guests die at start: ``failed to set MSR 0x10a``); otherwise QEMU emulates the CPU (TCG),
about 20 s to boot and several times slower to run.  ``THINSIM_VM_ACCEL=kvm|tcg`` overrides.
"""

from __future__ import annotations

import functools
import glob
import io
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

SCRATCH = "/run/thinsim-scratch"  # the guest's tmpfs for backing files
SCRATCH_SIZE = "8g"  # a limit, not a reservation: tmpfs takes memory only as it fills
MODULES = ("dm-thin-pool", "loop")
MEMORY = "2G"
CPUS = 2
SETUP_FAILED = 125  # COMMAND's exit status when the guest could not be set up
# The guest's kernel command line carries thinsim.vm=NONCE.  A dotted name is a module
# parameter to the kernel: it never reaches init's environment or argv (init/main.c:
# unknown_bootoption), so nothing but /proc/cmdline shows it.
KERNEL_PARAM = "thinsim.vm"
NONCE_FILE = "THINSIM_VM_NONCE_FILE"  # where the guest finds this boot's nonce file
_NONCE = re.compile(r"[0-9a-f]{32}")
PROBE_TIMEOUT = 20  # seconds: a KVM boot to the root-mount panic takes one or two
# A TCG boot reaches the guest's script in 20-50 s here, under load.  One that never does
# (as when the kernel's command line was cut: see vng_argv; in CI the kernel tests then ran
# into their limit with nothing printed) is killed after BOOT_TIMEOUT and the VM booted
# again, up to BOOT_ATTEMPTS boots in all, with a line on stderr each time.
BOOT_TIMEOUT = 300
BOOT_ATTEMPTS = 3
BOOTED = "booted"  # the file the guest's script makes first, in the nonce file's folder
GUEST_SCRIPT = "guest.sh"  # the guest's script, in the same folder (see vng_argv)


class VMError(RuntimeError):
    """The VM cannot be started here; the message says what is missing and how to get it."""


def _sort_key(path: str) -> list:
    # Version order, as ``sort -V`` does: 6.1.0-10 after 6.1.0-9.
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)]


def kernel_image() -> str:
    """The kernel to boot: ``$THINSIM_KERNEL`` or the newest /boot/vmlinuz-*-amd64."""
    if os.environ.get("THINSIM_KERNEL"):
        return os.environ["THINSIM_KERNEL"]
    images = sorted(glob.glob("/boot/vmlinuz-*-amd64"), key=_sort_key)
    if not images:
        raise VMError(
            "no kernel image in /boot (vmlinuz-*-amd64): apt-get install linux-image-amd64 "
            "(or set THINSIM_KERNEL)"
        )
    return images[-1]


def vng() -> str | None:
    """virtme-ng's ``vng``: on PATH, or beside this python (a virtual environment's bin, which
    ``.venv/bin/thinsim`` run by its path does not put on PATH)."""
    if shutil.which("vng"):
        return "vng"
    beside = Path(sys.executable).parent / "vng"
    return str(beside) if os.access(beside, os.X_OK) else None


def check_tools() -> None:
    """Raise :class:`VMError` naming what to install if vng or QEMU is missing."""
    missing = []
    if not vng():
        missing.append("vng (pip install virtme-ng)")
    if not shutil.which("qemu-system-x86_64"):
        missing.append("qemu-system-x86_64 (apt-get install qemu-system-x86)")
    if missing:
        raise VMError("cannot boot a VM, missing: " + ", ".join(missing))


def probe_kvm(kernel: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Whether a KVM guest boots here, and why not.

    Boots KERNEL under KVM with no root file system: a working guest runs its whole boot and
    panics at the root mount (``panic=-1`` reboots at once, ``-no-reboot`` then ends QEMU).
    A broken KVM either kills QEMU at start or hangs; both count as unusable.
    """
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user"
    with tempfile.TemporaryDirectory(prefix="thinsim-kvm-probe-") as tmp:
        console = os.path.join(tmp, "console")
        argv = [
            "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
            "-display", "none", "-nodefaults", "-no-reboot", "-serial", f"file:{console}",
            "-kernel", kernel, "-append", "console=ttyS0 panic=-1",
        ]  # fmt: skip
        log.info("kvm probe: %s", shlex.join(argv))
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return False, f"a KVM guest did not finish booting within {timeout:.0f} s"
        try:
            text = Path(console).read_text(errors="replace")
        except FileNotFoundError:  # QEMU died before opening it
            text = ""
    if proc.returncode == 0 and "Kernel panic" in text:
        return True, "a KVM guest boots"
    first = out.decode(errors="replace").strip().splitlines()[:1]
    return False, f"a KVM guest dies at start (qemu exit {proc.returncode}: {''.join(first)})"


@functools.cache
def accelerator(kernel: str | None = None) -> str:
    """``"kvm"`` when KVM guests work here, else ``"tcg"`` (``$THINSIM_VM_ACCEL`` wins)."""
    forced = os.environ.get("THINSIM_VM_ACCEL", "")
    if forced in ("kvm", "tcg"):
        return forced
    usable, why = probe_kvm(kernel or kernel_image())
    log.info("kvm %s: %s", "usable" if usable else "not usable", why)
    return "kvm" if usable else "tcg"


def in_guest(cmdline: str | os.PathLike[str] = "/proc/cmdline") -> bool:
    """Whether this is a guest that ``thinsim vm`` booted (and so ours to wipe): the running
    kernel was booted with ``thinsim.vm=NONCE`` and the nonce file of this boot, which the
    host wrote before the boot, holds that NONCE.

    A real host fails both: no kernel of its own is booted with a thinsim.vm parameter, and
    a nonce is 128 random bits drawn for one boot, so neither a copied environment nor a
    copied nonce file makes /proc/cmdline carry it.  ``$THINSIM_VM_NONCE_FILE`` only says
    where the file is."""
    try:
        words = Path(cmdline).read_text().split()
    except OSError:
        return False
    nonces = [w.split("=", 1)[1] for w in words if w.startswith(KERNEL_PARAM + "=")]
    if len(nonces) != 1 or not _NONCE.fullmatch(nonces[0]):
        return False
    try:
        return Path(os.environ.get(NONCE_FILE, "")).read_text() == nonces[0]
    except OSError:
        return False


def guest_script(
    command: str,
    *,
    cwd: str,
    modules: Sequence[str] = (),
    env: dict[str, str] | None = None,
    booted: str | None = None,
) -> str:
    """The shell line the guest runs: make the file ``booted`` (when given: the host's sign
    that the boot got this far), load modules, mount the scratch tmpfs, run COMMAND."""
    setup = [f"modprobe {m}" for m in (*MODULES, *modules)]
    setup += [
        f"mkdir -p {SCRATCH}",
        f"mount -t tmpfs -o size={SCRATCH_SIZE} thinsim-scratch {SCRATCH}",
    ]
    exports = {"THINSIM_SCRATCH": SCRATCH, **(env or {})}
    return (
        (f": > {shlex.quote(booted)}; " if booted else "") + "{ " + " && ".join(setup) + "; } || "
        f"{{ echo 'thinsim vm: guest set-up failed' >&2; exit {SETUP_FAILED}; }}; "
        + "export "
        + " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items())
        + f"; cd {shlex.quote(cwd)} && exec /bin/sh -c {shlex.quote(command)}"
    )


def vng_argv(
    command: str | Sequence[str],
    *,
    rwdirs: Sequence[str | os.PathLike] = (),
    cwd: str | os.PathLike | None = None,
    modules: Sequence[str] = (),
    env: dict[str, str] | None = None,
    kernel: str | None = None,
    memory: str = MEMORY,
    cpus: int = CPUS,
    nonce_file: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The ``vng`` command line that runs COMMAND (a shell line, or an argv list) in a VM.

    With ``nonce_file`` (a file holding a fresh nonce, in a folder of its own, shared with
    the guest) the guest can prove it is one (:func:`in_guest`), and its script is written to
    a file in that folder, whatever COMMAND's length (the kernel's command line is not)."""
    check_tools()
    kernel = kernel or kernel_image()
    if not isinstance(command, str):
        command = shlex.join(command)
    cwd = os.path.abspath(cwd or os.getcwd())
    # The guest runs the host's programs: give it the caller's PATH (virtual environments).
    guest_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    guest_env.update(env or {})
    rwdirs = list(rwdirs)
    argv = [
        vng() or "vng",
        "--run",
        kernel,
        "--user",
        "root",
        "--memory",
        memory,
        "--cpus",
        str(cpus),
    ]
    if accelerator(kernel) == "tcg":
        argv.append("--disable-kvm")
    if nonce_file is not None:
        nonce_file = os.path.abspath(nonce_file)
        argv += ["--append", f"{KERNEL_PARAM}={Path(nonce_file).read_text()}"]
        guest_env[NONCE_FILE] = nonce_file
        # Shared with the guest wherever it is (the guest mounts tmpfs on /run, /var/tmp...).
        rwdirs.append(os.path.dirname(nonce_file))
    for d in dict.fromkeys(os.path.abspath(d) for d in rwdirs):
        argv += ["--rwdir", d]
    booted = os.path.join(os.path.dirname(nonce_file), BOOTED) if nonce_file else None
    script = guest_script(command, cwd=cwd, modules=modules, env=guest_env, booted=booted)
    if nonce_file is not None:
        # vng hands --exec's script to the guest on the kernel's command line, which x86
        # cuts at 2048 bytes: a long COMMAND (the kernel tests' list of files) lost the
        # `init=` vng puts last, and the guest hung in its boot.  So the script goes in a
        # file in the boot's own folder and the command line only names it.
        path = os.path.join(os.path.dirname(nonce_file), GUEST_SCRIPT)
        Path(path).write_text(script + "\n")
        script = f"exec /bin/sh {shlex.quote(path)}"
    argv += ["--exec", script]
    return argv


def run(
    command: str | Sequence[str],
    *,
    rwdirs: Sequence[str | os.PathLike] = (),
    cwd: str | os.PathLike | None = None,
    modules: Sequence[str] = (),
    env: dict[str, str] | None = None,
    capture: bool = True,
    timeout: float | None = None,
    kernel: str | None = None,
) -> subprocess.CompletedProcess:
    """Boot a VM, run COMMAND inside as root (see the module docstring), and return its
    stdout, stderr (text, when ``capture``; else they go to ours) and exit status.

    ``modules`` are extra ``modprobe`` lines (``"brd rd_nr=1 rd_size=2097152"``); ``env``
    extra environment for COMMAND.  On a timeout or an interrupt the whole VM is killed (no
    QEMU is left running) and the exception propagates.  A boot that has not reached the
    guest's script in :data:`BOOT_TIMEOUT` seconds is killed and the VM booted again (a line on
    stderr says so), :data:`BOOT_ATTEMPTS` boots in all; ``timeout`` counts from the start of
    the boot that ran.
    """
    with tempfile.TemporaryDirectory(prefix="thinsim-vm-") as folder:
        nonce_file = Path(folder, "nonce")
        nonce_file.write_text(secrets.token_hex(16))
        argv = vng_argv(
            command, rwdirs=rwdirs, cwd=cwd, modules=modules, env=env, kernel=kernel,
            nonce_file=nonce_file,
        )  # fmt: skip
        return _run(argv, capture, timeout, booted=Path(folder, BOOTED))


def _run(
    argv: list[str], capture: bool, timeout: float | None, booted: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``argv`` (vng) until it ends; with ``booted``, boot again while that file has not
    appeared within BOOT_TIMEOUT (see :func:`run`)."""
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        result = _boot(argv, capture, timeout, booted)
        if result is not None:
            return result
        print(
            f"thinsim vm: the guest had not started after {BOOT_TIMEOUT} s (boot {attempt} of "
            f"{BOOT_ATTEMPTS}); killed it"
            + ("" if attempt == BOOT_ATTEMPTS else ", booting again"),
            file=sys.stderr,
            flush=True,
        )
    raise VMError(f"the guest did not start in {BOOT_ATTEMPTS} boots of {BOOT_TIMEOUT} s each")


def _boot(
    argv: list[str], capture: bool, timeout: float | None, booted: Path | None
) -> subprocess.CompletedProcess | None:
    """One boot: its result, or None when ``booted`` did not appear in time (VM killed)."""
    log.info("vm: %s", shlex.join(argv))
    # Always pipes: QEMU opens the guest's stdout as a file, /proc/self/fd/1, with O_TRUNC, so
    # a log file our stdout was redirected to would lose everything written before the boot.
    env = None
    if os.sep in argv[0]:  # vng beside this python: its virtme-run is there too
        env = {
            **os.environ,
            "PATH": os.pathsep.join([os.path.dirname(argv[0]), os.environ.get("PATH", "")]),
        }
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    # The output is copied as it comes (to ours, or kept when ``capture``): a guest that
    # writes much must never block on a full pipe while we wait for its boot.
    sinks = (io.BytesIO(), io.BytesIO()) if capture else (sys.stdout.buffer, sys.stderr.buffer)
    threads = [
        threading.Thread(target=_copy, args=(proc.stdout, sinks[0]), daemon=True),
        threading.Thread(target=_copy, args=(proc.stderr, sinks[1]), daemon=True),
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    try:
        for t in threads:
            t.start()
        while booted is not None and not booted.exists() and proc.poll() is None:
            if time.monotonic() - start > BOOT_TIMEOUT:
                _kill(proc)
                for t in threads:
                    t.join()
                return None
            time.sleep(0.5)
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        proc.wait(timeout=left)
    except BaseException:
        _kill(proc)
        raise
    for t in threads:
        t.join()
    if not capture:
        return subprocess.CompletedProcess(argv, proc.returncode, None, None)
    out, err = (sink.getvalue().decode("utf-8", "surrogateescape") for sink in sinks)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill(proc: subprocess.Popen) -> None:
    # vng, QEMU and virtiofsd/9p helpers share the session proc started.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _copy(src, dst) -> None:
    for chunk in iter(lambda: src.read1(65536), b""):
        dst.write(chunk)
        dst.flush()


class _Signalled(BaseException):
    """SIGTERM or SIGHUP reached ``thinsim vm``: raised so that :func:`_run` kills the VM.

    Python's default action for either is to die at once, which would leave QEMU running: it
    is in a session of its own (and a grandchild, so no parent-death signal reaches it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_received: list[int] = []  # the signal _raise_signalled raised for, if one came


def _raise_signalled(signum: int, frame) -> None:
    _received.append(signum)
    for other in (signal.SIGTERM, signal.SIGHUP):  # a second one would cut the VM's kill short
        signal.signal(other, signal.SIG_IGN)
    raise _Signalled(signum)


def main(argv: list[str]) -> int:
    """``thinsim vm``: see the module docstring."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_signalled)
    try:
        return _main(argv)
    except BaseException:
        # The VM is gone (see _run); end as the signal would have ended us.  The exception
        # may not be the _Signalled itself: raised inside threading's own locking (a thread
        # starting in _boot), it surfaces as "RuntimeError: release unlocked lock".
        if not _received:
            raise
        signal.signal(_received[0], signal.SIG_DFL)
        os.kill(os.getpid(), _received[0])
        return 128 + _received[0]


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="thinsim vm", description=__doc__.splitlines()[0])
    parser.add_argument("--rwdir", action="append", default=[], help="writable in the guest")
    parser.add_argument(
        "--module", action="append", default=[], help="also modprobe this (with arguments)"
    )
    parser.add_argument("--timeout", type=float, help="kill the VM after this many seconds")
    parser.add_argument("--print-accel", action="store_true", help="say kvm or tcg, and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        if args.print_accel:
            print(accelerator())
            return 0
        if not command:
            parser.error("no COMMAND (thinsim vm -- COMMAND)")
        # One word is a shell line (like ssh); several are an argv.
        line = command[0] if len(command) == 1 else shlex.join(command)
        proc = run(line, rwdirs=args.rwdir, modules=args.module, capture=False,
                   timeout=args.timeout)  # fmt: skip
    except VMError as exc:
        print(f"thinsim vm: {exc}", file=sys.stderr)
        return 2
    except subprocess.TimeoutExpired:
        print(f"thinsim vm: killed the VM after {args.timeout:.0f} s", file=sys.stderr)
        return 124
    return proc.returncode
