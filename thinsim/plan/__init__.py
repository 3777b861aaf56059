"""The capacity planner (issue 12): months of a pool's life in simulated time, every figure
the one a 6.1 kernel prints for the same operations.

    from thinsim import plan
    result = plan.run("examples/plans/snapshots.toml")   # or plan.run(plan.parse(text))
    print(plan.text(result))

``thinsim plan WORKLOAD.toml [--json] [--csv FILE] [--plot FILE.png|.svg] [--sweep K=V,V...]
[--scheduler ADDRESS] [--script FILE]`` is the same from a shell.

Every I/O and message goes through the model's public interface (``ModelPool`` with an
accounting store, ``ModelThin.write``/``discard``, ``create_snap``/``delete`` messages);
status figures are parsed from ``dmsetup status`` lines, events from the kernel's log.

Workload files (TOML)
---------------------

Sizes are bytes (an int) or strings such as ``"64KiB"``, ``"100GiB"``, ``"1.5TiB"``
(``K``/``KiB`` = 1024, ``kB`` = 1000, ``s`` = 512-byte sectors); durations are seconds or
strings such as ``"90s"``, ``"15m"``, ``"6h"``, ``"1d"``, ``"2w"``; shares are ``"5%"``.
Unknown fields are errors.  Errors name the file, line and field::

    plan.toml:7: pool.block_size: must be a multiple of 64KiB between 64KiB and 1GiB

``[plan]``
    ``horizon`` (required): how long to simulate.  ``sample`` (``"1d"``): the timeline's
    step.  ``seed`` (0): the random generator's seed (a given seed gives the same run).
    ``stop`` (``"full"``): stop where the pool leaves write mode or a write fails;
    ``"never"`` goes on to the horizon.  ``volume_stats`` (``"sample"``): when to count
    thin_ls's exclusive and shared blocks (``"sample"``, ``"end"``, ``"none"``: they read
    every mapping of every device; mapped blocks are always counted).  ``name``.

``[pool]``
    ``data``, ``metadata`` (required): the devices' sizes.  ``block_size`` (``"64KiB"``: a
    multiple of 64KiB, at most 1GiB).  ``low_water_mark`` (0: blocks as an int, or a size).
    ``features``: any of ``skip_block_zeroing``, ``ignore_discard``,
    ``no_discard_passdown``, ``error_if_no_space``.  ``error_if_no_space`` (false).
    ``no_space_timeout`` (``"60s"``: dm_thin_pool's parameter; 0 queues for ever).

``[[volumes]]`` (made in order, at ``at``, default 0, and activated)
    ``name`` (required), ``size`` (required for a thin), ``origin`` or ``clone_of``: the
    volume is a writable snapshot (a clone) of that earlier volume (size: the origin's).

``[[activities]]``, each with a ``type``:
    ``fill``: ``volume``, ``at`` (0), ``size`` (``"100%"`` of the volume, or a size),
    ``offset`` (0), ``io_size`` (one block).  Sequential writes.
    ``churn``: ``volume``, ``rate`` (per ``per``, default ``"1d"``): a share (``"5%"``: that
    share of the volume's blocks get one I/O each; distinct blocks for ``uniform``) or
    bytes (``"10GiB"``: that many bytes in ``io_size`` I/Os); ``pattern``: ``uniform``,
    ``zipf`` (``skew``, 1.2), ``hotset`` (``hot_fraction`` 0.2 of the blocks get
    ``hot_share`` 0.8 of the I/O), ``sequential`` (on from where the last one stopped,
    wrapping), ``append`` (on from the end of what was written; with ``live`` a
    log-structured file system: what lies more than ``live`` bytes behind is freed, for
    fstrim); ``io_size`` (``"4KiB"``: whole sectors dividing the block size, or whole
    blocks); ``start`` (0), ``end`` (the horizon).
    ``snapshots``: ``volume``, ``every``, ``keep`` (0: all): a snapshot of the volume each
    time (its origin suspended meanwhile), the oldest deleted beyond ``keep``.
    ``delete``: ``volume``, ``at``.
    ``fstrim``: ``volume``, ``every``: discards what the volume's file system freed (an
    ``append`` churn's ``live``); refused with EOPNOTSUPP where the pool ignores discards.
    ``docker_pull``, ``docker_run``: see ``[docker]``.

``[docker]`` (Docker's devicemapper driver, daemon/graphdriver/devmapper/deviceset.go)
    With it the pool defaults to Docker 1.12's loop-lvm pool (100 GiB data, 2 GiB
    metadata, 64 KiB blocks, low water mark 32768, ``skip_block_zeroing``).  ``basesize``
    (``"10GiB"``, dm.basesize): the base device, made at time 0 (create_thin and
    set_transaction_id, as every device change: Docker's transaction ids), with
    ``mkfs_bytes`` (0) written by mkfs.  ``min_free_space`` (``"10%"``,
    dm.min_free_space): a new device (a layer, a container) is refused with Docker's
    exact error when less is free.  ``blkdiscard`` (true, dm.blkdiscard): a device is
    discarded whole before it is deleted.
    ``docker_pull``: ``every``, ``layers`` (sizes), ``shared_layers`` (0: how many of the
    first layers each pull shares with the image before it), ``keep`` (0: all images kept;
    else the oldest image is removed, with the layers no image uses), ``io_size``.
    ``docker_run``: ``every``, ``writes`` (what the container writes, at random),
    ``init_bytes`` (``"16KiB"``: Docker's writes to the -init layer), ``lifetime``
    (``"1d"``: then the container is removed), ``io_size`` (``"4KiB"``).  Runs the
    newest image.

``[lvm]`` (LVM's thin pool: thinsim.plan.lvm says what of lvm2 2.03.16 it follows)
    ``vg_size`` (required): the volume group's size; the pool's data and metadata LVs (sizes
    rounded up to extents) and the spare metadata LV take their extents from it.
    ``extent_size`` (``"4MiB"``).  ``thin_pool_autoextend_threshold`` (100: off) and
    ``thin_pool_autoextend_percent`` (20), as in lvm.conf: lvm sets the table's low water
    mark from the threshold (so ``pool.low_water_mark`` is refused), and with
    ``monitoring`` (true) dmeventd checks the pool every 10 s and at each of its events and
    runs ``lvextend --use-policies``, which grows the LVs and reloads the pool until the
    group has no room (events ``autoextend``, ``vg_full``, ``lvextend_failed``,
    ``dmeventd_warning``).  ``pool_metadata_spare`` (true).
"""

from __future__ import annotations

from pathlib import Path

from .report import plot, text, to_csv, to_json
from .workload import PlanError, Workload, load, parse

__all__ = ["PlanError", "Workload", "load", "parse", "plot", "run", "text", "to_csv", "to_json"]


def run(workload: Workload | str | Path, *, record: bool = False) -> dict:
    """Run a workload (a checked :class:`Workload`, or a file's path); the result dict."""
    from .engine import Simulation

    w = workload if isinstance(workload, Workload) else load(workload)
    return Simulation(w, record=record).run()
