"""Record what the real host tools print for tests/host/scripts/NAME.sh.  Runs inside the VM.

    python3 tests/host/record.py [--scripts DIR] [--out DIR] [--environment] [NAME...]

Started by tests/host/record.sh (one VM boot).  NEVER run it on a machine whose devices you
care about: the scripts and the clean-up drive losetup and dmsetup on the whole machine.

For each script NAME (default: every DIR/*.sh, sorted) it

1. waits for udev, removes every dm device, detaches every loop device, deletes all loop
   devices and adds loop0 to loop7 again (so the script's first ``losetup -f`` gives
   /dev/loop0, loop0 to loop7 exist in their state after boot, and its first dm device gets
   minor 0);
2. makes a fresh ext4 file system on a RAM disk (/dev/ram0, brd), mounts it on /run/thinsim
   and runs ``bash NAME.sh`` in its empty folder /run/thinsim/work with a fixed environment
   (ENV below), stdin from /dev/null, stdout and stderr captured separately.  Not a tmpfs:
   the thin tools open files with O_DIRECT, which tmpfs refuses on 6.1 (EINVAL), and ext4
   punches holes for discards like tmpfs does.  Not a loop device either, so that the script
   gets loop0 first.  A fresh mkfs gives the same inode numbers on every run.  The kernel
   ring buffer is cleared (``dmesg -C``) just before, so ``dmesg`` shows only the script's
   own lines;
3. writes OUT/NAME.out, OUT/NAME.err (both masked, see ``mask``) and OUT/NAME.rc (the exit
   status, a decimal number and a newline);
4. cleans up again (dm devices, loop devices) and unmounts the file system.

``--environment`` also writes OUT/ENVIRONMENT.txt (kernel and tool versions).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts"
MOUNT = Path("/run/thinsim")  # a fresh ext4 on a RAM disk (brd), made for every script
WORKDIR = MOUNT / "work"  # the scripts' working folder, empty at the start
RAMDISK = "/dev/ram0"  # record.sh loads brd with one 2 GiB RAM disk
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


def sh(argv: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


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


def clean_devices() -> None:
    """Remove every dm device and detach every loop device, or raise."""
    sh(["udevadm", "settle"])
    for _ in range(20):
        names = dm_devices()
        if not names:
            break
        for name in names:
            sh(["dmsetup", "resume", name])  # a suspended device cannot be removed cleanly
        # Remove the devices nobody holds first (thins before their pool).
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
        proc = subprocess.run(argv, capture_output=True, text=True, env=ENV)
        out.append("$ " + " ".join(argv))
        out.extend(proc.stdout.splitlines()[:2] if argv[0] in ("dd", "bash") else proc.stdout.splitlines())
    out.append(f"$ env (for every script)")
    out.extend(f"{key}={value}" for key, value in ENV.items())
    out.append(f"working folder: {WORKDIR} (on a fresh ext4 on {RAMDISK} for every script)")
    return "".join(line + "\n" for line in out)


def record(script: Path, out_dir: Path) -> float:
    name = script.stem
    clean_devices()
    MOUNT.mkdir(parents=True, exist_ok=True)
    sh(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", RAMDISK],
       check=True)
    sh(["mount", RAMDISK, str(MOUNT)], check=True)
    WORKDIR.mkdir()
    sh(["udevadm", "settle"])
    sh(["dmesg", "-C"], check=True)
    t0 = time.monotonic()
    try:
        out_path, err_path = out_dir / f"{name}.out", out_dir / f"{name}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                ["bash", str(script.resolve())],
                cwd=WORKDIR,
                env=ENV,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                returncode = proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                for dev in dm_devices():  # unblock I/O stuck on a suspended device
                    sh(["dmsetup", "resume", dev])
                proc.wait()
                returncode = "timeout"
        elapsed = time.monotonic() - t0
        for path in (out_path, err_path):
            text = path.read_bytes().decode("utf-8", "surrogateescape")
            path.write_bytes(mask(text).encode("utf-8", "surrogateescape"))
        (out_dir / f"{name}.rc").write_text(f"{returncode}\n")
        if returncode == "timeout":
            raise RuntimeError(f"timed out after {TIMEOUT} s (partial output kept)")
    finally:
        clean_devices()
        os.chdir("/")
        if sh(["umount", str(MOUNT)]).returncode != 0:
            sh(["umount", "-l", str(MOUNT)])
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("--scripts", type=Path, default=SCRIPTS)
    parser.add_argument("--out", type=Path, default=HERE / "recorded")
    parser.add_argument("--environment", action="store_true")
    args = parser.parse_args(argv)
    scripts = sorted(args.scripts.glob("*.sh"))
    if args.names:
        scripts = [args.scripts / f"{name.removesuffix('.sh')}.sh" for name in args.names]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.environment:
        (args.out / "ENVIRONMENT.txt").write_text(environment())
    failed = []
    start = time.monotonic()
    for script in scripts:
        try:
            elapsed = record(script, args.out)
        except Exception as exc:  # noqa: BLE001 - report it, record the other scripts
            failed.append(script.stem)
            print(f"FAILED {script.stem}: {exc!r}", file=sys.stderr, flush=True)
        else:
            print(f"recorded {script.stem} in {elapsed:.1f} s", file=sys.stderr, flush=True)
    print(
        f"{len(scripts) - len(failed)}/{len(scripts)} scripts in {time.monotonic() - start:.0f} s",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
