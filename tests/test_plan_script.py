"""thinsim plan --script: a scaled-down plan's operations as a bash script, whose final
status lines and thin_ls figures are the plan's, on the simulated host and the real kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_ci

from thinsim import plan
from thinsim.host import real
from thinsim.plan.engine import Simulation
from thinsim.plan.script import MAX_OPS, ScriptError, expected, script

ROOT = Path(__file__).resolve().parent.parent

# a pool with all the planner's operations: a fill, daily snapshots kept two days, random
# 4 KiB rewrites, appends that free what lies 128 KiB behind, fstrim, a deleted clone
SMALL = """\
[plan]
horizon = "3d"
seed = 5

[pool]
data = "256MiB"
metadata = "8MiB"
block_size = "64KiB"
low_water_mark = 64

[[volumes]]
name = "vm"
size = "64MiB"

[[volumes]]
name = "clone"
clone_of = "vm"
at = "1h"

[[activities]]
type = "fill"
volume = "vm"
size = "50%"

[[activities]]
type = "snapshots"
volume = "vm"
every = "1d"
keep = 2

[[activities]]
type = "churn"
volume = "vm"
rate = "3%"
io_size = "4KiB"

[[activities]]
type = "churn"
volume = "vm"
rate = "256KiB"
pattern = "append"
io_size = "64KiB"
live = "128KiB"

[[activities]]
type = "churn"
volume = "clone"
rate = "1%"
pattern = "hotset"
io_size = "8KiB"

[[activities]]
type = "fstrim"
volume = "vm"
every = "1d"

[[activities]]
type = "delete"
volume = "clone"
at = "2d"
"""

EXPECTED = """\
== status
0 524288 thin-pool 0 227/2048 597/4096 - rw discard_passdown queue_if_no_space - 512 
== plan-t0
0 131072 thin 70784 131071
== thin_ls
0 553 33 520 
3 531 20 511 
4 544  2 542 
"""


def small_script(tmp_path: Path) -> tuple[Path, str]:
    sim = Simulation(plan.parse(SMALL, "small.toml"), record=True)
    sim.run()
    path = tmp_path / "plan.sh"
    path.write_text(script(sim))
    return path, expected(sim)


def test_the_plan_says_what_the_script_will_print(tmp_path):
    _, want = small_script(tmp_path)
    assert want == EXPECTED


def test_the_script_has_the_plan_s_operations_as_dmsetup_dd_and_blkdiscard(tmp_path):
    path, _ = small_script(tmp_path)
    lines = path.read_text().splitlines()
    assert lines[4:12] == [
        "truncate -s 8388608 meta.img",
        "truncate -s 268435456 data.img",
        "META=$(losetup -f --show meta.img)",
        "DATA=$(losetup -f --show data.img)",
        'dmsetup create plan-pool --table "0 524288 thin-pool $META $DATA 128 64"',
        "dmsetup message plan-pool 0 create_thin 0",
        'dmsetup create plan-t0 --table "0 131072 thin /dev/mapper/plan-pool 0"',
        # the fill: one request to the model, 512 whole-block requests to the kernel
        (
            "dd if=/dev/zero of=/dev/mapper/plan-t0 oflag=direct,seek_bytes conv=notrunc "
            "status=none bs=65536 count=512 seek=0"
        ),
    ]
    text = path.read_text()
    assert "dmsetup suspend plan-t0\ndmsetup message plan-pool 0 create_snap 1 0\n" in text
    assert "blkdiscard -o 33554432 -l 131072 /dev/mapper/plan-t0\n" in text
    assert "dmsetup message plan-pool 0 delete 2\n" in text  # the clone, on day 2


def test_the_script_run_on_the_simulated_host_prints_what_the_plan_says(tmp_path):
    path, want = small_script(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "thinsim.cli", "run", str(path)], cwd=work,
                       env=env, capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    assert (r.stdout, r.stderr, r.returncode) == (want, "", 0)


@pytest.mark.kernel
def test_the_script_run_on_the_real_kernel_prints_what_the_plan_says(tmp_path):
    if not real.in_vm() and (real.dm_thin_here() is not None or os.geteuid() != 0):
        why = "needs root and dm-thin (the VM that `make test` boots)"
        if in_ci():
            pytest.fail(f"CI must run the plan's script on the kernel, but: {why}")
        pytest.skip(why)
    path, want = small_script(tmp_path)
    cwd = os.getcwd()
    try:
        r = real.run_here(path)
    finally:
        os.chdir(cwd)
    assert (r.stdout, r.stderr, r.returncode) == (want, "", 0)


def test_a_plan_too_large_for_a_script_is_refused(tmp_path):
    w = plan.parse(SMALL.replace('rate = "3%"', 'rate = "64MiB"'), "big.toml")
    sim = Simulation(w, record=True)
    sim.run()
    assert len(sim.ops) > MAX_OPS
    with pytest.raises(ScriptError, match="a script is for a scaled-down case"):
        script(sim)


def test_the_command_writes_the_script(tmp_path):
    (tmp_path / "small.toml").write_text(SMALL)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "thinsim.cli", "plan", "small.toml", "--script", "plan.sh"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plan.sh").read_text() == small_script(tmp_path)[0].read_text()
