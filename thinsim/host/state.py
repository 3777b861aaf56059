"""The simulated host's state: loop devices, device-mapper devices, pools, the kernel log.

The state lives in a folder (``--host DIR``), loaded, changed and saved under an exclusive
``flock`` so that commands run at once lose nothing: by the host's process
(thinsim/host/server.py), which keeps it in memory and saves it after each command, or by a
command run in a process of its own (``THINSIM_SERVER=0``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import io
import os
import pickle
from pathlib import Path

from ..model.blockio import new_command
from ..model.devices import DmDevice, HostState, LoopDevice, Target, Unloaded, is_device_path
from ..model.dm_thin import reopen_pools

# the devices are defined in devices.py; their old home names them still (and a state file
# pickled before names them here)
__all__ = [
    "DmDevice",
    "HostState",
    "HostStateError",
    "LoopDevice",
    "Target",
    "Unloaded",
    "is_device_path",
    "open_host",
]

STATE_FILE = "state.pickle"
LOCK_FILE = "lock"


class HostStateError(SystemExit):
    """The host state cannot be loaded or saved: a one-line message, exit status 1 (a
    SystemExit, so that whichever command hit it ends with the message, not a traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"thinsim: {message}")


# The state is a pickle of the simulated kernel (with the pools' in-core metadata, uncommitted
# transactions included, from the per-process path; without it from the host's process, see
# _save_state), which no plain data format holds without rewriting
# every model class.  Unpickling runs whatever code the file names, so a state file is only
# unpickled once it is proven to be one this user wrote: an HMAC-SHA256 over it, keyed by a
# per-user secret that only this user can read, is checked first (with ssh's StrictModes
# checks on the secret, its folder and the state file).
STATE_MAGIC = b"thinsim host state v1\n"
KEY_BYTES = 32


def _key_folder() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "thinsim"


def _strict(path: Path, st: os.stat_result, what: str) -> None:
    """StrictModes: owned by this user, writable by nobody else."""
    if st.st_uid != os.geteuid():
        raise HostStateError(f"{path}: {what} is owned by uid {st.st_uid}, not by this user")
    if st.st_mode & 0o022:
        raise HostStateError(f"{path}: {what} is writable by group or others")


def _state_key() -> bytes:
    """This user's secret (made on first use): 0600 in a 0700 folder."""
    folder = _key_folder()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.lstat()
    except OSError as e:
        raise HostStateError(f"{folder}: {e.strerror}") from None
    _strict(folder, st, "the key folder")
    if st.st_mode & 0o077:
        raise HostStateError(f"{folder}: the key folder is open to group or others")
    path = folder / "host-state.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise HostStateError(f"{path}: {e.strerror}") from None
    else:
        try:
            os.write(fd, os.urandom(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise HostStateError(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        _strict(path, st, "the key")
        if st.st_mode & 0o077:
            raise HostStateError(f"{path}: the key is readable by group or others")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        # a key being written right now by another command, or a damaged one
        raise HostStateError(f"{path}: the key is not {KEY_BYTES} bytes long")
    return key


def _seal(key: bytes, payload: bytes) -> bytes:
    return STATE_MAGIC + hmac.new(key, payload, hashlib.sha256).digest() + payload


class _PoolsOut(pickle.Pickler):
    """Pickles a host state without its pools' metadata: each PoolMetadata and ThinDevice
    becomes a reference (persistent_id), so that the state's size and the cost of saving it
    do not grow with the pools'."""

    def persistent_id(self, obj):
        from ..model.metadata import PoolMetadata, ThinDevice

        if isinstance(obj, PoolMetadata):
            device = getattr(obj, "device", None)
            incore = {
                "metadata_begin": obj.metadata_sm.begin,
                "data_begin": obj.data_sm.begin,
                "commit_count": obj.commit_count,
                "in_service": obj.in_service,
                "needs_check": obj.needs_check,
                "flags_on_disk": getattr(device, "flags_on_disk", 0),
            }
            return ("pmd", getattr(device, "offset", 0), incore)
        if isinstance(obj, ThinDevice):
            return ("td", obj.id)
        return None


class _PoolsIn(pickle.Unpickler):
    """Unpickles a state _PoolsOut wrote: the references become Unloaded placeholders."""

    unloaded = False

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == "pmd":
            self.unloaded = True
            return Unloaded("pmd", int(pid[1]), dict(pid[2]))
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "td":
            self.unloaded = True
            return Unloaded("td", int(pid[1]))
        raise pickle.UnpicklingError("unknown reference")


def _load_state(path: Path) -> HostState:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return HostState()
    except OSError as e:
        raise HostStateError(f"{path}: {e.strerror}") from None
    try:
        _strict(path, os.fstat(fd), "the host state")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError as e:
        raise HostStateError(f"{path}: {e.strerror}") from None
    finally:
        os.close(fd)
    head = len(STATE_MAGIC)
    mac, payload = data[head : head + 32], data[head + 32 :]
    expected = hmac.new(_state_key(), payload, hashlib.sha256).digest()
    if not data.startswith(STATE_MAGIC) or not hmac.compare_digest(mac, expected):
        raise HostStateError(
            f"{path}: not a host state this user's thinsim wrote (damaged, or written by "
            "someone else); refusing to load it"
        )
    try:
        unpickler = _PoolsIn(io.BytesIO(payload))
        state = unpickler.load()
    except (pickle.UnpicklingError, AttributeError, ImportError, EOFError, TypeError) as e:
        # an authenticated state from an incompatible thinsim
        raise HostStateError(f"{path}: cannot load the host state: {e}") from None
    if not isinstance(state, HostState):
        raise HostStateError(f"{path}: cannot load the host state: not a HostState")
    if unpickler.unloaded:
        reopen_pools(state)
    return state


def _save_state(folder: Path, state: HostState, *, sync: bool = True, pools: bool = True) -> None:
    """Write the state to a file of its own, flush it, then rename it over the old one, so
    that the state file is always a whole state: the old one or the new one.  Without SYNC
    (the host's process, server.py, after every command) the file is not forced to the
    disk: the rename alone makes it whole for whoever reads it next, a kill -9 included;
    only a crash of the real machine may take the last commands' host state back (the
    pools' metadata is written as the kernel writes it, whatever SYNC).

    Without POOLS (the host's process, which keeps the pools in its memory while it runs)
    the pools' metadata is left out (_PoolsOut): whoever loads the state next without them
    in memory re-opens each pool from its metadata device (dm_thin.reopen_pools), which holds
    what the pool last committed; the per-process path (THINSIM_SERVER=0) keeps them whole,
    uncommitted changes included, since its next command is another process."""
    path = folder / STATE_FILE
    if pools:
        payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        buf = io.BytesIO()
        _PoolsOut(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
        payload = buf.getvalue()
    data = _seal(_state_key(), payload)
    tmp = folder / f"{STATE_FILE}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if sync:
            dirfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateNotSaved(folder, e.strerror) from None


class StateNotSaved(HostStateError):
    """The state file could not be written (the host folder's file system full or failing):
    the file holds the last state saved.  A command run in a process of its own ends
    with the state it loaded; the host's process goes on with its own (server.py)."""

    def __init__(self, folder: Path, strerror: str) -> None:
        super().__init__(
            f"{folder}: cannot save the host state ({strerror}); it stays as the last "
            "command left it"
        )
        self.folder, self.strerror = folder, strerror


@contextlib.contextmanager
def open_host(folder: str | os.PathLike, *, write: bool = True):
    """Load the host state from ``folder`` under its lock; save it back on success.

    A state file that fails its checks, or a state that cannot be saved, ends the command
    with HostStateError (a one-line message and exit status 1)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 -- closed below
    except OSError as e:
        raise HostStateError(f"{folder}: {e.strerror}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
        state = _load_state(folder / STATE_FILE)
        if write:
            new_command(state)  # the pool's periodic commit between commands
        yield state
        if write:
            state.stamp_log()
            _save_state(folder, state)
