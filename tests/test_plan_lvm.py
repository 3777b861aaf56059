"""The capacity planner with LVM's policies: thin_pool_autoextend_threshold / _percent,
dmeventd's monitoring and a volume group that can run out (lvm2 2.03.16's arithmetic,
held to hand computations here; the pool's growth is the model's reload path)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from thinsim import plan
from thinsim.plan import lvm
from thinsim.plan.workload import LvmSpec

GiB, MiB = 1 << 30, 1 << 20

TEXT = """\
[plan]
horizon = "12d"
volume_stats = "none"

[pool]
data = "1GiB"
metadata = "16MiB"
block_size = "64KiB"

[lvm]
vg_size = "2GiB"
thin_pool_autoextend_threshold = 70
thin_pool_autoextend_percent = 20

[[volumes]]
name = "vm"
size = "8GiB"

[[activities]]
type = "churn"
volume = "vm"
rate = "256MiB"
pattern = "append"
io_size = "1MiB"
"""


def test_lvm_s_percentages_and_amounts_are_libdm_s_and_lv_manip_s():
    assert lvm.dm_make_percent(1, 3) == 33_333_333
    assert lvm.dm_make_percent(0, 3) == 0
    assert lvm.dm_make_percent(3, 3) == lvm.DM_PERCENT_100
    assert lvm.dm_make_percent(999_999_999, 1_000_000_000) == lvm.DM_PERCENT_100 - 1
    # 95% used, threshold 70: 95/70 = 1.357, so 36% more is needed, more than the 20%
    assert lvm.adjust_amount(95 * lvm.DM_PERCENT_1, 70, 20) == 36
    assert lvm.adjust_amount(75 * lvm.DM_PERCENT_1, 70, 20) == 20
    assert lvm.adjust_amount(70 * lvm.DM_PERCENT_1, 70, 20) == 0  # at the threshold: nothing
    assert lvm.adjust_amount(50 * lvm.DM_PERCENT_1, 50, 20) == 0  # 50% and below: nothing
    assert lvm.percent_of_extents(20, 256) == 52  # 51.2 rounded up
    # lib/thin/thin.c: len / chunk * (100 - threshold) / 100; thresholds under 50 are 50
    assert lvm.low_water_mark(GiB, 64 << 10, 70) == 16384 * 30 // 100
    assert lvm.low_water_mark(GiB, 64 << 10, 10) == 16384 * 50 // 100
    assert lvm.low_water_mark(GiB, 64 << 10, 100) == 0


def test_the_pool_table_gets_lvm_s_low_water_mark_and_lvs_of_whole_extents():
    w = plan.parse(TEXT.replace('data = "1GiB"', 'data = "1023MiB"'), "lvm.toml")
    assert w.pool.data == GiB  # 1023 MiB rounded up to 4 MiB extents
    assert w.pool.low_water_mark == 16384 * 30 // 100
    assert (
        plan.run(plan.parse(TEXT.replace('"12d"', '"1d"'), "lvm.toml"))["workload"]["pool"]["table"]
        == "0 2097152 thin-pool 7:0 7:1 128 4915 0 "  # the kernel's trailing space
    )


def test_autoextend_grows_the_pool_through_its_reload_until_the_volume_group_is_full():
    r = plan.run(plan.parse(TEXT, "lvm.toml"))
    ev = [(round(e["t"] / 86400, 3), e["kind"], e["text"]) for e in r["events"]]
    grown = [e for e in ev if "growing the data device" in e[2]]
    # 256 extents + 20% (52) = 308 = 19712 blocks; +62 = 370 = 23680; +74 = 444 = 28416
    assert [g[2].split("from ")[1] for g in grown] == [
        "16384 to 19712 blocks",
        "19712 to 23680 blocks",
        "23680 to 28416 blocks",
    ]
    auto = [e for e in ev if e[1] == "autoextend"]
    assert [a[0] for a in auto] == [2.0, 3.0, 4.0]  # each day its churn crossed 70%
    assert auto[0][2] == (
        "lvextend --use-policies: data 1073741824 -> 1291845632 bytes, metadata 16777216 -> "
        "16777216 bytes (822083584 bytes left in the volume group)"
    )
    # the 2 GiB group: 512 extents less 444 data, 4 metadata and 4 for the spare = 60; the
    # low water mark fires again on day 4 at 72% used: 20% of 444 is 89 extents
    full = [e for e in ev if e[1] == "vg_full"]
    assert full == [
        (
            4.0,
            "vg_full",
            (
                "lvextend --use-policies (data): Insufficient free space: 89 extents needed, "
                "but only 60 available"
            ),
        )
    ]
    s = r["summary"]
    assert s["autoextends"] == 3 and s["vg_full_at_s"] == 4 * 86400
    assert s["lvm_data_bytes"] == 444 * 4 * MiB and s["vg_free_bytes"] == 60 * 4 * MiB
    assert s["stopped_by"] == "out_of_data_space" and s["data_full_at_s"] == 6 * 86400
    assert [row["data_total"] for row in r["timeline"][:5]] == [16384, 16384, 19712, 23680, 28416]


def test_without_monitoring_lvm_sets_the_low_water_mark_but_nothing_extends():
    text = TEXT.replace(
        "thin_pool_autoextend_percent = 20", "thin_pool_autoextend_percent = 20\nmonitoring = false"
    )
    r = plan.run(plan.parse(text, "lvm.toml"))
    kinds = {e["kind"] for e in r["events"]}
    assert "autoextend" not in kinds and "data_low_water_mark" in kinds
    assert r["summary"]["data_full_at_s"] == 4 * 86400


def test_growing_data_alone_takes_metadata_to_lvm_s_estimate_for_the_new_size():
    """lv_resize: 64 bytes of metadata a data block; the metadata LV first, then data."""
    spec = LvmSpec(vg_size=64 * GiB, threshold=70, percent=20)
    sim = SimpleNamespace(
        w=SimpleNamespace(
            pool=SimpleNamespace(data=40 * GiB, metadata=4 * MiB, block_size=64 << 10)
        ),
        pool=SimpleNamespace(event_nr=0),
    )
    m = lvm.Lvm(sim, spec)
    reloads = []
    m._status = lambda: (int(0.75 * 655360), 655360, 100, 1024)
    m._reload = lambda: reloads.append((m.vg.data_extents, m.vg.metadata_extents))
    sim.event = lambda kind, text: None
    assert m.lvextend()
    # data 10240 extents + 20% = 12288; estimate 12288 * 4 MiB / 1024 = 48 MiB = 12 extents;
    # the metadata LV (1 extent) is grown first, then the data LV: two reloads
    assert reloads == [(10240, 12), (12288, 12)]
    assert m.vg.spare_extents == 12  # the spare follows the metadata LV


class _Failing(lvm.Lvm):
    """A monitored pool whose lvextend always fails and whose use never changes."""

    def __init__(self):
        sim = SimpleNamespace(
            w=SimpleNamespace(
                pool=SimpleNamespace(data=GiB, metadata=16 * MiB, block_size=64 << 10)
            ),
            pool=SimpleNamespace(event_nr=0),
            event=lambda kind, text: None,
        )
        super().__init__(sim, LvmSpec(vg_size=2 * GiB, threshold=70, percent=20))
        self.calls = 0

    def _status(self):
        return 900, 1000, 10, 100

    def lvextend(self):
        self.calls += 1
        return False


def test_quiet_checks_advance_dmeventd_s_retry_backoff_as_checks_one_by_one_do():
    for n in (0, 1, 2, 3, 5, 17, 100, 600, 3000):
        one = _Failing()
        one.process_event(error=False)  # 90% used: the policy runs and fails
        for _ in range(n):
            one.process_event(error=False)
        jump = _Failing()
        jump.process_event(error=False)
        jump._quiet_ticks(n)
        assert (jump.fails, jump.max_fails) == (one.fails, one.max_fails), n
        assert one.calls == 1 + sum(1 for k in _retries(3000) if k <= n)
    # retries after 2, 3, 5, 9 ... checks, then every 257 (about 43 minutes)
    gaps = [b - a for a, b in zip([0, *_retries(3000)], _retries(3000))]
    assert gaps[:6] == [2, 3, 5, 9, 17, 33] and set(gaps[8:]) == {257}


def _retries(n):
    one = _Failing()
    one.process_event(error=False)
    at = []
    for k in range(1, n + 1):
        before = one.calls
        one.process_event(error=False)
        if one.calls != before:
            at.append(k)
    return at


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('vg_size = "2GiB"', 'vg_size = "1GiB"'),
         ("lvm.toml:11: lvm.vg_size: too small for the pool: its data and metadata LVs (and "
          "the spare) take 264 extents, the volume group has 256")),
        (('vg_size = "2GiB"', 'vg_size = "2GiB"\nextent_size = "3MiB"'),
         "lvm.toml:12: lvm.extent_size: must be a power of 2 of at least 1KiB (vgcreate -s)"),
        (("thin_pool_autoextend_threshold = 70", "thin_pool_autoextend_threshold = 170"),
         "lvm.toml:12: lvm.thin_pool_autoextend_threshold: must be a percentage, at most 100 (off)"),
        (("thin_pool_autoextend_percent = 20", "thin_pool_autoextend_percent = -5"),
         "lvm.toml:13: lvm.thin_pool_autoextend_percent: must be at least 0"),
        (('vg_size = "2GiB"', 'vg_size = "2GiB"\nthreshold = 70'),
         ("lvm.toml:12: lvm.threshold: unknown field (this table takes: extent_size, "
          "monitoring, pool_metadata_spare, thin_pool_autoextend_percent, "
          "thin_pool_autoextend_threshold, vg_size)")),
        (('block_size = "64KiB"', 'block_size = "64KiB"\nlow_water_mark = 100'),
         ("lvm.toml:9: pool.low_water_mark: lvm sets it from "
          "lvm.thin_pool_autoextend_threshold: leave it out with [lvm]")),
        (('vg_size = "2GiB"\n', ""), "lvm.toml:10: lvm: missing field 'vg_size'"),
    ],
)  # fmt: skip
def test_a_bad_lvm_table_names_the_line_and_field(change, message):
    with pytest.raises(plan.PlanError) as e:
        plan.parse(TEXT.replace(*change), "lvm.toml")
    assert str(e.value) == message
