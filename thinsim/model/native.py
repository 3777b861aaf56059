"""The model's C routines, compiled on demand as Python extensions: ``_space_map.c``
(add_many's common cases, a leaf run's loops) and ``_disk.c`` (btree node I/O's).

Like the host client, each is built once by thinsim/cbuild.py with the system's ``cc``
into a cache, named by the hash of the source, the compiler and the Python it is built
for; None where there is no compiler, no Python headers or no cache folder, or where
``THINSIM_NO_C`` is set (to 1, or anything but 0 or empty): the callers then run their
pure-Python code, which is the reference (the tests run both)."""

from __future__ import annotations

import os
import sysconfig
from functools import cache
from importlib.machinery import ExtensionFileLoader
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

from ..cbuild import compiled


def disabled() -> bool:
    """THINSIM_NO_C asks for the pure-Python loops."""
    return os.environ.get("THINSIM_NO_C", "") not in ("", "0")


def space_map():
    """The compiled ``_space_map.c`` module (its ``run``, ``leaf_gather``, ``overwrite_walk``),
    or None."""
    return _module("space_map")


def disk():
    """The compiled ``_disk.c`` module (``setup``, then ``encode_node``, ``parse_node``,
    ``load_node``), or None."""
    return _module("disk")


def _module(stem: str):
    """``_{stem}.c`` built and loaded as ``_thinsim_{stem}`` (PyInit__thinsim_{stem}), once
    a process (a module loaded again would share the first one's C state), or None."""
    if disabled():
        return None
    return _load(stem)


@cache
def _load(stem: str):
    path = _build(Path(__file__).with_name(f"_{stem}.c"), stem)
    if path is None:
        return None
    name = f"_thinsim_{stem}"
    try:
        spec = spec_from_file_location(name, path, loader=ExtensionFileLoader(name, path))
        module = module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError):
        return None
    return module


def _build(source: Path, stem: str) -> str | None:
    include = sysconfig.get_paths().get("include")
    if not include or not os.path.exists(os.path.join(include, "Python.h")):
        return None
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    flags = ["-O2", "-shared", "-fPIC", f"-I{include}"]
    return compiled(source, stem, flags, suffix=suffix, depends=include.encode() + suffix.encode())
