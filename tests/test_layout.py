"""The package's layout tells its architecture (issue 11): no import cycle among thinsim's
modules, and what is said once (the scenario executor, constants, getopt) is not said again.

Imports are read from the source (ast), so every module is seen, also those a test run never
imports.  An import inside a function runs later than the module's own, but it still ties
the two modules together: a cycle through one is a cycle in the design (a dd once walked 13
times through one of blockio, external_origin, kernel and state).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "thinsim"

# Cycles through deferred imports that are known and being taken apart: none is left, and
# none may appear.
KNOWN_DEFERRED_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imports(module: str, path: Path, mods, *, deferred: bool) -> set[str]:
    """The thinsim modules ``module`` imports: at module level (also under ``if``/``try``,
    not under ``if TYPE_CHECKING``), and with ``deferred`` inside functions too."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if not deferred and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in mods:
                    found.add(f"{target}.{alias.name}")
                elif target in mods:
                    found.add(target)
    found.discard(module)
    return found


def _cycles(deferred: bool) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    mods = _modules()
    graph = {m: _imports(m, p, mods, deferred=deferred) for m, p in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_back_at_import_time():
    assert _cycles(deferred=False) == []


def test_no_import_cycle_even_through_imports_inside_functions_but_the_hosts_known_ones():
    cycles = _cycles(deferred=True)
    unknown = [c for c in cycles if c not in KNOWN_DEFERRED_CYCLES]
    assert unknown == []


def test_the_cycle_finder_sees_a_cycle_through_a_deferred_import(tmp_path, monkeypatch):
    pkg = tmp_path / "thinsim"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert _cycles(deferred=False) == []
    assert _cycles(deferred=True) == [{"thinsim.a", "thinsim.sub.b"}]


def test_every_module_imports_in_a_fresh_interpreter_deepest_first():
    """Every module imported in one fresh interpreter, the deepest first (a module-level
    cycle shows as an ImportError when it is entered at the wrong module: the AST test above
    finds them all, this one checks that they really import)."""
    names = sorted(_modules(), key=lambda m: (-m.count("."), m))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, *names], check=False, capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("needle", "home"),
    [
        ("SECTOR_SIZE = 512", "thinsim/constants.py"),
        ("SECTOR = 512", None),
        ("DM_MAJOR = 254", "thinsim/constants.py"),
        ("LOOP_MAJOR = 7", "thinsim/constants.py"),
        ("27022010", "thinsim/constants.py"),
        ("MAX_REQUEST = 8 << 20", "thinsim/constants.py"),
        ("def getopt_long(", "thinsim/getopt.py"),
        ("def _long(", "thinsim/getopt.py"),
        ("class Executor(", "thinsim/scenario.py"),
        ("class ScenarioExecutor(", "thinsim/executor.py"),
        # one device-mapper core, for the simulated host and the Python API alike
        ("def dm_load(", "thinsim/model/dm.py"),
        ("def log_table_error(", "thinsim/model/dm.py"),
        ("def log_device_too_small(", "thinsim/model/dm.py"),
        # one path-to-device lookup
        ('startswith("/dev/mapper/")', "thinsim/model/devices.py"),
        ('startswith("/dev/dm-")', "thinsim/model/devices.py"),
        # the core calls a target through its type's hooks: nobody switches on its name
        ('.type == "', None),
        ('.type != "', None),
        ('.type in ("', None),
    ],
)
def test_what_is_said_once_is_said_in_one_module(needle, home):
    """Constants, getopt, the scenario executor, the device-mapper core and the lookup of
    a device by its path each live in one module of the package; tests/ and dev/ hold no copy (host/tools/getopt.py's adapter of the one parser is the
    host rewrite's to drop)."""
    allowed_twice = {
        "def getopt_long(": {"thinsim/host/tools/getopt.py"},
    }
    where = sorted(
        str(p.relative_to(ROOT))
        for folder in ("thinsim", "tests", "dev")
        for p in (ROOT / folder).rglob("*.py")
        if needle in p.read_text() and p.resolve() != Path(__file__).resolve()
    )
    rest = [w for w in where if w not in allowed_twice.get(needle, set())]
    assert rest == ([home] if home else []), where
