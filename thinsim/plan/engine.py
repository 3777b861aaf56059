"""Running a workload: every operation through the model's public interface, in simulated time.

A :class:`Simulation` owns one :class:`~thinsim.backends.model.ModelPool` (store: a counting
accounting store, no payload) with its kernel log and clock.  Activities put their
occurrences on one queue ordered by simulated time (then by their order in the file); each
occurrence sends messages (``create_thin``, ``create_snap``, ``delete``,
``set_transaction_id``), activates and removes thin devices, and writes and discards through
:class:`~thinsim.backends.model.ModelThin`, as a shell on a real host would with dmsetup and
dd.  Samples read ``dmsetup status`` of the pool (which commits, as the kernel's does) and
thin_ls's figures; events are the kernel's log lines, read as they appear, with the simulated
time they appeared at.

With ``record=True`` the operations are kept (:attr:`Simulation.ops`) for
:mod:`thinsim.plan.script`, which writes them as a bash script for the real kernel.
"""

from __future__ import annotations

import errno as E
import heapq
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..backends.model import ModelPool, ModelThin
from ..errors import ThinsimError
from ..model.disk import keep_metadata_on_file
from ..model.pool import Clock, KernelLog
from ..model.store import AccountingStore
from ..model.transaction import DEFAULT_CACHE_NODES
from .docker import Docker
from .lvm import Lvm
from .report import summarize
from .workload import DAY, Activity, MessageFailed, Workload

MAX_CHUNK = 64 << 20  # the largest single write the planner issues (a fill's request)
MD_BLOCK = 4096

# a plan's node cache (transaction.BlockCache), where the machine has the memory: a day
# of churn under a snapshot shadows every leaf of the thin's tree and of the
# reference-count tree (140k nodes a day for a 1 TiB thin, and more as its snapshots add
# reference-count leaves).  Held from one transaction to the next, yesterday's copies
# are today's originals: the 1 TiB plan's days take a fifth less than with the 16k-node
# default, which reads each one back and writes each one early.  A node here takes up
# to 4.7 KiB: at most a sixteenth of the memory goes to them.
PLAN_CACHE_NODES = 1 << 18
_NODE_BYTES = 5 << 10


def plan_cache_nodes() -> int:
    """How many metadata nodes a plan's pool keeps in memory (see PLAN_CACHE_NODES)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return DEFAULT_CACHE_NODES
    return max(DEFAULT_CACHE_NODES, min(PLAN_CACHE_NODES, memory // 16 // _NODE_BYTES))


class Needs:
    """What the pool needed, measured as the run goes, for the summary's smallest sizes
    (report.py: ``smallest_sizes``).

    - ``data_allocated``: the most data blocks mapped at once (read after every write: only
      writes allocate, so this is the exact peak; the kernel's low water mark check sees it).
    - ``data_busy``: the most data blocks that were in use now *or at the last commit*, read
      just before each commit (between commits that number only grows: a block freed in a
      transaction is reused only after the commit, as sm_ll_find_common_free_block finds
      them).  An allocation fails unless the device has more blocks than this.
    - ``metadata_busy``: the same for metadata blocks (running out of them mid-transaction
      turns the pool read-only); ``metadata_used``: the most in use just after a commit,
      where the kernel compares what is free with its reserve (check_for_metadata_space).
    """

    def __init__(self, pmd) -> None:
        self.pmd = pmd
        self.data_ll = pmd.data_sm.ll
        self.data_allocated = self.data_busy = self.metadata_busy = self.metadata_used = 0
        self._after_commit()
        commit = pmd.commit

        def measured_commit() -> None:
            self._before_commit()
            commit()
            self._after_commit()

        pmd.commit = measured_commit  # the pool's every commit goes through pmd.commit

    def _before_commit(self) -> None:
        pmd = self.pmd
        ll = self.data_ll = pmd.data_sm.ll
        self.data_busy = max(self.data_busy, _busy(ll))
        self.data_allocated = max(self.data_allocated, ll.nr_allocated)
        self.metadata_busy = max(self.metadata_busy, _busy(pmd.metadata_sm.ll))

    def _after_commit(self) -> None:
        msm = self.pmd.metadata_sm
        self.metadata_used = max(self.metadata_used, msm.nr_blocks - msm.nr_free())
        self.metadata_busy = max(self.metadata_busy, self.metadata_used)
        ll = self.pmd.data_sm.ll
        self.data_busy = max(self.data_busy, ll.nr_allocated)
        self.data_allocated = max(self.data_allocated, ll.nr_allocated)


def _busy(ll) -> int:
    """Blocks in use now or at the last commit: the allocator finds only the others
    (a block allocated and freed again in one transaction is free in both views)."""
    busy = ll.nr_allocated
    maps = ll.maps
    for index, codes in ll.old.codes.items():
        # a code above 1: in use at the last commit (OldCounts); 0 in the map: free now
        was = np.frombuffer(codes, dtype=np.uint8) > 1
        m = maps[index]
        if m is not None:
            was &= np.frombuffer(m, dtype=np.uint8) == 0
        busy += int(np.count_nonzero(was))
    return busy


class CountingStore(AccountingStore):
    """No payload; counts the bytes dm-thin sends to the data device: writes that reach it,
    the zeroing of new blocks, copies that break sharing, and discards passed down."""

    def __init__(self) -> None:
        self.written = self.zeroed = self.copied = self.discarded = 0

    def __repr__(self) -> str:
        return "CountingStore()"

    def write(self, offset: int, data: bytes) -> None:
        self.written += len(data)

    def zero(self, offset: int, length: int) -> None:
        self.zeroed += length

    def copy(self, src: int, dst: int, length: int) -> None:
        self.copied += length

    def discard(self, offset: int, length: int) -> None:
        self.discarded += length

    def break_sharing_run(self, srcs, dst: int, withins, data: bytes, block_bytes: int) -> None:
        n = len(srcs)
        self.written += n * len(data)
        if len(data) == block_bytes:  # a whole block written at 0 copies nothing
            n -= list(withins[:n]).count(0)
        self.copied += n * block_bytes


@dataclass
class Volume:
    """A thin device of the plan: a named thin, clone, scheduled snapshot or Docker device."""

    name: str
    dev_id: int
    size: int
    kind: str  # thin, clone, snapshot, docker
    origin: str | None = None
    thin: ModelThin | None = None
    alive: bool = True
    cursor: int = 0  # where the next append or sequential write goes
    live: deque = field(default_factory=deque)  # (offset, length) an append wrote, oldest first
    live_bytes: int = 0
    stale: list = field(default_factory=list)  # ranges a file system freed: fstrim's work


# event kinds taken from the kernel's log lines, first match wins
_LOG_EVENTS = (
    ("reached low water mark for data device", "data_low_water_mark"),
    ("reached low water mark for metadata device", "metadata_low_water_mark"),
    ("switching pool to out-of-data-space", "out_of_data_space"),
    ("switching pool to read-only", "read_only"),
    ("switching pool to fail", "fail"),
    ("switching pool to write", "write_mode"),
    ("No free metadata blocks", "metadata_full"),
    ("metadata operation", "metadata_operation_failed"),
)
STOP_EVENTS = {"out_of_data_space", "read_only", "fail", "metadata_full", "write_failed"}


def _log_kind(line: str) -> str:
    for text, kind in _LOG_EVENTS:
        if text in line:
            return kind
    return "kernel_log"


class Simulation:
    """One run of a workload; :meth:`run` returns the result dict (see :mod:`.report`)."""

    def __init__(self, w: Workload, *, record: bool = False) -> None:
        self.w = w
        p = w.pool
        self.store = CountingStore()
        self.log = KernelLog()
        self.clock = Clock()
        self.pool = ModelPool.from_table(
            metadata_size=p.metadata,
            data_size=p.data,
            length_sectors=p.data // 512,
            block_size=str(p.block_sectors),
            low_water_mark=str(p.low_water_mark),
            features=p.features,
            store=self.store,
            log=self.log,
            clock=self.clock,
            no_space_timeout=p.no_space_timeout,
        )
        # the kernel keeps its metadata on the metadata device and a bounded cache of it in
        # memory: so does the run (a scratch file), or months of snapshots would need as much
        # memory as their metadata's size
        keep_metadata_on_file(self.pool.target.pmd, cache_nodes=plan_cache_nodes())
        self.needs = Needs(self.pool.target.pmd)
        self.bs = p.block_size
        self.record = record
        self.ops: list[tuple] = []
        self.vols: dict[str, Volume] = {}
        self.by_id: dict[int, Volume] = {}
        self.next_id = 0
        self.rng = np.random.default_rng(w.seed)
        self.now = 0.0
        self.events: list[dict] = []
        self.timeline: list[dict] = []
        self._seen = 0
        self._queue: list = []
        self._seq = 0
        self.user_written = self.user_discarded = self.bulk_written = 0
        self.failed_writes = 0
        self.queued_seconds = 0.0
        self.peak_thins = 0
        self._zeros: dict[int, bytes] = {}
        self.stopped: str | None = None
        # a wall-clock time.monotonic() after which the run stops (a benchmark's budget)
        self.deadline: float | None = None
        self.docker = Docker(self, w.docker) if w.docker is not None else None
        self.lvm = Lvm(self, w.lvm) if w.lvm is not None else None
        # dmeventd watches the pool (lvm's activation/monitoring)
        self._monitor = self.lvm if self.lvm is not None and w.lvm.monitoring else None

    # -- operations: each one is what a shell would run -----------------------------------

    def _op(self, *op) -> None:
        if self.record:
            self.ops.append((self.now, *op))

    def new_id(self) -> int:
        while self.next_id in self.by_id:
            self.next_id += 1
        dev = self.next_id
        self.next_id += 1
        return dev

    def message(self, text: str) -> None:
        """``dmsetup message POOL 0 TEXT``: MessageFailed (after its event) when the kernel
        refuses it (a read-only pool refuses them all)."""
        self._op("message", text)
        try:
            self.pool.message(text)
        except ThinsimError as e:
            self._drain_log()
            self.event("message_failed", f"{text}: {E.errorcode.get(e.errno, e.errno)}")
            raise MessageFailed(text) from None
        self._drain_log()
        self.pool.target.pmd.tm.at_rest()  # a delete shadows a tree's worth of counts

    def create_thin(self, name: str, size: int, kind: str = "thin", dev_id: int | None = None):
        dev = self.new_id() if dev_id is None else dev_id
        self.message(f"create_thin {dev}")
        return self._add(Volume(name, dev, size, kind))

    def create_snap(self, name: str, origin: str, kind: str, size: int | None = None,
                    dev_id: int | None = None) -> Volume:  # fmt: skip
        o = self.vols[origin]
        dev = self.new_id() if dev_id is None else dev_id
        active = o.thin is not None
        if active:
            # the origin's writes stop while its snapshot is taken (lvm and Docker suspend it)
            self._op("suspend", o.name)
            o.thin.suspend()
        try:
            self.message(f"create_snap {dev} {o.dev_id}")
        finally:
            if active:
                self._op("resume", o.name)
                o.thin.resume()
        v = self._add(Volume(name, dev, o.size if size is None else size, kind, origin))
        v.cursor = o.cursor
        return v

    def _add(self, v: Volume) -> Volume:
        self.vols[v.name] = v
        self.by_id[v.dev_id] = v
        self.peak_thins = max(self.peak_thins, sum(1 for x in self.vols.values() if x.alive))
        return v

    def activate(self, v: Volume) -> None:
        self._op("activate", v.name, v.dev_id, v.size)
        v.thin = self.pool.activate(v.dev_id, v.size)
        self._drain_log()

    def deactivate(self, v: Volume) -> None:
        if v.thin is not None:
            self._op("deactivate", v.name)
            v.thin.deactivate()
            v.thin = None

    def delete(self, v: Volume) -> None:
        self.deactivate(v)
        self.message(f"delete {v.dev_id}")
        v.alive = False
        del self.vols[v.name]
        del self.by_id[v.dev_id]

    def write(self, v: Volume, offset: int, length: int, io: int | None = None) -> bool:
        """A write of ``length`` zero bytes (the payload is not kept); False when it failed.
        ``io``: the size of the requests it stands for (the model provisions N whole-block
        writes in order as one request of N blocks does); the script issues those."""
        self._op("write", v.name, offset, length, io or length)
        self.clock.now = max(self.clock.now, self.now)
        before = self.clock.now
        zeros = self._zeros.get(length)
        if zeros is None:
            zeros = self._zeros[length] = bytes(length)
        written = self.store.written
        try:
            v.thin.write(offset, zeros)
        except ThinsimError as e:
            return self._write_failed(v, offset, length, before, e)
        bs = self.bs
        if length >= 2 * bs and offset % bs == 0 and length % bs == 0:
            # the model provisions runs of new whole blocks without the store: every byte
            # of a whole-block write reaches the data device once
            self.bulk_written += length - (self.store.written - written)
        return self._written(length)

    def _write_failed(
        self, v: Volume, offset: int, length: int, before: float, e: ThinsimError
    ) -> bool:
        """A write's failure counted and its event recorded (after the time it queued)."""
        self.failed_writes += 1
        self._drain_log()
        self.queued_seconds += self.clock.now - before
        self.event("write_failed", f"write of {length} bytes to {v.name} at {offset}: "
                   f"{E.errorcode.get(e.errno, e.errno)}", max(self.now, self.clock.now))  # fmt: skip
        return False

    def _written(self, length: int) -> bool:
        """A write's success counted: the bytes, the data blocks' peak, the kernel's lines."""
        self.user_written += length
        needs = self.needs
        allocated = needs.data_ll.nr_allocated
        needs.data_allocated = max(needs.data_allocated, allocated)
        if len(self.log.lines) != self._seen:
            self._drain_log()
            if self._monitor is not None:
                self._monitor.poll()  # the pool's event wakes dmeventd mid-burst
        # between two bios no one holds a metadata node: the node cache may write the
        # transaction's oldest ones to the metadata file and drop them, as dm-bufio does
        # when full (a day's churn on a 1 TiB thin shadows some 130k nodes)
        self.pool.target.pmd.tm.at_rest()
        return True

    def write_in_block(self, v: Volume, offset: int, length: int) -> bool:
        """``write`` for a write that lies inside one data block of ``v`` (a churn's small
        I/O): the same bio to the same pool call (``Pool.write_block``, what
        ``ModelThin.write`` and the thin target come to for it), the same bookkeeping,
        without the layers that check and split a request (a day's churn on a 1 TiB thin
        is 839k of them)."""
        self._op("write", v.name, offset, length, length)
        self.clock.now = max(self.clock.now, self.now)
        before = self.clock.now
        zeros = self._zeros.get(length)
        if zeros is None:
            zeros = self._zeros[length] = bytes(length)
        thin = v.thin
        target = thin.target
        pool = target.pool
        try:
            thin._check_active()
            pool.write_block(target.td, *divmod(offset, pool.block_bytes), zeros)
        except ThinsimError as e:
            return self._write_failed(v, offset, length, before, e)
        return self._written(length)

    def _write_in_blocks(self, v: Volume, offsets: np.ndarray, io: int) -> None:
        """``write_in_block(v, off, io)`` for each of ``offsets`` (ascending) in turn, as
        ``_churn``'s loop makes them (the deadline looked at after every 4096th), the pool
        given runs of them (``Pool.write_blocks``: a leaf's writes set in place without
        the walks down the tree) and each write's bookkeeping (``_written``) the same."""
        thin = v.thin
        target = thin.target
        pool = target.pool
        td = target.td
        bb = pool.block_bytes
        vblocks = (offsets // bb).tolist()
        withins = (offsets % bb).tolist()
        zeros = self._zeros.get(io)
        if zeros is None:
            zeros = self._zeros[io] = bytes(io)
        needs = self.needs
        clock = self.clock
        n = len(vblocks)
        i = 0
        while i < n:
            clock.now = max(clock.now, self.now)
            before = clock.now
            try:
                thin._check_active()
            except ThinsimError as e:
                done, err = 0, e
            else:
                # a run ends at the next write the deadline is looked at after
                end = min(n, ((i + 4095) & ~4095) + 1)
                done, peak, err = pool.write_blocks(td, vblocks, withins, zeros, i, end, True)
                if done:
                    self.user_written += io * done
                    needs.data_allocated = max(needs.data_allocated, peak)
                    if err is None:
                        # the last write's lines and rest (the pool rested after the others)
                        if len(self.log.lines) != self._seen:
                            self._drain_log()
                            if self._monitor is not None:
                                self._monitor.poll()
                        self.pool.target.pmd.tm.at_rest()
                i += done
            if err is not None:
                self._write_failed(v, int(offsets[i]), io, before, err)
                i += 1
                if self.stopped:
                    return
            if not (i - 1) & 4095 and self._check_deadline():
                return

    def discard(self, v: Volume, offset: int, length: int) -> int:
        """BLKDISCARD of a range: 0, or the errno."""
        self._op("discard", v.name, offset, length)
        self.clock.now = max(self.clock.now, self.now)
        try:
            v.thin.discard(offset, length)
        except ThinsimError as e:
            self._drain_log()
            return e.errno
        self.user_discarded += length
        self._drain_log()
        self.pool.target.pmd.tm.at_rest()
        return 0

    def write_range(self, v: Volume, offset: int, length: int, io: int) -> bool:
        """Sequential writes of ``io`` bytes from ``offset`` (whole blocks in large requests:
        the kernel provisions N whole-block writes as one request of N blocks does)."""
        end = offset + length
        pos = offset
        bs = self.bs
        while pos < end:
            n = min(end - pos, MAX_CHUNK) // io * io if io % bs == 0 and pos % bs == 0 else 0
            if n == 0:
                n = min(io, end - pos)
            if not self.write(v, pos, n, io):
                return False
            pos += n
        return True

    def write_each(self, v: Volume, offsets: list[int], io: int) -> bool:
        """``write(v, offset, io)`` for each of ``offsets`` in turn, stopping where one
        fails and the run stops (False then).  Where every write lies within one data
        block of the device (a container's random 4 KiB writes), each is
        :meth:`write_in_block`'s, once the checks ``ModelThin.write`` would make are seen
        to hold for all of them (the device active, every write inside it)."""
        bs = self.bs
        thin = v.thin
        target = getattr(thin, "target", None)
        fast = not (
            self.record
            or not offsets
            or io > bs
            or bs % io
            or target is None
            or min(offsets) < 0
            or max(offsets) + io > target.size
            or any(off % io for off in offsets)
        )
        if fast:
            try:
                thin._check_active()
            except ThinsimError:
                fast = False
        if fast:
            return self._write_each_in_block(v, offsets, io)
        write = self.write
        for off in offsets:
            if not write(v, off, io) and self.stopped:
                return False
        return True

    def _write_each_in_block(self, v: Volume, offsets: list[int], io: int) -> bool:
        """``write_in_block(v, offset, io)`` for each of ``offsets`` in turn, stopping
        where one fails and the run stops (``write_each``'s case; a container's writes,
        8,192 a container, four a day): the pool makes them in turn
        (``Pool.write_each_fast``) until one fails or logs a line, and ``_written``'s
        and ``_write_failed``'s bookkeeping follows.  The device's check and the clock's
        step (``write_in_block``'s) are made once for the writes of one such call: only
        a failed write moves the clock, only dmeventd's poll (after a line) acts."""
        zeros = self._zeros.get(io)
        if zeros is None:
            zeros = self._zeros[io] = bytes(io)
        clock = self.clock
        needs = self.needs
        k = 0
        n = len(offsets)
        while k < n:
            clock.now = max(clock.now, self.now)
            before = clock.now
            thin = v.thin
            try:
                thin._check_active()
            except ThinsimError as e:
                if not self._write_failed(v, offsets[k], io, before, e) and self.stopped:
                    return False
                k += 1
                continue
            target = thin.target
            start = k
            k, peak, e = target.pool.write_each_fast(
                target.td, offsets, k, zeros, self._seen, needs.data_allocated
            )
            # (a commit among the writes may have raised the peak too)
            needs.data_allocated = max(needs.data_allocated, peak)
            self.user_written += io * (k - start - (e is not None))
            if e is not None:
                self._write_failed(v, offsets[k - 1], io, before, e)
                if self.stopped:
                    return False
            elif len(self.log.lines) != self._seen:
                self._drain_log()
                if self._monitor is not None:
                    self._monitor.poll()  # the pool's event wakes dmeventd mid-burst
                self.pool.target.pmd.tm.at_rest()
        return True

    # -- events and samples -----------------------------------------------------------------

    def event(self, kind: str, text: str, t: float | None = None) -> None:
        self.events.append({"t": self.now if t is None else t, "kind": kind, "text": text})
        if self.w.stop == "full" and kind in STOP_EVENTS and self.stopped is None:
            self.stopped = kind

    def _drain_log(self) -> None:
        lines = self.log.lines
        t = self.now
        while self._seen < len(lines):
            line = lines[self._seen]
            self._seen += 1
            if line.endswith("(error IO) mode"):
                # queued I/O waited no_space_timeout on the kernel's clock: this line and
                # what follows it are that much later than the plan's time
                t = max(t, self.clock.now)
            self.event(_log_kind(line), line, t)

    def pool_status(self, noflush: bool = False) -> dict:
        """``dmsetup status`` of the pool, parsed (it commits, as the kernel's does, unless
        ``noflush``: dmeventd's and lvm's reads)."""
        self._op("status_noflush" if noflush else "status")
        line = self.pool.status(noflush=noflush)
        self._drain_log()
        words = line.split()
        if words[3] == "Fail":
            return {"status": line, "mode": "fail"}
        md_used, md_total = map(int, words[4].split("/"))
        d_used, d_total = map(int, words[5].split("/"))
        return {
            "status": line,
            "transaction_id": int(words[3]),
            "metadata_used": md_used,
            "metadata_total": md_total,
            "data_used": d_used,
            "data_total": d_total,
            "mode": words[7],
            "needs_check": words[10] == "needs_check",
        }

    def reload_pool(self, data: int, metadata: int, low_water_mark: int) -> bool:
        """lvextend's table reload: the pool's devices grown to ``data`` and ``metadata``
        bytes (``losetup -c`` on the bigger files), then ``dmsetup suspend``, ``reload``
        with the new length and low water mark, ``resume`` (where the kernel grows its
        space maps).  False (after its event) when the kernel refused it."""
        p = self.w.pool
        self._op("reload", data, metadata, low_water_mark)
        try:
            self.pool.reload_table(
                metadata_size=metadata,
                data_size=data,
                length_sectors=data // 512,
                block_size=str(p.block_sectors),
                low_water_mark=str(low_water_mark),
                features=p.features,
            )
        except ThinsimError as e:
            self._drain_log()
            self.event("reload_failed", f"pool reload: {E.errorcode.get(e.errno, e.errno)}")
            return False
        self._drain_log()
        return True

    def volume_counts(self, exclusive: bool) -> dict[str, dict]:
        """Per device: mapped blocks, and thin_ls's EXCLUSIVE_BLOCKS and SHARED_BLOCKS (a
        block is exclusive to a device when no other device maps it), from the metadata the
        last commit left, as thin_ls reads it."""
        return device_counts(self.pool, exclusive, self.by_id)

    def sample(self, *, final: bool = False) -> dict:
        st = self.pool_status()
        row = {"t": self.now, "day": self.now / DAY, **{k: v for k, v in st.items()}}
        row.update(self.counters())
        if self.lvm is not None:
            row["vg_free"] = self.lvm.vg_free_bytes()
        stats = self.w.volume_stats
        if stats == "sample" or (stats == "end" and final):
            row["volumes"] = self.volume_counts(exclusive=True)
        elif st["mode"] != "fail":
            row["volumes"] = self.volume_counts(exclusive=False)
        self.timeline.append(row)
        return row

    def counters(self) -> dict:
        s = self.store
        return {
            "user_written": self.user_written,
            "user_discarded": self.user_discarded,
            "data_written": s.written + self.bulk_written,
            "data_zeroed": s.zeroed,
            "data_copied": s.copied,
            "discards_passed_down": s.discarded,
            "failed_writes": self.failed_writes,
            "queued_seconds": self.queued_seconds,
            "thins": sum(1 for v in self.vols.values() if v.alive),
        }

    # -- the queue --------------------------------------------------------------------------

    def at(self, t: float, order: int, fn, *args) -> None:
        """Run ``fn(*args)`` at simulated time ``t`` (ties: lower ``order`` first)."""
        if t > self.w.horizon:
            return
        self._seq += 1
        heapq.heappush(self._queue, (t, order, self._seq, fn, args))

    def run(self) -> dict:
        w = self.w
        for i, spec in enumerate(w.volumes):
            self.at(spec.at, -1000 + i, self._make_volume, spec)
        if self.docker is not None:
            self.at(0, -2000, self.docker.start)
        for a in w.activities:
            self._schedule(a)
        k = 0
        while True:
            t = k * w.sample
            if t > w.horizon:
                break
            self.at(t, 1 << 30, self._sample_point)
            k += 1
        if w.horizon % w.sample:
            self.at(w.horizon, 1 << 30, self._sample_point)
        monitor = self._monitor
        while self._queue and self.stopped is None:
            t, _order, _seq, fn, args = heapq.heappop(self._queue)
            if monitor is not None:
                monitor.until(t)  # dmeventd's 10 s checks before it
            self.now = t
            fn(*args)
            if monitor is not None:
                monitor.dirty = True
                monitor.poll()
            self._check_deadline()
        if self.stopped is not None or not self.timeline or self.timeline[-1]["t"] != self.now:
            self.sample(final=True)  # where the run stopped
        return self.result()

    def _check_deadline(self) -> bool:
        if self.deadline is not None and self.stopped is None and time.monotonic() > self.deadline:
            self.stopped = "wall_clock_budget"
        return self.stopped is not None

    def _sample_point(self) -> None:
        self.sample(final=self.now >= self.w.horizon)

    def _make_volume(self, spec) -> None:
        try:
            if spec.origin is None:
                v = self.create_thin(spec.name, spec.size)
            elif spec.origin in self.vols:
                v = self.create_snap(spec.name, spec.origin, "clone", spec.size)
            else:
                return  # its origin was deleted
        except MessageFailed:
            return
        self.activate(v)

    def _schedule(self, a: Activity) -> None:
        kind = a.type
        once = {"fill": self._fill, "delete": self._delete}
        if kind in once:
            self.at(a.at, a.index, once[kind], a)
            return
        if kind == "snapshots":
            a.opts["_kept"] = deque()
            a.opts["_n"] = 0
        periodic = {  # the field that gives its period, and what it does each time
            "churn": ("per", self._churn),
            "snapshots": ("every", self._snapshot),
            "fstrim": ("every", self._fstrim),
            "docker_pull": ("every", lambda a: self.docker.pull(a)),
            "docker_run": ("every", lambda a: self.docker.run(a)),
        }
        if kind in periodic:
            field, fn = periodic[kind]
            self._periodic(a, a.opts[field], fn)

    def _periodic(self, a: Activity, every: float, fn) -> None:
        def tick(k: int) -> None:
            fn(a)
            t = a.start + (k + 1) * every
            if t <= a.end and t < self.w.horizon:
                self.at(t, a.index, tick, k + 1)

        if a.start <= a.end and a.start < self.w.horizon:
            self.at(a.start, a.index, tick, 0)

    def _volume(self, a: Activity) -> Volume | None:
        v = self.vols.get(a.volume)
        return v if v is not None and v.thin is not None else None

    # -- activities ---------------------------------------------------------------------

    def _fill(self, a: Activity) -> None:
        v = self._volume(a)
        if v is None:
            return
        kind, amount = a.size
        length = int(amount * v.size) if kind == "share" else amount
        length = min(length, v.size - a.offset) // 512 * 512
        if length > 0 and self.write_range(v, a.offset, length, a.io_size):
            v.cursor = max(v.cursor, a.offset + length)

    def _delete(self, a: Activity) -> None:
        v = self.vols.get(a.volume)
        if v is not None:
            try:
                self.delete(v)
            except MessageFailed:
                pass

    def _snapshot(self, a: Activity) -> None:
        v = self.vols.get(a.volume)
        if v is None or self.stopped:
            return
        a.opts["_n"] += 1
        try:
            snap = self.create_snap(f"{v.name}@{a.opts['_n']}", v.name, "snapshot")
        except MessageFailed:
            return
        kept = a.opts["_kept"]
        kept.append(snap.name)
        while a.keep and len(kept) > a.keep:
            old = self.vols.get(kept[0])
            if old is not None:
                try:
                    self.delete(old)
                except MessageFailed:
                    return
            kept.popleft()

    def _fstrim(self, a: Activity) -> None:
        v = self._volume(a)
        if v is None or not v.stale:
            return
        ranges = sorted(v.stale)
        v.stale = []
        merged: list[list[int]] = []
        for off, n in ranges:
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1][1] += n
            else:
                merged.append([off, n])
        for off, n in merged:
            err = self.discard(v, off, n)
            if err:
                why = (
                    "the discard operation is not supported"  # fstrim's words for EOPNOTSUPP
                    if err == E.EOPNOTSUPP
                    else E.errorcode.get(err, str(err))
                )
                self.event("discard_refused", f"fstrim {v.name}: {why}")
                return

    def _churn(self, a: Activity) -> None:
        v = self._volume(a)
        if v is None:
            return
        io = a.io_size
        bs = self.bs
        kind, amount = a.rate
        span = max(io, bs)  # a slot: one I/O's block (or blocks)
        nslots = v.size // span
        if nslots == 0:
            return
        per_slot = span // io  # I/Os that fit in one slot (io < block: several)
        if a.pattern in ("sequential", "append"):
            n = round(amount * (v.size // io)) if kind == "share" else amount // io
            self._churn_sequential(a, v, n)
            return
        if kind == "share":
            n = min(nslots, round(amount * nslots))
        else:
            n = amount // io
        if n <= 0:
            return
        rng = self.rng
        if a.pattern == "uniform":
            if kind == "share":
                slots = _distinct(rng, nslots, n)
            else:
                slots = rng.integers(0, nslots, n)
        elif a.pattern == "zipf":
            ranks = (rng.zipf(a.skew, n) - 1) % nslots
            slots = _scatter(ranks, nslots)
        else:  # hotset
            hot = max(1, int(a.hot_fraction * nslots))
            is_hot = rng.random(n) < a.hot_share
            ranks = np.where(is_hot, rng.integers(0, hot, n), rng.integers(0, nslots, n))
            slots = _scatter(ranks, nslots)
        within = rng.integers(0, per_slot, n) if per_slot > 1 else np.zeros(n, dtype=np.int64)
        # issued in ascending order: a mapping leaf's writes come together, the node cache
        # reads the thin's leaves in order instead of all over a tree larger than it (a
        # 1 TiB thin has 67k leaves), and the copies a day makes get consecutive data
        # blocks, so a leaf's blocks come in runs.  --script writes this order, so the
        # kernel sees it too; the metadata the writes take differs from random order's
        # only by where the reference-count btree splits (an 8 GiB thin's 8 days: 9534
        # blocks against 9543)
        offsets = np.sort(slots.astype(np.int64) * span + within * io)
        if io <= bs and not self.record:
            # an I/O no larger than a block lies inside one (span is a multiple of io)
            self._write_in_blocks(v, offsets, io)
            return
        offsets = offsets.tolist()
        write = self.write_in_block if io <= bs else self.write
        for i, off in enumerate(offsets):
            if not write(v, off, io) and self.stopped:
                return
            if not i & 4095 and self._check_deadline():
                return

    def _churn_sequential(self, a: Activity, v: Volume, n: int) -> None:
        io = a.io_size
        limit = v.size // io * io
        for _ in range(n):
            if v.cursor + io > limit:
                v.cursor = 0
            off = v.cursor
            if not self.write(v, off, io) and self.stopped:
                return
            v.cursor += io
            if a.live is not None:
                # a log-structured file system: what is older than `live` bytes is freed
                v.live.append((off, io))
                v.live_bytes += io
                while v.live_bytes > a.live:
                    o, k = v.live.popleft()
                    v.live_bytes -= k
                    v.stale.append((o, k))

    # -- the answer ---------------------------------------------------------------------

    def result(self) -> dict:
        return summarize(self)


def _unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` (sorted, each value once) by a sort: numpy 2's hashing unique
    takes 50 times as long for a day's churn of a 1 TiB thin (0.8 s for 950k values)."""
    a = np.sort(a)
    if len(a) < 2:
        return a
    return a[np.concatenate(([True], a[1:] != a[:-1]))]


def _distinct(rng: np.random.Generator, population: int, n: int) -> np.ndarray:
    """``n`` distinct values below ``population``, in random order (deterministic for the
    generator's state)."""
    if n * 4 >= population:
        return rng.permutation(population)[:n]
    picked = _unique(rng.integers(0, population, n + n // 8 + 16))
    while len(picked) < n:
        more = rng.integers(0, population, n - len(picked) + 16)
        picked = _unique(np.concatenate([picked, more]))
    return rng.permutation(picked)[:n]


def _scatter(ranks: np.ndarray, population: int) -> np.ndarray:
    """Rank r (0 the hottest) to a slot spread over the volume: r * stride mod population,
    a bijection since the stride is coprime with the population."""
    stride = 2654435761 % population or 1
    while math.gcd(stride, population) != 1:
        stride += 1
    return (ranks.astype(np.int64) * stride) % population


def device_counts(pool: ModelPool, exclusive: bool, names: dict[int, Volume] | None = None):
    """thin_ls's MAPPED_BLOCKS, EXCLUSIVE_BLOCKS and SHARED_BLOCKS per device of ``pool``
    (thin_tools/ls.py: rows), from its committed metadata; keyed by the plan's names."""
    pmd = pool.target.pmd
    details = pmd.all_details()
    out: dict[str, dict] = {}
    per_dev: dict[int, np.ndarray] = {}
    if exclusive:
        from ..model.metadata import TIME_BITS

        roots = pmd.thin_roots()
        for dev in sorted(details):
            vals = np.fromiter((v for _k, v in pmd.device_mappings(roots[dev])), dtype=np.uint64)
            per_dev[dev] = _unique(vals >> np.uint64(TIME_BITS))
        if per_dev:
            every = np.sort(np.concatenate(list(per_dev.values())))
            # the values met once (each device's are distinct): unequal to both neighbours
            edge = np.ones(len(every) + 1, dtype=bool)
            edge[1:-1] = every[1:] != every[:-1]
            singles = every[edge[:-1] & edge[1:]]
    for dev in sorted(details):
        name = names[dev].name if names and dev in names else str(dev)
        mapped = details[dev][0]
        row = {"dev": dev, "mapped": mapped}
        if exclusive:
            excl = int(np.isin(per_dev[dev], singles, assume_unique=True).sum())
            row["exclusive"] = excl
            row["shared"] = mapped - excl
        out[name] = row
    return out
