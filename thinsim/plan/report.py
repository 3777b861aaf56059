"""The answer to a workload: the result dict, and it as text, JSON, CSV and a picture.

The result (:func:`summarize`) has ``workload`` (name, pool), ``timeline`` (one row per
sample: simulated time, the pool's status figures in blocks, the byte counters, per-volume
blocks), ``events`` (the kernel's log lines and the planner's own: refused writes, Docker's
refusals) and ``summary``: when data and metadata ran out, peak use, the smallest data and
metadata devices the same run lasts on (:func:`smallest_sizes` says how), and
thin_metadata_size's estimate for the same pool beside the metadata the run used.
"""

from __future__ import annotations

import csv
import io
import json

from ..constants import ENTRIES_PER_BITMAP
from ..model.metadata import THIN_METADATA_MAX_SECTORS
from ..thin_tools.metadata_size import estimate_bytes
from .units import format_duration, format_size
from .workload import DAY, Workload

MD_BLOCK = 4096
_RUN_OUT = {
    "data": ("out_of_data_space",),
    "metadata": ("metadata_full", "metadata_operation_failed", "read_only"),
}


def metadata_estimate(w: Workload, max_thins: int) -> int:
    """thin_metadata_size's estimate in bytes for the pool (``-b BLOCK -s DATA -m THINS``)."""
    return int(estimate_bytes(w.pool.block_sectors, w.pool.data // 512, max(max_thins, 1)))


def _bitmaps(blocks: int) -> int:
    """Space-map bitmap blocks for a device of ``blocks`` blocks (16,320 entries each)."""
    return -(-blocks // ENTRIES_PER_BITMAP)


def smallest_sizes(sim) -> dict:
    """The smallest data and metadata devices on which the same run lasts, as dm-thin (and
    lvm, with [lvm]) need them, from what the run measured (engine.Needs):

    - data: an allocation finds a block only among those free now *and* at the last commit
      (sm_ll_find_common_free_block: a block freed in a transaction is reused after its
      commit), so the device needs as many blocks as were ever in use now or at the last
      commit (``data_busy``, read before each commit; it is at least the peak of mapped
      blocks).  ``data_smallest_quiet`` is the smallest device whose low water mark never
      fires: the kernel checks ``free <= low_water_mark`` before each allocation, so it
      needs the peak of allocated blocks plus the low water mark (with [lvm], whose low
      water mark is ``blocks * (100 - threshold) / 100``, the smallest such size); None
      when the pool has no low water mark.
    - metadata: blocks in use now or at the last commit, as for data (``metadata_busy``:
      running out of them mid-transaction turns the pool read-only) and, after each commit, what the kernel keeps back: it reports no free
      metadata (and stops provisioning) once free blocks are not more than its reserve,
      ``min(4096, blocks / 10)`` (dm-thin-metadata.c: __set_metadata_reserve).  So the
      smallest N with ``N >= busy(N)`` and ``N - used(N) > min(4096, N / 10)``, where busy
      and used are the run's peaks with the space maps' bitmap blocks recounted for N
      metadata blocks and for the smallest data device (one bitmap a 16,320 blocks; the
      index trees taken as measured), plus 2% (rounded up) of the nodes of the
      reference-count trees: those hold the counts of 3 and more keyed by block number, so
      their packing follows where blocks fall, which a smaller device changes (a 6-day
      snapshot workload in tests/test_plan.py needed 2 blocks more than its 246 leaves
      measured on the larger device); at least 2 MiB (the kernel's smallest); None when
      even the most metadata the kernel uses (255 bitmaps of 16,320 blocks: 15.88 GiB) is
      not enough.
    - sizes are whole blocks (data) and 4 KiB blocks (metadata); with [lvm], whole extents
      (lvcreate rounds up).

    All are None when the run did not last the horizon (the pool ran out, or it stopped)."""
    w = sim.w
    needs = sim.needs
    lasted = sim.stopped is None and not any(
        e["kind"] in _RUN_OUT["data"] + _RUN_OUT["metadata"] for e in sim.events
    )
    out = {
        "data_smallest_blocks": None,
        "data_peak_mapped_blocks": None,
        "data_smallest_bytes": None,
        "data_smallest_quiet_bytes": None,
        "metadata_smallest_blocks": None,
        "metadata_smallest_bytes": None,
    }
    if not lasted:
        return out
    bs = w.pool.block_size
    pmd = sim.pool.target.pmd
    lvm = getattr(sim, "lvm", None)
    ext = lvm.vg.extent_size if lvm is not None else None

    def rounded(nbytes: int, unit: int) -> int:
        unit = ext if ext is not None else unit
        return -(-nbytes // unit) * unit

    data_blocks = max(needs.data_busy, needs.data_allocated, 1)
    data_bytes = rounded(data_blocks * bs, bs)
    out["data_smallest_blocks"] = data_blocks
    out["data_peak_mapped_blocks"] = needs.data_allocated
    out["data_smallest_bytes"] = data_bytes
    peak = needs.data_allocated
    if lvm is not None:
        t = max(lvm.threshold, 50)
        if t < 100:
            n = data_bytes // bs
            step = (ext // bs) if ext >= bs else 1
            while n - (peak - 1) <= n * (100 - t) // 100:
                n += step
            out["data_smallest_quiet_bytes"] = rounded(n * bs, bs)
    elif w.pool.low_water_mark:
        out["data_smallest_quiet_bytes"] = max(data_blocks, peak + w.pool.low_water_mark) * bs
    # metadata: the run's peaks, with the bitmaps of the devices recounted
    md_dev, data_dev = pmd.metadata_sm.nr_blocks, pmd.data_sm.nr_blocks
    fixed = _bitmaps(data_dev) - _bitmaps(data_bytes // bs) + _bitmaps(md_dev)
    ref_nodes = sum(
        sum(1 for _ in ll.ref_info.node_blocks(ll.ref_root))
        for ll in (pmd.metadata_sm.ll, pmd.data_sm.ll)
        if ll.ref_root
    )
    fixed -= -(-ref_nodes * 2 // 100)
    busy, used = needs.metadata_busy - fixed, needs.metadata_used - fixed

    def lasts(n: int) -> bool:
        extra = _bitmaps(data_bytes // bs) + _bitmaps(n)
        return n >= busy + extra and n - (used + extra) > min(4096, n // 10)

    hi = THIN_METADATA_MAX_SECTORS // 8
    if lasts(hi):
        lo = 0
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            if lasts(mid):
                hi = mid
            else:
                lo = mid
        md_bytes = rounded(max(hi * MD_BLOCK, 2 << 20), MD_BLOCK)
        out["metadata_smallest_blocks"] = hi
        out["metadata_smallest_bytes"] = md_bytes
    return out


def summarize(sim) -> dict:
    """The result dict of a finished :class:`~thinsim.plan.engine.Simulation`."""
    w = sim.w
    rows = sim.timeline
    bs = w.pool.block_size
    first = {}
    for e in sim.events:
        first.setdefault(e["kind"], e)
    data_full = next((first[k]["t"] for k in _RUN_OUT["data"] if k in first), None)
    if data_full is None and "write_failed" in first and "ENOSPC" in first["write_failed"]["text"]:
        data_full = first["write_failed"]["t"]
    md_full = min((first[k]["t"] for k in _RUN_OUT["metadata"] if k in first), default=None)
    ok = [r for r in rows if "data_used" in r]
    peak_data = max((r["data_used"] for r in ok), default=0)
    peak_md = max((r["metadata_used"] for r in ok), default=0)
    last = ok[-1] if ok else {}
    est = metadata_estimate(w, sim.peak_thins)
    lasted = sim.stopped is None and data_full is None and md_full is None
    summary = {
        "horizon_s": w.horizon,
        "simulated_s": sim.now,
        "stopped_by": sim.stopped,
        "lasted_the_horizon": lasted,
        "data_full_at_s": data_full,
        "metadata_full_at_s": md_full,
        "data_low_water_mark_at_s": first.get("data_low_water_mark", {}).get("t"),
        "metadata_low_water_mark_at_s": first.get("metadata_low_water_mark", {}).get("t"),
        "peak_data_blocks": peak_data,
        "peak_data_bytes": peak_data * bs,
        "data_total_blocks": last.get("data_total"),
        "peak_metadata_blocks": peak_md,
        "peak_metadata_bytes": peak_md * MD_BLOCK,
        "metadata_total_blocks": last.get("metadata_total"),
        "peak_thins": sim.peak_thins,
        "thin_metadata_size_bytes": est,
        "thin_metadata_size_command": (
            f"thin_metadata_size -b {bs // 1024}k -s {w.pool.data // 1024}k "
            f"-m {max(sim.peak_thins, 1)} -u b -n"
        ),
        # lower bounds: a pool smaller than the peak a status saw would have run out (the
        # smallest sizes that last are smallest_sizes' figures below)
        "data_needed_at_least_bytes": peak_data * bs if lasted else None,
        "metadata_needed_at_least_bytes": peak_md * MD_BLOCK if lasted else None,
        **smallest_sizes(sim),
        "final_status": last.get("status"),
        **_lvm_summary(sim, first),
        "needs_check": last.get("needs_check", False),
        **sim.counters(),
    }
    return {
        "workload": {
            "name": w.name,
            "path": w.path,
            "seed": w.seed,
            "pool": {
                "data_bytes": w.pool.data,
                "metadata_bytes": w.pool.metadata,
                "block_bytes": bs,
                "low_water_mark_blocks": w.pool.low_water_mark,
                "features": list(w.pool.features),
                "table": sim.pool.table(),
            },
        },
        "summary": summary,
        "events": sim.events,
        "timeline": rows,
    }


def _lvm_summary(sim, first: dict) -> dict:
    """With [lvm]: the extensions dmeventd made, when the volume group could not give
    more, and the group's free space at the end."""
    lvm = getattr(sim, "lvm", None)
    if lvm is None:
        return {}
    ext = lvm.vg.extent_size
    return {
        "autoextends": lvm.extends,
        "vg_full_at_s": first.get("vg_full", {}).get("t"),
        "lvm_data_bytes": lvm.vg.data_extents * ext,
        "lvm_metadata_bytes": lvm.vg.metadata_extents * ext,
        "vg_free_bytes": lvm.vg_free_bytes(),
    }


def _when(t) -> str:
    return "never" if t is None else f"{format_duration(t)} (day {t / DAY:.2f})"


def text(result: dict) -> str:
    """What ``thinsim plan`` prints."""
    s = result["summary"]
    w = result["workload"]
    p = w["pool"]
    bs = p["block_bytes"]
    out = io.StringIO()
    pr = lambda *a: print(*a, file=out)
    pr(f"plan {w['name']}: pool {format_size(p['data_bytes'])} data, "
       f"{format_size(p['metadata_bytes'])} metadata, {format_size(bs)} blocks"
       + (f", {' '.join(p['features'])}" if p["features"] else ""))  # fmt: skip
    pr(f"  table: {p['table']}")
    pr("")
    pr("timeline (status after each sample):")
    pr(f"  {'day':>8} {'data used/total':>22} {'metadata used/total':>22} {'mode':>18} thins")
    rows = result["timeline"]
    step = max(1, len(rows) // 40)
    shown = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
    for r in shown:
        if "data_used" not in r:
            pr(f"  {r['day']:8.2f} {'Fail':>22}")
            continue
        d = f"{r['data_used']}/{r['data_total']}"
        m = f"{r['metadata_used']}/{r['metadata_total']}"
        pr(f"  {r['day']:8.2f} {d:>22} {m:>22} {r['mode']:>18} {r['thins']}")
    last = rows[-1]
    vols = last.get("volumes") or {}
    if vols:
        pr("")
        pr(f"volumes at day {last['day']:.2f} (blocks, as thin_ls counts them):")
        pr(f"  {'name':24} {'dev':>8} {'mapped':>12} {'exclusive':>12} {'shared':>12}")
        names = list(vols)
        for name in names[:30]:
            v = vols[name]
            pr(f"  {name:24} {v['dev']:>8} {v['mapped']:>12} {v.get('exclusive', '-'):>12} "
               f"{v.get('shared', '-'):>12}")  # fmt: skip
        if len(names) > 30:
            pr(f"  ... and {len(names) - 30} more")
    ev = [e for e in result["events"] if e["kind"] != "kernel_log"]
    if ev:
        pr("")
        pr("events:")
        for e in ev[:20]:
            pr(f"  {format_duration(e['t']):>16}  {e['kind']}: {e['text']}")
        if len(ev) > 20:
            pr(f"  ... and {len(ev) - 20} more")
    pr("")
    pr("summary:")
    pr(f"  simulated             {_when(s['simulated_s'])} of {format_duration(s['horizon_s'])}"
       + (f" (stopped: {s['stopped_by']})" if s["stopped_by"] else ""))  # fmt: skip
    pr(f"  data runs out        {_when(s['data_full_at_s'])}")
    pr(f"  metadata runs out    {_when(s['metadata_full_at_s'])}")
    pr(f"  peak data            {s['peak_data_blocks']} blocks ({format_size(s['peak_data_bytes'])})"
       f" of {s['data_total_blocks']}")  # fmt: skip
    pr(f"  peak metadata        {s['peak_metadata_blocks']} blocks "
       f"({format_size(s['peak_metadata_bytes'])}) of {s['metadata_total_blocks']}")  # fmt: skip
    pr(f"  thin_metadata_size   {format_size(s['thin_metadata_size_bytes'])} "
       f"for {s['peak_thins']} thins ({s['thin_metadata_size_command']})")  # fmt: skip
    if s["lasted_the_horizon"]:
        pr(f"  smallest that lasts  {format_size(s['data_smallest_bytes'])} data "
           f"({s['data_smallest_blocks']} blocks), "
           + (f"{format_size(s['metadata_smallest_bytes'])} metadata "
              f"({s['metadata_smallest_blocks']} blocks, the kernel's reserve included)"
              if s["metadata_smallest_bytes"] else "no metadata device is large enough"))  # fmt: skip
        if s["data_smallest_quiet_bytes"]:
            pr(f"  no low water mark    {format_size(s['data_smallest_quiet_bytes'])} data")
    if "autoextends" in s:
        pr(f"  lvm autoextend       {s['autoextends']} times: data LV "
           f"{format_size(s['lvm_data_bytes'])}, metadata LV "
           f"{format_size(s['lvm_metadata_bytes'])}, {format_size(s['vg_free_bytes'])} free "
           f"in the volume group; it could not give more {_when(s['vg_full_at_s'])}")  # fmt: skip
    pr(f"  users wrote          {format_size(s['user_written'])}; the data device got "
       f"{format_size(s['data_written'])} written, {format_size(s['data_zeroed'])} zeroed, "
       f"{format_size(s['data_copied'])} copied, "
       f"{format_size(s['discards_passed_down'])} discarded")  # fmt: skip
    if s["failed_writes"]:
        pr(f"  failed writes        {s['failed_writes']} "
           f"({s['queued_seconds']:g} s queued before failing)")  # fmt: skip
    pr(f"  final status         {s['final_status']}")
    return out.getvalue()


def to_json(result: dict) -> str:
    return json.dumps(result, indent=1, sort_keys=False, default=str)


CSV_FIELDS = (
    "t", "day", "data_used", "data_total", "metadata_used", "metadata_total", "mode",
    "transaction_id", "thins", "user_written", "user_discarded", "data_written", "data_zeroed",
    "data_copied", "discards_passed_down", "failed_writes", "queued_seconds",
)  # fmt: skip


def to_csv(result: dict) -> str:
    """The timeline, one row per sample; per-volume columns NAME.mapped (and .exclusive,
    .shared where counted) for every volume that appears."""
    rows = result["timeline"]
    vol_cols: dict[str, None] = {}
    for r in rows:
        for name, v in (r.get("volumes") or {}).items():
            for k in ("mapped", "exclusive", "shared"):
                if k in v:
                    vol_cols[f"{name}.{k}"] = None
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\n")
    wr.writerow([*CSV_FIELDS, *vol_cols])
    for r in rows:
        vols = r.get("volumes") or {}
        cells = [r.get(f, "") for f in CSV_FIELDS]
        for col in vol_cols:
            name, _, k = col.rpartition(".")
            cells.append(vols.get(name, {}).get(k, ""))
        wr.writerow(cells)
    return out.getvalue()


_MARKS = {
    "data_low_water_mark": ("tab:orange", "data low water mark"),
    "metadata_low_water_mark": ("tab:purple", "metadata low water mark"),
    "out_of_data_space": ("tab:red", "out of data space"),
    "read_only": ("black", "read-only"),
    "metadata_full": ("black", "metadata full"),
    "docker_refused": ("tab:brown", "Docker refused a device"),
    "vg_full": ("tab:red", "volume group full"),
}


def plot(result: dict, path: str) -> None:
    """Data and metadata use (% of the devices) over simulated days, events marked; PNG or
    SVG by the file's suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    draw_use(result, ax)
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None} if path.endswith(".svg") else None)
    plt.close(fig)


def draw_use(result: dict, ax) -> None:
    """:func:`plot`'s picture on AX (thinsim.viz.use_over_time draws it in a notebook)."""
    rows = [r for r in result["timeline"] if "data_used" in r]
    days = [r["day"] for r in rows]
    ax.plot(days, [100 * r["data_used"] / r["data_total"] for r in rows], label="data used")
    ax.plot(days, [100 * r["metadata_used"] / r["metadata_total"] for r in rows],
            label="metadata used")  # fmt: skip
    seen = set()
    for e in result["events"]:
        if e["kind"] in _MARKS and e["kind"] not in seen:
            seen.add(e["kind"])
            color, label = _MARKS[e["kind"]]
            ax.axvline(e["t"] / DAY, color=color, linestyle="--", linewidth=1,
                       label=f"{label} (day {e['t'] / DAY:.1f})")  # fmt: skip
    ext = [e["t"] / DAY for e in result["events"] if e["kind"] == "autoextend"]
    for i, x in enumerate(ext):
        ax.axvline(x, color="tab:green", linestyle=":", linewidth=1,
                   label=f"lvm autoextend ({len(ext)})" if i == 0 else None)  # fmt: skip
    ax.set_xlabel("simulated days")
    ax.set_ylabel("% of the device used")
    ax.set_ylim(0, 105)
    ax.set_title(f"thinsim plan {result['workload']['name']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
