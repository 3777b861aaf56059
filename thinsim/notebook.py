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

Not yet: a setting that runs the same cells on the real kernel (``thinsim vm``), as issue 14
asks; the session's protocol (a cell run by the shell, a marker after it) is what that will reuse.
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

from .host.run import this_thinsim

WORKDIR = "/run/thinsim"  # the run's folder is WORKDIR/work, as for tests/host's recordings

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


class Session:
    """A simulated host for one notebook: a ``thinsim run`` whose bash runs cells."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="thinsim-notebook-")
        self.marker = "thinsim-cell-" + secrets.token_hex(8)
        driver = os.path.join(self.folder, "driver.sh")
        with open(driver, "w") as f:
            f.write(_DRIVER)
        self.count = 0
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
                if self.count == 1:  # bash has read its script: the folder is not needed
                    shutil.rmtree(self.folder, ignore_errors=True)
                return out[:i].decode(errors="replace"), status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class SessionEnded(Exception):
    """The session's shell ended (a cell ran ``exit``)."""


_session: Session | None = None


def session() -> Session:
    """The notebook's host, started at its first use (again after an ``exit``)."""
    global _session
    if _session is None or _session.proc.poll() is not None:
        _session = Session()
    return _session


def reset() -> None:
    """A fresh host for the next cell, as after a reboot."""
    global _session
    if _session is not None:
        _session.close()
        _session = None


def sh(script: str, *, check: bool = True) -> str:
    """Run SCRIPT on the notebook's host; its output (stdout and stderr).  With CHECK, a
    non-zero exit status raises :class:`subprocess.CalledProcessError` with the output."""
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
    out, _status = session().run(cell, explain="--no-explain" not in options)
    sys.stdout.write(out)
    sys.stdout.flush()


def load_ipython_extension(ipython) -> None:
    ipython.register_magic_function(thinsim_magic, "cell", "thinsim")
    ipython.register_magic_function(lambda line: reset(), "line", "thinsim_reset")
    import atexit

    atexit.register(reset)
