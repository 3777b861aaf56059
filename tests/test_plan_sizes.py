"""The summary's smallest data and metadata sizes that last the horizon (report.py:
smallest_sizes), held to runs of the same workload on devices of those sizes."""

from __future__ import annotations

import pytest

from thinsim import plan

TEXT = """\
[plan]
horizon = "4d"
volume_stats = "none"

[pool]
data = "{data}"
metadata = "{metadata}"
block_size = "64KiB"

[[volumes]]
name = "vm"
size = "8GiB"

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
rate = "64MiB"
pattern = "append"
io_size = "64KiB"
live = "128MiB"

[[activities]]
type = "fstrim"
volume = "vm"
every = "1d"
"""
BLOCK, MD_BLOCK = 64 << 10, 4096


def _run(data, metadata):
    return plan.run(plan.parse(TEXT.format(data=data, metadata=metadata), "sizes.toml"))["summary"]


@pytest.fixture(scope="module")
def roomy():
    return _run("16GiB", "64MiB")


def test_the_smallest_data_device_lasts_and_one_block_less_runs_out(roomy):
    d, m = roomy["data_smallest_bytes"], roomy["metadata_smallest_bytes"]
    # more than the peak a status saw: blocks freed by a discard are reused only after
    # the next commit, so the transaction that also writes needs them on top
    assert roomy["data_smallest_blocks"] > roomy["peak_data_blocks"]
    assert _run(d, m)["lasted_the_horizon"]
    short = _run(d - BLOCK, "64MiB")
    assert not short["lasted_the_horizon"] and short["data_full_at_s"] is not None


def test_the_smallest_metadata_device_lasts_and_is_within_a_few_blocks_of_the_least(roomy):
    # the two figures are a pair: the metadata holds the smallest data device's space map
    d, m = roomy["data_smallest_bytes"], roomy["metadata_smallest_bytes"]
    # the kernel's reserve is part of it: min(4096, blocks / 10) blocks kept back
    assert m // MD_BLOCK > roomy["peak_metadata_blocks"] - 4096
    assert _run(d, m)["lasted_the_horizon"]
    # within the 2% margin report.smallest_sizes puts on the reference-count trees' nodes
    # (their layout follows the block numbers): 5 to 9 blocks above the least here
    short = _run(d, m - 10 * MD_BLOCK)
    assert not short["lasted_the_horizon"] and short["metadata_full_at_s"] is not None


def test_a_run_that_ran_out_gives_no_smallest_sizes():
    s = _run("1GiB", "64MiB")
    assert not s["lasted_the_horizon"]
    assert s["data_smallest_bytes"] is None and s["metadata_smallest_bytes"] is None


def test_the_low_water_mark_asks_for_its_blocks_on_top_of_the_peak():
    text = TEXT.replace('block_size = "64KiB"', 'block_size = "64KiB"\nlow_water_mark = 1000')

    def run(data):
        r = plan.run(plan.parse(text.format(data=data, metadata="64MiB"), "sizes.toml"))
        return r["summary"], {e["kind"] for e in r["events"]}

    s, _ = run("16GiB")
    quiet = s["data_smallest_quiet_bytes"]
    # the kernel checks free <= low water mark before each allocation
    assert quiet == (s["data_peak_mapped_blocks"] + 1000) * BLOCK
    assert "data_low_water_mark" not in run(quiet)[1]
    assert "data_low_water_mark" in run(quiet - BLOCK)[1]
