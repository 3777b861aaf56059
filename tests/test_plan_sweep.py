"""Sweeps of the planner: every combination, over local processes or a Dask cluster, the same
answers whichever way they ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinsim import plan
from thinsim.plan.sweep import parse_specs, sweep, sweep_csv

ROOT = Path(__file__).resolve().parent.parent

TEXT = """\
[plan]
horizon = "2d"
seed = 3

[pool]
data = "1GiB"
metadata = "16MiB"

[[volumes]]
name = "vm"
size = "256MiB"

[[activities]]
type = "fill"
volume = "vm"
size = "50%"

[[activities]]
type = "snapshots"
volume = "vm"
every = "1d"

[[activities]]
type = "churn"
volume = "vm"
rate = "5%"
"""
SPECS = ["pool.block_size=64KiB,256KiB", "pool.metadata=4MiB,16MiB"]


@pytest.fixture
def w():
    return plan.parse(TEXT, "sweep.toml")


def test_every_combination_runs_in_order_with_the_answer_a_single_run_gives(w):
    results = sweep(w, SPECS, jobs=2, progress=False)
    assert [r["params"] for r in results] == [
        {"pool.block_size": "64KiB", "pool.metadata": "4MiB"},
        {"pool.block_size": "64KiB", "pool.metadata": "16MiB"},
        {"pool.block_size": "256KiB", "pool.metadata": "4MiB"},
        {"pool.block_size": "256KiB", "pool.metadata": "16MiB"},
    ]
    text = TEXT.replace('metadata = "16MiB"', 'metadata = "4MiB"\nblock_size = "256KiB"')
    one = plan.run(plan.parse(text, "sweep.toml"))
    assert results[2]["summary"] == one["summary"]
    # a fill of half the volume maps 128 MiB: 2048 blocks of 64 KiB or 512 of 256 KiB, plus
    # the day-0 churn's new blocks
    assert results[0]["summary"]["peak_data_blocks"] > 2048
    assert results[2]["summary"]["peak_data_blocks"] > 512


def test_a_sweep_is_the_same_on_one_process_on_several_and_on_a_dask_cluster(w):
    distributed = pytest.importorskip("dask.distributed")
    serial = sweep(w, SPECS, jobs=1, progress=False)
    assert sweep(w, SPECS, jobs=2, progress=False) == serial
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:  # fmt: skip
        assert sweep(w, SPECS, scheduler=cluster.scheduler_address, progress=False) == serial


def test_a_bad_value_in_a_sweep_is_refused_before_anything_runs_naming_field_and_value(w):
    with pytest.raises(plan.PlanError) as e:
        parse_specs(w, ["pool.block_size=64KiB,96KiB"])
    assert str(e.value) == (
        "sweep.toml: pool.block_size: must be a multiple of 64KiB between 64KiB and 1GiB "
        "(with --sweep pool.block_size=96KiB)"
    )
    with pytest.raises(plan.PlanError) as e:
        parse_specs(w, ["pool.block_size"])
    assert str(e.value) == "sweep.toml: --sweep 'pool.block_size': give FIELD=VALUE,VALUE..."
    with pytest.raises(plan.PlanError) as e:
        parse_specs(w, ["activities[7].rate=1%"])
    assert str(e.value) == (
        "sweep.toml: activities[7].rate: no such table in the workload (--sweep)"
    )


def test_an_activity_s_field_can_be_swept_too(w):
    results = sweep(w, ["activities[2].rate=1%,10%"], jobs=1, progress=False)
    low, high = (r["summary"]["user_written"] for r in results)
    # 4 KiB writes to 1% and 10% of 4096 blocks, on days 0 and 1, plus the 128 MiB fill
    assert (low, high) == (128 * 2**20 + 2 * 41 * 4096, 128 * 2**20 + 2 * 410 * 4096)


def test_the_command_prints_the_table_and_writes_csv_and_the_plot(tmp_path):
    f = tmp_path / "sweep.toml"
    f.write_text(TEXT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "thinsim.cli", "plan", str(f), "--quiet", "--jobs", "1",
         "--sweep", SPECS[0], "--csv", "s.csv", "--plot", "s.png"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["pool.block_size", "data", "full"]
    assert [line.split()[0] for line in lines[1:]] == ["64KiB", "256KiB"]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        (tmp_path / "s.csv")
        .read_text()
        .splitlines()[0]
        .startswith("pool.block_size,data_full_at_s,")
    )
    assert sweep_csv([]) == (
        "data_full_at_s,metadata_full_at_s,peak_data_blocks,peak_data_bytes,"
        "peak_metadata_blocks,peak_metadata_bytes,thin_metadata_size_bytes,peak_thins,"
        "user_written,data_written,data_zeroed,data_copied,discards_passed_down,stopped_by,"
        "simulated_s\n"
    )
