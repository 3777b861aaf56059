"""What a ``thinsim run`` killed outright leaves, and the next run's cleaning of it.

SIGTERM, SIGINT and SIGHUP end a run through its handlers (thinsim/host/run.py), which
remove what it made.  SIGKILL runs no handler: the run's processes still end (the sandbox's
namespace dies with thinsim run), and its own files live in the namespace's tmpfs, but two
things are on the host's disks, where nothing removes them:

- the private working folder of ``thinsim run --workdir`` (``thinsim diff``), and the shims'
  folder of a run without a sandbox, both under $TMPDIR.  A run holds an exclusive flock on
  its folder for as long as it lives (the kernel drops it when the process dies, however it
  dies), so a later run knows a folder whose lock it can take for a dead run's, and removes
  it;
- a host folder's state file being written when a simulated command was killed (written
  beside the state and renamed over it, so the state itself is whole: the last command's
  or the one before).  Under the host's exclusive lock no command is writing, so any such
  file is a dead command's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

WORK_PREFIX = "thinsim-work-"  # thinsim run --workdir's private folder
UNSANDBOXED_PREFIX = "thinsim-run-"  # a run without a sandbox: its shims and default host
_ABANDONED_SECONDS = 3600  # an empty folder: its run died while making it, or just made it


def private_folder(prefix: str) -> tuple[str, int]:
    """A new, empty folder under $TMPDIR for this run, and the descriptor that holds its lock
    (close it after removing the folder).  Folders of dead runs go first.  What the run puts
    in it tells a sweeper that the lock was taken: a folder with something in it and no lock
    is a dead run's."""
    sweep(prefix)
    path = tempfile.mkdtemp(prefix=prefix)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return path, fd


def remove_private_folder(path: str, fd: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.close(fd)


def sweep(prefix: str) -> list[str]:
    """Remove the folders PREFIX* under $TMPDIR that this user's dead runs left; return
    them."""
    removed = []
    for path in sorted(Path(tempfile.gettempdir()).glob(prefix + "*")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its run is alive
            # an empty folder may be one a run has just made and not locked yet
            if any(path.iterdir()) or time.time() - st.st_mtime > _ABANDONED_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
        finally:
            os.close(fd)
    return removed


def sweep_host(folder: str | os.PathLike) -> None:
    """Remove the half-written state files of commands killed on host FOLDER (state.py's
    _save_state names them STATE.PID.tmp), under the host's exclusive lock."""
    from .state import LOCK_FILE, STATE_FILE

    folder = Path(folder)
    try:
        lock = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 -- closed below
    except OSError:
        return  # no host there yet, or not ours to clean: open_host says why
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for path in folder.glob(f"{STATE_FILE}.*.tmp"):
            with contextlib.suppress(OSError):
                path.unlink()
