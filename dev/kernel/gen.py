"""Seeded random scenario generator: scenarios to record on the kernel and replay on the model.

    python3 dev/kernel/gen.py --seed N --kind K > file.scn

Kinds:

- ``mixed``: a small pool and a few thins; random create_thin / create_snap / delete /
  activate / remove_thin / writes (one or many blocks) / discards (partial and whole blocks) /
  reads / status / thin_status / events, with a ``status`` after most steps.
- ``snapshots``: deep snapshot chains, copy-on-write, deletes of origins and snapshots,
  multi-block writes that grow mapping trees past one leaf (252 entries), dumps.
- ``space``: tiny data devices driven out of space (error_if_no_space, or queue mode with
  ``no_space_timeout 2``), recovery by delete (and discard while space is left), low water
  marks and events, data growth by reload.
- ``features``: skip_block_zeroing / no_discard_passdown / ignore_discard combinations with
  block reuse, reads and du.
- ``metadata``: small metadata devices, many thins, metadata growth by various amounts,
  reserve / release of the metadata snapshot.
- ``edges``: one of: block sizes that are not powers of two with discards at assorted
  offsets; huge blocks (4-16 MiB, so writes split at 8 MiB inside a block); discards of more
  than 1024 blocks at once, with snapshots sharing some; thin lengths that end inside a block;
  a pool reloaded read_only with I/O, and transaction ids.
- ``refcounts``: many snapshots of one origin, each writing into many leaves of the shared
  mapping tree, so data and metadata reference counts go past 2 (the space maps' overflow
  trees); then deletes in random order.

The same seed and kind always give the same text.  The generator keeps a rough model of the
pool (mappings, reference counts, sharing by time stamp, free space) only to stay clear of the
timing-dependent outputs the README lists:

- a ``discard`` is followed by a commit (``status``, or ``flush ID`` while a metadata snapshot
  is held) before anything else, since freed blocks are reusable only after a commit and the
  kernel commits on its own every second;
- no discard while the pool may be out of data space (the periodic commit would switch it back
  to write mode and log that during whichever op is running);
- ``status`` while a metadata snapshot is held only if nothing but messages and single-block
  writes came before the reserve (the held root's block number depends on when periodic
  commits ran during larger I/O);
- ``status_noflush`` only right after a ``write`` or while the pool is suspended;
- no I/O to a suspended pool or thin, no I/O reaching past a thin's end except whole requests
  that start at or past it (those fail with ENOSPC), no reads past the end.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from thinsim.constants import SECTOR_SIZE as SECTOR

KINDS = ("mixed", "snapshots", "space", "features", "metadata", "edges", "refcounts")
FEATURES = ("skip_block_zeroing", "ignore_discard", "no_discard_passdown", "error_if_no_space")


def fmt(n: int) -> str:
    """A byte count in the scenario language, with the largest exact suffix."""
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


@dataclass
class Thin:
    mapping: dict[int, tuple[int, int]] = field(default_factory=dict)  # vblock -> (dblock, time)
    snap_time: int = 0


class Gen:
    """Builds one scenario; tracks enough pool state to keep the scenario deterministic."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.number = 0  # the seed, for generators that take turns by it
        self.lines: list[str] = []
        self.pool_up = False
        self.thins: dict[int, Thin] = {}  # ids in the metadata
        self.active: dict[int, int] = {}  # active thin id -> length in sectors
        self.refs: list[int] = []
        self.cursor = 0
        self.time = 0
        self.oos = False  # the pool may be out of data space
        self.read_only = False  # needs_check / read-only / fail: stop generating I/O
        self.held = False
        self.held_clean = False
        self.clean = True  # only messages and single-block writes so far
        self.next_seed = 2
        self.next_id = 0
        self.features: list[str] = []

    # -- output ---------------------------------------------------------------------------

    def op(self, line: str) -> None:
        self.lines.append(line)

    def comment(self, text: str) -> None:
        self.lines.append(f"# {text}")

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def seed(self) -> int:
        self.next_seed += 1
        return self.next_seed

    # -- pool -----------------------------------------------------------------------------

    def pool(self, md: int, nblocks: int, bs: int, lwm: int, features: list[str]) -> None:
        self.bs = bs
        self.bbytes = bs * SECTOR
        self.nblocks = nblocks
        self.md = md
        self.lwm = lwm
        self.features = list(features)
        feat = f" features={','.join(features)}" if features else ""
        self.op(f"pool md={fmt(md)} data={fmt(nblocks * self.bbytes)} bs={bs} lwm={lwm}{feat}")
        self.pool_up = True
        self.refs = [0] * nblocks
        self.cursor = 0
        self.thins = {}
        self.active = {}
        self.time = 0
        self.oos = False
        self.held = False
        self.clean = True

    @property
    def error_mode(self) -> bool:
        return "error_if_no_space" in self.features

    @property
    def discards(self) -> bool:
        return "ignore_discard" not in self.features

    def free(self) -> int:
        return self.refs.count(0)

    def used(self) -> int:
        return self.nblocks - self.free()

    def status(self) -> None:
        """A commit that prints the status line (or a flush where the status would race)."""
        if self.held and not self.held_clean:
            if self.active:
                self.op(f"flush {self.rng.choice(sorted(self.active))}")
            else:
                self.op("events")  # nothing can need a commit without an active thin
        else:
            self.op("status")

    def maybe_status(self, p: float = 0.75) -> None:
        if self.rng.random() < p:
            self.status()

    def reload_data(self, nblocks: int, extra: str = "") -> None:
        self.op(f"reload data={fmt(nblocks * self.bbytes)}{extra}")
        if nblocks > self.nblocks:
            self.refs += [0] * (nblocks - self.nblocks)
            self.nblocks = nblocks
            self.oos = False

    # -- allocation (sm_disk: first free block at or after the cursor, wrapping) ----------

    def alloc(self) -> int | None:
        for b in list(range(self.cursor, self.nblocks)) + list(range(self.cursor)):
            if self.refs[b] == 0:
                self.refs[b] = 1
                self.cursor = b + 1
                return b
        return None

    def dec(self, b: int) -> None:
        self.refs[b] -= 1

    # -- messages -------------------------------------------------------------------------

    def new_id(self) -> int:
        # Mostly small consecutive ids, sometimes a sparse one.
        if self.rng.random() < 0.1:
            i = self.rng.choice(
                [self.rng.randrange(100, 5000), 16777215, self.rng.randrange(10, 64)]
            )
            if i not in self.thins:
                return i
        while self.next_id in self.thins:
            self.next_id += 1
        return self.next_id

    def create_thin(self, i: int | None = None) -> int:
        i = self.new_id() if i is None else i
        self.op(f"msg create_thin {i}")
        if i not in self.thins and not self.read_only:
            self.thins[i] = Thin()
        return i

    def create_snap(self, origin: int, i: int | None = None, suspend: bool | None = None) -> int:
        i = self.new_id() if i is None else i
        if suspend is None:
            suspend = origin in self.active and self.rng.random() < 0.4
        if suspend:
            self.op(f"suspend_thin {origin}")
        self.op(f"msg create_snap {i} {origin}")
        if suspend:
            self.op(f"resume_thin {origin}")
        if i not in self.thins and origin in self.thins and not self.read_only:
            self.time += 1
            o = self.thins[origin]
            snap = Thin(dict(o.mapping), self.time)
            o.snap_time = self.time
            for db, _ in o.mapping.values():
                self.refs[db] += 1
            self.thins[i] = snap
        return i

    def delete(self, i: int) -> None:
        self.op(f"msg delete {i}")
        if i in self.thins and i not in self.active and not self.read_only:
            for db, _ in self.thins.pop(i).mapping.values():
                self.dec(db)
            if self.free():
                self.oos = False

    def reserve(self) -> None:
        self.op("msg reserve_metadata_snap")
        if not self.held:
            self.held = True
            self.held_clean = self.clean

    def release(self) -> None:
        self.op("msg release_metadata_snap")
        self.held = False

    def dump(self) -> None:
        self.op("dump")
        # A dump is a reserve and a release: messages, clean.

    # -- thin devices ---------------------------------------------------------------------

    def activate(self, i: int, length: int | None = None) -> None:
        if length is None:
            nb = self.rng.choice([16, 32, 64, 128, 256, 1024])
            nb = min(nb, (64 << 20) // self.bbytes)  # whole-thin reads stay small
            length = nb * self.bs
            if self.rng.random() < 0.15:
                length += self.rng.choice([-8, 8, self.bs // 2, -self.bs // 2])
        self.op(f"thin {i} {length}")
        if i in self.thins and i not in self.active:
            self.active[i] = length

    def remove(self, i: int) -> None:
        self.op(f"remove_thin {i}")
        self.active.pop(i, None)

    # -- I/O ------------------------------------------------------------------------------

    def pieces(self, off: int, length: int):
        pos, end = off, off + length
        while pos < end:
            nxt = min(end, (pos // self.bbytes + 1) * self.bbytes)
            yield pos, nxt - pos
            pos = nxt

    def write(self, i: int, off: int, length: int, sync: bool = True) -> None:
        seed = self.seed()
        self.op(f"{'write' if sync else 'write_nosync'} {i} {fmt(off)} {fmt(length)} {seed}")
        if not sync or off // self.bbytes != (off + length - 1) // self.bbytes:
            self.clean = False
        if i not in self.active or i not in self.thins:
            return
        end_bytes = self.active[i] * SECTOR
        t = self.thins[i]
        for pos, n in self.pieces(off, length):
            if pos + n > end_bytes:
                break
            vb = pos // self.bbytes
            cur = t.mapping.get(vb)
            if cur is not None and cur[1] >= t.snap_time and self.refs[cur[0]] == 1:
                continue  # unshared: written in place
            if cur is not None and cur[1] >= t.snap_time:
                # shared by reference count only (cannot happen: snapshots bump the time)
                pass
            new = self.alloc()
            if new is None:
                self.oos = True
                break
            if cur is not None:
                self.dec(cur[0])
            t.mapping[vb] = (new, self.time)
            # The kernel checks the low water mark and runs out before the cursor wraps onto
            # blocks freed in this transaction; close enough for staying clear of races.

    def read(self, i: int, off: int, length: int) -> None:
        self.op(f"read {i} {fmt(off)} {fmt(length)}")

    def discard(self, i: int, off: int, length: int, commit: bool = True) -> None:
        """A discard, then a commit so that freed blocks become reusable deterministically."""
        assert not self.oos
        self.op(f"discard {i} {fmt(off)} {fmt(length)}")
        self.clean = False
        if self.discards and i in self.active and i in self.thins:
            t = self.thins[i]
            first = -(-off // self.bbytes)
            last = (off + length) // self.bbytes
            for vb in range(first, last):
                cur = t.mapping.pop(vb, None)
                if cur is not None:
                    self.dec(cur[0])
        if commit:
            if self.rng.random() < 0.3 and i in self.active:
                self.op(f"flush {i}")
            else:
                self.status()

    # -- random choices -------------------------------------------------------------------

    def rand_range(self, i: int, max_blocks: int = 8, partial: float = 0.3) -> tuple[int, int]:
        """A random I/O range inside thin ``i``: whole blocks, or sector-aligned pieces."""
        size = self.active[i] * SECTOR
        nb = max(1, size // self.bbytes)
        start = self.rng.randrange(nb)
        count = self.rng.randint(1, max(1, min(max_blocks, nb - start)))
        off, length = start * self.bbytes, count * self.bbytes
        if self.rng.random() < partial:
            unit = 4096 if self.rng.random() < 0.8 else SECTOR
            per = self.bbytes // unit
            off += self.rng.randrange(per) * unit
            length = self.rng.randint(1, per * count) * unit
        off = min(off, size - SECTOR)
        length = max(SECTOR, min(length, size - off))
        return off, length

    def live(self) -> list[int]:
        return sorted(self.active)

    def pick_live(self) -> int | None:
        live = self.live()
        return self.rng.choice(live) if live else None

    def resume_rearms_timer(self, error_if_no_space: bool | None = None) -> bool:
        """Whether resuming the pool now (with that policy) would start the no-space timer.

        A resume of a pool that is out of data space under a queue-mode table re-arms the
        no_space_timeout; when it fires it logs the switch to error mode during whatever op is
        running then."""
        if error_if_no_space is None:
            error_if_no_space = self.error_mode
        return self.oos and not error_if_no_space

    def can_discard(self) -> bool:
        # Keep a block of margin: the rough model may miss an allocation.
        return not self.oos and self.free() > 1 and not self.read_only


# -- kinds ----------------------------------------------------------------------------------


def pick_bs(rng: random.Random, weights=(5, 2, 2, 1)) -> int:
    return rng.choices([128, 256, 384, 1024], weights)[0]


def gen_mixed(g: Gen) -> None:
    rng = g.rng
    bs = pick_bs(rng)
    nblocks = rng.choice([32, 48, 64, 128, 256])
    features = [f for f in FEATURES[:3] if rng.random() < 0.15]
    if rng.random() < 0.4:
        features.append("error_if_no_space")
    else:
        g.op("no_space_timeout 2")
    rng.shuffle(features)
    g.pool(rng.choice([4 << 20, 8 << 20, 1 << 20]), nblocks, bs, rng.choice([0, 0, 2, 8]), features)
    g.status()
    for _ in range(rng.randint(1, 3)):
        i = g.create_thin()
        g.activate(i)
    g.status()
    steps = rng.randint(35, 70)
    for _ in range(steps):
        action = rng.choices(
            [
                "write",
                "write_many",
                "discard",
                "read",
                "create_thin",
                "create_snap",
                "delete",
                "activate",
                "remove",
                "thin_status",
                "events",
                "dump",
                "write_nosync",
                "metadata_snap",
                "suspend",
                "write_past_end",
            ],
            [12, 5, 6, 4, 2, 3, 2, 2, 2, 3, 2, 1, 1, 1, 1, 0.5],
        )[0]
        i = g.pick_live()
        if (
            action
            in ("write", "write_many", "write_nosync", "read", "thin_status", "write_past_end")
            and i is None
        ):
            action = "create_thin"
        if action == "write":
            g.write(i, *g.rand_range(i, 1, 0.5))
        elif action == "write_many":
            g.write(i, *g.rand_range(i, 40, 0.3))
            if rng.random() < 0.3 and (not g.held or g.held_clean):
                g.op("status_noflush")  # right after the write's fsync: nothing pending
        elif action == "write_nosync":
            g.write(i, *g.rand_range(i, 4, 0.5), sync=False)
            g.op(f"flush {i}")
        elif action == "write_past_end":
            # A request starting at the end fails (ENOSPC from the block layer).
            end = g.active[i] * SECTOR
            g.op(
                f"write {i} {fmt(end - end % 4096)} 4k {g.seed()}"
                if end % 4096 == 0
                else f"write {i} {fmt(end)} 512 {g.seed()}"
            )
            continue
        elif action == "discard":
            if i is None or not g.can_discard():
                continue
            g.discard(i, *g.rand_range(i, 12, 0.5))
            if rng.random() < 0.3:
                g.op(f"thin_status {i}")
            if rng.random() < 0.2:
                g.op("du")
            continue
        elif action == "read":
            g.read(i, *g.rand_range(i, 16, 0.3))
            continue
        elif action == "create_thin":
            j = g.create_thin()
            if rng.random() < 0.7:
                g.activate(j)
        elif action == "create_snap":
            if not g.thins:
                continue
            origin = rng.choice(sorted(g.thins))
            if rng.random() < 0.05:
                origin = 4242  # no such device
            j = g.create_snap(origin)
            if rng.random() < 0.6 and j in g.thins:
                g.activate(j, g.active.get(origin))
        elif action == "delete":
            if not g.thins:
                continue
            j = rng.choice(sorted(g.thins))
            if j in g.active and rng.random() < 0.7:
                g.remove(j)
            g.delete(j)
        elif action == "activate":
            cands = [j for j in g.thins if j not in g.active]
            if cands:
                g.activate(rng.choice(sorted(cands)))
            elif rng.random() < 0.3:
                g.activate(4243)  # no such device
            continue
        elif action == "remove":
            if i is None:
                continue
            g.remove(i)
        elif action == "thin_status":
            g.op(f"thin_status {i}")
            continue
        elif action == "events":
            g.op("events")
            continue
        elif action == "dump":
            g.dump()
            continue
        elif action == "metadata_snap":
            if g.held:
                g.release()
            else:
                g.reserve()
        elif action == "suspend":
            if g.resume_rearms_timer():
                continue
            g.op("suspend")
            shows_root = not g.held or g.held_clean
            g.op(rng.choice(["status", "status_noflush"] if shows_root else ["events", "table"]))
            g.op("resume")
        g.maybe_status()
    if g.held:
        g.release()
    g.status()
    for i in g.live():
        g.op(f"thin_status {i}")
        g.read(i, 0, g.active[i] * SECTOR // SECTOR * SECTOR)
    g.dump()
    g.op("du")


def gen_snapshots(g: Gen) -> None:
    rng = g.rng
    bs = pick_bs(rng, (6, 3, 1, 0))
    bbytes = bs * SECTOR
    # Big enough for several hundred mapped blocks per thin in several thins.
    nblocks = max(2048, (768 << 20) // bbytes)
    g.pool(
        rng.choice([4 << 20, 8 << 20]),
        nblocks,
        bs,
        0,
        [] if rng.random() < 0.8 else ["skip_block_zeroing"],
    )
    origin = g.create_thin(0)
    leaf = 252
    vblocks = rng.choice([400, 600, 800])
    g.activate(origin, vblocks * bs)
    # Grow the origin's tree past one leaf in one op (sometimes two).
    n = rng.randint(leaf + 1, min(vblocks, leaf * 2 + 10))
    if rng.random() < 0.5:
        g.write(origin, 0, n * bbytes)
    else:
        half = n // 2
        g.write(origin, half * bbytes, (n - half) * bbytes)
        g.write(origin, 0, half * bbytes)
    g.status()
    g.op(f"thin_status {origin}")
    chain = [origin]
    depth = rng.randint(3, 6)
    for _ in range(depth):
        parent = chain[-1] if rng.random() < 0.7 else rng.choice(chain)
        if parent not in g.thins:
            parent = rng.choice(sorted(g.thins))
        snap = g.create_snap(parent)
        chain.append(snap)
        g.status()
        if snap in g.thins and snap not in g.active and (rng.random() < 0.8 or not g.live()):
            g.activate(snap, vblocks * bs)
        if not g.live():
            break
        # CoW writes on both sides: partial, whole blocks, runs crossing leaves.
        for _ in range(rng.randint(2, 5)):
            t = rng.choice([x for x in (parent, snap) if x in g.active] or g.live())
            kind = rng.random()
            if kind < 0.35:
                g.write(t, *g.rand_range(t, 1, 1.0))
            elif kind < 0.65:
                g.write(t, *g.rand_range(t, 6, 0.0))
            else:
                start = rng.randrange(0, max(1, vblocks - 300))
                cnt = rng.randint(20, min(300, vblocks - start))
                g.write(t, start * bbytes, cnt * bbytes)
            g.maybe_status(0.6)
        if rng.random() < 0.5:
            t = rng.choice(g.live())
            g.op(f"thin_status {t}")
            g.read(t, *g.rand_range(t, 64, 0.0))
        if rng.random() < 0.3:
            g.dump()
        if rng.random() < 0.3:
            # Delete something in the chain (origin or snapshot).
            victim = rng.choice(sorted(g.thins))
            if victim in g.active:
                g.remove(victim)
            g.delete(victim)
            g.status()
            if victim in chain:
                chain.remove(victim)
            if not chain:
                chain = [rng.choice(sorted(g.thins))] if g.thins else []
            if not chain:
                break
        if rng.random() < 0.25 and g.can_discard() and g.live():
            t = rng.choice(g.live())
            g.discard(t, *g.rand_range(t, 40, 0.3))
    # Overwrite after deletes: blocks that still look shared by time get copied.
    for t in g.live()[:3]:
        g.write(t, *g.rand_range(t, 40, 0.2))
        g.status()
        g.op(f"thin_status {t}")
        g.read(t, 0, min(g.active[t] * SECTOR, 64 << 20))
    g.dump()
    # Tear down in a random order.
    order = sorted(g.thins)
    rng.shuffle(order)
    for t in order[: rng.randint(1, len(order))]:
        if t in g.active:
            g.remove(t)
        g.delete(t)
        g.status()
    g.dump()
    g.op("du")


def gen_space(g: Gen) -> None:
    rng = g.rng
    bs = pick_bs(rng, (4, 2, 2, 1))
    nblocks = rng.randint(6, 24)
    error = rng.random() < 0.5
    features = ["error_if_no_space"] if error else []
    if rng.random() < 0.2:
        features.append(rng.choice(["skip_block_zeroing", "no_discard_passdown"]))
    if not error:
        g.op("no_space_timeout 2")
    lwm = rng.choice([0, 1, 2, 3, nblocks // 2])
    g.pool(4 << 20, nblocks, bs, lwm, features)
    g.status()
    g.op("events")
    ids = [g.create_thin() for _ in range(rng.randint(1, 3))]
    for i in ids:
        g.activate(i, rng.choice([nblocks // 2, nblocks, nblocks * 2]) * bs)
    oos_budget = 2 if not error else 6  # queue-mode exhaustion costs 2 s each
    for _round in range(rng.randint(4, 8)):
        # Fill.
        for _ in range(rng.randint(1, 3)):
            i = g.pick_live()
            if i is None:
                i = g.create_thin()
                g.activate(i, nblocks * bs)
            if g.oos and oos_budget <= 0:
                break
            was = g.oos
            if rng.random() < 0.3 and g.thins and len(g.thins) < 6:
                src = rng.choice(sorted(g.thins))
                j = g.create_snap(src)
                g.activate(j, g.active.get(src, nblocks * bs))
                if j in g.active:
                    i = j
            g.write(i, *g.rand_range(i, nblocks, 0.3))
            if g.oos and not was:
                oos_budget -= 1
            g.status()
            g.op("events")
        if rng.random() < 0.3:
            i = g.pick_live()
            if i is not None:
                g.op(f"thin_status {i}")
                g.read(i, *g.rand_range(i, nblocks, 0.0))
        # Recover.
        how = rng.choice(["delete", "discard", "reload", "resume", "features"])
        if how in ("resume", "features") and g.resume_rearms_timer():
            how = "reload"  # grows the data device: back to write mode
        if how == "discard" and g.can_discard() and g.live():
            i = g.pick_live()
            g.discard(i, *g.rand_range(i, nblocks, 0.3))
            g.op("events")
        elif how == "delete" and g.thins:
            j = rng.choice(sorted(g.thins))
            if j in g.active:
                g.remove(j)
            g.delete(j)
            g.status()
            g.op("events")
        elif how == "reload":
            if g.nblocks < 64 or g.resume_rearms_timer():
                g.reload_data(g.nblocks + rng.randint(1, 8))
            else:
                g.op("reload")
            g.status()
            g.op("events")
        elif how == "resume":
            # Re-arm the low water mark.
            g.op("suspend")
            g.op("status")
            g.op("resume")
            g.op("events")
        elif how == "features":
            # Switch the no-space policy (and sometimes the low water mark) with a reload.
            new = [f for f in g.features if f != "error_if_no_space"]
            if "error_if_no_space" not in g.features:
                new.append("error_if_no_space")
            if g.resume_rearms_timer("error_if_no_space" in new):
                continue
            lwm = rng.choice([g.lwm, 0, 1, 4])
            g.op(f"reload lwm={lwm} features={','.join(new)}")
            g.features, g.lwm = new, lwm
            if "error_if_no_space" not in new:
                g.op("no_space_timeout 2")
            g.status()
            g.op("events")
    for i in g.live():
        g.op(f"thin_status {i}")
        g.read(i, 0, g.active[i] * SECTOR)
    g.dump()
    g.op("du")


def gen_features(g: Gen) -> None:
    rng = g.rng
    bs = pick_bs(rng)
    nblocks = rng.choice([8, 12, 16, 24, 32])
    combos = [
        ["skip_block_zeroing"],
        ["no_discard_passdown"],
        ["ignore_discard"],
        ["skip_block_zeroing", "no_discard_passdown"],
        ["skip_block_zeroing", "ignore_discard"],
        ["ignore_discard", "no_discard_passdown"],
        ["skip_block_zeroing", "ignore_discard", "no_discard_passdown"],
        [],
    ]
    features = list(rng.choice(combos))
    rng.shuffle(features)
    features.append("error_if_no_space")  # never queue: an unexpected exhaustion fails fast
    g.pool(4 << 20, nblocks, bs, 0, features)
    g.status()
    a = g.create_thin()
    g.activate(a, nblocks * bs)
    g.write(a, 0, nblocks * g.bbytes // 2)
    g.status()
    g.op("du")
    for _ in range(rng.randint(6, 12)):
        action = rng.choice(["reuse_delete", "reuse_discard", "partial", "snapshot", "reload"])
        i = g.pick_live()
        if i is None:
            i = g.create_thin()
            g.activate(i, nblocks * bs)
        if action == "reuse_delete":
            # Fill what is left, delete, write partial blocks into reused blocks.
            free = g.free()
            if free:
                j = g.create_thin()
                g.activate(j, nblocks * bs)
                g.write(j, 0, free * g.bbytes)
                g.status()
                g.remove(j)
                g.delete(j)
                g.status()
                g.op("du")
            k = g.create_thin()
            g.activate(k, nblocks * bs)
            off, length = g.rand_range(k, 3, 1.0)
            g.write(k, off, length)
            g.status()
            g.read(
                k,
                off - off % g.bbytes,
                g.bbytes * (-(-(off + length) // g.bbytes) - off // g.bbytes),
            )
            g.op("du")
        elif action == "reuse_discard":
            if not g.can_discard():
                continue
            off, length = g.rand_range(i, nblocks, 0.5)
            g.discard(i, off, length, commit=False)
            g.op("du")
            g.op(f"thin_status {i}")
            g.status()
            g.read(i, *g.rand_range(i, nblocks, 0.0))
            if g.free():
                g.write(i, *g.rand_range(i, 2, 1.0))
                g.status()
                g.read(i, 0, g.active[i] * SECTOR)
                g.op("du")
        elif action == "partial":
            g.write(i, *g.rand_range(i, 3, 1.0))
            g.status()
            g.read(i, *g.rand_range(i, 4, 0.0))
            g.op("du")
        elif action == "snapshot":
            j = g.create_snap(i)
            g.activate(j, g.active[i])
            g.write(j, *g.rand_range(j, 2, 1.0))
            g.status()
            g.read(j, 0, g.active[j] * SECTOR)
            if g.can_discard() and rng.random() < 0.5:
                g.discard(i, *g.rand_range(i, nblocks, 0.2))
                g.op("du")
        elif action == "reload":
            # Toggle zeroing (allowed on reload; discard features must stay).
            new = [f for f in g.features if f != "skip_block_zeroing"]
            if "skip_block_zeroing" not in g.features:
                new.append("skip_block_zeroing")
            rng.shuffle(new)
            g.op(f"reload features={','.join(new)}")
            g.features = new
            g.status()
            g.op("table")
    for i in g.live():
        g.op(f"thin_status {i}")
        g.read(i, 0, g.active[i] * SECTOR)
    g.status()
    g.dump()
    g.op("du")


def gen_metadata(g: Gen) -> None:
    rng = g.rng
    bs = pick_bs(rng)
    md_kib = rng.choice([128, 192, 256, 384, 512, 1024, 2048, 65280])
    nblocks = rng.choice([1024, 4096, 16384])
    features = ["error_if_no_space"] if rng.random() < 0.7 else []
    if not features:
        g.op("no_space_timeout 2")
    g.pool(md_kib << 10, nblocks, bs, 0, features)
    g.status()
    g.op("events")
    md_blocks = md_kib // 4
    ro = False
    for _round in range(rng.randint(4, 8)):
        action = rng.choice(["thins", "snaps", "io", "msnap", "grow", "delete"])
        if ro and action in ("thins", "snaps", "io", "delete"):
            action = "grow"
        if action == "thins":
            for _ in range(rng.randint(3, 25)):
                g.create_thin()
                g.maybe_status(0.3)
            g.status()
            g.op("events")
        elif action == "snaps":
            if not g.thins:
                g.create_thin()
            for _ in range(rng.randint(2, 10)):
                g.create_snap(rng.choice(sorted(g.thins)), suspend=False)
                g.maybe_status(0.4)
            g.status()
            g.op("events")
        elif action == "io":
            cands = sorted(g.thins)
            if not cands:
                continue
            i = rng.choice(cands)
            if i not in g.active:
                g.activate(i, 4096 * bs)
            for _ in range(rng.randint(1, 6)):
                if rng.random() < 0.7:
                    g.write(i, rng.randrange(4096) * g.bbytes, 4096)  # single block
                else:
                    g.write(i, *g.rand_range(i, 64, 0.0))
                g.maybe_status(0.5)
            g.op(f"thin_status {i}")
            g.status()
        elif action == "msnap":
            g.reserve()
            g.status()
            if rng.random() < 0.5:
                g.create_thin()
                g.status()
            if rng.random() < 0.5:
                g.dump()  # fails: a snapshot is held
            if rng.random() < 0.3:
                g.reserve()  # fails too
            if rng.random() < 0.3:
                g.op("suspend")
                g.op("status" if g.held_clean else "table")  # no flush while suspended
                g.op("resume")
            g.release()
            g.status()
            if rng.random() < 0.3:
                g.release()  # nothing held
        elif action == "grow":
            step = rng.choice([1, 2, 3, 4, 16, 64, 256, md_blocks, 16320 - md_blocks % 16320 + 1])
            step = max(1, step)
            md_blocks += step
            g.op(f"reload md={fmt(md_blocks * 4096)}")
            g.status()
            g.op("events")
            if md_blocks % 16320 in (1, 2):
                ro = True  # a failed bitmap extension: read-only with needs_check
        elif action == "delete":
            for _ in range(rng.randint(1, 6)):
                if not g.thins:
                    break
                j = rng.choice(sorted(g.thins))
                if j in g.active:
                    g.remove(j)
                g.delete(j)
            g.status()
    if not ro:
        g.dump()
    g.status()


def _discard_spot(g: Gen, i: int) -> tuple[int, int]:
    """A discard range inside thin ``i`` starting on a block boundary, a 64 KiB boundary, a
    sector, or the device start, and ending on a block boundary, at the device end, or
    anywhere."""
    rng = g.rng
    size = g.active[i] * SECTOR
    nb = max(1, size // g.bbytes)
    start = rng.choice(["block", "64k", "sector", "zero"])
    if start == "block":
        off = rng.randrange(nb) * g.bbytes
    elif start == "64k":
        off = rng.randrange(max(1, size // 65536)) * 65536
    elif start == "sector":
        off = rng.randrange(size // SECTOR) * SECTOR
    else:
        off = 0
    off = min(off, size - SECTOR)
    end = rng.choice(["block", "device", "any"])
    if end == "block":
        last = min(nb, off // g.bbytes + rng.randint(1, 6))
        stop = max(off + SECTOR, last * g.bbytes)
    elif end == "device":
        stop = size
    else:
        stop = off + rng.randint(1, 6 * g.bbytes // SECTOR) * SECTOR
    return off, min(stop, size) - off


def _edges_odd_blocks(g: Gen) -> None:
    rng = g.rng
    bs = rng.choice([384, 640, 896, 1152, 1408, 1920, 2432, 3200])
    nblocks = rng.randint(24, 64)
    features = rng.choice([[], [], ["no_discard_passdown"], ["skip_block_zeroing"]])
    g.pool(4 << 20, nblocks, bs, 0, features + ["error_if_no_space"])
    ids = [g.create_thin() for _ in range(rng.randint(1, 2))]
    for i in ids:
        length = rng.randint(6, 16) * bs + rng.choice([0, 0, 8, bs // 2, bs - 8])
        g.activate(i, length)
    for _ in range(rng.randint(8, 16)):
        i = g.pick_live()
        size = g.active[i] * SECTOR
        if rng.random() < 0.5:
            g.write(i, 0, size)  # everything, so a discard has something to unmap
        else:
            g.write(i, *g.rand_range(i, 4, 0.5))
        g.status()
        if g.can_discard():
            g.discard(i, *_discard_spot(g, i), commit=False)
            g.op(f"thin_status {i}")
            g.op("du")
            g.status()
        if rng.random() < 0.3:
            j = g.create_snap(i)
            if j in g.thins and rng.random() < 0.5:
                g.activate(j, g.active[i])
        if rng.random() < 0.3:
            g.read(i, 0, size)
    for i in g.live():
        g.op(f"thin_status {i}")
        g.read(i, 0, g.active[i] * SECTOR)
    g.dump()
    g.op("du")


def _edges_huge_blocks(g: Gen) -> None:
    rng = g.rng
    bs = rng.choice([8192, 16384, 32768])
    nblocks = rng.randint(8, 16)
    features = rng.choice([[], ["skip_block_zeroing"], ["no_discard_passdown"]])
    g.pool(4 << 20, nblocks, bs, rng.choice([0, 2]), features + ["error_if_no_space"])
    i = g.create_thin()
    g.activate(i, rng.randint(4, 8) * bs)
    for _ in range(rng.randint(5, 9)):
        what = rng.random()
        b = rng.randrange(g.active[i] // bs)
        if what < 0.3:
            g.write(i, b * g.bbytes + rng.randrange(0, g.bbytes // 4096) * 4096, 4096)
        elif what < 0.6:
            # More than 8 MiB inside one block: two requests, the first one partial.
            off = b * g.bbytes + rng.choice([0, 4096, 1 << 20])
            length = min(g.bbytes - (off - b * g.bbytes), rng.choice([9 << 20, 12 << 20, g.bbytes]))
            g.write(i, off, length)
        else:
            g.write(i, b * g.bbytes, min(2, g.active[i] // bs - b) * g.bbytes)
        g.status()
        g.read(i, b * g.bbytes, g.bbytes)
        g.op("du")
        if rng.random() < 0.4 and g.can_discard():
            g.discard(i, *_discard_spot(g, i))
            g.op(f"thin_status {i}")
            g.op("du")
        if rng.random() < 0.2:
            j = g.create_snap(i)
            g.activate(j, g.active[i])
            g.write(j, b * g.bbytes + 8192, 8192)
            g.status()
            g.read(j, b * g.bbytes, g.bbytes)
    g.op(f"thin_status {i}")
    g.dump()
    g.op("du")


def _edges_big_discards(g: Gen) -> None:
    rng = g.rng
    bs = 128
    nblocks = 4096
    features = rng.choice([[], ["no_discard_passdown"]])
    g.pool(8 << 20, nblocks, bs, 0, features)
    a = g.create_thin()
    n = rng.randint(1030, 1600)
    g.activate(a, 2048 * bs)
    # Mapped in two runs so that data blocks are not one contiguous range.
    cut = rng.randint(100, n - 100)
    g.write(a, cut * g.bbytes, (n - cut) * g.bbytes)
    g.write(a, 0, cut * g.bbytes)
    g.status()
    g.op("du")
    if rng.random() < 0.6:
        s = g.create_snap(a)
        g.activate(s, 2048 * bs)
        g.write(a, *g.rand_range(a, 200, 0.0))
        g.status()
    for _ in range(rng.randint(2, 4)):
        t = g.pick_live()
        first = rng.randrange(0, 400)
        length = rng.randint(1025, 1900) if rng.random() < 0.7 else rng.randint(300, 1024)
        length = min(length, 2048 - first)
        off = first * g.bbytes + rng.choice([0, 0, 4096])
        g.discard(t, off, length * g.bbytes, commit=False)
        g.op(f"thin_status {t}")
        g.op("du")
        g.status()
    for t in g.live():
        g.op(f"thin_status {t}")
    g.dump()
    g.op("du")


def _edges_tails(g: Gen) -> None:
    rng = g.rng
    bs = pick_bs(rng, (3, 2, 2, 2))
    nblocks = 64
    features = rng.choice([[], ["skip_block_zeroing"], ["no_discard_passdown"]])
    g.pool(4 << 20, nblocks, bs, 0, features + ["error_if_no_space"])
    for _ in range(rng.randint(2, 3)):
        i = g.create_thin()
        tail = rng.choice([8, 16, bs // 2, bs - 8, 1])
        g.activate(i, rng.randint(1, 6) * bs + tail)
    for _ in range(rng.randint(8, 14)):
        i = g.pick_live()
        size = g.active[i] * SECTOR
        last = size - size % g.bbytes  # start of the partial last block
        what = rng.random()
        if what < 0.35:
            off = last + rng.randrange(0, (size - last) // SECTOR) * SECTOR
            g.write(i, off, size - off)
        elif what < 0.55:
            g.write(i, 0, size)
        elif what < 0.75 and g.can_discard():
            g.discard(i, *_discard_spot(g, i))
        elif what < 0.85:
            j = g.create_snap(i)
            g.activate(j, g.active[i])
            g.write(j, last, size - last)
        else:
            g.read(i, last, size - last)
        g.op(f"thin_status {i}")
        g.maybe_status(0.6)
    for i in g.live():
        g.op(f"thin_status {i}")
        g.read(i, 0, g.active[i] * SECTOR)
    g.status()
    g.dump()
    g.op("du")


def _edges_read_only(g: Gen) -> None:
    rng = g.rng
    bs = pick_bs(rng)
    features = rng.choice(
        [[], ["error_if_no_space"], ["no_discard_passdown"], ["skip_block_zeroing"]]
    )
    g.pool(4 << 20, 64, bs, 0, features)
    tid = 0
    a = g.create_thin()
    b = g.create_thin()
    g.activate(a, 16 * bs)
    g.activate(b, 16 * bs)
    g.write(a, g.bbytes, 3 * g.bbytes)
    g.write(b, 0, 2 * g.bbytes)
    s = g.create_snap(a)
    new = tid + rng.randint(1, 5)
    g.op(f"msg set_transaction_id {tid} {new}")
    tid = new
    g.status()
    for _round in range(rng.randint(2, 3)):
        g.op(f"reload features={','.join(features + ['read_only'])}")
        g.status()
        g.op("events")
        for _ in range(rng.randint(4, 8)):
            t = rng.choice(g.live())
            what = rng.randrange(7)
            if what == 0:
                g.op(
                    f"write {t} {fmt(rng.randrange(16) * g.bbytes)} 4k {g.seed()}"
                )  # maybe unmapped
            elif what == 1:
                g.op(f"write {t} {fmt(g.bbytes)} 4k {g.seed()}")  # mapped in a (shared with s)
            elif what == 2:
                g.op(f"flush {t}")
            elif what == 3:
                g.op(f"discard {t} 0 {fmt(4 * g.bbytes)}")
            elif what == 4:
                g.read(t, 0, 4 * g.bbytes)
            elif what == 5:
                g.op(
                    rng.choice(
                        [
                            "msg create_thin 77",
                            f"msg set_transaction_id {tid} {tid + 1}",
                            "msg reserve_metadata_snap",
                            f"msg delete {s}",
                        ]
                    )
                )
            else:
                g.op(f"thin_status {t}")
            g.op("status")
        g.op(f"reload features={','.join(features)}")
        g.status()
        g.op("events")
        t = rng.choice(g.live())
        g.op(f"write {t} {fmt(rng.randrange(16) * g.bbytes)} 4k {g.seed()}")
        g.status()
        old = rng.choice([tid, tid, tid + 3])  # a wrong old id fails (EINVAL)
        g.op(f"msg set_transaction_id {old} {tid + 1}")
        g.status()
        if old == tid:
            tid += 1
    for t in g.live():
        g.op(f"thin_status {t}")
        g.read(t, 0, 16 * g.bbytes)
    g.dump()


EDGES = (_edges_odd_blocks, _edges_huge_blocks, _edges_big_discards, _edges_tails, _edges_read_only)


def gen_edges(g: Gen) -> None:
    sub = EDGES[g.number % len(EDGES)]  # round robin over the seeds
    g.comment(sub.__name__.replace("_edges_", "edges: "))
    sub(g)


def gen_refcounts(g: Gen) -> None:
    rng = g.rng
    bs = pick_bs(rng, (6, 2, 1, 0))
    n = rng.randint(260, 1100)  # origin blocks: 2 to 9 leaves
    g.pool(
        rng.choice([4 << 20, 8 << 20]),
        4096,
        bs,
        0,
        [] if rng.random() < 0.7 else ["skip_block_zeroing"],
    )
    o = g.create_thin()
    g.activate(o, 2048 * bs)
    g.write(o, 0, n * g.bbytes)
    g.status()
    family = [o]
    for _ in range(rng.randint(4, 14)):
        parent = rng.choice(family) if rng.random() < 0.4 else o
        if parent not in g.thins:
            parent = rng.choice(sorted(g.thins))
        s = g.create_snap(parent, suspend=False)
        family.append(s)
        if rng.random() < 0.5:
            g.status()
        # A few single-block writes spread over the tree: each copies a leaf.
        t = s if rng.random() < 0.7 else parent
        if t not in g.active:
            g.activate(t, 2048 * bs)
        step = rng.choice([63, 126, 200])
        for b in range(rng.randrange(step), n, step):
            g.write(t, b * g.bbytes + rng.choice([0, 4096]), 4096)
        g.status()
        if len(g.active) > 4:
            victim = rng.choice([x for x in g.live() if x != o] or g.live())
            g.remove(victim)
    g.op(f"thin_status {o}")
    g.dump()
    order = sorted(g.thins)
    rng.shuffle(order)
    for t in order:
        if t in g.active:
            g.remove(t)
        g.delete(t)
        g.status()
        if rng.random() < 0.2 and g.thins:
            g.dump()
    g.dump()
    g.op("du")


GENERATORS = {
    "mixed": gen_mixed,
    "snapshots": gen_snapshots,
    "space": gen_space,
    "features": gen_features,
    "metadata": gen_metadata,
    "edges": gen_edges,
    "refcounts": gen_refcounts,
}


def generate(seed: int, kind: str) -> str:
    rng = random.Random(f"{kind}:{seed}")
    g = Gen(rng)
    g.number = seed
    g.comment(f"generated: dev/kernel/gen.py --seed {seed} --kind {kind}")
    GENERATORS[kind](g)
    return g.text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--kind", choices=KINDS, required=True)
    args = parser.parse_args(argv)
    sys.stdout.write(generate(args.seed, args.kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
