"""The simulated commands' shims (what ``thinsim run`` puts first on PATH) and the two
questions every entry point asks of a command line: which real command a name runs, and
which simulated device an argument names.

A module below the run (thinsim/host/run.py), its sandbox (sandbox.py) and the host's
process (server.py), which all use it and none of which it imports: the shims it writes
only name thinsim.host.run in their text.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..cbuild import compiled
from .state import is_device_path
from .tools import COMMANDS, GUARDED

# The folder this thinsim is imported from.  Every process a run starts imports thinsim from
# here, not whichever thinsim its python would find (an install of another checkout).
ROOT = str(Path(__file__).resolve().parents[2])

SHIM = """#!{python}
import sys
sys.path.insert(0, {root!r})
from thinsim.host.run import shim_main
sys.exit(shim_main({name!r}, sys.argv[1:]))
"""


def make_shims(folder: Path | str) -> None:
    """The commands' shims in FOLDER: the compiled client of the host's process
    (thinsim/host/client.c, server.py) under every name, or where it cannot be compiled,
    the Python shims, which FOLDER/.py has in any case (the client execs them to start the
    host's process).  THINSIM_SERVER=0: Python shims that run the command themselves."""
    folder = Path(folder)
    python = folder / ".py"
    python.mkdir(parents=True, exist_ok=True)
    client = compiled_client() if os.environ.get("THINSIM_SERVER") != "0" else None
    for name in list(COMMANDS) + list(GUARDED):
        path = python / name
        path.write_text(SHIM.format(python=sys.executable, root=ROOT, name=name))
        path.chmod(0o755)
        if client is not None:
            os.symlink(client, folder / name)
        else:
            os.symlink(os.path.join(".py", name), folder / name)


def compiled_client() -> str | None:
    """thinsim/host/client.c compiled (once: thinsim/cbuild.py's cache), or None where no
    compiler or cache folder is."""
    return compiled(Path(__file__).with_name("client.c"), "client", ["-O2"])


def real_command(name: str) -> str | None:
    shim_dir = os.environ.get("THINSIM_SHIMS", "")
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != shim_dir
    )
    return shutil.which(name, path=path)


def names_device(argv: list[str]) -> str | None:
    for a in argv:
        for part in (a, a.split("=", 1)[-1]):
            if is_device_path(part):
                return part
    return None
