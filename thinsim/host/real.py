"""Bash scripts on the real tools: ``thinsim run --backend kernel`` and the host recorder.

A script runs the way dev/host/record.py has always recorded them: ``bash SCRIPT`` in an
empty folder :data:`WORKDIR` on a fresh ext4 (not a tmpfs: the thin tools open files with
O_DIRECT, which tmpfs refuses on 6.1; ext4 punches holes for discards like tmpfs does), with
the fixed environment :data:`ENV`, stdin from /dev/null, stdout and stderr captured apart.

Where it runs:

- inside a guest of ``thinsim vm``, proven by the nonce its kernel was booted with
  (:func:`in_vm`; no environment variable counts): the machine is ours, so every script
  starts from a machine just booted: all dm devices removed, loop devices deleted and
  loop0-7 added again (so ``losetup -f`` gives /dev/loop0 and the first dm device gets
  minor 0), a fresh ext4 on the RAM disk /dev/ram0 (brd) mounted on :data:`MOUNT`, the
  kernel log cleared;
- on a host that has dm-thin, as root: the host's own devices are left alone.  The script
  gets a private mount namespace with a fresh folder on /var/tmp (``$THINSIM_REAL_DIR``)
  bound on :data:`MOUNT`; afterwards only the dm and loop devices that a record proves the
  script made are removed (the run's dmsetup writes down what it makes; a loop device is
  the run's when its backing file is a file of the run's folder), whoever else made devices
  meanwhile; a run killed outright is cleaned up by the next (see run_on_host); the kernel
  log is not cleared;
- anywhere else: through ``thinsim vm`` (one boot for all the scripts given).

:func:`mask` hides what varies from run to run (dd's timings, dmesg's timestamps).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .. import vm
from ..backends.dmtools import CommandError
from ..backends.identity import backing_file, bound_loops, holders, loop_file
from ..backends.ledger import remove_dm, settle

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
    """Inside a guest that ``thinsim vm`` booted, proven by the nonce on its kernel command
    line (:func:`thinsim.vm.in_guest`), never by an environment variable: only there is the
    machine ours to wipe."""
    return vm.in_guest()


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
    loop0..loop7 again, or raise.  Anywhere else it refuses (RealHostError)."""
    if not in_vm():
        raise RealHostError("not in a guest of thinsim vm: its devices are not ours to wipe")
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


# -- on a host with dm-thin: only what the script is proven to have made goes -------------
#
# Each run gets a fresh folder RUN = $THINSIM_REAL_DIR/thinsim-real-XXXXXX (/var/tmp: a disk
# file system, where the thin tools' O_DIRECT works):
#
#   RUN/ledger   written by the run's dmsetup (below); flock-held by the runner while it lives
#   RUN/mnt      bound on /run/thinsim in the script's private mount namespace; mnt/work is
#                the script's working folder
#   RUN/bin      in the namespace a private tmpfs with the recording dmsetup
#
# The script's dmsetup, in its namespace only, is a small sh script bound over the real one:
# it runs the real dmsetup with the same arguments, streams and exit status, and for a
# command that can make, rename or remove dm devices it compares the devices (sysfs) before
# and after and appends to the ledger "+ MAJ:MIN NAME" for a device that appeared under a
# name given on the command line (only when the command succeeded: names are unique, so the
# device is the one it made), "~ MAJ:MIN NAME" for a rename, "- MAJ:MIN" for a removal.
# Devices are not renamed and get no UUID (the scripts' output must stay what the kernel
# prints), so afterwards a dm device is the run's when the ledger says the run made that
# device number under that name (renames followed) and the kernel has that number under
# that name now.  A loop device is the run's when the kernel says (LOOP_GET_STATUS64) its
# backing file is, by device and inode, a file inside RUN/mnt that has no link elsewhere.
# Nothing else is touched: not the host's devices, not another run's, not what another owner
# made while the script ran.  What looks like the script's but cannot be proven so (a loop
# on a file the script deleted, a device made by a program other than dmsetup) is left,
# and said so on stderr.
#
# A runner killed outright (SIGKILL) takes its script with it (the parent-death signal),
# and the next run finds the folder's ledger unlocked and tears down what it proves, the
# same way (recover_runs).

RUN_PREFIX = "thinsim-real-"
DM_ALIASES = ("dmstats", "devmap_name")  # dmsetup under other names (symlinks to it)

_RECORDING_DMSETUP = r"""#!/bin/sh
# thinsim: the script's dmsetup (see thinsim/host/real.py); the real one does the work.
real=@BIN@/real/${0##*/}
case " $* " in
*" create "* | *" rename "* | *" remove "* | *" remove_all "*) ;;
*) exec "$real" "$@" ;;
esac
devices() {
    for d in /sys/block/dm-*; do
        read -r t < "$d/dev" && read -r n < "$d/dm/name" && printf '%s %s\n' "$t" "$n"
    done 2>/dev/null
}
before=$(devices)
"$real" "$@"
rc=$?
after=$(devices)
{ printf '%s\n' "#before" "$before" "#after" "$after" "#args"; printf '%s\n' "$@"; } |
    awk -v rc="$rc" '
        s < 3 && $0 == "#before" { s = 1; next }
        s < 3 && $0 == "#after" { s = 2; next }
        s < 3 && $0 == "#args" { s = 3; next }
        s == 1 && NF { t = $1; sub(/^[^ ]* /, ""); b[t] = $0 }
        s == 2 && NF { t = $1; sub(/^[^ ]* /, ""); a[t] = $0 }
        s == 3 {
            w[$0] = 1
            n = split($0, spec, ";")  # create --concise "name,uuid,minor,flags,table;..."
            for (i = 1; i <= n; i++) { sub(/,.*/, "", spec[i]); w[spec[i]] = 1 }
        }
        END {
            for (t in b) if (!(t in a)) print "- " t
            for (t in a) if (a[t] in w) {
                if (!(t in b)) { if (rc == 0) print "+ " t " " a[t] }
                else if (b[t] != a[t]) print "~ " t " " a[t]
            }
        }' >> @LEDGER@
# Killed by a signal: die of it too, as the real one did.
[ "$rc" -gt 128 ] && kill -"$((rc - 128))" $$
exit "$rc"
"""

# In the private mount namespace: the run's folder on /run/thinsim, the recording dmsetup
# over the real one, then the script.  Arguments: RUN, then the real dmsetup paths, "--",
# the command.
_PRIVATE = r"""set -e
run=$1; shift
mkdir -p @MOUNT@
mount --bind "$run/mnt" @MOUNT@
mount -t tmpfs -o mode=0755 thinsim-tools "$run/bin"
mkdir "$run/bin/real"
tools=
while [ "$1" != -- ]; do tools="$tools $1"; shift; done; shift
first=${tools# }; first=${first%% *}
: > "$run/bin/real/dmsetup"
mount --bind "$first" "$run/bin/real/dmsetup"
for alias in @ALIASES@; do ln -s dmsetup "$run/bin/real/$alias"; done
cp "$run/dmsetup" "$run/bin/dmsetup"
chmod 0755 "$run/bin/dmsetup"
for tool in $tools; do mount --bind "$run/bin/dmsetup" "$tool"; done
cd @MOUNT@/work
exec "$@"
"""


def dm_names() -> dict[str, str]:
    """Every dm device: MAJOR:MINOR -> name, from sysfs (no dmsetup needed)."""
    found = {}
    for d in Path("/sys/block").glob("dm-*"):
        try:
            found[(d / "dev").read_text().strip()] = (d / "dm" / "name").read_text().strip()
        except OSError:
            pass  # removed meanwhile
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _dm_kname(number: str) -> str:
    return Path(f"/sys/dev/block/{number}").resolve().name


def recorded_dm(ledger: str) -> dict[str, str]:
    """MAJOR:MINOR -> name of the dm devices a run's ledger says it made and did not
    remove, in the order they were made."""
    made: dict[str, str] = {}
    for line in ledger.splitlines():
        kind, _, rest = line.partition(" ")
        number, _, name = rest.partition(" ")
        if kind == "+":
            made.pop(number, None)
            made[number] = name
        elif kind == "~" and number in made:
            made[number] = name
        elif kind == "-":
            made.pop(number, None)
    return made


def run_files(folder: Path) -> set[tuple[int, int]]:
    """(device, inode) of every file inside ``folder`` that has no link outside it."""
    links: dict[tuple[int, int], list[int]] = {}
    for top, _, names in os.walk(folder):
        for name in names:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if os.path.isfile(os.path.join(top, name)) and not os.path.islink(
                os.path.join(top, name)
            ):
                links.setdefault((st.st_dev, st.st_ino), [st.st_nlink, 0])[1] += 1
    return {key for key, (nlink, seen) in links.items() if nlink == seen}


def teardown_run(run: Path, loops_before: set[tuple[str, str]] | None = None) -> list[str]:
    """Remove the dm and loop devices that run folder ``run`` proves its script made (see
    above), holders first; return notes on what was left though it looks like the
    script's.  ``loops_before``: (device, backing file) bound when the run started, if
    known (then a loop on a deleted file attached since is noted)."""
    notes = []
    try:
        ledger = (run / "ledger").read_text(errors="surrogateescape")
    except OSError:
        ledger = ""
    made = recorded_dm(ledger)
    now = dm_names()
    ours = {number: name for number, name in made.items() if now.get(number) == name}
    for number, name in made.items():
        if number not in ours and name in now.values():
            notes.append(f"left dm device {name}: not the device number the run made it with")
    # A suspended device would hang the removal of what it holds: resume all, oldest first.
    for number, name in ours.items():
        if _read(Path("/sys/block", _dm_kname(number), "dm", "suspended")) == "1":
            sh(["dmsetup", "resume", name])
    left = dict(ours)
    for _ in range(len(ours)):
        free = [n for n in reversed(left) if not holders(_dm_kname(n))]
        if not free:
            break
        for number in free:
            if dm_names().get(number) == left[number]:
                try:
                    remove_dm(left[number])
                except CommandError as exc:
                    notes.append(f"could not remove dm device {left[number]}: {exc}")
            del left[number]
    for number, name in left.items():
        held = ", ".join(holders(_dm_kname(number)))
        notes.append(f"left dm device {name}: held by {held}, which the run is not proven to own")
    files = run_files(run / "mnt")
    for dev in bound_loops():
        path = backing_file(dev)
        if loop_file(dev) not in files:
            deleted = (path or "").endswith(" (deleted)")
            if deleted and loops_before is not None and (dev, path) not in loops_before:
                notes.append(f"left {dev}: its backing file {path} cannot be proven the run's")
            continue
        if holders(dev):
            notes.append(f"left {dev}: held by {', '.join(holders(dev))}")
            continue
        sh(["losetup", "-d", dev])
        for _ in range(200):  # udev may hold it a moment: the detach completes on its close
            if backing_file(dev) != path:
                break
            time.sleep(0.05)
        else:
            notes.append(f"left {dev}: still attached to {path} after losetup -d")
    return notes


def recover_runs(where: Path) -> list[str]:
    """Tear down what the runs in ``where`` whose runner died left behind, and delete their
    folders; a live run's ledger is locked and stays alone.  Returns the notes."""
    notes: list[str] = []
    for run in sorted(where.glob(RUN_PREFIX + "*")):
        try:
            fd = os.open(run / "ledger", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # not a run's folder, or one still being made
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its runner is alive
            if not (run / "ledger").exists():
                continue  # another recovery finished it while we waited
            notes += teardown_run(run)
            shutil.rmtree(run, ignore_errors=True)
        finally:
            os.close(fd)
    return notes


def _dmsetup_paths() -> list[str]:
    """Every distinct dmsetup on the scripts' PATH (/sbin is /usr/sbin on Debian 12)."""
    found = []
    for folder in ENV["PATH"].split(":"):
        path = os.path.join(folder, "dmsetup")
        if os.path.isfile(path):
            found.append(os.path.realpath(path))
    return list(dict.fromkeys(found))


def _note(notes: Sequence[str]) -> None:
    for note in notes:
        print(f"thinsim: {note}", file=sys.stderr)


def open_run(where: Path) -> tuple[Path, int]:
    """A new run folder under WHERE (after tearing down what dead runs there left): its
    ledger made and locked, mnt/work its script's working folder, the recording dmsetup
    written.  Returns (RUN, the lock's descriptor): :func:`close_run` ends it."""
    _note(recover_runs(where))
    run = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=where))
    # Locked before the name appears, so a recovery never takes a live run for a dead one.
    lock = os.open(run / "ledger.new", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.rename(run / "ledger.new", run / "ledger")
    try:
        (run / "mnt" / "work").mkdir(parents=True)
        (run / "bin").mkdir()
        (run / "dmsetup").write_text(
            _RECORDING_DMSETUP.replace("@BIN@", shlex.quote(str(run / "bin"))).replace(
                "@LEDGER@", shlex.quote(str(run / "ledger"))
            )
        )
    except BaseException:
        close_run(run, lock)
        raise
    return run, lock


def private_argv(run: Path, command: Sequence[str]) -> list[str]:
    """The argv that runs COMMAND in RUN's private mount namespace (its folder on
    /run/thinsim, its working folder /run/thinsim/work, the recording dmsetup), dying with
    the process that starts it (SIGKILL included)."""
    private = _PRIVATE.replace("@MOUNT@", shlex.quote(str(MOUNT))).replace(
        "@ALIASES@", " ".join(DM_ALIASES)
    )
    # setpriv: the script dies with its runner (SIGKILL included), not after it.
    argv = ["setpriv", "--pdeathsig", "KILL", "--"]
    argv += ["unshare", "--mount", "--propagation", "private", "sh", "-c", private, "sh"]
    return [*argv, str(run), *_dmsetup_paths(), "--", *command]


def close_run(run: Path, lock: int, loops_before: set[tuple[str, str]] | None = None) -> None:
    """Remove what RUN is proven to have made (notes on stderr), its folder, its lock."""
    try:
        settle()
        _note(teardown_run(run, loops_before))
    finally:
        shutil.rmtree(run, ignore_errors=True)
        os.close(lock)


def run_on_host(script: Path, args: Sequence[str] = (), timeout: float = TIMEOUT) -> Result:
    """On a host with dm-thin, as root: run SCRIPT without touching the host's own devices;
    remove afterwards the dm and loop devices it is proven to have made (see above)."""
    run, lock = open_run(Path(os.environ.get("THINSIM_REAL_DIR", "/var/tmp")))
    loops_before = None
    try:
        loops_before = {(dev, backing_file(dev) or "") for dev in bound_loops()}
        argv = private_argv(run, ["bash", str(script), *args])
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
            finally:
                if proc.returncode is None:  # interrupted: take the script down first
                    os.killpg(proc.pid, 9)
                    proc.wait()
            out.seek(0)
            err.seek(0)
            result = Result(_decode(out.read()), _decode(err.read()), returncode)
    finally:
        close_run(run, lock, loops_before)
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
