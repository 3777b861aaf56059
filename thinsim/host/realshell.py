"""A shell kept on the real kernel: the labs' ``%%thinsim`` cells with the kernel backend
(thinsim/notebook.py), run as root on the real dm-thin the way thinsim/host/real.py runs the
recorded host scripts.

    python -c 'from thinsim.host.realshell import main; ...' COMMAND [ARG...]

The notebook's kernel starts it in a session of its own (ipykernel's shutdown kills the
children in its own process group, before the kernel's atexit: this process must outlive
that to clean up), with the kernel's pipes as its stdin and stdout, which COMMAND (the
notebook's shell) inherits.  It

- opens a run (:func:`thinsim.host.real.open_run`): a folder with a locked ledger, bound on
  /run/thinsim in a private mount namespace, the recording dmsetup over the real one.  On a
  host with dm-thin the folder is in ``$THINSIM_REAL_DIR`` (/var/tmp) and the host's own
  devices are left alone, as for ``thinsim run --backend kernel``.  Inside a guest of
  ``thinsim vm`` it is on a fresh ext4 on the RAM disk /dev/ram0 (as for the recorded
  scripts: the thin tools' O_DIRECT needs a disk file system), mounted on :data:`LAB_MOUNT`;
  and when no other lab shell lives there, the guest is first made a machine as just booted
  (every dm and loop device removed, the kernel log cleared: real.clean_devices), so that
  the labs' /dev/loop0 is free and the first dm device is 254:0, as on the simulated host;
- runs COMMAND in /run/thinsim/work with the environment it was given, plus the explain
  wrappers (:func:`write_explain`) first on PATH and Debian's root folders (/usr/sbin ...)
  last where missing;
- when COMMAND ends (the notebook closed its stdin: ``%thinsim_reset``, a change of backend,
  the kernel's exit; or a cell ran ``exit``) or the notebook's kernel dies however it dies
  (watched by pidfd), kills what is left of COMMAND's session, removes every dm and loop
  device the run is proven to have made (real.teardown_run: notes on what it could not go to
  stdout), then the run's folder; in the guest, the RAM disk is unmounted once no lab shell
  lives.  If this process itself is killed outright, COMMAND dies with it (the parent-death
  signal) and the next run in the same folder tears down what it left (real.recover_runs).
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from . import real

ROOT = str(Path(__file__).resolve().parents[2])  # the checkout (or site-packages) thinsim is in
LAB_MOUNT = Path("/run/thinsim-lab")  # in the guest: the RAM disk's ext4 the lab runs use

# --explain on the real kernel: a simulated command that fails is followed on stderr by the
# kernel log lines it made (thinsim/host/server.py: explain); on the kernel, each such
# command is this wrapper, which counts the log's lines before and prints the new ones after
# a failure, in the same words.  THINSIM_EXPLAIN is the cell's (the notebook's shell sets it).
_EXPLAIN = r"""#!/bin/bash
# thinsim --explain on the real kernel (thinsim/host/realshell.py)
[ "${THINSIM_EXPLAIN:-0}" = 0 ] && exec -a @NAME@ @REAL@ "$@"
seen=$(dmesg 2>/dev/null | wc -l)
(exec -a @NAME@ @REAL@ "$@")
status=$?
if [ "$status" != 0 ]; then
    said=$(dmesg --notime 2>/dev/null | tail -n +"$((seen + 1))")
    if [ -n "$said" ]; then
        {
            echo "thinsim --explain: @NAME@ failed; the kernel logged (dmesg):"
            while IFS= read -r line; do printf '  %s\n' "$line"; done <<<"$said"
        } >&2
    fi
fi
# Killed by a signal: die of it too, as the real one did.
[ "$status" -gt 128 ] && kill -"$((status - 128))" $$
exit "$status"
"""
# The simulated commands (host/tools.py: COMMANDS) but the log's reader, named here: importing
# the model to list them takes seconds under the VM's emulation (tests/test_notebook_magic.py
# holds the two lists together).
EXPLAINED = (
    "blkdiscard", "blockdev", "dd", "dmsetup", "losetup", "sync", "thin_check", "thin_delta",
    "thin_dump", "thin_ls", "thin_metadata_size", "thin_repair", "thin_restore", "udevadm",
)  # fmt: skip


def argv(*command: str) -> list[str]:
    """The argv that runs this guardian for COMMAND with this python and this checkout's
    thinsim (as host/run.py's this_thinsim, which imports the model: seconds in the VM)."""
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); from {__name__} import main; sys.exit(main())"
    )
    return [sys.executable, "-c", code, *command]


def search_path(path: str) -> str:
    """PATH's folders, then those of a Debian root shell it lacks (dmsetup is in /usr/sbin)."""
    folders = [f for f in path.split(os.pathsep) if f]
    folders += [f for f in real.ENV["PATH"].split(os.pathsep) if f not in folders]
    return os.pathsep.join(folders)


def write_explain(folder: Path, path: str) -> None:
    """The explain wrappers of the simulated commands found on PATH, into FOLDER."""
    folder.mkdir()
    for name in EXPLAINED:
        found = shutil.which(name, path=path)
        if found is None:
            continue
        text = _EXPLAIN.replace("@NAME@", name).replace("@REAL@", shlex.quote(found))
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)


def _live_runs(where: Path) -> list[Path]:
    """The run folders in WHERE whose runner lives (after real.recover_runs: all of them)."""
    return sorted(where.glob(real.RUN_PREFIX + "*"))


def guest_scratch() -> Path:
    """In the guest: LAB_MOUNT with a fresh ext4 on the RAM disk, the machine wiped, unless
    another lab shell's run is live there (then it is shared as it is)."""
    if os.path.ismount(LAB_MOUNT):
        real._note(real.recover_runs(LAB_MOUNT))
        if _live_runs(LAB_MOUNT):
            return LAB_MOUNT
        real.sh(["umount", str(LAB_MOUNT)], check=True)
    real.clean_devices()
    if not os.path.exists(real.RAMDISK):
        real.sh(["modprobe", *real.BRD.split()], check=True)
    LAB_MOUNT.mkdir(parents=True, exist_ok=True)
    real.sh(
        ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
         real.RAMDISK],
        check=True,
    )  # fmt: skip
    real.sh(["mount", real.RAMDISK, str(LAB_MOUNT)], check=True)
    real.sh(["udevadm", "settle"])
    real.sh(["dmesg", "-C"], check=True)
    return LAB_MOUNT


def _release_guest_scratch() -> None:
    if not os.path.ismount(LAB_MOUNT) or _live_runs(LAB_MOUNT):
        return  # another lab shell uses it
    if real.sh(["umount", str(LAB_MOUNT)]).returncode != 0:
        real.sh(["umount", "-l", str(LAB_MOUNT)])


class _Ended(BaseException):
    """SIGTERM, SIGINT or SIGHUP: end the shell and clean up."""


def _end(signum, frame):
    raise _Ended(signum)


def main() -> int:
    command = sys.argv[1:]
    kernel_pid = os.getppid()
    try:
        kernel = os.pidfd_open(kernel_pid)
    except OSError:
        return 1
    if os.getppid() != kernel_pid:  # the notebook's kernel is already gone
        return 1
    in_guest = real.in_vm()
    why = None if in_guest else real.dm_thin_here()
    if why is not None:
        print(f"thinsim: no dm-thin to run on here: {why}", flush=True)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _end)
    proc = None
    try:
        where = (
            guest_scratch() if in_guest else Path(os.environ.get("THINSIM_REAL_DIR", "/var/tmp"))
        )
        run, lock = real.open_run(where)
        loops_before = None
        try:
            loops_before = {(dev, real.backing_file(dev) or "") for dev in real.bound_loops()}
            env = dict(os.environ)
            path = search_path(env.get("PATH", ""))
            write_explain(run / "explain", path)
            env["PATH"] = os.pathsep.join([str(run / "explain"), path])
            proc = subprocess.Popen(
                real.private_argv(run, command), env=env, start_new_session=True
            )
            shell = os.pidfd_open(proc.pid)
            select.select([shell, kernel], [], [])
        except _Ended:
            pass
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)  # the ending is under way: once is enough
            if proc is not None:
                try:  # what the cells left running: background jobs, a command stuck
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            real.close_run(run, lock, loops_before)
    except _Ended:
        pass
    finally:
        if in_guest:
            _release_guest_scratch()
        sys.stdout.flush()
    return 0 if proc is not None else 1
