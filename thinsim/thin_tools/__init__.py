"""Debian 12's thin-provisioning-tools 0.9.0, in Python: thin_check, thin_dump, thin_ls,
thin_delta, thin_restore, thin_repair and thin_metadata_size, printing what the C++ prints.

Each tool is a module with a ``main(prog, argv, io, files)`` that behaves as the command
(``thinsim.host`` runs them as the simulated host's commands) and functions for Python use::

    from thinsim.thin_tools import RealFiles
    from thinsim.thin_tools.dump import dump_text
    print(dump_text(RealFiles(), "meta.img"))

The metadata is read as the C++ reads it (``metadata.py``); thin_restore builds metadata
with the model (``thinsim.model``) so that a kernel opens it as its own.
"""

from __future__ import annotations

import signal

from . import check, delta, dump, ls, metadata_size, repair, restore
from .common import VERSION, Abort, BrokenPipe, Crash, Files, Output, RealFiles, ToolError

TOOLS = {
    "thin_check": check.main,
    "thin_dump": dump.main,
    "thin_ls": ls.main,
    "thin_delta": delta.main,
    "thin_restore": restore.main,
    "thin_repair": repair.main,
}

__all__ = ["TOOLS", "VERSION", "Abort", "Files", "Output", "RealFiles", "ToolError", "run_tool"]


def run_tool(name: str, argv: list[str], io: Output | None = None, files: Files | None = None):
    """Run tool ``name`` with ``argv`` (without the program name); returns the exit status,
    or, where the C++ tool dies of a signal, minus the signal as subprocess reports it:
    -6 (SIGABRT) where it aborts, -13 (SIGPIPE) where it writes to a pipe nobody reads,
    -11 (SIGSEGV) where it crashes (repair.py: std_sort).
    ``thinsim run``'s commands then die of that signal themselves (host/run.py)."""
    io = io or Output()
    try:
        try:
            if name == "thin_metadata_size":
                status = metadata_size.main(name, argv, io)
            else:
                status = TOOLS[name](name, argv, io, files or RealFiles())
        except Abort as a:
            # abort(3) and a fatal signal end the process without exit's flush: what
            # stdout's buffer held is lost
            io.err(a.text)
            io.discard()
            status = -signal.SIGABRT
        except Crash as c:
            io.discard()
            status = -c.signal
        except Exception as e:  # noqa: BLE001
            # a failure the port does not foresee is a thinsim bug: said in one line, with
            # no traceback, rather than passed off as the tool's own message
            io.err(f"thinsim: {name}: internal error: {type(e).__name__}: {e}\n")
            status = 1
        io.flush()
    except BrokenPipe:
        return -signal.SIGPIPE
    return status
