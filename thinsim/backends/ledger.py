"""The ledger: every loop device, dm device and file the kernel backend makes, written down
*before* it is made, so that a run killed at any point (even by SIGKILL) can be cleaned up.

Each :class:`~thinsim.backends.kernel.KernelPool` keeps one ledger file,
``LEDGER_DIR/<token>.ledger``, and holds an exclusive ``flock`` on it for its whole life.  The
kernel drops a flock when its holder dies however it dies, so a ledger nobody holds belongs
to a dead run: :func:`recover` (called whenever a kernel pool starts) tears down what it lists
and deletes it.  Nothing that a ledger does not list, or that fails an ownership check, is
ever touched:

- a dm device is removed only when its UUID carries the ledger's token (``THINSIM-<token>-``);
- a loop device is detached only when the kernel says its backing file is one of the
  ledger's files: the file's device, inode and file handle were written down when it was
  made or adopted (:mod:`thinsim.backends.identity`), so a file someone else made under the
  same name, even on a reused inode number, is not ours;
- a file is deleted only when the ledger made it (``O_EXCL``), never when it was adopted,
  and only while the path still names that very file.

Lines, appended one ``write`` at a time (``O_APPEND``)::

    dir PATH        a folder for backing files, made right after the line is written
    file PATH       a backing file this run made (written after the O_EXCL create succeeded)
    adopted PATH    a backing file that already existed and the caller asked to use
    id DEV INO T:HANDLE PATH   the identity of file or adopted PATH (see identity.FileId)
    loop DEV PATH   DEV was attached to PATH
    dm NAME         a dm device about to be created (so also one whose create never finished)
    -loop DEV       detached
    -dm NAME        removed
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .dmtools import run_command
from .identity import FileId, backing_file, bound_loops, holders, loop_file

log = logging.getLogger("thinsim.kernel")

DEFAULT_LEDGER_DIR = "/run/thinsim/kernel-ledger"
UUID_PREFIX = "THINSIM-"


def ledger_dir() -> Path:
    """Where ledgers live: ``$THINSIM_LEDGER_DIR`` or /run/thinsim/kernel-ledger (a tmpfs on
    Debian, emptied at boot, when the devices it lists are gone too)."""
    return Path(os.environ.get("THINSIM_LEDGER_DIR", DEFAULT_LEDGER_DIR))


def dm_uuid(token: str, role: str) -> str:
    return f"{UUID_PREFIX}{token}-{role}"


@dataclass
class Entries:
    """What a ledger says still exists, in creation order."""

    token: str
    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    ids: dict[str, FileId] = field(default_factory=dict)  # file or adopted path -> identity
    loops: dict[str, str] = field(default_factory=dict)  # device -> backing file
    dms: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, token: str, text: str) -> Entries:
        e = cls(token)
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "dir":
                e.dirs.append(rest)
            elif kind == "file":
                e.files.append(rest)
            elif kind == "adopted":
                e.adopted.append(rest)
            elif kind == "id":
                words = rest.split(" ", 3)
                if len(words) == 4:
                    e.ids[words[3]] = FileId.parse(" ".join(words[:3]))
            elif kind == "loop":
                dev, _, path = rest.partition(" ")
                e.loops[dev] = path
            elif kind == "-loop":
                e.loops.pop(rest, None)
            elif kind == "dm":
                e.dms.append(rest)
            elif kind == "-dm" and rest in e.dms:
                e.dms.remove(rest)
        return e


class Ledger:
    """One run's ledger file, locked while the run lives."""

    def __init__(self, token: str, directory: Path | None = None) -> None:
        self.token = token
        directory = directory or ledger_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / f"{token}.ledger"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __repr__(self) -> str:
        return f"Ledger({self.token!r})"

    def add(self, *words: str) -> None:
        if self._fd < 0:
            raise RuntimeError("ledger already closed")
        os.write(self._fd, (" ".join(words) + "\n").encode())

    def entries(self) -> Entries:
        return Entries.parse(self.token, self.path.read_text())

    def close(self) -> None:
        """Delete the ledger (call only once everything it lists is gone)."""
        if self._fd >= 0:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1


# -- tearing down -------------------------------------------------------------------------


def our_dm_devices(token: str) -> dict[str, bool]:
    """The dm devices whose UUID says ledger ``token`` made them: name -> suspended.

    One ``dmsetup info`` for all devices rather than one per name."""
    proc = run_command(
        [
            "dmsetup", "info", "-c", "--noheadings", "--separator", " ",
            "-o", "name,uuid,suspended",
        ],
        check=False,
    )  # fmt: skip
    found = {}
    for line in proc.stdout.splitlines():
        words = line.split(" ")
        if len(words) == 3 and words[1].startswith(dm_uuid(token, "")):
            found[words[0]] = words[2] == "Suspended"
    return found


def settle() -> None:
    """Wait for udev to finish with new or changed devices (udev probing holds them open).
    Without udev there is nothing to wait for."""
    if shutil.which("udevadm"):
        run_command(["udevadm", "settle"], check=False)


def remove_dm(name: str, attempts: int = 5) -> None:
    """``dmsetup remove --retry NAME``; while it stays busy (udev's blkid probe briefly opens
    a new device), again after ``udevadm settle``; ``--force`` as the last resort."""
    for attempt in range(attempts):
        if attempt:
            settle()
            time.sleep(0.2 * attempt)
        proc = run_command(["dmsetup", "remove", "--retry", name], check=False)
        if proc.returncode == 0 or "Device does not exist" in proc.stderr:
            return
    run_command(["dmsetup", "remove", "--force", "--retry", name])


def loops_on(path: str) -> list[str]:
    """Loop devices whose backing file the kernel names ``path`` (also once deleted): the
    candidates for a file whose attach was never written down (killed in between)."""
    return [dev for dev in bound_loops() if backing_file(dev) in (path, f"{path} (deleted)")]


def is_ours(dev: str, path: str, fid: FileId | None) -> bool:
    """Loop device ``dev`` is attached to the very file recorded as ``fid`` (made or adopted
    at ``path``): same device and inode, and that inode still the one we recorded."""
    return fid is not None and loop_file(dev) == (fid.dev, fid.ino) and fid.alive(path)


def detach_loop(dev: str) -> None:
    """Detach ``dev`` and wait until the kernel has let it go (a detach while udev holds it
    open only sets autoclear).  Call only on a device proven ours (:func:`is_ours`)."""
    before = backing_file(dev)
    run_command(["losetup", "-d", dev], check=False)
    for _ in range(200):
        if backing_file(dev) != before:
            return
        time.sleep(0.05)
    log.warning("%s is still attached to %s after losetup -d", dev, before)


def teardown(entries: Entries) -> list[str]:
    """Remove what ``entries`` lists, newest first; return what was removed (for logs)."""
    done = []
    ours = our_dm_devices(entries.token) if entries.dms else {}
    # A suspended pool would hang the removal of its thins: resume first, oldest (the pool)
    # first.
    for name in entries.dms:
        if ours.get(name):
            run_command(["dmsetup", "resume", name], check=False)
    for name in reversed(entries.dms):
        if name in ours:
            remove_dm(name)
            done.append(f"dm {name}")
    candidates = dict(entries.loops)
    for path in entries.files + entries.adopted:
        # The attach may have happened without its ledger line (killed in between): ask the
        # kernel for loops on the files this run made or adopted.
        for dev in loops_on(path):
            candidates.setdefault(dev, path)
    for dev, path in reversed(list(candidates.items())):
        if not is_ours(dev, path, entries.ids.get(path)):
            if dev in entries.loops and loop_file(dev) is not None:
                log.warning("left %s: not proven attached to %s of ledger %s", dev, path,
                            entries.token)  # fmt: skip
            continue
        if holders(dev):
            log.warning("left %s: still held by %s", dev, ", ".join(holders(dev)))
            continue
        detach_loop(dev)
        done.append(f"loop {dev}")
    for path in reversed(entries.files):
        fid = entries.ids.get(path)
        if fid is None or FileId.of_path(path) != fid:
            if os.path.lexists(path):
                log.warning("left %s: not proven the file ledger %s made", path, entries.token)
            continue
        try:
            os.unlink(path)
            done.append(f"file {path}")
        except FileNotFoundError:
            pass
    for path in reversed(entries.dirs):
        try:
            os.rmdir(path)
        except OSError:
            pass
    return done


def recover(directory: Path | None = None) -> list[str]:
    """Tear down what every abandoned ledger lists (its run died without cleaning up, e.g.
    by SIGKILL), then delete those ledgers.  Ledgers of live runs are left alone (their flock
    is held).  Returns what was removed."""
    directory = directory or ledger_dir()
    done: list[str] = []
    if not directory.is_dir():
        return done
    for path in sorted(directory.glob("*.ledger")):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its run is alive
            if not path.exists():  # another recover finished it while we waited
                continue
            entries = Entries.parse(path.stem, path.read_text())
            log.warning("cleaning up after a dead run: ledger %s", path)
            done += teardown(entries)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return done
