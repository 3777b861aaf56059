"""What every simulated command shares: where it reads and writes, and how it refuses."""

from __future__ import annotations

import io
import subprocess
import sys


class IO:
    """Where a command reads and writes, and the commands it runs.

    A tool that forks a command and waits for it (dmsetup --exec) calls ``run``.  Under a
    shim (``defer=True``) the host's lock is held while the tool runs, and the command may be
    a simulated one that takes the same lock, so it runs only at ``finish``, once the state
    is saved and the lock released, with the tool's later output kept for after it.  Such a
    tool writes its stdout through ``Stdio`` (``stdio_buffered``), so that the command's
    output lands where it lands on a real host: before what the tool printed into its stdio
    buffer and has not flushed yet."""

    def __init__(self, stdin=None, stdout=None, stderr=None, *, defer: bool = False) -> None:
        self.stdin = stdin or sys.stdin
        # a closed descriptor (`>&-`: Python makes sys.stdout None) takes what a C program
        # writes there and drops it (EBADF), the status unchanged
        self.stdout = stdout or sys.stdout or io.StringIO()
        self.stderr = stderr or sys.stderr or io.StringIO()
        self.defer = defer
        # once a command waits for finish: what comes after, (stream or None, text or argv)
        self._later: list[tuple[object, object]] | None = None

    def out(self, text: str) -> None:
        if self._later is not None:
            self._later.append((self.stdout, text))
        else:
            self.stdout.write(text)

    def err(self, text: str) -> None:
        if self._later is not None:
            self._later.append((self.stderr, text))
        else:
            self.stderr.write(text)

    @property
    def pending(self) -> bool:
        """Whether commands wait for ``finish``."""
        return self._later is not None

    def run(self, argv: list[str]) -> None:
        """fork + execvp(ARGV) + waitpid, as dmsetup.c's _exec_command does (a command that
        cannot run exits 127 in the child, silently; its status is not looked at)."""
        if not self.defer:
            self._flush_for_child()
            _call(argv)
            return
        if self._later is None:
            self._later = []
        self._later.append((None, argv))

    def finish(self) -> None:
        """Run the commands ``run`` kept, between the output written after each."""
        later, self._later = self._later or [], None
        for stream, item in later:
            if stream is None:
                self._flush_for_child()
                _call(item)
            else:
                stream.write(item)
                if stream is self.stderr:
                    stream.flush()
        self.stdout.flush()  # the tool's exit flushes its stdio

    def _flush_for_child(self) -> None:
        """What the child's output must follow: stderr (unbuffered), and what stdout's
        buffer let out (all of it when it is not a Stdio)."""
        self.stderr.flush()
        if isinstance(self.stdout, Stdio):
            self.stdout.sync()
        else:
            self.stdout.flush()

    def stdio_buffered(self) -> None:
        """From now on stdout is buffered as a C program's (see Stdio)."""
        if not isinstance(self.stdout, Stdio):
            self.stdout = Stdio(self.stdout)


class Stdio:
    """glibc's stdout buffer over STREAM: line-buffered on a terminal, else full buffering
    in blocks of BUFSIZ (st_blksize: 4096 for a pipe or an ext4 file), written out when a
    block fills, at fflush and at exit.  Nothing reaches STREAM in between, whatever
    buffering STREAM itself has (PYTHONUNBUFFERED, say)."""

    BLOCK = 4096

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = _isatty(stream)
        self.held = bytearray()

    def write(self, text: str) -> int:
        self.held += text.encode("utf-8", "surrogateescape")
        if self.tty:
            cut = self.held.rfind(b"\n") + 1
        else:
            cut = len(self.held) - len(self.held) % self.BLOCK
        if cut:
            self._emit(cut)
        return len(text)

    def sync(self) -> None:
        """Make STREAM show what the C buffer has let out (nothing more)."""
        self.stream.flush()

    def flush(self) -> None:
        """fflush."""
        self._emit(len(self.held))
        self.stream.flush()

    def isatty(self) -> bool:
        return self.tty

    def fileno(self) -> int:
        return self.stream.fileno()

    def _emit(self, n: int) -> None:
        data, self.held = bytes(self.held[:n]), self.held[n:]
        if hasattr(self.stream, "buffer"):
            self.stream.flush()
            self.stream.buffer.write(data)
        else:
            self.stream.write(data.decode("utf-8", "surrogateescape"))


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _call(argv: list[str]) -> None:
    from ..command import command_streams

    try:
        # in the host's process, the command's own streams and environment (its
        # descriptors 0-2 and C environ are the process's)
        subprocess.call(argv, **command_streams())
    except OSError:
        pass  # execvp failed: the child's _exit(127)


class Unsupported(Exception):
    """The simulator does not do this."""


def unsupported(io: IO, tool: str, what: str) -> int:
    io.err(f"thinsim: {tool}: {what} is not simulated\n")
    return 1
