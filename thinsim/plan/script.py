"""A plan's operations as a bash script for the real kernel (``thinsim plan --script``).

The script makes the pool from sparse files on loop devices, then runs what the plan ran,
in its order: ``dmsetup message`` for each message, ``dmsetup create``/``remove`` of thin
devices, ``dmsetup suspend``/``resume`` around snapshots of active origins, ``dd`` with
``oflag=direct`` for each write (one request per I/O, as the plan issued them; a run of
whole-block writes the plan sent as one request is written as that many requests of its
I/O size) and ``blkdiscard`` for each discard, and ``dmsetup status`` of the pool at every
point the plan sampled.  At the end it prints, each under a ``== `` line, the pool's
status, each active thin's status and ``thin_ls`` of a metadata snapshot
(``DEV MAPPED_BLOCKS EXCLUSIVE_BLOCKS SHARED_BLOCKS``), then removes everything it made.
:func:`expected` is what the plan says that output is.

Data is zeros (dm-thin does not look at it).  For a scaled-down case: a script of more
than :data:`MAX_OPS` operations is refused.
"""

from __future__ import annotations

import shlex

from ..thin_tools.ls import render

MAX_OPS = 20000
POOL = "plan-pool"


class ScriptError(Exception):
    """A plan that cannot be written as a script (too large, or not recorded)."""


def _dm(dev_id: int) -> str:
    return f"plan-t{dev_id}"


def script(sim) -> str:
    """The bash script of a recorded :class:`~thinsim.plan.engine.Simulation`."""
    if not sim.record:
        raise ScriptError("the plan was run without recording its operations")
    if len(sim.ops) > MAX_OPS:
        raise ScriptError(
            f"the plan ran {len(sim.ops)} operations; a script is for a scaled-down case "
            f"(at most {MAX_OPS}): shorten the horizon or lower the rates"
        )
    w = sim.w
    p = w.pool
    table = f"0 {p.data // 512} thin-pool $META $DATA {p.block_sectors} {p.low_water_mark}"
    if p.features:
        table += f" {len(p.features)} {' '.join(p.features)}"
    out = [
        "#!/bin/bash",
        f"# thinsim plan --script {shlex.quote(w.name)}: the plan's operations for the real",
        "# kernel (run it as root in an empty folder: thinsim run --backend kernel SCRIPT)",
        "PARAM=/sys/module/dm_thin_pool/parameters/no_space_timeout",
        f"truncate -s {p.metadata} meta.img",
        f"truncate -s {p.data} data.img",
        "META=$(losetup -f --show meta.img)",
        "DATA=$(losetup -f --show data.img)",
    ]
    if p.no_space_timeout != 60:
        out += ["OLD_TIMEOUT=$(cat $PARAM)", f"echo {p.no_space_timeout} > $PARAM"]
    out.append(f'dmsetup create {POOL} --table "{table}"')
    names: dict[str, int] = {}
    active: dict[int, int] = {}  # dev id -> size
    for op in sim.ops:
        _t, kind, *args = op
        if kind == "message":
            out.append(f"dmsetup message {POOL} 0 {args[0]}")
        elif kind == "activate":
            name, dev, size = args
            names[name] = dev
            active[dev] = size
            out.append(
                f'dmsetup create {_dm(dev)} --table "0 {size // 512} thin /dev/mapper/{POOL} {dev}"'
            )
        elif kind == "deactivate":
            dev = names[args[0]]
            active.pop(dev, None)
            out.append(f"dmsetup remove {_dm(dev)}")
        elif kind in ("suspend", "resume"):
            out.append(f"dmsetup {kind} {_dm(names[args[0]])}")
        elif kind == "write":
            name, off, length, io = args
            io = min(io, length)
            count, rest = divmod(length, io)
            dev = f"/dev/mapper/{_dm(names[name])}"
            dd = f"dd if=/dev/zero of={dev} oflag=direct,seek_bytes conv=notrunc status=none"
            if count:
                out.append(f"{dd} bs={io} count={count} seek={off}")
            if rest:
                out.append(f"{dd} bs={rest} count=1 seek={off + count * io}")
        elif kind == "discard":
            name, off, length = args
            out.append(f"blkdiscard -o {off} -l {length} /dev/mapper/{_dm(names[name])}")
        elif kind == "status":
            out.append(f"dmsetup status {POOL} > /dev/null")
        elif kind == "status_noflush":
            out.append(f"dmsetup status --noflush {POOL} > /dev/null")
        elif kind == "reload":
            # lvextend: the LVs grow, then the pool's table is reloaded with them
            data, meta, lwm = args
            grown = f"0 {data // 512} thin-pool $META $DATA {p.block_sectors} {lwm}"
            if p.features:
                grown += f" {len(p.features)} {' '.join(p.features)}"
            out += [
                f"truncate -s {meta} meta.img",
                f"truncate -s {data} data.img",
                'losetup -c "$META"',
                'losetup -c "$DATA"',
                f"dmsetup suspend {POOL}",
                f'dmsetup reload {POOL} --table "{grown}"',
                f"dmsetup resume {POOL}",
            ]
    out += [
        "echo '== status'",
        f"dmsetup status {POOL}",
    ]
    for dev in sorted(active):
        out += [f"echo '== {_dm(dev)}'", f"dmsetup status {_dm(dev)}"]
    out += [
        "echo '== thin_ls'",
        f"dmsetup message {POOL} 0 reserve_metadata_snap",
        'thin_ls -m --no-headers -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS "$META"',
        f"dmsetup message {POOL} 0 release_metadata_snap",
    ]
    out += [f"dmsetup remove {_dm(dev)}" for dev in sorted(active)]
    out += [f"dmsetup remove {POOL}", 'losetup -d "$META" "$DATA"', "rm -f meta.img data.img"]
    if p.no_space_timeout != 60:
        out.append("echo $OLD_TIMEOUT > $PARAM")
    return "\n".join(out) + "\n"


def expected(sim) -> str:
    """What the script prints, by the plan: the last sample's pool status, the thins'
    statuses and thin_ls's rows."""
    last = sim.timeline[-1]
    out = ["== status", last["status"]]
    for v in sorted((v for v in sim.vols.values() if v.thin is not None), key=lambda v: v.dev_id):
        out += [f"== {_dm(v.dev_id)}", v.thin.status()]
    counts = sim.volume_counts(exclusive=True)
    grid = [
        [str(c["dev"]), str(c["mapped"]), str(c["exclusive"]), str(c["shared"])]
        for c in sorted(counts.values(), key=lambda c: c["dev"])
    ]
    out.append("== thin_ls")
    text = "\n".join(out) + "\n" + render(grid)
    return text


def write_script(sim, path: str) -> None:
    with open(path, "w") as f:
        f.write(script(sim))
