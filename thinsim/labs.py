"""The labs (notebooks/ of the checkout): run them, compare their outputs, build their HTML.

``thinsim labs`` runs every lab and writes its outputs back (so that a browser shows them
without running anything), ``thinsim labs --check`` runs them and fails when an output kept
in the repository is not what a fresh run prints, ``thinsim labs --html DIR`` writes a static
HTML page of each one.  tests/test_notebooks.py is the check under pytest.

Outputs are compared as :func:`normalised`: dd's timings, dmesg's timestamps and the backing
files' device and inode numbers masked (as the recorded host scripts are, thinsim/host/real.py),
pictures compared by kind only (a PNG's bytes depend on matplotlib's version and fonts), and
execution counts and cell metadata dropped.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

from .host.real import mask, normalise

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
TIMEOUT = 120  # per cell, seconds: a lab takes well under a minute on the model
# A kernel's start, seconds: under the VM's emulation on a busy machine (the kernel backend's
# labs, tests/test_labs_on_the_kernel.py) it took over nbclient's default of 60.
STARTUP_TIMEOUT = 600


def notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    return sorted(folder.glob("[0-9][0-9]-*.ipynb"))


def execute(path: Path, answers: dict | None = None, timeout: float = TIMEOUT):
    """The notebook at PATH run from the start in a fresh kernel, in its own folder, with this
    checkout's thinsim: the executed notebook (nbformat's node).  ANSWERS: exercise answers
    put in place of the lab's ``answer_N = None`` cells (a solution's run); TIMEOUT: a cell's
    limit in seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        name = cell.source.partition(" = None")[0]
        if cell.cell_type == "code" and answers and name in answers:
            cell.source = f"{name} = {answers[name]!r}"
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), old]))
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            startup_timeout=STARTUP_TIMEOUT,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    return nb


def _text(output: dict) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else text


def normalised(nb) -> list[list[dict]]:
    """Each code cell's outputs with what varies from run to run masked."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outs = []
        for o in cell.get("outputs", []):
            kind = o["output_type"]
            if kind == "stream":
                outs.append({"stream": o["name"], "text": normalise(mask(_text(o)))})
            elif kind in ("display_data", "execute_result"):
                data = o.get("data", {})
                if "image/png" in data or "image/svg+xml" in data:
                    outs.append({"image": sorted(k for k in data if k.startswith("image/"))})
                else:
                    plain = data.get("text/plain", "")
                    plain = "".join(plain) if isinstance(plain, list) else plain
                    outs.append({kind: normalise(mask(plain))})
            elif kind == "error":
                outs.append({"error": o.get("ename"), "value": o.get("evalue")})
        # consecutive writes to one stream are one text, however the kernel cut them
        merged: list[dict] = []
        for o in outs:
            if merged and "stream" in o and merged[-1].get("stream") == o["stream"]:
                merged[-1]["text"] += o["text"]
            else:
                merged.append(o)
        cells.append(merged)
    return cells


def differences(kept, fresh) -> list[str]:
    """Where the kept notebook's outputs are not the fresh run's: one line per code cell."""
    out = []
    a, b = normalised(kept), normalised(fresh)
    sources = [c.source for c in fresh.cells if c.cell_type == "code"]
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            first = sources[i].splitlines()[:1]
            out.append(f"code cell {i + 1} ({first[0] if first else ''}): kept {x!r}, fresh {y!r}")
    if len(a) != len(b):
        out.append(f"{len(a)} code cells kept, {len(b)} run")
    return out


def _clean(nb):
    """The executed notebook as kept: no execution timings in the cells' metadata."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


def html(folder: Path, sources: list[Path]) -> list[Path]:
    """A static HTML page of each notebook as kept (its outputs, not run again)."""
    import nbformat
    from nbconvert import HTMLExporter

    folder.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    written = []
    for path in sources:
        body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
        target = folder / (path.stem + ".html")
        target.write_text(body)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    import nbformat

    p = argparse.ArgumentParser(prog="thinsim labs", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="run, and compare with the kept outputs")
    p.add_argument("--html", metavar="DIR", help="write each lab's HTML (as kept) into DIR")
    p.add_argument("notebooks", nargs="*", help="the labs (default: notebooks/*.ipynb)")
    args = p.parse_args(argv)
    paths = [Path(n) for n in args.notebooks] or notebooks()
    if args.html:
        for target in html(Path(args.html), paths):
            print(target)
        return 0
    status = 0
    for path in paths:
        start = time.monotonic()
        fresh = execute(path)
        took = time.monotonic() - start
        if args.check:
            diff = differences(nbformat.read(path, as_version=4), fresh)
            for line in diff:
                print(f"{path.name}: {line}", file=sys.stderr)
            status |= bool(diff)
        else:
            nbformat.write(_clean(fresh), path)
        print(f"{path.name}: {took:.1f} s", file=sys.stderr)
    return status
