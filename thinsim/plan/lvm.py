"""LVM's thin-pool policies over a plan's pool: a volume group that can run out,
``thin_pool_autoextend_threshold`` / ``thin_pool_autoextend_percent``, and dmeventd's
monitoring, as lvm2 2.03.16 (Debian 12's) does them.

- The pool's LVs (lvcreate): the data and metadata LVs are whole extents of the volume
  group (sizes rounded up, as lvcreate rounds them), and with ``pool_metadata_spare`` a
  spare metadata LV (``[lvol0_pmspare]``) as large as the metadata LV takes its extents too.
  The table's low water mark is lvm's (lib/thin/thin.c: ``_thin_pool_add_target_line``):
  ``len / chunk_size * (100 - threshold) / 100`` blocks with the threshold raised to 50,
  0 when it is 100 or more.
- dmeventd (daemons/dmeventd/plugins/thin/dmeventd_thin.c, ``process_event``): every 10 s
  (DM_EVENT_DEFAULT_TIMEOUT) it reads the pool's status without flushing (no commit) and
  runs ``lvextend --use-policies`` when data or metadata use is above 50% and has risen
  past the next 5% step since it last looked; any event of the pool (the low water mark,
  a mode change, a resize: its event counter moved) runs it at once.  A failing command is
  retried after 1, 2, 4 ... 256 checks (``fails`` / ``max_fails``).  Percentages are
  libdm's ``dm_make_percent`` (millionths of a percent).
- ``lvextend --use-policies`` (lib/metadata/lv_manip.c: ``_lvresize_adjust_policy``,
  ``_adjust_amount``, ``lv_resize``): the metadata LV grows when its use is above the
  threshold or above ``pool_metadata_min_threshold`` (thin_manip.c: 4 MiB or 25% left),
  by the percentage or by what brings use under the threshold, whichever is more, plus
  one percent; the data LV grows the same way against the threshold.  Growing data alone
  also grows metadata to lvm's estimate for the new size (64 bytes a data block) when the
  metadata LV is smaller.  The metadata LV is extended first (up to lvm's maximum,
  15.88 GiB) and the pool reloaded, then the data LV and the pool reloaded again
  (``lv_update_and_reload``: suspend, which commits, reload with the bigger devices,
  resume, where the kernel grows its space maps).  The spare grows with the metadata LV
  where the group has room (a failure there is ignored, as lvm ignores it).  An extension
  the group has no room for fails with lvm's ``Insufficient free space: N extents
  needed, but only M available``; what was extended before it stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .workload import LvmSpec

MiB = 1 << 20

DM_PERCENT_1 = 1_000_000
DM_PERCENT_100 = 100 * DM_PERCENT_1
WARNING_THRESH = 80 * DM_PERCENT_1
CHECK_STEP = 5 * DM_PERCENT_1
CHECK_MINIMUM = 50 * DM_PERCENT_1
MAX_FAILS = 256
TIMEOUT = 10  # seconds between dmeventd's checks
# lib/config/defaults.h: 2 * DEFAULT_THIN_POOL_MAX_METADATA_SIZE_V1_KB sectors (no cropping)
MAX_METADATA_BYTES = 255 * ((1 << 14) - 64) * 4 * 1024


def dm_make_percent(numerator: int, denominator: int) -> int:
    """libdm: dm_make_percent -- millionths of a percent, never 0% or 100% unless exact."""
    if not denominator:
        return DM_PERCENT_100
    if not numerator:
        return 0
    if numerator == denominator:
        return DM_PERCENT_100
    percent = int(DM_PERCENT_100 * (numerator / denominator))
    if percent == DM_PERCENT_100:
        return DM_PERCENT_100 - 1
    if percent == 0:
        return 1
    return percent


def percent_of_extents(percents: int, count: int, roundup: bool = True) -> int:
    """lib/misc/lvm-percent.c: percent_of_extents."""
    return (percents * count + (99 if roundup else 0)) // 100


def adjust_amount(percent: int, threshold: int, amount: int) -> int:
    """lv_manip.c: _adjust_amount -- the percentage to grow by (0: nothing to do)."""
    if not (50 * DM_PERCENT_1 < percent <= DM_PERCENT_100) or percent <= threshold * DM_PERCENT_1:
        return 0
    t = threshold * (DM_PERCENT_1 // 100)
    needed = (percent + t - 1) // t - 100
    return max(amount, needed)


def low_water_mark(data_bytes: int, block_bytes: int, threshold: int) -> int:
    """lib/thin/thin.c: the pool table's low water mark, in blocks."""
    threshold = max(threshold, 50)
    if threshold >= 100:
        return 0
    return (data_bytes // 512) // (block_bytes // 512) * (100 - threshold) // 100


@dataclass
class VolumeGroup:
    """Extents of the volume group: the pool's LVs and what is free."""

    extent_size: int
    extent_count: int
    data_extents: int
    metadata_extents: int
    spare_extents: int

    @property
    def free(self) -> int:
        return self.extent_count - self.data_extents - self.metadata_extents - self.spare_extents


def pool_lv_sizes(spec: LvmSpec, data: int, metadata: int) -> tuple[int, int, int]:
    """(data, metadata, spare) LV sizes in extents, as lvcreate rounds them up."""
    ext = spec.extent_size
    d = -(-data // ext)
    m = -(-metadata // ext)
    return d, m, m if spec.pool_metadata_spare else 0


class Lvm:
    """The volume group, lvm's policy and dmeventd over a
    :class:`~thinsim.plan.engine.Simulation`'s pool."""

    def __init__(self, sim, spec: LvmSpec) -> None:
        self.sim = sim
        self.spec = spec
        w = sim.w
        d, m, s = pool_lv_sizes(spec, w.pool.data, w.pool.metadata)
        self.vg = VolumeGroup(spec.extent_size, spec.vg_size // spec.extent_size, d, m, s)
        self.threshold = spec.threshold
        self.amount = spec.percent
        # dmeventd's dso_state
        self.metadata_percent_check = CHECK_MINIMUM
        self.data_percent_check = CHECK_MINIMUM
        self.known_metadata_size = 0
        self.known_data_size = 0
        self.fails = 0
        self.max_fails = 0  # dmeventd's state starts zeroed
        self.seen_event_nr = sim.pool.event_nr
        self.last_tick = 0  # the last 10 s check simulated (its number)
        self.dirty = True  # the pool may have changed since that check
        self.extends = 0
        self.failures = 0

    # -- the volume group ---------------------------------------------------------------

    def vg_free_bytes(self) -> int:
        return self.vg.free * self.vg.extent_size

    # -- lvextend --use-policies ------------------------------------------------------------

    def _status(self) -> tuple[int, int, int, int]:
        """lv_thin_pool_status(lv, 0): a status read without flushing."""
        st = self.sim.pool_status(noflush=True)
        if "data_total" not in st:
            raise _PoolFailed
        return st["data_used"], st["data_total"], st["metadata_used"], st["metadata_total"]

    def _min_threshold(self) -> int:
        """thin_manip.c: pool_metadata_min_threshold, in millionths of a percent."""
        meta_free = dm_make_percent(
            4 * MiB // 512, self.vg.metadata_extents * self.vg.extent_size // 512
        )
        return DM_PERCENT_100 - min(25 * DM_PERCENT_1, meta_free)

    def lvextend(self) -> bool:
        """``lvextend --use-policies VG/POOL``: True when it succeeded (or had nothing to do)."""
        sim = self.sim
        threshold = max(self.threshold, 50)
        if threshold >= 100:
            return True
        if not self.amount:
            sim.event(
                "lvextend_failed",
                "Can't extend vg/pool with thin-pool autoextend percent set to 0%.",
            )
            return False
        try:
            d_used, d_total, m_used, m_total = self._status()
        except _PoolFailed:
            return False
        min_threshold = self._min_threshold() // DM_PERCENT_1
        meta_amount = adjust_amount(
            dm_make_percent(m_used, m_total), min(min_threshold, threshold), self.amount
        )
        if meta_amount:
            meta_amount += 1  # "Compensate possible extra space consumption by kernel on resize"
        amount = adjust_amount(dm_make_percent(d_used, d_total), threshold, self.amount)
        if not amount and not meta_amount:
            return True
        vg = self.vg
        new_meta = vg.metadata_extents
        if meta_amount:
            new_meta += percent_of_extents(meta_amount, vg.metadata_extents)
        new_data = vg.data_extents
        if amount:
            new_data += percent_of_extents(amount, vg.data_extents)
            if not meta_amount:
                # lv_resize: data grown alone takes metadata to lvm's estimate for it
                est = new_data * vg.extent_size // (sim.w.pool.block_size // 64)
                new_meta = max(new_meta, -(-est // vg.extent_size))
        max_meta = -(-MAX_METADATA_BYTES // vg.extent_size)
        new_meta = max(vg.metadata_extents, min(new_meta, max_meta))
        before = (vg.data_extents, vg.metadata_extents)
        if new_meta > vg.metadata_extents:
            if not self._take(new_meta - vg.metadata_extents, "metadata"):
                return False
            vg.metadata_extents = new_meta
            if self.spec.pool_metadata_spare and vg.spare_extents < new_meta:
                # handle_pool_metadata_spare: the spare follows, where there is room
                more = min(new_meta - vg.spare_extents, vg.free)
                vg.spare_extents += more
            self._reload()
        if new_data > vg.data_extents:
            if not self._take(new_data - vg.data_extents, "data"):
                return False
            vg.data_extents = new_data
            self._reload()
        if (vg.data_extents, vg.metadata_extents) != before:
            self.extends += 1
            ext = vg.extent_size
            sim.event(
                "autoextend",
                f"lvextend --use-policies: data {before[0] * ext} -> {vg.data_extents * ext} bytes, "
                f"metadata {before[1] * ext} -> {vg.metadata_extents * ext} bytes "
                f"({self.vg_free_bytes()} bytes left in the volume group)",
            )
        return True

    def _take(self, extents: int, what: str) -> bool:
        if extents > self.vg.free:
            self.failures += 1
            kind = "vg_full" if self.failures == 1 else "lvextend_failed"
            self.sim.event(
                kind,
                f"lvextend --use-policies ({what}): Insufficient free space: {extents} extents "
                f"needed, but only {self.vg.free} available",
            )
            return False
        return True

    def _reload(self) -> None:
        """lv_update_and_reload: the pool's table again, with the LVs' new sizes."""
        vg = self.vg
        sim = self.sim
        w = sim.w
        data = vg.data_extents * vg.extent_size
        meta = vg.metadata_extents * vg.extent_size
        lwm = low_water_mark(data, w.pool.block_size, self.threshold)
        sim.reload_pool(data, meta, lwm)

    # -- dmeventd ----------------------------------------------------------------------

    def _use_policy(self) -> bool:
        ok = self.lvextend()
        self.fails = 0 if ok else 1
        self.dirty = True
        return ok

    def process_event(self, error: bool) -> None:
        """dmeventd_thin.c: process_event (``error``: a device event, else a timeout)."""
        if error:
            self.data_percent = self.metadata_percent = 0
            if self._use_policy():
                return
        try:
            d_used, d_total, m_used, m_total = self._status()
        except _PoolFailed:
            return
        needs_policy = False
        if self.known_metadata_size != m_total:
            self.metadata_percent_check = CHECK_MINIMUM
            self.known_metadata_size = m_total
            self.fails = 0
        if self.known_data_size != d_total:
            self.data_percent_check = CHECK_MINIMUM
            self.known_data_size = d_total
            self.fails = 0
        for what, used, total in (("metadata", m_used, m_total), ("data", d_used, d_total)):
            percent = dm_make_percent(used, total)
            check = getattr(self, f"{what}_percent_check")
            if percent > WARNING_THRESH and percent > check:
                self.sim.event(
                    "dmeventd_warning",
                    f"WARNING: Thin pool vg-pool-tpool {what} is now "
                    f"{round(percent / DM_PERCENT_1, 2):.2f}% full.",
                )
            if percent > CHECK_MINIMUM:
                if percent > check:
                    needs_policy = True
                check = (percent // CHECK_STEP + 1) * CHECK_STEP
                if check == DM_PERCENT_100:
                    check -= 1
            else:
                check = CHECK_MINIMUM
            setattr(self, f"{what}_percent_check", check)
        if self.fails:
            f = self.fails
            self.fails += 1
            if f <= self.max_fails:
                return  # "Postponing frequently failing policy"
            if self.max_fails < MAX_FAILS:
                self.max_fails <<= 1
            self.fails = 1
            needs_policy = True
        else:
            self.max_fails = 1
        if needs_policy:
            self._use_policy()

    def _quiet_ticks(self, n: int) -> None:
        """``n`` checks of a pool that did not change: only the retries of a failing
        command count (each fails as the last did: nothing it depends on changed)."""
        while n > 0 and self.fails:
            wait = self.max_fails - self.fails + 1  # checks postponed before the retry
            if n <= wait:
                self.fails += n
                return
            n -= wait + 1
            if self.max_fails < MAX_FAILS:
                self.max_fails <<= 1
            self.fails = 1

    def poll(self) -> None:
        """dmeventd's wait for the pool's events: a moved event counter runs
        process_event at once (again while its own reloads move it)."""
        pool = self.sim.pool
        for _ in range(8):
            nr = pool.event_nr
            if nr == self.seen_event_nr:
                return
            self.seen_event_nr = nr
            self.process_event(error=True)

    def until(self, t: float) -> None:
        """The 10 s checks up to simulated time ``t`` (those before it)."""
        last = int(-(-t // TIMEOUT)) - 1  # the last check strictly before t
        if last <= self.last_tick:
            return
        sim = self.sim
        now = sim.now
        tick = self.last_tick
        while tick < last and self.dirty:
            tick += 1
            self.dirty = False
            sim.now = tick * TIMEOUT
            self.process_event(error=False)
            self.poll()
        sim.now = now
        self._quiet_ticks(last - tick)
        self.last_tick = last


class _PoolFailed(Exception):
    """The pool's status says Fail: dmeventd cannot read its figures."""
