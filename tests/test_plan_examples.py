"""The planner's worked examples (examples/plans) and its benchmark's scaled-down runs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from thinsim import plan
from thinsim.bench import _PLAN_QUICK, plan_child
from thinsim.plan.engine import Simulation
from thinsim.plan.sweep import sweep

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "examples" / "plans"


def test_every_example_is_a_valid_workload_with_a_paragraph_in_the_readme():
    readme = (PLANS / "README.md").read_text()
    names = sorted(p.name for p in PLANS.glob("*.toml"))
    assert names == ["docker_year.toml", "lvm_autoextend.toml", "snapshots_1t.toml", "whatif.toml"]
    for name in names:
        plan.load(PLANS / name)
        assert f"thinsim plan examples/plans/{name}" in readme, name


def test_the_500_snapshot_example_is_the_issue_s_question():
    w = plan.load(PLANS / "snapshots_1t.toml")
    assert (w.pool.metadata, w.pool.block_size, w.horizon) == (16 << 30, 64 << 10, 500 * 86400)
    assert [(v.name, v.size) for v in w.volumes] == [("vm", 1 << 40)]
    fill, snaps, churn = w.activities
    assert (fill.type, fill.size) == ("fill", ("share", 1))
    assert (snaps.type, snaps.every, snaps.keep) == ("snapshots", 86400, 500)
    assert (churn.rate, churn.pattern, churn.io_size) == (
        ("share", Fraction(5, 100)),
        "uniform",
        4096,
    )


def test_the_docker_example_is_docker_1_12_s_loop_lvm_pool():
    w = plan.load(PLANS / "docker_year.toml")
    assert Simulation(w).pool.table() == (
        "0 209715200 thin-pool 7:0 7:1 128 32768 1 skip_block_zeroing "
    )
    assert (w.docker.basesize, w.docker.min_free_space, w.docker.blkdiscard) == (
        10 << 30, Fraction(10, 100), True
    )  # fmt: skip


def test_the_benchmark_s_scaled_down_runs_are_the_examples_with_fields_changed():
    for name, overrides in _PLAN_QUICK.items():
        w = plan.load(PLANS / f"{name}.toml")
        plan.parse(w.text, w.path, overrides)


def test_a_scaled_down_docker_year_reports_its_figures():
    out = plan_child("docker_year", 600, True, {"plan.horizon": "1d"})
    assert out["days"] == 1.0 and out["stopped_by"] is None
    assert out["s"] >= 0 and out["cpu_s"] >= 0 and out["rss_mib"] > 0


def test_a_run_past_its_wall_clock_budget_stops_and_says_so():
    w = plan.load(PLANS / "whatif.toml")
    sim = Simulation(plan.parse(w.text, w.path, {"plan.horizon": "3d"}))
    sim.deadline = 0  # long past
    r = sim.run()
    assert r["summary"]["stopped_by"] == "wall_clock_budget"
    assert r["summary"]["simulated_s"] == 0


@pytest.mark.parametrize(("value", "features"), [
    ("none", []),
    ("skip_block_zeroing", ["skip_block_zeroing"]),
    ("skip_block_zeroing+no_discard_passdown", ["skip_block_zeroing", "no_discard_passdown"]),
])  # fmt: skip
def test_a_sweep_gives_a_list_field_its_items_joined_by_plus(value, features):
    w = plan.load(PLANS / "whatif.toml")
    assert plan.parse(w.text, w.path, {"pool.features": value}).pool.features == features


def test_zeroing_is_what_skip_block_zeroing_saves_and_nothing_else_changes():
    w = plan.load(PLANS / "whatif.toml")
    small = {"plan.horizon": "1d", "activities[2].rate": "4MiB"}
    w = plan.parse(w.text, w.path, small)
    on, off = sweep(w, ["pool.features=none,skip_block_zeroing"], jobs=1, progress=False)
    a, b = on["summary"], off["summary"]
    assert b["data_zeroed"] == 0 < a["data_zeroed"]
    for key in ("peak_data_blocks", "peak_metadata_blocks", "data_written", "data_copied"):
        assert a[key] == b[key], key
