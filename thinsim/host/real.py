"""Bash scripts on the real tools: ``thinsim run --backend kernel`` and the host recorder.

A script runs the way tests/host/record.py has always recorded them: ``bash SCRIPT`` in an
empty folder :data:`WORKDIR` on a fresh ext4 (not a tmpfs: the thin tools open files with
O_DIRECT, which tmpfs refuses on 6.1; ext4 punches holes for discards like tmpfs does), with
the fixed environment :data:`ENV`, stdin from /dev/null, stdout and stderr captured apart.

Where it runs:

- inside ``thinsim vm`` (``THINSIM_IN_VM``): the machine is ours, so every script starts from
  a machine just booted: all dm devices removed, loop devices deleted and loop0-7 added again
  (so ``losetup -f`` gives /dev/loop0 and the first dm device gets minor 0), a fresh ext4 on
  the RAM disk /dev/ram0 (brd) mounted on :data:`MOUNT`, the kernel log cleared;
- on a host that has dm-thin, as root: the host's own devices are left alone.  The script
  gets a private mount namespace with a fresh folder on /var/tmp (``$THINSIM_REAL_DIR``)
  bound on :data:`MOUNT`;
  afterwards only the dm and loop devices that appeared during the script are removed;
  the kernel log is not cleared;
- anywhere else: through ``thinsim vm`` (one boot for all the scripts given).

:func:`mask` hides what varies from run to run (dd's timings, dmesg's timestamps).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

MOUNT = Path("/run/thinsim")  # paths under it appear in the scripts' output
WORKDIR = MOUNT / "work"  # the scripts' working folder, empty at the start
RAMDISK = "/dev/ram0"
BRD = "brd rd_nr=1 rd_size=2097152"  # one 2 GiB RAM disk, the VM's modprobe line
TIMEOUT = 300  # seconds per script
LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81

# The environment every script runs with: a Debian root shell's, minus anything the VM adds.
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/bash",
}

# dd's third status line: "N bytes (SI, IEC) copied, T s, R/s" (or "N bytes (SI) copied, ...",
# "N bytes copied, ...", "1 byte copied, ...").  Everything after "copied" is timing.
DD_STATS = re.compile(r"^(\d+ bytes? (?:\([^)\n]*\) )?copied), [^\n]*$", re.MULTILINE)
# A kernel log timestamp at the start of a line, as dmesg prints it: "[   12.345678] ".
DMESG_TIME = re.compile(r"^\[ *\d+\.\d+\]", re.MULTILINE)


def mask(text: str) -> str:
    """Mask what varies from run to run and nothing else.

    >>> mask("10485760 bytes (10 MB, 10 MiB) copied, 0.0123 s, 853 MB/s\\n")
    '10485760 bytes (10 MB, 10 MiB) copied, <time>\\n'
    >>> mask("512 bytes copied, 0.000123 s, 4.2 MB/s\\n")
    '512 bytes copied, <time>\\n'
    >>> mask("[   12.930224] device-mapper: uevent: version 1.0.3\\n")
    '[<time>] device-mapper: uevent: version 1.0.3\\n'
    """
    text = DD_STATS.sub(r"\1, <time>", text)
    return DMESG_TIME.sub("[<time>]", text)


# -- the backing file's device and inode numbers ------------------------------------------
# (tests/host/harness.py uses it too, to compare with the recordings)
#
# losetup prints the device and inode of each loop device's backing file: "[0256]:13" in
# `losetup -a`, `-j` and `losetup DEV` (printf "[%04jd]:%ju", st_dev as the kernel encodes it
# (huge_encode_dev), st_ino: sys-utils/losetup.c, printf_loopdev), and the BACK-INO and
# BACK-MAJ:MIN columns of `losetup -l -O ...`.  In the VM the files live on a fresh ext4 on
# /dev/ram0 (1:0, so "[0256]", inodes from 13); the simulated host shows its own file system's
# numbers, which differ by machine and by run.  Like the recorder's masking of dd's timings,
# both sides get these numbers replaced by placeholders before they are compared: "[<dev>]"
# for the device and "<iN>" for the Nth distinct inode in order of appearance (so that two
# loop devices on one file still show the same inode).  In tables the placeholder keeps the
# column's width, so column alignment is still compared.

_DEV_INO = re.compile(r"^(/dev/loop\d+: )\[(\d+)\]:(\d+) \(", re.MULTILINE)
_LOSETUP_HEADER = re.compile(r"^NAME +.*\bBACK-(?:INO|MAJ:MIN)\b")


def normalise(text: str) -> str:
    """Replace the backing files' device and inode numbers by placeholders (see above)."""
    inodes: dict[str, str] = {}

    def ino(number: str) -> str:
        return inodes.setdefault(number, f"<i{len(inodes) + 1}>")

    text = _DEV_INO.sub(lambda m: f"{m[1]}[<dev>]:{ino(m[3])} (", text)
    lines = text.split("\n")
    columns: list[tuple[int, int, str]] = []
    for k, line in enumerate(lines):
        if _LOSETUP_HEADER.match(line):
            tokens = [(m.start(), m.end(), m[0]) for m in re.finditer(r"\S+", line)]
            columns = []
            for i, (start, end, name) in enumerate(tokens):
                if name == "BACK-INO":  # right-aligned: from the previous column's end
                    columns.append((tokens[i - 1][1] + 1, end, name))
                elif name == "BACK-MAJ:MIN":  # left-aligned: up to the next column
                    stop = tokens[i + 1][0] - 1 if i + 1 < len(tokens) else len(line)
                    columns.append((start, stop, name))
            continue
        if not line.startswith("/dev/loop"):
            columns = []  # the table ended
            continue
        if not columns:
            continue
        for start, end, name in sorted(columns, reverse=True):
            cell = line[start:end].strip()
            if not cell:
                continue
            if name == "BACK-INO":
                new = ino(cell).rjust(end - start)
            else:
                new = "<dev>".ljust(end - start)
            lines[k] = lines[k][:start] + new + lines[k][end:]
            line = lines[k]
    return "\n".join(lines)


@dataclasses.dataclass
class Result:
    """What a script printed (text; undecodable bytes kept as surrogates) and its exit
    status (``"timeout"`` when it was killed)."""

    stdout: str
    stderr: str
    returncode: int | str

    def masked(self) -> Result:
        return Result(mask(self.stdout), mask(self.stderr), self.returncode)

    def normalised(self) -> Result:
        """Masked, and with the backing files' device and inode numbers as placeholders."""
        return Result(normalise(mask(self.stdout)), normalise(mask(self.stderr)), self.returncode)


class RealHostError(RuntimeError):
    """The real tools cannot run the script here."""


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def sh(argv: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def in_vm() -> bool:
    """Inside ``thinsim vm`` (the guest is ours to wipe)."""
    return os.environ.get("THINSIM_IN_VM") == "1"


def dm_thin_here() -> str | None:
    """None when scripts can drive dm-thin here (root, device-mapper with thin-pool), else
    what is missing."""
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("dmsetup"):
        return "no dmsetup"
    if not os.path.exists("/dev/mapper/control"):
        return "no device-mapper in this kernel (/dev/mapper/control)"
    sh(["modprobe", "dm-thin-pool"])
    if "thin-pool" not in sh(["dmsetup", "targets"]).stdout:
        return "no thin-pool target in this kernel"
    return None


# -- the devices --------------------------------------------------------------------------


def dm_devices() -> list[str]:
    out = sh(["dmsetup", "ls"])
    return [
        line.split()[0]
        for line in out.stdout.splitlines()
        if line.strip() and line.strip() != "No devices found"
    ]


def loop_devices() -> list[str]:
    out = sh(["losetup", "-n", "-O", "NAME", "-l"])
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _remove_dm(names: Sequence[str]) -> None:
    for name in names:
        sh(["dmsetup", "resume", name])  # a suspended device cannot be removed cleanly
    # Holders (thins) go before what they hold (pools): retry until nothing is left.
    for _ in range(20):
        left = [n for n in names if n in set(dm_devices())]
        if not left:
            return
        for name in left:
            sh(["dmsetup", "remove", "--retry", name])
        sh(["udevadm", "settle"])
        time.sleep(0.2)
    raise RuntimeError(f"dm devices left: {left}")


def clean_devices() -> None:
    """Inside the VM: remove every dm device, detach and delete every loop device and add
    loop0..loop7 again, or raise."""
    sh(["udevadm", "settle"])
    for _ in range(20):
        names = dm_devices()
        if not names:
            break
        for name in names:
            sh(["dmsetup", "resume", name])
        sh(["dmsetup", "remove_all"])
        if dm_devices():
            sh(["dmsetup", "remove_all", "--force"])
        sh(["udevadm", "settle"])
        time.sleep(0.2)
    else:
        raise RuntimeError(f"dm devices left: {dm_devices()}")
    for _ in range(20):
        if not loop_devices():
            break
        sh(["losetup", "-D"])
        sh(["udevadm", "settle"])
        time.sleep(0.2)
    else:
        raise RuntimeError(f"loop devices left: {loop_devices()}")
    # Delete every loop device and add loop0..loop7 again, so that each script starts with the
    # devices as the module makes them at load time: a device keeps some queue limits from an
    # earlier attachment (a pool on an unattached loop7 sees discard support only if loop7 was
    # once attached to a file), and loop8 and up appear when a script asks for them
    # (losetup -f) or opens 7:N (a table naming 7:99).
    fd = os.open("/dev/loop-control", os.O_RDWR)
    try:
        for _ in range(50):
            left = [int(p.name[4:]) for p in Path("/sys/block").glob("loop*")]
            for number in left:
                try:
                    fcntl.ioctl(fd, LOOP_CTL_REMOVE, number)
                except OSError:
                    pass  # still open (udev); try again
            if not list(Path("/sys/block").glob("loop*")):
                break
            sh(["udevadm", "settle"])
            time.sleep(0.1)
        else:
            raise RuntimeError(f"cannot delete loop devices: {left}")
        for number in range(8):
            fcntl.ioctl(fd, LOOP_CTL_ADD, number)
    finally:
        os.close(fd)
    sh(["udevadm", "settle"])
    # A dd to a missing /dev/mapper/NAME creates a plain file there: remove such strays.
    for entry in Path("/dev/mapper").iterdir():
        if entry.name != "control" and not entry.is_symlink() and entry.is_file():
            entry.unlink()


def environment() -> str:
    """The kernel and tool versions, for ENVIRONMENT.txt."""
    out = []
    for argv in (
        ["uname", "-r"],
        ["dmsetup", "version"],
        ["dmsetup", "targets"],
        ["losetup", "--version"],
        ["blkdiscard", "--version"],
        ["dd", "--version"],
        ["thin_dump", "--version"],
        ["bash", "--version"],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, check=False)
        out.append("$ " + " ".join(argv))
        lines = proc.stdout.splitlines()
        out.extend(lines[:2] if argv[0] in ("dd", "bash") else lines)
    out.append("$ env (for every script)")
    out.extend(f"{key}={value}" for key, value in ENV.items())
    out.append(f"working folder: {WORKDIR} (on a fresh ext4 on {RAMDISK} for every script)")
    return "".join(line + "\n" for line in out)


# -- running one script -------------------------------------------------------------------


def _bash(argv: list[str], timeout: float) -> Result:
    """Run ``bash ARGV`` in WORKDIR with ENV; kill its whole session on a timeout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            ["bash", *argv],
            cwd=WORKDIR,
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            returncode: int | str = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            for dev in dm_devices():  # unblock I/O stuck on a suspended device
                sh(["dmsetup", "resume", dev])
            proc.wait()
            returncode = "timeout"
        out.seek(0)
        err.seek(0)
        return Result(_decode(out.read()), _decode(err.read()), returncode)


def run_in_vm(script: Path, args: Sequence[str] = (), timeout: float = TIMEOUT) -> Result:
    """Inside the VM: run SCRIPT on a machine as if just booted (see the module docstring)."""
    clean_devices()
    MOUNT.mkdir(parents=True, exist_ok=True)
    sh(
        ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
         RAMDISK],
        check=True,
    )  # fmt: skip
    sh(["mount", RAMDISK, str(MOUNT)], check=True)
    try:
        WORKDIR.mkdir()
        sh(["udevadm", "settle"])
        sh(["dmesg", "-C"], check=True)
        return _bash([str(script), *args], timeout)
    finally:
        clean_devices()
        os.chdir("/")
        if sh(["umount", str(MOUNT)]).returncode != 0:
            sh(["umount", "-l", str(MOUNT)])


# In a private mount namespace: bind the fresh folder on /run/thinsim, run the script there.
_PRIVATE = 'mkdir -p "$1" && mount --bind "$2" "$1" && cd "$1/work" && shift 2 && exec "$@"'


def run_on_host(script: Path, args: Sequence[str] = (), timeout: float = TIMEOUT) -> Result:
    """On a host with dm-thin, as root: run SCRIPT without touching the host's own devices;
    remove the dm and loop devices that appeared while it ran."""
    dm_before, loop_before = set(dm_devices()), set(loop_devices())
    # /var/tmp: a disk file system, where O_DIRECT works (the thin tools use it).
    where = os.environ.get("THINSIM_REAL_DIR", "/var/tmp")
    private = tempfile.mkdtemp(prefix="thinsim-real-", dir=where)
    try:
        os.mkdir(os.path.join(private, "work"))
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _PRIVATE, "sh"]
        argv += [str(MOUNT), private, "bash", str(script), *args]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                argv, env=ENV, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True,
            )  # fmt: skip
            try:
                returncode: int | str = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                returncode = "timeout"
            out.seek(0)
            err.seek(0)
            result = Result(_decode(out.read()), _decode(err.read()), returncode)
    finally:
        sh(["udevadm", "settle"])
        _remove_dm([n for n in dm_devices() if n not in dm_before])
        for dev in loop_devices():
            if dev not in loop_before:
                sh(["losetup", "-d", dev])
        shutil.rmtree(private, ignore_errors=True)
    return result


def run_here(script: Path, args: Sequence[str] = (), timeout: float = TIMEOUT) -> Result:
    if in_vm():
        return run_in_vm(script, args, timeout)
    return run_on_host(script, args, timeout)


# -- several scripts, here or through the VM ----------------------------------------------


def run_scripts(
    jobs: Sequence[tuple[Path, Sequence[str]]], timeout: float = TIMEOUT
) -> list[Result]:
    """Run each (SCRIPT, ARGS) on the real tools: here when this host has dm-thin and we are
    root, else all of them in one ``thinsim vm`` boot."""
    jobs = [(Path(s).resolve(), list(a)) for s, a in jobs]
    if in_vm() or dm_thin_here() is None:
        return [run_here(s, a, timeout) for s, a in jobs]
    from .. import vm

    # The guest sees this host's files read-only at the same paths, so the scripts run from
    # where they are (bash prints their path in its messages); results come back through a
    # writable exchange folder.
    with tempfile.TemporaryDirectory(prefix="thinsim-real-") as xchg:
        jobfile = Path(xchg) / "jobs.json"
        jobfile.write_text(json.dumps({"timeout": timeout, "jobs": [[str(s), a] for s, a in jobs]}))
        argv = [sys.executable, "-m", "thinsim.host.real", str(jobfile), xchg]
        proc = vm.run(argv, rwdirs=[xchg], modules=[BRD], capture=True)
        results = []
        for i in range(len(jobs)):
            try:
                data = json.loads((Path(xchg) / f"{i}.json").read_text())
            except FileNotFoundError:
                raise RealHostError(
                    f"the VM ran no script {i} (vm exit {proc.returncode}):\n"
                    + proc.stdout
                    + proc.stderr
                ) from None
            results.append(Result(**data))
        return results


def _guest_main(argv: list[str]) -> int:
    """In the VM: run the jobs in JOBFILE, write OUT/I.json for each."""
    jobfile, out = argv
    spec = json.loads(Path(jobfile).read_text())
    for i, (script, args) in enumerate(spec["jobs"]):
        try:
            result = run_here(Path(script), args, spec["timeout"])
        except Exception as exc:  # noqa: BLE001 - tell the host, carry on with the others
            result = Result("", f"thinsim: the real host failed: {exc!r}\n", "error")
        Path(out, f"{i}.json").write_text(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(_guest_main(sys.argv[1:]))
