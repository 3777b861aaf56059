"""``thinsim bench``: the model's speed and memory, in accounting mode.

Figures (issue 2): random 4 KiB writes that provision new blocks in a 1 TiB thin;
whole-block writes in 1 GiB requests; create_snap of a fully mapped 100 GiB origin;
memory per mapping in a fully provisioned 1 TiB pool, and the memory of the same fill with
its metadata committed to a file; random 4 KiB writes to a thin with snapshots (issue 12).
"""

from __future__ import annotations

import gc
import os
import platform
import random
import time

from .model.pool import Pool, PoolTable
from .model.thin import Thin

GiB = 1 << 30
TiB = 1 << 40
BLOCK = 64 << 10


def _pool(data_bytes: int, md_bytes: int = 16 * GiB) -> Pool:
    table = PoolTable.parse(["/dev/loop0", "/dev/loop1", "128", "0"])
    pool = Pool(
        table, length_sectors=data_bytes // 512, metadata_bytes=md_bytes, data_bytes=data_bytes
    )
    pool.resume()
    return pool


def _thin(pool: Pool, dev: int, size: int) -> Thin:
    pool.message(f"create_thin {dev}")
    return Thin(pool, dev, size // 512)


def random_4k_writes(n: int = 200_000) -> float:
    pool = _pool(TiB)
    thin = _thin(pool, 0, TiB)
    rng = random.Random(42)
    blocks = rng.sample(range(TiB // BLOCK), n)
    buf = bytes(4096)
    write = thin.write
    t0 = time.perf_counter()
    for b in blocks:
        write(b * BLOCK, buf)
    return n / (time.perf_counter() - t0)


def seq_blocks(total: int = 100 * GiB) -> float:
    pool = _pool(total)
    thin = _thin(pool, 0, total)
    chunk = bytes(GiB)
    t0 = time.perf_counter()
    for off in range(0, total, GiB):
        thin.write(off, chunk)
    return (total // BLOCK) / (time.perf_counter() - t0)


def snaps(n: int = 20_000, origin_size: int = 100 * GiB) -> float:
    pool = _pool(origin_size)
    thin = _thin(pool, 0, origin_size)
    chunk = bytes(GiB)
    for off in range(0, origin_size, GiB):
        thin.write(off, chunk)
    pool.commit()
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        pool.message(f"create_snap {i} 0")
    return n / (time.perf_counter() - t0)


def cow_4k_writes(size: int = 16 * GiB, days: int = 8, share: float = 0.05) -> float:
    """Copy-on-write with snapshots (issue 12): a filled thin, then each day a snapshot of
    it and 4 KiB writes to ``share`` of its blocks at uniform random, each one breaking
    sharing (a new data block, a copy, btree updates, counts of 3 and more from the
    third day); writes per second over the days' writes and commits."""
    pool = _pool(2 * size)
    thin = _thin(pool, 0, size)
    chunk = bytes(GiB)
    for off in range(0, size, GiB):
        thin.write(off, chunk)
    pool.commit()
    rng = random.Random(42)
    nb = size // BLOCK
    buf = bytes(4096)
    write = thin.write
    n = 0
    took = 0.0
    for day in range(1, days + 1):
        pool.message(f"create_snap {day} 0")
        blocks = rng.sample(range(nb), int(nb * share))
        t0 = time.perf_counter()
        for b in blocks:
            write(b * BLOCK + 4096 * (b % 16), buf)
        pool.commit()
        took += time.perf_counter() - t0
        n += len(blocks)
    return n / took


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bytes_per_mapping(size: int = TiB) -> float:
    gc.collect()
    before = _rss()
    pool = _pool(size)
    thin = _thin(pool, 0, size)
    chunk = bytes(GiB)
    for off in range(0, size, GiB):
        thin.write(off, chunk)
    pool.commit()
    gc.collect()
    used = _rss() - before
    mappings = thin.td.mapped_blocks
    del thin, pool, chunk
    return used / mappings


def fill_on_file_rss_mib(size: int = TiB) -> float:
    """RSS growth (MiB) of filling a SIZE thin in a pool whose metadata is committed, each GiB
    written, to a file (a scratch one): the nodes kept in memory are the cache's
    (transaction.BlockCache), not the metadata's.  bytes_per_mapping is the same fill with
    every node in memory."""
    from .model.disk import keep_metadata_on_file

    gc.collect()
    before = _rss()
    pool = _pool(size)
    keep_metadata_on_file(pool.pmd)
    thin = _thin(pool, 0, size)
    chunk = bytes(GiB)
    for off in range(0, size, GiB):
        thin.write(off, chunk)
        pool.commit()
    gc.collect()
    used = _rss() - before
    del thin, pool, chunk
    return used / (1 << 20)


def _in_fresh_process(call: str):
    """The JSON value of ``thinsim.bench.CALL`` evaluated in a fresh interpreter: a memory
    figure there is not lowered by the pages an earlier benchmark's garbage gives back
    while it runs (fill_on_file_rss_mib measured -194 MiB after bytes_per_mapping)."""
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        f"import sys, json; sys.path.insert(0, {root!r}); import thinsim.bench as b; "
        f"print(json.dumps(b.{call}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=False)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"benchmark {call} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.splitlines()[-1])


def run_all(quick: bool = False) -> dict:
    if quick:
        return {
            "random_4k_writes_per_s": round(random_4k_writes(20_000)),
            "seq_blocks_per_s": round(seq_blocks(4 * GiB)),
            "snaps_per_s": round(snaps(2_000, 4 * GiB)),
            "bytes_per_mapping": round(bytes_per_mapping(16 * GiB), 1),
            "fill_on_file_rss_mib": round(
                _in_fresh_process(f"fill_on_file_rss_mib({16 * GiB})"), 1
            ),
            # after the memory figure, which the pages its garbage leaves would lower
            "cow_4k_writes_per_s": round(cow_4k_writes(4 * GiB, 4)),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        }
    return {
        "random_4k_writes_per_s": round(random_4k_writes()),
        "seq_blocks_per_s": round(seq_blocks()),
        "snaps_per_s": round(snaps()),
        "bytes_per_mapping": round(bytes_per_mapping(), 1),
        "fill_on_file_rss_mib": round(_in_fresh_process("fill_on_file_rss_mib()"), 1),
        # after the memory figure, which the pages its garbage leaves would lower
        "cow_4k_writes_per_s": round(cow_4k_writes()),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
    }


# -- the simulated host: per-command time (issue 11) --------------------------------------

_HOST_SETUP = """\
truncate -s 64M meta.img; truncate -s 2G data.img
losetup -f meta.img; losetup -f data.img
dmsetup create pool --table "0 4194304 thin-pool /dev/loop0 /dev/loop1 128 0"
dmsetup message pool 0 create_thin 0
dmsetup create thin --table "0 2097152 thin /dev/mapper/pool 0"
"""


def full_pool_setup(data_bytes: int, data: str, metadata: str) -> str:
    """A script making a pool whose thin 0 maps every block of a DATA_BYTES data file (DATA
    as truncate is given it): its metadata restored with thin_restore (writing the blocks
    through dd would take hours and as much disk), the data file sparse."""
    blocks = data_bytes // BLOCK
    return f"""\
truncate -s {metadata} meta.img; truncate -s {data} data.img
printf '<superblock uuid="" time="0" transaction="1" flags="0" version="2" \
data_block_size="128" nr_data_blocks="{blocks}">\\n<device dev_id="0" \
mapped_blocks="{blocks}" transaction="0" creation_time="0" snap_time="0">\\n\
<range_mapping origin_begin="0" data_begin="0" length="{blocks}" time="0"/>\\n\
</device>\\n</superblock>\\n' > full.xml
thin_restore -q -i full.xml -o meta.img
losetup -f meta.img; losetup -f data.img
dmsetup create pool --table "0 {data_bytes // 512} thin-pool /dev/loop0 /dev/loop1 128 0"
dmsetup create thin --table "0 {data_bytes // 512} thin /dev/mapper/pool 0"
"""


# a fully mapped 100 GiB thin
_FULL_SETUP = full_pool_setup(100 * GiB, "100G", "1G")

_HOST_LOOP = """\
t() {{ local s=$EPOCHREALTIME; "$@" > /dev/null; local e=$EPOCHREALTIME; echo "T $s $e"; }}
for i in $(seq 1 {n}); do
  t dmsetup status pool
  t dmsetup message pool 0 set_transaction_id $((i - 1)) $i
  t dd if=/dev/zero of=/dev/mapper/thin bs=4K count=1 seek=$i status=none
done
"""

_LAB = """\
truncate -s 256M meta.img; truncate -s 8G data.img
losetup -f meta.img; losetup -f data.img
dmsetup create pool --table "0 16777216 thin-pool /dev/loop0 /dev/loop1 128 0"
for i in $(seq 1 300); do dmsetup message pool 0 create_thin $i; done
dmsetup create thin --table "0 2097152 thin /dev/mapper/pool 1"
for i in $(seq 1 500); do dd if=/dev/urandom of=/dev/mapper/thin bs=4K count=1 seek=$i status=none; done
for i in $(seq 1 100); do dmsetup message pool 0 create_snap $((1000 + i)) 1; done
for i in $(seq 201 300); do dmsetup message pool 0 delete $i; done
"""


def _host_script(text: str, env: dict | None = None) -> tuple[str, float]:
    """Run TEXT with ``thinsim run`` in a fresh folder; its stdout and wall time."""
    import subprocess
    import sys
    import tempfile

    code = "import sys; from thinsim.cli import main; sys.exit(main())"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="thinsim-bench-") as tmp:
        script = os.path.join(tmp, "bench.sh")
        with open(script, "w") as f:
            f.write("set -e\n" + text)
        t0 = time.perf_counter()
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {root!r}); {code}",
                "run",
                script,
            ],
            cwd=tmp,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            check=False,
        )
        took = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"the benchmark's script failed: {r.stderr[-2000:]}")
    return r.stdout, took


def _times_ms(out: str) -> list[float]:
    return sorted(
        (float(e) - float(s)) * 1000
        for _, s, e in (line.split() for line in out.splitlines() if line.startswith("T "))
    )


def _pct(xs: list[float], p: float) -> float:
    return round(xs[min(len(xs) - 1, int(len(xs) * p))], 1)


# A file copied into an ext4 on a thin, through the real block device of thinsim/host/realdev.py
# (from the run's /dev/shm, then sync): MiB per second; the same copy onto an ext4 on a real
# loop device of the host over a sparse file, beside it.
_FS_COPY = """
truncate -s {data}M data.img; truncate -s 64M meta.img
losetup -f data.img; losetup -f meta.img
dmsetup create pool --table "0 $(({data} * 2048)) thin-pool /dev/loop1 /dev/loop0 128 0"
dmsetup message pool 0 "create_thin 1"
dmsetup create thin --table "0 $(({data} * 2048)) thin /dev/mapper/pool 1"
DEV=/dev/mapper/thin
"""
_FS_COPY_REAL = """
truncate -s {data}M disk.img
DEV=$(losetup -f --show disk.img)
trap 'umount mnt 2>/dev/null || true; losetup -d "$DEV"' EXIT
"""
_FS_COPY_TIMED = """
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$DEV"
mkdir mnt; mount "$DEV" mnt
head -c {size}M /dev/urandom > {src}
s=$(date +%s%N); cp {src} mnt/file; sync; e=$(date +%s%N)
rm {src}
echo $((e - s))
umount mnt
"""


def host_fs_copy(size_mib: int = 1024) -> dict:
    """host_fs_copy_mib_s: SIZE_MIB copied into an ext4 on a simulated thin (issue 13: at
    least 100 MiB/s wanted); real_loop_fs_copy_mib_s: the same on a real loop device of this
    host.  Empty where the run has no real devices (thinsim/host/realdev.py)."""
    import subprocess
    import tempfile

    from .host import realdev

    if realdev.unavailable() is not None:
        return {}
    data = 2 * size_mib + 512
    timed = _FS_COPY_TIMED.format(size=size_mib, src="/dev/shm/src")
    out, _ = _host_script(_FS_COPY.format(data=data) + timed)
    result = {"host_fs_copy_mib_s": round(size_mib / (int(out.split()[-1]) / 1e9), 1)}
    with tempfile.TemporaryDirectory(prefix="thinsim-bench-") as tmp:
        script = _FS_COPY_REAL.format(data=data) + _FS_COPY_TIMED.format(
            size=size_mib, src=os.path.join(tmp, "src")
        )
        r = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "bash", "-ec", script],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode == 0:
            ns = int(r.stdout.split()[-1])
            result["real_loop_fs_copy_mib_s"] = round(size_mib / (ns / 1e9), 1)
    return result


def host_commands(n: int = 100, before: bool = True, full: bool = True, lab: bool = True) -> dict:
    """Per-command wall time (ms) of `dmsetup status`, `dmsetup message` and a 4 KiB dd on a
    simulated device, as a script sees it; with BEFORE, the same with THINSIM_SERVER=0 (a
    process per command, as before the host's process); a 1,000-command lab script."""
    loop = _HOST_LOOP.format(n=n)
    xs = _times_ms(_host_script(_HOST_SETUP + loop)[0])
    out = {"host_cmd_ms_p50": _pct(xs, 0.5), "host_cmd_ms_p99": _pct(xs, 0.99)}
    out.update(host_fs_copy(1024 if full else 256))
    if full:
        full_loop = _HOST_LOOP.format(n=max(n // 10, 3)).replace("$((i - 1)) $i", "$i $((i + 1))")
        full_xs = _times_ms(_host_script(_FULL_SETUP + full_loop)[0])
        out["host_cmd_ms_p50_full_pool"] = _pct(full_xs, 0.5)
    if lab:
        out["host_lab_script_s"] = round(_host_script(_LAB)[1], 1)
    if before:
        old = {"THINSIM_SERVER": "0"}
        few = _HOST_LOOP.format(n=max(n // 5, 3))
        xs = _times_ms(_host_script(_HOST_SETUP + few, old)[0])
        out["before_host_cmd_ms_p50"] = _pct(xs, 0.5)
        out["before_host_cmd_ms_p99"] = _pct(xs, 0.99)
        if lab and os.environ.get("THINSIM_BENCH_LAB_BEFORE") == "1":  # a quarter of an hour
            out["before_host_lab_script_s"] = round(_host_script(_LAB, old)[1], 1)
    return out


# -- the capacity planner (issue 12) --------------------------------------------------------

_PLANS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "plans"
)
# --quick: the same workloads scaled down (a 16 GiB thin for 10 days; Docker for 10 days)
_PLAN_QUICK = {
    "snapshots_1t": {
        "volumes[0].size": "16GiB",
        "pool.data": "96GiB",
        "pool.metadata": "256MiB",
        "plan.horizon": "10d",
    },
    "docker_year": {"plan.horizon": "10d"},
}


def plan_child(name: str, budget_s: float, quick: bool, overrides: dict | None = None) -> dict:
    """One plan benchmark in this process (a fresh one: its peak RSS is the plan's);
    ``overrides`` change fields after --quick's."""
    import resource

    from .plan import load, parse
    from .plan.engine import Simulation
    from .plan.workload import DAY

    path = os.path.join(_PLANS, f"{name}.toml")
    w = load(path)
    if quick or overrides:
        w = parse(w.text, path, {**(_PLAN_QUICK[name] if quick else {}), **(overrides or {})})
    sim = Simulation(w)
    t0 = time.perf_counter()
    c0 = time.process_time()
    sim.deadline = time.monotonic() + budget_s
    result = sim.run()
    took = time.perf_counter() - t0
    cpu = time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "s": round(took, 1),
        # on a shared machine the CPU time is the figure to compare between runs
        "cpu_s": round(cpu, 1),
        "rss_mib": round(rss),
        "days": round(sim.now / DAY, 2),
        "stopped_by": result["summary"]["stopped_by"],
    }


def plan_benchmarks(quick: bool = False, budget_s: float | None = None) -> dict:
    """``plan_snapshots_1t_s``, ``_rss_mib``, ``_days`` and ``plan_docker_year_s`` (with
    ``_cpu_s``, the CPU time, for each): each
    workload of examples/plans run in a fresh process until it ends or ``budget_s`` of
    wall time (THINSIM_BENCH_PLAN_BUDGET, default 600 s: issue 12's "not done above")."""
    if budget_s is None:
        budget_s = float(os.environ.get("THINSIM_BENCH_PLAN_BUDGET", "600"))
    out: dict = {}
    for name in ("snapshots_1t", "docker_year"):
        fig = _in_fresh_process(f"plan_child({name!r}, {budget_s!r}, {quick!r})")
        out[f"plan_{name}_s"] = fig["s"]
        out[f"plan_{name}_cpu_s"] = fig["cpu_s"]
        if name == "snapshots_1t":
            out[f"plan_{name}_rss_mib"] = fig["rss_mib"]
            out[f"plan_{name}_days"] = fig["days"]
        out[f"plan_{name}_stopped_by"] = fig["stopped_by"]
    return out
