"""The ``%%thinsim`` cell magic of the labs (notebooks/): a cell's bash runs on a simulated
host kept for the notebook, and prints what a terminal on a real host would show.

    %load_ext thinsim

    %%thinsim
    dd if=/dev/zero of=disk.img bs=1 count=0 seek=1G
    losetup --find --show disk.img

The host is one ``thinsim run`` for the whole notebook (thinsim/host/run.py: its sandbox, its
host process, its loop devices' files), whose bash runs each cell in turn (eval): the working
folder, shell variables and functions carry from cell to cell, as in a terminal kept open.
It works in ``/run/thinsim/work`` (the folder the recorded host scripts ran in, private to
the run), so paths print as on the real host of tests/host.  Explain mode is on: after a
simulated command that fails, the kernel log lines that say why (``thinsim run --explain``);
``%%thinsim --no-explain`` prints only what the real host prints.  ``%thinsim_reset`` (or
the kernel's restart) starts a fresh host, as a reboot does.

Python reaches the same host with :func:`sh` (a command's output as a str), which the
pictures of :mod:`thinsim.viz` use to read ``thin_dump``.

The kernel backend runs the same cells on the real kernel instead: ``%thinsim backend
kernel`` (``%thinsim backend model`` goes back; ``%thinsim backend`` says which is on), or
``THINSIM_LAB_BACKEND=kernel`` in the environment when the extension loads, so that a whole
notebook runs there unchanged::

    thinsim vm --rwdir notebooks -- env THINSIM_LAB_BACKEND=kernel \\
        jupyter nbconvert --to notebook --execute notebooks/02-thin-pool-provisioning.ipynb

It needs root and dm-thin: a guest of ``thinsim vm``, or a host with dm-thin as root;
anywhere else a cell says so (and runs nothing).  The cells' bash runs as root, in
``/run/thinsim/work`` of a private mount namespace (a kept folder of its own: on a fresh ext4
on the guest's RAM disk, on a host in /var/tmp), with the notebook's environment, the same
commands (the real ones; explain mode prints the kernel log lines of a command that failed,
as on the model), and the protocol of the simulated host's shell; in a guest, the machine is
first wiped as if just booted, so that the labs' /dev/loop0 is free.  Every loop and dm
device the cells made is removed when the notebook's kernel shuts down (or dies, or
``%thinsim_reset``): thinsim/host/realshell.py.  On a host whose loop devices are in use the
labs' fixed /dev/loop0 and /dev/loop1 may be taken: run them in ``thinsim vm``.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping

WORKDIR = "/run/thinsim"  # the run's folder is WORKDIR/work, as for tests/host's recordings
BACKENDS = ("model", "kernel")
BACKEND_ENV = "THINSIM_LAB_BACKEND"  # read when the extension loads: model (default) or kernel

# The session's bash: each cell comes on its stdin as a line "EXPLAIN LENGTH" and LENGTH
# bytes of bash, evaluated in the shell itself (variables and the working folder carry over)
# with the cell's streams on the session's stdout (stderr too, interleaved as on a terminal)
# and stdin /dev/null (a cell's command must not read the next cell); after it, a NUL and the
# marker line with the cell's exit status.  Nothing is left on disk: the script's file is
# removed once bash has read it (after the first cell), and the kernel's end, however it
# comes, ends the shell at its next read.
_DRIVER = r"""
cd "$1" || exit 1
marker=$2
while read -r __thinsim_explain __thinsim_length; do
    LC_ALL=C IFS= read -r -d '' -N "$__thinsim_length" __thinsim_cell
    export THINSIM_EXPLAIN="$__thinsim_explain"
    eval "$__thinsim_cell" </dev/null 2>&1
    printf '\0%s %d\n' "$marker" "$?"
done
"""


class BackendUnavailable(RuntimeError):
    """The kernel backend cannot run here (no root, no dm-thin): the message says what to do."""


def kernel_unavailable() -> str | None:
    """None where the kernel backend runs (a guest of ``thinsim vm``, or a host with dm-thin
    as root), else what is missing."""
    from .host import real

    return None if real.in_vm() else real.dm_thin_here()


def _unavailable_message(why: str) -> str:
    return (
        f"the kernel backend runs each cell's bash as root on the real dm-thin, and here it "
        f"cannot ({why}). Run the notebook inside `thinsim vm` (e.g. `thinsim vm --rwdir "
        f"notebooks -- env {BACKEND_ENV}=kernel jupyter nbconvert --to notebook --execute "
        f"LAB.ipynb`) or as root on a host with dm-thin, or go back to the simulated host: "
        f"`%thinsim backend model`."
    )


class Session:
    """A host for one notebook whose bash runs cells: a ``thinsim run`` (BACKEND model), or
    the real kernel (BACKEND kernel: thinsim/host/realshell.py, which cleans up after it)."""

    def __init__(self, backend: str = "model") -> None:
        self.backend = backend
        self.marker = "thinsim-cell-" + secrets.token_hex(8)
        self.count = 0
        self.folder = None
        if backend == "kernel":
            why = kernel_unavailable()
            if why is not None:
                raise BackendUnavailable(_unavailable_message(why))
            from .host import realshell  # not the model: its import takes long in the VM

            argv = realshell.argv("bash", "-c", _DRIVER, "thinsim")
            # a session of its own: ipykernel's shutdown kills its process group's children
            # before the kernel's atexit, and the shell's devices must still be removed
            self.proc = subprocess.Popen(
                [*argv, ".", self.marker],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            return
        self.folder = tempfile.mkdtemp(prefix="thinsim-notebook-")
        driver = os.path.join(self.folder, "driver.sh")
        with open(driver, "w") as f:
            f.write(_DRIVER)
        from .host.run import this_thinsim

        argv = this_thinsim("thinsim.cli", "run", "--explain", "--workdir", WORKDIR, driver)
        self.proc = subprocess.Popen(
            [*argv, ".", self.marker],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )

    def run(self, script: str, *, explain: bool = True) -> tuple[str, int]:
        """Run SCRIPT's bash in the session: (what it printed, its exit status).  A cell that
        ends the session's shell (``exit``) ends the host: the next cell gets a fresh one."""
        if self.proc.poll() is not None:
            raise SessionEnded(self.proc.returncode)
        self.count += 1
        cell = script.encode()
        self.proc.stdin.write(f"{int(explain)} {len(cell)}\n".encode() + cell)
        self.proc.stdin.flush()
        end = b"\0" + self.marker.encode() + b" "
        out = bytearray()
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                self.proc.wait()
                return out.decode(errors="replace"), 128
            out += chunk
            i = out.find(end)
            if i >= 0 and out.endswith(b"\n"):
                status = int(out[i + len(end) :].decode())
                if self.count == 1 and self.folder:  # bash has read its script
                    shutil.rmtree(self.folder, ignore_errors=True)
                return out[:i].decode(errors="replace"), status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            if self.backend == "kernel":  # what the clean-up could not remove, if anything
                notes = self.proc.stdout.read().decode(errors="replace")
                if notes:
                    sys.stderr.write(notes)
            self.proc.wait()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


class SessionEnded(Exception):
    """The session's shell ended (a cell ran ``exit``)."""


_session: Session | None = None
_backend = "model"


def session() -> Session:
    """The notebook's host, started at its first use (again after an ``exit``)."""
    global _session
    if _session is None or _session.proc.poll() is not None:
        _session = Session(_backend)
    return _session


def backend() -> str:
    """Where the cells run: ``model`` (the simulated host) or ``kernel`` (the real one)."""
    return _backend


def set_backend(name: str) -> None:
    """Run the next cells on backend NAME (a fresh host, if it changes).  The kernel backend
    is checked first: where it cannot run, BackendUnavailable, and nothing changes."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"no backend {name!r}: {' or '.join(BACKENDS)}")
    if name == "kernel":
        why = kernel_unavailable()
        if why is not None:
            raise BackendUnavailable(_unavailable_message(why))
    if name != _backend:
        reset()
        _backend = name


def reset() -> None:
    """A fresh host for the next cell, as after a reboot."""
    global _session
    if _session is not None:
        _session.close()
        _session = None


def sh(script: str, *, check: bool = True) -> str:
    """Run SCRIPT on the notebook's host (either backend); its output (stdout and stderr).
    With CHECK, a non-zero exit status raises :class:`subprocess.CalledProcessError` with the
    output."""
    out, status = session().run(script, explain=False)
    if check and status != 0:
        raise subprocess.CalledProcessError(status, script, out)
    return out


class HostBlocks(Mapping):
    """The 4 KiB blocks of a file or device on the notebook's host, read when asked (one
    ``dd`` each), for :func:`thinsim.viz.mapping_tree`: a metadata device is read where the
    host has it, and only the blocks the trees' walk visits."""

    def __init__(self, path: str, block_size: int = 4096) -> None:
        self.path, self.block_size = path, block_size
        self._cache: dict[int, bytes] = {}

    def __getitem__(self, b: int) -> bytes:
        if b not in self._cache:
            out = sh(
                f"dd if={shlex.quote(self.path)} bs={self.block_size} skip={int(b)} count=1 "
                "status=none | base64 -w0"
            )
            self._cache[b] = base64.b64decode(out)
        return self._cache[b]

    def __iter__(self):
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)


def check(answer, expected, *, what: str = "") -> None:
    """An exercise's check: ANSWER, the student's, against EXPECTED, which the lab computes
    from what the simulated host printed (never a number typed into the lab).  Prints the
    verdict (and returns nothing, so that a notebook shows only the verdict)."""
    if answer is None:
        print("No answer yet: set it in the cell above, run that cell, then this one.")
    elif answer == expected:
        print(f"Right{': ' + what if what else ''}.")
    else:
        print(f"Not yet: {answer!r} is not it. Read the output above again.")


def thinsim_magic(line: str, cell: str) -> None:
    """``%%thinsim [--no-explain]``: the cell's bash on the notebook's host, its output as
    a terminal shows it."""
    options = shlex.split(line)
    unknown = [o for o in options if o != "--no-explain"]
    if unknown:
        print(f"%%thinsim: unknown option {unknown[0]} (only --no-explain)", file=sys.stderr)
        return
    try:
        host = session()
    except BackendUnavailable as exc:
        from IPython.core.error import UsageError

        raise UsageError(f"%%thinsim: {exc}") from None
    out, _status = host.run(cell, explain="--no-explain" not in options)
    sys.stdout.write(out)
    sys.stdout.flush()


def thinsim_line_magic(line: str) -> None:
    """``%thinsim backend [model|kernel]``: where the cells run (see the module's docstring);
    without a name, which one it is."""
    from IPython.core.error import UsageError

    words = shlex.split(line)
    if words == ["backend"]:
        print(_backend)
        return
    if len(words) != 2 or words[0] != "backend" or words[1] not in BACKENDS:
        raise UsageError("usage: %thinsim backend [model|kernel]")
    try:
        set_backend(words[1])
    except BackendUnavailable as exc:
        raise UsageError(f"%thinsim: {exc}") from None


def load_ipython_extension(ipython) -> None:
    global _backend
    ipython.register_magic_function(thinsim_magic, "cell", "thinsim")
    ipython.register_magic_function(thinsim_line_magic, "line", "thinsim")
    ipython.register_magic_function(lambda line: reset(), "line", "thinsim_reset")
    chosen = os.environ.get(BACKEND_ENV, "") or "model"
    if chosen not in BACKENDS:
        print(
            f"thinsim: {BACKEND_ENV}={chosen}: no such backend (model or kernel)", file=sys.stderr
        )
    elif chosen != _backend:
        reset()
        _backend = chosen  # where the kernel cannot run, every cell says why
    import atexit

    atexit.register(reset)
