"""Workload files: TOML read with tomllib, checked field by field into a :class:`Workload`.

The schema is in the package docstring (``thinsim.plan``).  A bad file raises
:class:`PlanError` whose text names the file, the line and the field:
``plan.toml:7: pool.block_size: must be a multiple of 64KiB between 64KiB and 1GiB``.
tomllib gives no positions, so :func:`locate` finds each table header and key line in the
text itself (enough for the files this schema describes: one key per line).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from ..interface import FEATURES
from .units import UnitError, parse_duration, parse_share, parse_size

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
DAY = 86400
# dm-thin.c: DATA_DEV_BLOCK_SIZE_MIN/MAX_SECTORS, in bytes
BLOCK_MIN, BLOCK_MAX = 64 * KiB, 1 * GiB
# dm-thin-metadata.h: THIN_METADATA_MAX_SECTORS (the pool uses no more of a larger device)
METADATA_MIN = 2 * MiB
MAX_DEV_ID = (1 << 24) - 1

PATTERNS = ("uniform", "zipf", "hotset", "sequential", "append")
ACTIVITIES = ("fill", "churn", "snapshots", "delete", "fstrim", "docker_pull", "docker_run")
POOL_FEATURES = tuple(f for f in FEATURES if f != "read_only")


class PlanError(Exception):
    """A workload file the planner cannot run: ``FILE:LINE: FIELD: MESSAGE``."""

    def __init__(self, file: str, line: int | None, field_path: str, message: str) -> None:
        self.file, self.line, self.field, self.message = file, line, field_path, message
        where = f"{file}:{line}" if line else file
        super().__init__(
            f"{where}: {field_path}: {message}" if field_path else f"{where}: {message}"
        )


class MessageFailed(Exception):
    """A pool message the kernel refused while a plan ran (its event is recorded)."""


def locate(text: str) -> dict[str, int]:
    """The line of each table (``pool``, ``activities[2]``) and key (``pool.block_size``)."""
    locs: dict[str, int] = {}
    counts: dict[str, int] = {}
    prefix = ""
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]", s)
        if m:
            name = m.group(1)
            k = counts.get(name, 0)
            counts[name] = k + 1
            prefix = f"{name}[{k}]"
            locs[prefix] = lineno
            continue
        m = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", s)
        if m:
            prefix = m.group(1)
            locs[prefix] = lineno
            continue
        m = re.match(r'^([A-Za-z0-9_-]+|"[^"]*")\s*=', s)
        if m:
            key = m.group(1).strip('"')
            locs.setdefault(f"{prefix}.{key}" if prefix else key, lineno)
    return locs


@dataclass
class PoolSpec:
    """The pool's devices and table: sizes in bytes, the low water mark in blocks."""

    data: int = 100 * GiB
    metadata: int = 2 * GiB
    block_size: int = 64 * KiB
    low_water_mark: int = 0
    features: list[str] = field(default_factory=list)
    no_space_timeout: int = 60

    @property
    def block_sectors(self) -> int:
        return self.block_size // 512


@dataclass
class VolumeSpec:
    """A thin (``origin`` None) or a clone: a writable snapshot of ``origin``, made at ``at``."""

    name: str
    size: int
    origin: str | None = None
    at: float = 0
    line: int | None = None


@dataclass
class Activity:
    """One ``[[activities]]`` entry: its ``type`` and its checked fields (sizes in bytes,
    times in seconds, shares as Fractions)."""

    type: str
    index: int
    opts: dict
    line: int | None = None

    def __getattr__(self, name: str):
        try:
            return self.opts[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class DockerSpec:
    """Docker's devicemapper options (daemon/graphdriver/devmapper/deviceset.go)."""

    basesize: int = 10 * GiB
    min_free_space: Fraction = Fraction(10, 100)
    mkfs_bytes: int = 0
    blkdiscard: bool = True


@dataclass
class LvmSpec:
    """LVM's volume group and thin-pool policy (lvm.conf's activation section)."""

    vg_size: int = 0
    extent_size: int = 4 * MiB
    threshold: int = 100  # activation/thin_pool_autoextend_threshold (100: off)
    percent: int = 20  # activation/thin_pool_autoextend_percent
    monitoring: bool = True  # activation/monitoring: dmeventd watches the pool
    pool_metadata_spare: bool = True  # lvcreate --poolmetadataspare


@dataclass
class Workload:
    """A checked workload file."""

    path: str
    horizon: float
    sample: float = DAY
    seed: int = 0
    stop: str = "full"
    volume_stats: str = "sample"
    pool: PoolSpec = field(default_factory=PoolSpec)
    volumes: list[VolumeSpec] = field(default_factory=list)
    activities: list[Activity] = field(default_factory=list)
    docker: DockerSpec | None = None
    lvm: LvmSpec | None = None
    name: str = ""
    text: str = ""  # the file's text (a sweep changes fields in it and checks it again)
    overrides: dict[str, str] = field(default_factory=dict)  # fields changed after reading


# -- checking --------------------------------------------------------------------------------


class _Checker:
    def __init__(self, file: str, locs: dict[str, int]) -> None:
        self.file = file
        self.locs = locs

    def line(self, path: str) -> int | None:
        while path:
            if path in self.locs:
                return self.locs[path]
            path = path.rpartition(".")[0]
        return None

    def fail(self, path: str, message: str):
        raise PlanError(self.file, self.line(path), path, message)

    def table(self, parent: dict, key: str, path: str) -> dict:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            self.fail(path, "must be a table")
        return value

    def known(self, table: dict, path: str, allowed) -> None:
        for k in table:
            if k not in allowed:
                self.fail(
                    f"{path}.{k}",
                    f"unknown field (this table takes: {', '.join(sorted(allowed))})",
                )

    def _get(self, table, path, key, required, default):
        if key not in table:
            if required:
                self.fail(path, f"missing field {key!r}")
            return None, default
        return f"{path}.{key}", table[key]

    def size(self, table, path, key, default=None, *, required=False, minimum=0):
        where, v = self._get(table, path, key, required, default)
        if where is None:
            return v
        try:
            n = parse_size(v)
        except UnitError as e:
            self.fail(where, str(e))
        if n < minimum:
            self.fail(where, f"must be at least {minimum} bytes")
        return n

    def duration(self, table, path, key, default=None, *, required=False, positive=False):
        where, v = self._get(table, path, key, required, default)
        if where is None:
            return v
        try:
            t = parse_duration(v)
        except UnitError as e:
            self.fail(where, str(e))
        if positive and t <= 0:
            self.fail(where, "must be longer than 0")
        return t

    def share_or_size(self, table, path, key, default=None, *, required=False):
        """("share", Fraction) for "5%", ("bytes", n) for a size."""
        where, v = self._get(table, path, key, required, default)
        if where is None:
            return v
        try:
            f = parse_share(v)
            if f is not None:
                return ("share", f)
            return ("bytes", parse_size(v))
        except UnitError as e:
            self.fail(where, f'{e} (or a percentage such as "5%")')

    def integer(self, table, path, key, default=None, *, required=False, minimum=0):
        where, v = self._get(table, path, key, required, default)
        if where is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(where, f"must be a whole number, not {v!r}")
        if v < minimum:
            self.fail(where, f"must be at least {minimum}")
        return v

    def number(self, table, path, key, default=None, *, minimum=0.0, maximum=None):
        where, v = self._get(table, path, key, False, default)
        if where is None:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(where, f"must be a number, not {v!r}")
        if v < minimum or (maximum is not None and v > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.fail(where, f"must be {bound}")
        return v

    def boolean(self, table, path, key, default=False):
        where, v = self._get(table, path, key, False, default)
        if where is not None and not isinstance(v, bool):
            self.fail(where, f"must be true or false, not {v!r}")
        return v

    def string(self, table, path, key, default=None, *, required=False, choices=None):
        where, v = self._get(table, path, key, required, default)
        if where is None:
            return v
        if not isinstance(v, str):
            self.fail(where, f"must be a string, not {v!r}")
        if choices is not None and v not in choices:
            self.fail(where, f"must be one of {', '.join(choices)}, not {v!r}")
        return v


def _pool(c: _Checker, doc: dict, docker: bool) -> PoolSpec:
    t = c.table(doc, "pool", "pool")
    c.known(
        t,
        "pool",
        {"data", "metadata", "block_size", "low_water_mark", "features", "error_if_no_space",
         "no_space_timeout"},
    )  # fmt: skip
    spec = PoolSpec()
    if docker:
        # Docker 1.12's loop-lvm pool (pkg/devicemapper: CreatePool): 100 GiB data, 2 GiB
        # metadata, 64 KiB blocks, "32768 1 skip_block_zeroing"
        spec = PoolSpec(100 * GiB, 2 * GiB, 64 * KiB, 32768, ["skip_block_zeroing"])
    spec.data = c.size(t, "pool", "data", spec.data, required=not docker)
    spec.metadata = c.size(t, "pool", "metadata", spec.metadata, required=not docker)
    spec.block_size = c.size(t, "pool", "block_size", spec.block_size)
    bs = spec.block_size
    if bs % BLOCK_MIN or not BLOCK_MIN <= bs <= BLOCK_MAX:
        c.fail("pool.block_size", "must be a multiple of 64KiB between 64KiB and 1GiB")
    if spec.data < bs:
        c.fail("pool.data", f"must hold at least one block ({bs} bytes)")
    if spec.metadata < METADATA_MIN:
        c.fail("pool.metadata", "must be at least 2MiB (the kernel's smallest metadata device)")
    if "low_water_mark" in t:
        v = t["low_water_mark"]
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 0:
                c.fail("pool.low_water_mark", "must not be negative")
            spec.low_water_mark = v
        else:
            spec.low_water_mark = c.size(t, "pool", "low_water_mark") // bs
    feats = t.get("features", spec.features)
    if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
        c.fail("pool.features", 'must be a list of strings such as ["skip_block_zeroing"]')
    for f in feats:
        if f not in POOL_FEATURES:
            c.fail("pool.features", f"unknown feature {f!r} (one of {', '.join(POOL_FEATURES)})")
    feats = list(dict.fromkeys(feats))
    if c.boolean(t, "pool", "error_if_no_space") and "error_if_no_space" not in feats:
        feats.append("error_if_no_space")
    spec.features = feats
    spec.no_space_timeout = int(c.duration(t, "pool", "no_space_timeout", 60))
    return spec


def _volumes(c: _Checker, doc: dict) -> list[VolumeSpec]:
    vols = doc.get("volumes", [])
    if not isinstance(vols, list):
        c.fail("volumes", "must be an array of tables ([[volumes]])")
    out: list[VolumeSpec] = []
    names: dict[str, VolumeSpec] = {}
    for i, t in enumerate(vols):
        path = f"volumes[{i}]"
        if not isinstance(t, dict):
            c.fail(path, "must be a table")
        c.known(t, path, {"name", "size", "origin", "clone_of", "at"})
        name = c.string(t, path, "name", required=True)
        if not name or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            c.fail(f"{path}.name", "must be letters, digits and _.+- only")
        if name in names:
            c.fail(f"{path}.name", f"a volume named {name!r} is already defined")
        origin = c.string(t, path, "origin") or c.string(t, path, "clone_of")
        if origin is not None and origin not in names:
            key = "origin" if "origin" in t else "clone_of"
            c.fail(f"{path}.{key}", f"no volume named {origin!r} is defined above")
        size = c.size(t, path, "size", names[origin].size if origin else None,
                      required=origin is None, minimum=512)  # fmt: skip
        if size % 512:
            c.fail(f"{path}.size", "must be a whole number of 512-byte sectors")
        at = c.duration(t, path, "at", 0)
        if origin is not None and at < names[origin].at:
            c.fail(f"{path}.at", f"is before its origin {origin!r} exists")
        v = VolumeSpec(name, size, origin, at, c.line(path))
        names[name] = v
        out.append(v)
    return out


_COMMON = {"type", "volume", "start", "end", "every", "at"}


def _activity(c: _Checker, i: int, t: dict, vols: dict[str, VolumeSpec], w: Workload) -> Activity:
    path = f"activities[{i}]"
    if not isinstance(t, dict):
        c.fail(path, "must be a table")
    kind = c.string(t, path, "type", required=True, choices=ACTIVITIES)
    o: dict = {}
    bs = w.pool.block_size
    if not kind.startswith("docker"):
        o["volume"] = c.string(t, path, "volume", required=True)
        if o["volume"] not in vols:
            c.fail(f"{path}.volume", f"no volume named {o['volume']!r} is defined")
    elif w.docker is None:
        c.fail(f"{path}.type", "docker activities need a [docker] table")
    if kind == "fill":
        c.known(t, path, {"type", "volume", "at", "size", "offset", "io_size"})
        o["at"] = c.duration(t, path, "at", 0)
        o["size"] = c.share_or_size(t, path, "size", ("share", Fraction(1)))
        o["offset"] = c.size(t, path, "offset", 0)
        o["io_size"] = _io_size(c, t, path, bs, default=bs)
    elif kind == "churn":
        c.known(
            t, path,
            _COMMON | {"rate", "per", "pattern", "io_size", "hot_fraction", "hot_share", "skew",
                       "live"},
        )  # fmt: skip
        o["rate"] = c.share_or_size(t, path, "rate", required=True)
        o["per"] = c.duration(t, path, "per", DAY, positive=True)
        o["pattern"] = c.string(t, path, "pattern", "uniform", choices=PATTERNS)
        o["io_size"] = _io_size(c, t, path, bs, default=4 * KiB)
        o["hot_fraction"] = c.number(t, path, "hot_fraction", 0.2, minimum=0.0, maximum=1.0)
        o["hot_share"] = c.number(t, path, "hot_share", 0.8, minimum=0.0, maximum=1.0)
        o["skew"] = c.number(t, path, "skew", 1.2, minimum=1.0001)
        o["live"] = c.size(t, path, "live", None)
        if o["live"] is not None and o["pattern"] != "append":
            c.fail(f"{path}.live", "only the append pattern frees what it wrote (live)")
        _span(c, t, path, o, w)
    elif kind == "snapshots":
        c.known(t, path, _COMMON | {"keep"})
        o["every"] = c.duration(t, path, "every", required=True, positive=True)
        o["keep"] = c.integer(t, path, "keep", 0)
        _span(c, t, path, o, w)
    elif kind == "delete":
        c.known(t, path, {"type", "volume", "at"})
        o["at"] = c.duration(t, path, "at", required=True)
    elif kind == "fstrim":
        c.known(t, path, _COMMON)
        o["every"] = c.duration(t, path, "every", required=True, positive=True)
        _span(c, t, path, o, w)
    elif kind == "docker_pull":
        c.known(t, path, _COMMON | {"layers", "shared_layers", "keep", "io_size"})
        o["every"] = c.duration(t, path, "every", required=True, positive=True)
        layers = t.get("layers")
        if not isinstance(layers, list) or not layers:
            c.fail(f"{path}.layers", 'must be a list of layer sizes such as ["80MiB", "5MiB"]')
        sizes = []
        for v in layers:
            try:
                sizes.append(parse_size(v))
            except UnitError as e:
                c.fail(f"{path}.layers", str(e))
        o["layers"] = sizes
        o["shared_layers"] = c.integer(t, path, "shared_layers", 0)
        if o["shared_layers"] > len(sizes):
            c.fail(f"{path}.shared_layers", f"must be at most the number of layers ({len(sizes)})")
        o["keep"] = c.integer(t, path, "keep", 0)
        o["io_size"] = _io_size(c, t, path, bs, default=bs)
        _span(c, t, path, o, w)
    elif kind == "docker_run":
        c.known(t, path, _COMMON | {"writes", "lifetime", "init_bytes", "io_size", "image"})
        o["every"] = c.duration(t, path, "every", required=True, positive=True)
        o["writes"] = c.size(t, path, "writes", 0)
        o["lifetime"] = c.duration(t, path, "lifetime", DAY)
        o["init_bytes"] = c.size(t, path, "init_bytes", 16 * KiB)
        o["io_size"] = _io_size(c, t, path, bs, default=4 * KiB)
        _span(c, t, path, o, w)
    return Activity(kind, i, o, c.line(path))


def _io_size(c: _Checker, t: dict, path: str, bs: int, default: int) -> int:
    n = c.size(t, path, "io_size", default)
    if n < 512 or n % 512 or (n < bs and bs % n) or (n > bs and n % bs):
        c.fail(
            f"{path}.io_size",
            f"must be whole sectors that divide the block size ({bs} bytes) or whole blocks",
        )
    return n


def _span(c: _Checker, t: dict, path: str, o: dict, w: Workload) -> None:
    o["start"] = c.duration(t, path, "start", 0)
    o["end"] = c.duration(t, path, "end", w.horizon)
    if o["end"] < o["start"]:
        c.fail(f"{path}.end", "is before start")


def _docker(c: _Checker, doc: dict) -> DockerSpec | None:
    if "docker" not in doc:
        return None
    t = c.table(doc, "docker", "docker")
    c.known(t, "docker", {"basesize", "min_free_space", "mkfs_bytes", "blkdiscard"})
    d = DockerSpec()
    d.basesize = c.size(t, "docker", "basesize", d.basesize, minimum=512)
    mfs = c.share_or_size(t, "docker", "min_free_space", ("share", d.min_free_space))
    if mfs[0] != "share" or mfs[1] > 1:
        c.fail("docker.min_free_space", "must be a percentage between 0% and 100%")
    d.min_free_space = mfs[1]
    d.mkfs_bytes = c.size(t, "docker", "mkfs_bytes", d.mkfs_bytes)
    if d.mkfs_bytes > d.basesize:
        c.fail("docker.mkfs_bytes", "must fit in the base device (docker.basesize)")
    d.blkdiscard = c.boolean(t, "docker", "blkdiscard", True)
    return d


def _lvm(c: _Checker, doc: dict, w: Workload, pool_table: dict) -> LvmSpec | None:
    if "lvm" not in doc:
        return None
    t = c.table(doc, "lvm", "lvm")
    c.known(
        t, "lvm",
        {"vg_size", "extent_size", "thin_pool_autoextend_threshold",
         "thin_pool_autoextend_percent", "monitoring", "pool_metadata_spare"},
    )  # fmt: skip
    spec = LvmSpec()
    spec.extent_size = c.size(t, "lvm", "extent_size", spec.extent_size)
    ext = spec.extent_size
    if ext < KiB or ext & (ext - 1):
        c.fail("lvm.extent_size", "must be a power of 2 of at least 1KiB (vgcreate -s)")
    spec.vg_size = c.size(t, "lvm", "vg_size", required=True)
    spec.threshold = c.integer(t, "lvm", "thin_pool_autoextend_threshold", spec.threshold)
    if spec.threshold > 100:
        c.fail("lvm.thin_pool_autoextend_threshold", "must be a percentage, at most 100 (off)")
    spec.percent = c.integer(t, "lvm", "thin_pool_autoextend_percent", spec.percent)
    spec.monitoring = c.boolean(t, "lvm", "monitoring", True)
    spec.pool_metadata_spare = c.boolean(t, "lvm", "pool_metadata_spare", True)
    if "low_water_mark" in pool_table:
        c.fail(
            "pool.low_water_mark",
            "lvm sets it from lvm.thin_pool_autoextend_threshold: leave it out with [lvm]",
        )
    # lvcreate rounds the LVs up to whole extents; the table's low water mark is lvm's
    from .lvm import low_water_mark, pool_lv_sizes

    p = w.pool
    d, m, s = pool_lv_sizes(spec, p.data, p.metadata)
    p.data, p.metadata = d * ext, m * ext
    if p.data % p.block_size:
        c.fail("pool.data", "must be a whole number of blocks once rounded up to extents")
    need, have = d + m + s, spec.vg_size // ext
    if need > have:
        c.fail(
            "lvm.vg_size",
            f"too small for the pool: its data and metadata LVs (and the spare) take {need} "
            f"extents, the volume group has {have}",
        )
    p.low_water_mark = low_water_mark(p.data, p.block_size, spec.threshold)
    return spec


def parse(text: str, path: str = "<workload>", overrides: dict[str, str] | None = None) -> Workload:
    """A workload from TOML ``text``; PlanError names ``path``, line and field.

    ``overrides`` (a sweep's ``{"pool.block_size": "256KiB"}``) set fields before the
    check; an error in one names the field and the value it was given."""
    name = Path(path).name
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise PlanError(name, int(m.group(1)) if m else None, "", f"not TOML: {msg}") from None
    if not overrides:
        w = _check(doc, name, path, locate(text))
        w.text = text
        return w
    for key, value in overrides.items():
        _set(doc, key, value, name)
    try:
        w = _check(doc, name, path, {})
    except PlanError as e:
        given = ", ".join(f"{k}={v}" for k, v in overrides.items())
        raise PlanError(name, None, e.field, f"{e.message} (with --sweep {given})") from None
    w.text = text
    w.overrides = dict(overrides)
    return w


def _set(doc: dict, key: str, value: str, name: str) -> None:
    """Set the field a dotted ``key`` names (``pool.data``, ``activities[1].rate``)."""
    node = doc
    parts = key.split(".")
    for p in parts[:-1]:
        m = re.fullmatch(r"([A-Za-z0-9_-]+)\[(\d+)\]", p)
        try:
            node = node[m.group(1)][int(m.group(2))] if m else node.setdefault(p, {})
        except (KeyError, IndexError, TypeError):
            raise PlanError(name, None, key, "no such table in the workload (--sweep)") from None
        if not isinstance(node, dict):
            raise PlanError(name, None, key, "not a table in the workload (--sweep)")
    if parts[-1] in ("features", "layers") or isinstance(node.get(parts[-1]), list):
        # a list in one sweep value: its items joined by "+", "none" for an empty list
        node[parts[-1]] = [] if value == "none" else [_toml_value(x) for x in value.split("+")]
    else:
        node[parts[-1]] = _toml_value(value)


def _check(doc: dict, name: str, path: str, locs: dict[str, int]) -> Workload:
    c = _Checker(name, locs)
    c.known(doc, "", {"plan", "pool", "volumes", "activities", "docker", "lvm"})
    p = c.table(doc, "plan", "plan")
    c.known(p, "plan", {"horizon", "sample", "seed", "stop", "volume_stats", "name"})
    w = Workload(path=path, horizon=c.duration(p, "plan", "horizon", required=True, positive=True))
    w.name = c.string(p, "plan", "name", name)
    w.sample = c.duration(p, "plan", "sample", DAY, positive=True)
    w.seed = c.integer(p, "plan", "seed", 0)
    w.stop = c.string(p, "plan", "stop", "full", choices=("full", "never"))
    w.volume_stats = c.string(p, "plan", "volume_stats", "sample",
                              choices=("sample", "end", "none"))  # fmt: skip
    w.docker = _docker(c, doc)
    w.pool = _pool(c, doc, docker=w.docker is not None)
    w.lvm = _lvm(c, doc, w, doc.get("pool", {}) if isinstance(doc.get("pool"), dict) else {})
    w.volumes = _volumes(c, doc)
    vols = {v.name: v for v in w.volumes}
    for v in w.volumes:
        if v.size > 2**63:
            c.fail(f"volumes[{w.volumes.index(v)}].size", "is larger than a device can be")
    acts = doc.get("activities", [])
    if not isinstance(acts, list):
        c.fail("activities", "must be an array of tables ([[activities]])")
    w.activities = [_activity(c, i, t, vols, w) for i, t in enumerate(acts)]
    return w


def load(path: str | Path) -> Workload:
    """Read and check a workload file (PlanError when it cannot be read or is wrong)."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PlanError(Path(path).name, None, "", e.strerror or str(e)) from None
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PlanError(Path(path).name, line, "", "not UTF-8 text") from None
    return parse(text, path)


def _toml_value(v: str):
    if re.fullmatch(r"-?\d+", v):
        return int(v)
    if v in ("true", "false"):
        return v == "true"
    if re.fullmatch(r"-?\d+\.\d*", v):
        return float(v)
    return v
