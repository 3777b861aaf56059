"""C sources of thinsim compiled on demand: the host's client (thinsim/host/client.c) and
the model's routines (thinsim/model/_space_map.c).

Each is built once with the system's ``cc`` into a cache under the venv, or the user's
cache folder, named by the hash of the source, the compiler and whatever else the build
depends on; where there is no compiler or no cache folder, or the build fails, the caller
gets None and does without (the Python it stands in for)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def compiler() -> str | None:
    """$CC, cc or gcc, whichever is found first; None without one."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def compiled(
    source: Path, stem: str, flags: list[str], *, suffix: str = "", depends: bytes = b""
) -> str | None:
    """The path of ``source`` built with ``cc FLAGS -o OUT SOURCE`` as
    ``{stem}-{hash}{suffix}`` in the first cache folder that has it or can take it (the
    first build is written to a temporary name and renamed: whoever compiles at once, the
    file is whole or not there), or None.  ``depends``: more bytes the hash covers."""
    cc = compiler()
    if cc is None:
        return None
    key = hashlib.sha256(source.read_bytes() + cc.encode() + depends).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for base in (os.path.join(sys.prefix, "share", "thinsim"), os.path.join(cache, "thinsim")):
        out = os.path.join(base, f"{stem}-{key}{suffix}")
        if os.access(out, os.R_OK | os.X_OK):
            return out
        try:
            os.makedirs(base, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=suffix, dir=base)
            os.close(fd)
        except OSError:
            continue
        try:
            done = subprocess.run(
                [cc, *flags, "-o", tmp, str(source)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            if done.returncode != 0:
                return None
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
            return out
        except OSError:
            continue
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return None
