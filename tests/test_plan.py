"""The capacity planner (issue 12): workload files, the run through the model, the answer.

Figures are the model's, asserted exactly, and a few are held to a hand computation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinsim import plan
from thinsim.model.disk import write_metadata
from thinsim.plan.engine import Simulation
from thinsim.thin_tools.common import RealFiles
from thinsim.thin_tools.ls import ls_text
from thinsim.thin_tools.metadata_size import estimate_bytes

ROOT = Path(__file__).resolve().parent.parent
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

BASE = """\
[plan]
horizon = "{horizon}"
seed = {seed}
{plan_extra}

[pool]
data = "{data}"
metadata = "{metadata}"
block_size = "64KiB"
{pool_extra}

[[volumes]]
name = "vm"
size = "{size}"
"""


def workload(activities: str = "", *, horizon="3d", seed=1, data="1GiB", metadata="16MiB",
             size="512MiB", plan_extra="", pool_extra="") -> plan.Workload:  # fmt: skip
    text = BASE.format(**locals()) + activities
    return plan.parse(text, "plan.toml")


FILL = """
[[activities]]
type = "fill"
volume = "vm"
size = "{fill}"
"""
SNAP = """
[[activities]]
type = "snapshots"
volume = "vm"
every = "1d"
{keep}
"""
CHURN = """
[[activities]]
type = "churn"
volume = "vm"
rate = "{rate}"
pattern = "{pattern}"
io_size = "{io}"
{extra}
"""


def churn(rate="5%", pattern="uniform", io="4KiB", extra="") -> str:
    return CHURN.format(rate=rate, pattern=pattern, io=io, extra=extra)


def test_a_fill_of_n_blocks_maps_n_blocks_and_writes_them_once():
    r = plan.run(workload(FILL.format(fill="100MiB"), horizon="1d"))
    last = r["timeline"][-1]
    assert last["data_used"] == 1600  # 100 MiB / 64 KiB
    assert last["volumes"]["vm"] == {"dev": 0, "mapped": 1600, "exclusive": 1600, "shared": 0}
    s = r["summary"]
    assert s["user_written"] == s["data_written"] == 100 * MiB
    assert s["data_zeroed"] == s["data_copied"] == 0  # whole blocks: nothing to zero or copy
    assert s["final_status"] == (
        "0 2097152 thin-pool 0 427/4096 1600/16384 - rw discard_passdown queue_if_no_space - 1024 "
    )


def test_a_plan_keeps_up_to_a_sixteenth_of_the_memory_in_metadata_nodes(monkeypatch):
    """The node cache of a plan's pool: 2^18 nodes where the machine has 32 GiB, a
    sixteenth of the memory (5 KiB a node) where it has 4 GiB, never below the default;
    the figure is what the pool's cache holds."""
    from thinsim.model.transaction import DEFAULT_CACHE_NODES
    from thinsim.plan import engine

    sim = Simulation(workload(FILL.format(fill="10MiB"), horizon="1d"))
    assert sim.pool.target.pmd.tm.blocks.limit == engine.plan_cache_nodes()
    for memory, nodes in [(32 * GiB, 1 << 18), (4 * GiB, 4 * GiB // 16 // (5 * KiB))]:
        sizes = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": memory // 4096}
        monkeypatch.setattr(engine.os, "sysconf", sizes.__getitem__)
        assert engine.plan_cache_nodes() == nodes
    monkeypatch.setattr(engine.os, "sysconf", {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1}.get)
    assert engine.plan_cache_nodes() == DEFAULT_CACHE_NODES


def test_a_snapshot_then_a_rewrite_of_k_blocks_gives_k_exclusive_blocks_on_each_side():
    # fill 1000 blocks, snapshot at day 0, then 4 KiB writes to 50 distinct blocks (of 8192)
    # each day: the first day's writes that land in the filled part break sharing
    w = workload(FILL.format(fill="1000s") + SNAP.format(keep="") + churn(rate="50MiB"),
                 horizon="1d", size="64000KiB")  # fmt: skip
    w.activities[0].opts["size"] = ("share", 1)  # the whole 1000-block volume
    sim = Simulation(w)
    r = sim.run()
    vols = r["timeline"][-1]["volumes"]
    k = vols["vm"]["exclusive"]
    assert vols["vm"]["mapped"] == 1000
    assert vols["vm@1"] == {"dev": 1, "mapped": 1000, "exclusive": k, "shared": 1000 - k}
    # k blocks broken: k new blocks, each a whole-block copy, then the 4 KiB write
    assert r["timeline"][-1]["data_used"] == 1000 + k
    assert r["summary"]["data_copied"] == k * 64 * KiB
    assert k == 1000 - vols["vm"]["shared"] and 0 < k <= 12800


def test_exclusive_and_shared_counts_are_thin_ls_s_on_the_same_metadata(tmp_path):
    w = workload(FILL.format(fill="30%") + SNAP.format(keep="keep = 2") + churn(),
                 horizon="3d")  # fmt: skip
    sim = Simulation(w)
    r = sim.run()
    md = tmp_path / "meta"
    with open(md, "wb") as f:
        f.truncate(16 * MiB)
    write_metadata(sim.pool.target.pmd, md)
    out = ls_text(
        RealFiles(),
        str(md),
        ["DEV", "MAPPED_BLOCKS", "EXCLUSIVE_BLOCKS", "SHARED_BLOCKS"],
        headers=False,
    )
    rows = [list(map(int, line.split())) for line in out.splitlines()]
    ours = r["timeline"][-1]["volumes"]
    assert rows == [[v["dev"], v["mapped"], v["exclusive"], v["shared"]] for v in ours.values()]
    assert [name for name in ours] == ["vm", "vm@2", "vm@3"]  # vm@1 deleted: keep = 2


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    acts = FILL.format(fill="20%") + SNAP.format(keep="") + churn(pattern="zipf")
    a = plan.run(workload(acts, seed=7))
    b = plan.run(workload(acts, seed=7))
    c = plan.run(workload(acts, seed=8))
    assert a == b
    assert a["timeline"][-1]["status"] != c["timeline"][-1]["status"]


@pytest.mark.parametrize("pattern", ["uniform", "zipf", "hotset", "sequential", "append"])
def test_every_pattern_writes_what_its_rate_says(pattern):
    r = plan.run(workload(churn(rate="1MiB", pattern=pattern), horizon="2d"))
    assert r["summary"]["user_written"] == 2 * MiB  # days 0 and 1: 256 writes of 4 KiB each


def test_4k_writes_to_new_blocks_zero_the_block_unless_the_pool_skips_zeroing():
    acts = churn(rate="10", pattern="sequential", io="4KiB").replace('"10"', '"160KiB"')
    zeroing = plan.run(workload(acts, horizon="1d"))["summary"]
    skipping = plan.run(workload(acts, horizon="1d",
                                 pool_extra='features = ["skip_block_zeroing"]'))["summary"]  # fmt: skip
    # 40 sequential 4 KiB writes: 3 blocks, the first write to each zeroes it
    assert zeroing["data_zeroed"] == 3 * 64 * KiB
    assert skipping["data_zeroed"] == 0
    assert zeroing["data_written"] == skipping["data_written"] == 160 * KiB


def test_data_running_out_is_the_kernel_s_event_and_the_plan_stops_there():
    r = plan.run(workload(churn(rate="300MiB", pattern="sequential", io="64KiB"),
                          data="256MiB", size="1GiB", horizon="5d",
                          pool_extra="low_water_mark = 100"))  # fmt: skip
    s = r["summary"]
    kinds = [e["kind"] for e in r["events"]]
    assert kinds == [
        "data_low_water_mark",
        "out_of_data_space",
        "out_of_data_space",
        "write_failed",
    ]
    assert r["events"][0]["text"] == (
        "device-mapper: thin: 254:0: reached low water mark for data device: sending event."
    )
    assert r["events"][1]["text"] == (
        "device-mapper: thin: 254:0: switching pool to out-of-data-space (queue IO) mode"
    )
    # no_space_timeout (60 s) later the queued write fails, and so does every later one
    assert (r["events"][2]["t"], r["events"][2]["text"]) == (
        60,
        "device-mapper: thin: 254:0: switching pool to out-of-data-space (error IO) mode",
    )
    # 300 MiB a day into 256 MiB: day 0 writes 4800 blocks, day 1 runs out after 4096 - 4800
    assert s["data_full_at_s"] == 0 and s["stopped_by"] == "out_of_data_space"
    assert s["user_written"] == 256 * MiB
    assert s["queued_seconds"] == 60  # queue mode: no_space_timeout, then ENOSPC
    assert s["data_low_water_mark_at_s"] == 0
    assert r["timeline"][-1]["mode"] == "out_of_data_space"


def test_metadata_running_out_turns_the_pool_read_only():
    acts = FILL.format(fill="100%") + SNAP.format(keep="") + churn(rate="20%")
    r = plan.run(workload(acts, metadata="2MiB", data="2GiB", size="1GiB", horizon="30d"))
    s = r["summary"]
    assert s["metadata_full_at_s"] == 4 * 86400 and s["data_full_at_s"] is None
    assert s["needs_check"] is False  # out of metadata space is not damage
    assert s["final_status"] == (
        "0 4194304 thin-pool 0 512/512 32291/32768 - ro discard_passdown queue_if_no_space - 128 "
    )
    # (a day's writes go in ascending order)
    assert [(e["t"] // 86400, e["kind"], e["text"]) for e in r["events"]] == [
        (3, "metadata_low_water_mark",
         "device-mapper: thin: 254:0: reached low water mark for metadata device: sending event."),
        (4, "metadata_full", "device-mapper: thin: No free metadata blocks"),
        (4, "read_only", "device-mapper: thin: 254:0: switching pool to read-only mode"),
        (4, "write_failed", "write of 4096 bytes to vm at 911265792: EIO"),
    ]  # fmt: skip


def test_the_summary_puts_thin_metadata_size_s_estimate_beside_the_exact_figure():
    acts = FILL.format(fill="50%") + SNAP.format(keep="")
    s = plan.run(workload(acts, horizon="3d"))["summary"]
    assert s["peak_thins"] == 4  # vm and three snapshots (days 0, 1, 2)
    assert s["thin_metadata_size_bytes"] == int(estimate_bytes(128, 2 * 1024 * 1024, 4))
    assert s["thin_metadata_size_command"] == "thin_metadata_size -b 64k -s 1048576k -m 4 -u b -n"
    assert s["peak_metadata_bytes"] == s["peak_metadata_blocks"] * 4096
    assert s["lasted_the_horizon"] and s["data_needed_at_least_bytes"] == s["peak_data_bytes"]


def test_fstrim_discards_what_an_append_workload_freed_and_passes_it_down():
    acts = (
        churn(rate="1MiB", pattern="append", io="64KiB", extra='live = "2MiB"')
        + """
[[activities]]
type = "fstrim"
volume = "vm"
every = "2d"
start = "1d"
"""
    )
    r = plan.run(workload(acts, horizon="4d"))
    s = r["summary"]
    # days 0-3 append 4 MiB; fstrim on days 1 and 3 frees what lies 2 MiB behind: 2 MiB
    assert s["user_discarded"] == s["discards_passed_down"] == 2 * MiB
    assert r["timeline"][-1]["data_used"] == 32  # 4 MiB written, 2 MiB discarded


def test_fstrim_on_a_pool_that_ignores_discards_is_refused_with_eopnotsupp():
    acts = (
        churn(rate="1MiB", pattern="append", io="64KiB", extra='live = "512KiB"')
        + """
[[activities]]
type = "fstrim"
volume = "vm"
every = "1d"
"""
    )
    r = plan.run(workload(acts, horizon="2d", pool_extra='features = ["ignore_discard"]'))
    refused = [e for e in r["events"] if e["kind"] == "discard_refused"]
    assert refused[0]["text"] == "fstrim vm: the discard operation is not supported"
    assert r["summary"]["discards_passed_down"] == 0


def test_a_clone_of_a_golden_image_shares_its_blocks_until_written():
    text = BASE.format(horizon="1d", seed=0, plan_extra="", data="1GiB", metadata="16MiB",
                       pool_extra="", size="64MiB") + FILL.format(fill="100%") + """
[[volumes]]
name = "clone"
clone_of = "vm"
at = "1h"

[[activities]]
type = "churn"
volume = "clone"
rate = "10%"
io_size = "64KiB"
start = "2h"
"""  # fmt: skip
    vols = plan.run(plan.parse(text, "p.toml"))["timeline"][-1]["volumes"]
    assert vols["vm"] == {"dev": 0, "mapped": 1024, "exclusive": 102, "shared": 922}
    assert vols["clone"] == {"dev": 1, "mapped": 1024, "exclusive": 102, "shared": 922}


# -- bad files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('block_size = "64KiB"', 'block_size = "96KiB"'),
         "plan.toml:9: pool.block_size: must be a multiple of 64KiB between 64KiB and 1GiB"),
        (('data = "1GiB"', 'data = "1 lots"'),
         "plan.toml:7: pool.data: '1 lots' is not a size such as \"64KiB\" or \"100GiB\""),
        (('horizon = "3d"', 'horizon = "3 days"'),
         "plan.toml:2: plan.horizon: '3 days' is not a duration such as \"6h\" or \"1d\""),
        (('size = "512MiB"', 'size = "512MiB"\ncolour = "red"'),
         ("plan.toml:15: volumes[0].colour: unknown field (this table takes: at, clone_of, "
          "name, origin, size)")),
        (('seed = 1', 'seed = "one"'), "plan.toml:3: plan.seed: must be a whole number, not 'one'"),
        (('size = "512MiB"', 'size = "512MiB"\n[[activities]]\ntype = "churn"\nvolume = "db"'),
         "plan.toml:17: activities[0].volume: no volume named 'db' is defined"),
        (('size = "512MiB"', 'size = "512MiB"\n[[activities]]\ntype = "churn"\nvolume = "vm"'),
         "plan.toml:15: activities[0]: missing field 'rate'"),
        (('[pool]', '[pool'), "plan.toml:6: not TOML: Expected ']' at the end of a table declaration"),
    ],
)  # fmt: skip
def test_a_bad_workload_file_names_the_file_line_and_field(change, message):
    text = BASE.format(horizon="3d", seed=1, plan_extra="", data="1GiB", metadata="16MiB",
                       size="512MiB", pool_extra="").replace(*change)  # fmt: skip
    with pytest.raises(plan.PlanError) as e:
        plan.parse(text, "dir/plan.toml")
    assert str(e.value) == message


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "thinsim.cli", "plan", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, check=False)  # fmt: skip


def test_the_command_refuses_a_bad_file_with_exit_status_2_and_no_traceback(tmp_path):
    f = tmp_path / "plan.toml"
    f.write_text('[plan]\nhorizon = "1d"\n[pool]\ndata = "1GiB"\nmetadata = "1MiB"\n')
    r = _cli(str(f))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        "thinsim plan: plan.toml:5: pool.metadata: must be at least 2MiB (the kernel's "
        "smallest metadata device)\n"
    )
    r = _cli(str(tmp_path / "missing.toml"))
    assert (r.returncode, r.stderr) == (
        2,
        "thinsim plan: missing.toml: No such file or directory\n",
    )


def test_the_command_prints_text_json_csv_and_plots(tmp_path):
    f = tmp_path / "plan.toml"
    f.write_text(BASE.format(horizon="2d", seed=1, plan_extra="", data="1GiB", metadata="16MiB",
                             size="64MiB", pool_extra="") + FILL.format(fill="100%"))  # fmt: skip
    r = _cli(str(f), "--csv", "t.csv", "--plot", "p.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "peak data            1024 blocks (64.00 MiB) of 16384" in r.stdout
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_lines = (tmp_path / "t.csv").read_text().splitlines()
    assert len(csv_lines) == 4  # a header and days 0, 1, 2
    assert csv_lines[1].startswith("0,0.0,1024,16384,")
    r = _cli(str(f), "--json", "--plot", "p.svg", cwd=tmp_path)
    result = json.loads(r.stdout)
    assert result["summary"]["peak_data_blocks"] == 1024
    assert result["workload"]["pool"]["table"] == "0 2097152 thin-pool 7:0 7:1 128 0 0 "
    assert (tmp_path / "p.svg").read_text().lstrip().startswith("<?xml")
