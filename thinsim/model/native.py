"""The model's C routines (``_space_map.c``), compiled on demand as a Python extension.

Like the host client, built once by thinsim/cbuild.py with the system's ``cc`` into a
cache, named by the hash of the source, the compiler and the Python it is built for; None
where there is no compiler, no Python headers or no cache folder, or where ``THINSIM_NO_C``
is set (to 1, or anything but 0 or empty): the callers then run their pure-Python loops,
which are the reference (the tests run both)."""

from __future__ import annotations

import os
import sysconfig
from importlib.machinery import ExtensionFileLoader
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

from ..cbuild import compiled

_NAME = "_thinsim_space_map"  # the module the C file defines (PyInit__thinsim_space_map)


def disabled() -> bool:
    """THINSIM_NO_C asks for the pure-Python loops."""
    return os.environ.get("THINSIM_NO_C", "") not in ("", "0")


def space_map():
    """The compiled ``_space_map.c`` module (its ``run``, ``leaf_gather``, ``overwrite_walk``),
    or None."""
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
    include = sysconfig.get_paths().get("include")
    if not include or not os.path.exists(os.path.join(include, "Python.h")):
        return None
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    flags = ["-O2", "-shared", "-fPIC", f"-I{include}"]
    return compiled(
        source, "space_map", flags, suffix=suffix, depends=include.encode() + suffix.encode()
    )
