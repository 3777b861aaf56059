"""The model's C routines (``_space_map.c``), compiled on demand as a Python extension.

Like the host client (thinsim/host/shims.py: compiled_client): built once with the
system's ``cc`` into a cache under the venv, or the user's cache folder, named by the
hash of the source, the compiler and the Python it is built for; None where there is no
compiler, no Python headers or no cache folder, or where ``THINSIM_NO_C`` is set (to 1,
or anything but 0 or empty): the callers then run their pure-Python loops, which are the
reference (the tests run both)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib.machinery import ExtensionFileLoader
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

_NAME = "_thinsim_space_map"  # the module the C file defines (PyInit__thinsim_space_map)


def disabled() -> bool:
    """THINSIM_NO_C asks for the pure-Python loops."""
    return os.environ.get("THINSIM_NO_C", "") not in ("", "0")


def space_map():
    """The compiled ``_space_map.c`` module (its ``run``), or None."""
    if disabled():
        return None
    path = _build(Path(__file__).with_name("_space_map.c"))
    if path is None:
        return None
    try:
        spec = spec_from_file_location(_NAME, path, loader=ExtensionFileLoader(_NAME, path))
        module = module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError):
        return None
    return module


def _build(source: Path) -> str | None:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    include = sysconfig.get_paths().get("include")
    if cc is None or not include or not os.path.exists(os.path.join(include, "Python.h")):
        return None
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    key = hashlib.sha256(
        source.read_bytes() + cc.encode() + include.encode() + suffix.encode()
    ).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for base in (os.path.join(sys.prefix, "share", "thinsim"), os.path.join(cache, "thinsim")):
        lib = os.path.join(base, f"space_map-{key}{suffix}")
        if os.access(lib, os.R_OK):
            return lib
        try:
            os.makedirs(base, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".space_map-", suffix=suffix, dir=base)
            os.close(fd)
        except OSError:
            continue
        try:
            done = subprocess.run(
                [cc, "-O2", "-shared", "-fPIC", f"-I{include}", "-o", tmp, str(source)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            if done.returncode != 0:
                return None
            os.replace(tmp, lib)  # whole or not there, whoever compiles at once
            return lib
        except OSError:
            continue
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return None
