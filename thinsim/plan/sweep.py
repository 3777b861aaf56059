"""Sweeps: one workload run for every combination of some fields' values.

A list field takes its items joined by ``+`` (``pool.features=none,skip_block_zeroing,
skip_block_zeroing+no_discard_passdown``: ``none`` is the empty list).

``--sweep pool.block_size=64KiB,256KiB,1MiB --sweep pool.metadata=1GiB,4GiB`` is six runs.
Each run is the workload file with those fields set and checked again, run on its own
model, so the runs share nothing and may go anywhere: over the local cores
(``concurrent.futures`` processes, by default as many as there are cores) or on a Dask
cluster (``scheduler``: a ``dask.distributed`` scheduler's address).  Results come back in
the combinations' order, whatever order the runs finish in: a sweep is deterministic for a
given seed.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import sys

from .units import format_size
from .workload import DAY, PlanError, Workload, parse


def parse_specs(w: Workload, specs: list[str]) -> list[dict[str, str]]:
    """The combinations ``specs`` (``FIELD=V1,V2``) make, each checked before any runs."""
    name = os.path.basename(w.path)
    axes: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, eq, values = spec.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key or not vals:
            raise PlanError(name, None, "", f"--sweep {spec!r}: give FIELD=VALUE,VALUE...")
        if key in (k for k, _ in axes):
            raise PlanError(name, None, key, "swept twice (give its values in one --sweep)")
        axes.append((key, vals))
    combos = [dict(zip([k for k, _ in axes], vals)) for vals in
              itertools.product(*(v for _, v in axes))]  # fmt: skip
    for combo in combos:
        parse(w.text, w.path, {**w.overrides, **combo})
    return combos


def run_one(text: str, path: str, combo: dict[str, str], base: dict[str, str]) -> dict:
    """One combination's run: its parameters and its summary (what a worker returns);
    ``base``: the fields the workload had changed already."""
    from .engine import Simulation

    w = parse(text, path, {**base, **combo})
    result = Simulation(w).run()
    return {"params": combo, "summary": result["summary"]}


def sweep(
    w: Workload,
    specs: list[str],
    *,
    jobs: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Every combination's ``{"params", "summary"}``, in the combinations' order."""
    combos = parse_specs(w, specs)
    bar = _bar(len(combos), progress)
    try:
        if scheduler:
            return _on_dask(w, combos, scheduler, bar)
        return _on_cores(w, combos, jobs, bar)
    finally:
        bar.close()


def _bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="plan sweep", unit="run", file=sys.stderr,
                disable=not progress, dynamic_ncols=True)  # fmt: skip


def _on_cores(w: Workload, combos: list[dict], jobs: int | None, bar) -> list[dict]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    jobs = jobs or os.cpu_count() or 1
    results: list[dict | None] = [None] * len(combos)
    if jobs == 1 or len(combos) == 1:
        for i, combo in enumerate(combos):
            results[i] = run_one(w.text, w.path, combo, w.overrides)
            bar.update()
        return results  # type: ignore[return-value]
    with ProcessPoolExecutor(max_workers=min(jobs, len(combos))) as pool:
        futures = {
            pool.submit(run_one, w.text, w.path, c, w.overrides): i for i, c in enumerate(combos)
        }
        for f in as_completed(futures):
            results[futures[f]] = f.result()
            bar.update()
    return results  # type: ignore[return-value]


def _on_dask(w: Workload, combos: list[dict], address: str, bar) -> list[dict]:
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise PlanError(os.path.basename(w.path), None, "",
                        "--scheduler needs dask.distributed: pip install 'thinsim[cluster]'"
                        ) from None  # fmt: skip
    client = Client(address)
    try:
        futures = [
            client.submit(run_one, w.text, w.path, c, w.overrides, pure=False) for c in combos
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[dict | None] = [None] * len(combos)
        for f in as_completed(futures):
            results[index[f.key]] = f.result()
            bar.update()
        return results  # type: ignore[return-value]
    finally:
        client.close()


def _day(t) -> str:
    return "-" if t is None else f"{t / DAY:.2f}"


def sweep_text(results: list[dict]) -> str:
    """A table: the parameters, then when data and metadata ran out, the peaks and
    thin_metadata_size's estimate."""
    keys = list(results[0]["params"]) if results else []
    head = [*keys, "data full (day)", "metadata full (day)", "peak data", "peak metadata",
            "thin_metadata_size", "written", "zeroed", "copied", "passed down"]  # fmt: skip
    rows = []
    for r in results:
        s = r["summary"]
        rows.append([
            *(r["params"][k] for k in keys),
            _day(s["data_full_at_s"]),
            _day(s["metadata_full_at_s"]),
            format_size(s["peak_data_bytes"]),
            format_size(s["peak_metadata_bytes"]),
            format_size(s["thin_metadata_size_bytes"]),
            format_size(s["data_written"]),
            format_size(s["data_zeroed"]),
            format_size(s["data_copied"]),
            format_size(s["discards_passed_down"]),
        ])  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(x).rjust(n) for x, n in zip(row, widths)) for row in [head, *rows]]
    return "\n".join(lines) + "\n"


SUMMARY_COLUMNS = (
    "data_full_at_s", "metadata_full_at_s", "peak_data_blocks", "peak_data_bytes",
    "peak_metadata_blocks", "peak_metadata_bytes", "thin_metadata_size_bytes", "peak_thins",
    "user_written", "data_written", "data_zeroed", "data_copied", "discards_passed_down",
    "stopped_by", "simulated_s",
)  # fmt: skip


def sweep_csv(results: list[dict]) -> str:
    keys = list(results[0]["params"]) if results else []
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\n")
    wr.writerow([*keys, *SUMMARY_COLUMNS])
    for r in results:
        wr.writerow([*(r["params"][k] for k in keys), *(r["summary"][c] for c in SUMMARY_COLUMNS)])
    return out.getvalue()


def sweep_plot(results: list[dict], path: str) -> None:
    """For each swept field, peak metadata and peak data (% of their devices) against its
    values, one line per combination of the other fields."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results[0]["params"]) if results else []
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5 * max(1, len(keys)), 4),
                             squeeze=False)  # fmt: skip
    for ax, key in zip(axes[0], keys):
        values = list(dict.fromkeys(r["params"][key] for r in results))
        others = {}
        for r in results:
            rest = tuple((k, v) for k, v in r["params"].items() if k != key)
            others.setdefault(rest, {})[r["params"][key]] = r["summary"]
        for rest, by_value in others.items():
            label = ", ".join(f"{k}={v}" for k, v in rest) or "all"
            xs = [i for i, v in enumerate(values) if v in by_value]
            md = [100 * by_value[values[i]]["peak_metadata_blocks"]
                  / max(1, by_value[values[i]]["metadata_total_blocks"] or 1) for i in xs]  # fmt: skip
            data = [100 * by_value[values[i]]["peak_data_blocks"]
                    / max(1, by_value[values[i]]["data_total_blocks"] or 1) for i in xs]  # fmt: skip
            ax.plot(xs, md, marker="o", label=f"metadata ({label})")
            ax.plot(xs, data, marker="s", linestyle="--", label=f"data ({label})")
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(key)
        ax.set_ylabel("peak use, % of the device")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle("thinsim plan sweep")
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None} if path.endswith(".svg") else None)
    plt.close(fig)
