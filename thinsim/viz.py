"""Pictures of what dm-thin does, for the labs (notebooks/) and anyone at a Python prompt.

- :func:`block_map`: the pool's data blocks, which thin maps each one (and at which of its
  own blocks), shared between thins or exclusive to one, free;
- :func:`mapping_tree`: the mapping btrees as the metadata device holds them: the top-level
  tree of thin ids, each thin's tree of blocks below it, its nodes by level, and the nodes a
  thin shares with its snapshots (copy-on-write btrees share whole subtrees until one side
  writes);
- :func:`use_over_time`: data and metadata use of a ``thinsim plan`` run, its events marked
  (the planner's own picture, thinsim/plan/report.py).

Not in the block map: which blocks the pool zeroed (provisioned by a write that covered part
of the block, with zeroing on) against those written whole, which issue 14 asked for.  That is
decided by the bio that provisioned the block and recorded nowhere: not in the metadata
(thin_dump gives a mapping its data block and time, the same for both), not in the status,
and the data device's bytes cannot tell a zeroed block from one written whole with those
bytes.  So the kernel side cannot draw it; and a record the model kept for the picture alone
would be the model's own (the kernel's code it follows keeps none), lost when a pool is
activated again from its metadata, and unlike the same picture from a real pool.  Lab 4
(notebooks/04-zeroing.ipynb) measures zeroing where it shows: ``du`` of the data file.

Each reads what a real host offers too, so that the same picture comes from either backend:
the block map reads ``thin_dump``'s XML (a pool's ``metadata_dump()`` on both backends, or
the text of ``thin_dump -m`` run in a ``%%thinsim`` cell or on a real host), the tree reads
the metadata device's blocks (a model pool's, as its last commit wrote them, or a metadata
file or device of a real pool).  Each draws on ``ax`` when given, else on a new figure, and
returns the axes.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .constants import INTERNAL_NODE, METADATA_BLOCK_SIZE, THIN_SUPERBLOCK_LOCATION
from .thin_tools.metadata import Node, Superblock

# colours of the pictures, one meaning each
FREE, EXCLUSIVE, SHARED, TOP = "#f2f2f2", "#4c72b0", "#dd8452", "#8c8c8c"


# -- thin_dump's XML --------------------------------------------------------------------


@dataclass
class Device:
    """A ``<device>`` of thin_dump: its details and mappings, each (thin block, data block,
    time)."""

    dev_id: int
    mapped_blocks: int
    transaction: int
    creation_time: int
    snap_time: int
    mappings: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class Dump:
    """thin_dump's ``<superblock>``: the pool's block size, its data blocks (0 in a dump
    of a metadata snapshot, which does not know them) and its thins by id."""

    data_block_size: int
    nr_data_blocks: int
    time: int
    transaction: int
    devices: dict[int, Device]

    def owners(self) -> dict[int, list[tuple[int, int]]]:
        """Each mapped data block: the (thin, thin block) pairs that map it."""
        out: dict[int, list[tuple[int, int]]] = {}
        for dev in self.devices.values():
            for vblock, dblock, _time in dev.mappings:
                out.setdefault(dblock, []).append((dev.dev_id, vblock))
        return out


def parse_thin_dump(xml: str) -> Dump:
    """thin_dump's XML (thin-provisioning-tools 0.9.0's format) as a :class:`Dump`."""
    root = ET.fromstring(xml)
    devices = {}
    for d in root.iter("device"):
        dev = Device(*(int(d.get(k)) for k in Device.__dataclass_fields__ if k != "mappings"))
        for m in d:
            t = int(m.get("time"))
            if m.tag == "single_mapping":
                dev.mappings.append((int(m.get("origin_block")), int(m.get("data_block")), t))
            elif m.tag == "range_mapping":
                v, b, n = (int(m.get(k)) for k in ("origin_begin", "data_begin", "length"))
                dev.mappings.extend((v + i, b + i, t) for i in range(n))
        devices[dev.dev_id] = dev
    return Dump(
        int(root.get("data_block_size")),
        int(root.get("nr_data_blocks")),
        int(root.get("time")),
        int(root.get("transaction")),
        devices,
    )


def _dump_of(source) -> tuple[Dump, int | None]:
    """(the dump, the pool's data blocks when the source knows them)."""
    if isinstance(source, Dump):
        return source, source.nr_data_blocks or None
    if isinstance(source, str):
        dump = parse_thin_dump(source)
        return dump, dump.nr_data_blocks or None
    dump = parse_thin_dump(source.metadata_dump())  # a pool of either backend
    return dump, source.status_info().total_data_blocks


# -- the block map ----------------------------------------------------------------------


def block_map(source, *, nr_data_blocks: int | None = None, max_blocks: int = 256, ax=None):
    """The pool's data blocks left to right: a row for the pool (each block free, used by
    one thin, or shared), a row per thin with the blocks it maps, labelled with the thin's
    own block number where there is room.

    SOURCE: a pool (``ModelPool`` or ``KernelPool``: its ``metadata_dump()``), thin_dump's
    XML as a str, or a :class:`Dump`.  NR_DATA_BLOCKS: the pool's size in blocks where the
    source does not say (``thin_dump -m`` does not); the picture shows at most MAX_BLOCKS
    (the used ones first: up to the last used block).  Which blocks the pool zeroed is not
    shown: nothing the pool keeps says (the module's docstring)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    dump, known = _dump_of(source)
    owners = dump.owners()
    total = nr_data_blocks or known or (max(owners, default=-1) + 1)
    shown = min(total, max_blocks, max(max(owners, default=-1) + 1, min(total, 16)))
    thins = sorted(dump.devices)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(2 + shown * 0.25, 14), 1.2 + 0.45 * (len(thins) + 1)))
    # 0 free (or not this thin's), 1 exclusive, 2 shared
    grid = [[0] * shown for _ in range(len(thins) + 1)]
    for b in range(shown):
        who = owners.get(b, [])
        kind = 0 if not who else 1 if len({d for d, _ in who}) == 1 else 2
        grid[0][b] = kind
        for dev, _vblock in who:
            grid[1 + thins.index(dev)][b] = kind
    ax.imshow(grid, cmap=ListedColormap([FREE, EXCLUSIVE, SHARED]), vmin=0, vmax=2, aspect="auto")
    if shown <= 64:
        for b in range(shown):
            for dev, vblock in owners.get(b, []):
                ax.text(b, 1 + thins.index(dev), str(vblock), ha="center", va="center",
                        color="white", fontsize=7)  # fmt: skip
    ax.set_yticks(range(len(thins) + 1), ["pool"] + [f"thin {d}" for d in thins])
    ax.set_xticks([b - 0.5 for b in range(shown + 1)], minor=True)
    ax.set_yticks([r - 0.5 for r in range(len(thins) + 2)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    more = f"; {shown} of {total} shown" if shown < total else ""
    ax.set_xlabel(f"data block ({dump.data_block_size * 512 // 1024} KiB each{more})")
    ax.axhline(0.5, color="black", linewidth=1)
    _legend(ax, (EXCLUSIVE, "one thin's"), (SHARED, "shared"), (FREE, "free"))
    ax.set_title("data blocks: the numbers are each thin's own block")
    return ax


def _legend(ax, *items) -> None:
    """A legend of (colour, label) patches, right of the axes (both pictures' kind)."""
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=t) for c, t in items], loc="upper left",
              bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)  # fmt: skip


# -- the mapping btrees -----------------------------------------------------------------


@dataclass
class TreeNode:
    """A btree node as the metadata device holds it."""

    block: int
    leaf: bool
    entries: int
    children: list[int]  # internal nodes: the blocks below; leaves of the top tree: roots
    keys: list[int]


def _blocks_of(source, metadata_snap: bool) -> Callable[[int], bytes]:
    if isinstance(source, Mapping):
        return source.__getitem__
    if isinstance(source, (str, os.PathLike)):
        f = open(source, "rb")  # noqa: SIM115 -- read on demand, closed with the reader

        def read(b: int) -> bytes:
            f.seek(b * METADATA_BLOCK_SIZE)
            return f.read(METADATA_BLOCK_SIZE)

        return read
    # a model pool: its metadata as the last commit wrote it
    from .model.disk import metadata_blocks

    if metadata_snap:
        raise ValueError("a model pool's tree is drawn from its last commit, not a snapshot")
    source.commit()
    return metadata_blocks(source.target.pmd).__getitem__


def read_trees(source, *, metadata_snap: bool = False) -> tuple[list[int], dict[int, int],
                                                                 dict[int, TreeNode]]:  # fmt: skip
    """The mapping btrees: (the top tree's nodes, each thin's root, every node by block).

    SOURCE: a ``ModelPool`` (committed first), a metadata file or device's path, or a
    mapping of block numbers to 4 KiB blocks.  METADATA_SNAP: the held metadata snapshot's
    trees (a real pool's metadata is read safely under one: ``reserve_metadata_snap``)."""
    read = _blocks_of(source, metadata_snap)
    sb = Superblock.unpack(read(THIN_SUPERBLOCK_LOCATION))
    if metadata_snap:
        sb = Superblock.unpack(read(sb.metadata_snap))
    nodes: dict[int, TreeNode] = {}
    top: list[int] = []
    roots: dict[int, int] = {}

    def visit(b: int, in_top: bool) -> None:
        if in_top:
            top.append(b)
        if b in nodes:
            return
        n = Node(b, read(b))
        internal = bool(n.flags & INTERNAL_NODE)
        keys = list(n.keys())[: n.nr_entries]
        values = n.values(8)
        children = values if internal or in_top else []
        nodes[b] = TreeNode(b, not internal, n.nr_entries, children, keys)
        for key, child in zip(keys, values):
            if internal:
                visit(child, in_top)
            elif in_top:
                roots[key] = child
                visit(child, False)

    visit(sb.data_mapping_root, True)
    return top, roots, nodes


def mapping_tree(source, *, dev_ids=None, metadata_snap: bool = False, ax=None):
    """The two-level mapping btree: the top tree (thin ids, grey), then each thin's tree of
    blocks, by level; a node reached from more than one thin is shared (copy-on-write btrees
    share nodes until one side writes).  Each box: the node's metadata block number and its
    entries.  SOURCE as :func:`read_trees`; DEV_IDS: the thins to draw (all by default)."""
    import matplotlib.pyplot as plt

    top, roots, nodes = read_trees(source, metadata_snap=metadata_snap)
    chosen = sorted(roots) if dev_ids is None else [d for d in dev_ids if d in roots]
    reached: dict[int, set[int]] = {}
    depth: dict[int, int] = {}
    order: list[int] = []
    edges: list[tuple[int, int]] = []
    top_depth = {top[0]: 0}
    for b in top:  # the top tree's own levels
        for c in nodes[b].children if not nodes[b].leaf else []:
            top_depth[c] = top_depth[b] + 1
            edges.append((b, c))
    first = max(top_depth.values()) + 1
    for b in top:
        if b not in order:
            order.append(b)
            depth[b] = top_depth[b]

    def down(b: int, level: int, dev: int) -> None:
        reached.setdefault(b, set()).add(dev)
        if b not in depth:
            depth[b] = level
            order.append(b)
            for c in nodes[b].children:
                edges.append((b, c))
                down(c, level + 1, dev)
        else:
            for c in nodes[b].children:
                down(c, level + 1, dev)

    for dev in chosen:
        parent = next(b for b in top if nodes[b].leaf and dev in nodes[b].keys)
        edges.append((parent, roots[dev]))
        down(roots[dev], first, dev)
    levels: dict[int, list[int]] = {}
    for b in order:
        levels.setdefault(depth[b], []).append(b)
    width = max(len(v) for v in levels.values())
    pos = {}
    for lv, bs in levels.items():
        for i, b in enumerate(bs):
            pos[b] = ((i + 0.5) * width / len(bs), -lv)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(2 + 1.6 * width, 14), 1.2 + 1.1 * len(levels)))
    for a, b in dict.fromkeys(edges):
        if a in pos and b in pos:
            (x0, y0), (x1, y1) = pos[a], pos[b]
            ax.plot([x0, x1], [y0 - 0.2, y1 + 0.2], color="#555555", linewidth=0.8, zorder=1)
    for b, (x, y) in pos.items():
        n = nodes[b]
        if b in reached:
            colour = SHARED if len(reached[b]) > 1 else EXCLUSIVE
            who = ",".join(map(str, sorted(reached[b])))
            text = f"#{b}\n{'leaf' if n.leaf else 'internal'}: {n.entries}\nthin {who}"
        else:
            colour = TOP
            text = f"#{b}\nthins {','.join(map(str, n.keys))}" if n.leaf else f"#{b}"
        ax.text(x, y, text, ha="center", va="center", fontsize=7, color="white", zorder=2,
                bbox={"boxstyle": "round", "facecolor": colour, "edgecolor": "none"})  # fmt: skip
    ax.set_xlim(0, width)
    ax.set_ylim(-max(levels) - 0.6, 0.6)
    ax.set_yticks([-lv for lv in levels], [f"level {lv}" for lv in levels])
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    _legend(ax, (TOP, "top tree (thin ids)"), (EXCLUSIVE, "one thin's"), (SHARED, "shared"))
    ax.set_title("mapping btrees: metadata block and entries of each node")
    return ax


# -- use over time ----------------------------------------------------------------------


def use_over_time(result: dict, *, ax=None):
    """Data and metadata use (% of each device) over simulated days with the kernel's events
    marked (low water marks, out of space, read-only, LVM's extensions): RESULT is a
    ``thinsim plan`` run's (``thinsim.plan.run(workload)``)."""
    import matplotlib.pyplot as plt

    from .plan.report import draw_use

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 4.5))
    draw_use(result, ax)
    return ax
