"""The thin-pool target (drivers/md/dm-thin.c): table, modes, messages, status, I/O path.

A ``Pool`` is one pool object with its active table.  Thin devices (``thinsim.model.thin``)
send their bios here; the pool processes each bio at once, in the order the worker would
(ascending sector within one request), and commits when the kernel commits.
"""

from __future__ import annotations

import errno as E
from bisect import bisect_left
from dataclasses import dataclass, replace
from itertools import chain

from ..constants import DM_MAJOR, ENTRIES_PER_BITMAP, SECTOR_SIZE
from ..errors import ThinsimError, error_for
from .disk import CorruptNode, MetadataWriteError
from .metadata import (
    MAX_DEV_ID,
    SECTORS_PER_MD_BLOCK,
    THIN_METADATA_MAX_SECTORS,
    TIME_BITS,
    TIME_MASK,
    PoolMetadata,
)
from .space_map import _C, IE_CACHE_SIZE, FormatError, NoSpace, ie_slot
from .store import AccountingStore, DataStore

SECTOR = SECTOR_SIZE
DATA_DEV_BLOCK_SIZE_MIN_SECTORS = 128
DATA_DEV_BLOCK_SIZE_MAX_SECTORS = 2097152
NO_SPACE_TIMEOUT_SECS = 60

# pool_message's line for each message that failed (process_*_mesg)
_MESSAGE_FAILED = {
    "create_thin": lambda a: f"Creation of new thinly-provisioned device with id {a[1]} failed.",
    "create_snap": lambda a: f"Creation of new snapshot {a[1]} of device {a[2]} failed.",
    "delete": lambda a: f"Deletion of thin device {a[1]} failed.",
    "set_transaction_id": lambda a: f"Failed to change transaction id from {a[1]} to {a[2]}.",
    "reserve_metadata_snap": lambda a: "reserve_metadata_snap message failed.",
    "release_metadata_snap": lambda a: "release_metadata_snap message failed.",
}

# enum pool_mode
PM_WRITE, PM_OUT_OF_DATA_SPACE, PM_OUT_OF_METADATA_SPACE, PM_READ_ONLY, PM_FAIL = range(5)
_MODE_DESC = ("write", "out-of-data-space", "read-only", "read-only", "fail")


class KernelLog:
    """The simulated kernel log: ``device-mapper: ...`` lines, oldest first."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __repr__(self) -> str:
        return f"KernelLog({len(self.lines)} lines)"

    def emit(self, prefix: str, text: str) -> None:
        self.lines.append(f"device-mapper: {prefix}: {text}")

    def line(self, text: str) -> None:
        """A line from outside device-mapper (the block layer, loop)."""
        self.lines.append(text)


class Clock:
    """Simulated time in seconds; the model never waits on the wall clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __repr__(self) -> str:
        return f"Clock(now={self.now})"


def kstrtoull(s: str, limit: int = (1 << 64) - 1) -> int | None:
    """lib/kstrtox.c: kstrtoull base 10 -- an optional '+', digits, an optional '\\n'."""
    s = s.removesuffix("\n")
    s = s.removeprefix("+")
    if not s or not s.isascii() or not s.isdigit():
        return None
    v = int(s)
    return v if v <= limit else None


@dataclass(frozen=True)
class PoolFeatures:
    """struct pool_features."""

    mode: int = PM_WRITE
    zero_new_blocks: bool = True
    discard_enabled: bool = True
    discard_passdown: bool = True
    error_if_no_space: bool = False

    def emit(self) -> str:
        """dm-thin.c: emit_flags -- count, then the flags in their fixed order."""
        flags = []
        if not self.zero_new_blocks:
            flags.append("skip_block_zeroing")
        if not self.discard_enabled:
            flags.append("ignore_discard")
        if not self.discard_passdown:
            flags.append("no_discard_passdown")
        if self.mode == PM_READ_ONLY:
            flags.append("read_only")
        if self.error_if_no_space:
            flags.append("error_if_no_space")
        return f"{len(flags)} " + "".join(f + " " for f in flags)


THIN_METADATA_MAX_SECTORS_WARNING = 16 * (1024 * 1024 * 1024 >> 9)


def warn_if_metadata_device_too_big(log: KernelLog, metadata_bytes: int, name: str) -> None:
    """dm-thin.c: warn_if_metadata_device_too_big."""
    if metadata_bytes // SECTOR > THIN_METADATA_MAX_SECTORS_WARNING:
        log.emit(
            "thin",
            f"Metadata device {name} is larger than {THIN_METADATA_MAX_SECTORS} sectors: "
            "excess space will not be used.",
        )


class TableError(ThinsimError):
    """A rejected table: ``ti_error`` is the kernel's ti->error text."""

    def __init__(self, ti_error: str, errno: int = E.EINVAL) -> None:
        super().__init__(ti_error, errno=errno)
        self.ti_error = ti_error


@dataclass(frozen=True)
class PoolTable:
    """A parsed thin-pool table line (pool_ctr's arguments)."""

    metadata_dev: str
    data_dev: str
    block_size: int
    low_water_blocks: int
    features: PoolFeatures

    @classmethod
    def parse(
        cls,
        argv: list[str],
        *,
        metadata_bytes: int | None = None,
        metadata_dev_name: str = "loop0",
        log: KernelLog | None = None,
    ) -> PoolTable:
        """dm-thin.c: pool_ctr's argument checks, in the kernel's order.

        With ``metadata_bytes`` and ``log``, the warning for a metadata device past 16 GiB
        is logged where pool_ctr logs it (after the features, before the block size).
        """
        if len(argv) < 4:
            raise TableError("Invalid argument count")
        if argv[0] == argv[1]:
            raise TableError("Error setting metadata or data device")
        features = _parse_pool_features(argv[4:])
        if log is not None and metadata_bytes is not None:
            warn_if_metadata_device_too_big(log, metadata_bytes, metadata_dev_name)
        bs = kstrtoull(argv[2], (1 << 64) - 1)
        if (
            bs is None
            or not bs
            or bs < DATA_DEV_BLOCK_SIZE_MIN_SECTORS
            or bs > DATA_DEV_BLOCK_SIZE_MAX_SECTORS
            or bs & (DATA_DEV_BLOCK_SIZE_MIN_SECTORS - 1)
        ):
            raise TableError("Invalid block size")
        lwm = kstrtoull(argv[3])
        if lwm is None:
            raise TableError("Invalid low water mark")
        return cls(argv[0], argv[1], bs, lwm, features)


def _parse_pool_features(args: list[str]) -> PoolFeatures:
    """dm-thin.c: parse_pool_features (dm_read_arg_group with 0..4)."""
    pf = PoolFeatures()
    if not args:
        return pf
    count = _sscanf_u(args[0])
    rest = args[1:]
    if count is None or count > 4 or len(rest) < count:
        raise TableError("Invalid number of pool feature arguments")
    for name in rest[:count]:
        low = name.lower()
        if low == "skip_block_zeroing":
            pf = replace(pf, zero_new_blocks=False)
        elif low == "ignore_discard":
            pf = replace(pf, discard_enabled=False)
        elif low == "no_discard_passdown":
            pf = replace(pf, discard_passdown=False)
        elif low == "read_only":
            pf = replace(pf, mode=PM_READ_ONLY)
        elif low == "error_if_no_space":
            pf = replace(pf, error_if_no_space=True)
        else:
            raise TableError("Unrecognised pool feature requested")
    return pf


def _sscanf_u(s: str) -> int | None:
    """sscanf(s, "%u%c") == 1: leading space and sign allowed, nothing after the digits."""
    t = s.lstrip(" \t\n\v\f\r")
    sign = 1
    if t[:1] in ("+", "-"):
        sign = -1 if t[0] == "-" else 1
        t = t[1:]
    if not t or not t.isascii() or not t.isdigit():
        return None
    return (sign * int(t)) & 0xFFFFFFFF


def _leaf_gather(vblocks, k, end, keys, values, j, snapshotted, time_bits, maps, index):
    """The writes ``vblocks[k:end]`` that ``Pool._leaf_run`` may take as one run in a
    mapping leaf (``keys``, ``values``; the first write at ``j``), as (their old data
    blocks, their indexes in the leaf): while the writes ascend, each to a block mapped
    in the leaf, shared (its time below ``snapshotted``), its old block counted 2 or more
    in the data ll's ``maps``.  A write whose old block's bitmap shares an ie-cache slot
    with bitmap ``index`` (the allocations') is the last taken.  Nothing changes.

    The reference for ``_space_map.c``'s ``leaf_gather``, which stands in for it where
    it is built (``_C_GATHER``)."""
    entries = ENTRIES_PER_BITMAP
    mask = (1 << time_bits) - 1
    olds = []
    idx = []
    last = -1
    nkeys = len(keys)
    for i in range(k, min(end, len(vblocks))):
        vb = vblocks[i]
        if vb <= last:
            break
        j = bisect_left(keys, vb, j)
        if j == nkeys or keys[j] != vb:
            break
        value = values[j]
        if snapshotted <= (value & mask):
            break
        old = value >> time_bits
        oi = old // entries
        m = maps[oi]
        if m is None or m[old - oi * entries] < 2:  # a count below 2 (get_count)
            break
        olds.append(old)
        idx.append(j)
        if oi != index and not (oi - index) % IE_CACHE_SIZE:
            # ie_slot(oi) == ie_slot(index) (hash_index multiplies by an odd number: two
            # bitmaps share a slot where their indexes agree modulo the cache's size):
            # this one's release writes the allocations' entry back, so the run ends with
            # it (one at a time, the next allocation would take the slot back)
            break
        last = vb
    return olds, idx


# _leaf_gather in C (None: the Python loop; THINSIM_NO_C=1 asks for it)
_C_GATHER = _C.leaf_gather if _C is not None else None


class Pool:
    """One thin-pool object: its metadata, its active table, its mode and its counters.

    ``metadata_bytes`` and ``data_bytes`` are the sizes of the two devices; ``length_sectors``
    is the table length (the data size the pool uses).  ``store`` holds the data device's
    contents.
    """

    def __init__(
        self,
        table: PoolTable,
        *,
        length_sectors: int,
        metadata_bytes: int,
        data_bytes: int,
        store: DataStore | None = None,
        log: KernelLog | None = None,
        clock: Clock | None = None,
        name: str = f"{DM_MAJOR}:0",
        data_dev_name: str = "loop1",
        data_dev_discards: bool = True,
        metadata: PoolMetadata | None = None,
        track_metadata_writes: bool = False,
    ) -> None:
        self.log = log if log is not None else KernelLog()
        self.clock = clock if clock is not None else Clock()
        self.store = store if store is not None else AccountingStore()
        self.name = name
        self.data_dev_name = data_dev_name
        self.data_dev_discards = data_dev_discards
        self.metadata_bytes = metadata_bytes
        self.data_bytes = data_bytes
        self.no_space_timeout = NO_SPACE_TIMEOUT_SECS
        self.event_nr = 0
        self.suspended = True  # a pool is created suspended, active after its first resume
        self.low_water_triggered = False
        self.thins: dict[int, object] = {}  # active thin targets by dev id
        pf = table.features
        if metadata is None:
            if pf.mode == PM_READ_ONLY:
                # __open_or_format_metadata: a blank device is not formatted read-only
                raise TableError("Error creating metadata object", E.EPERM)
            nr_md = min(metadata_bytes // 4096, THIN_METADATA_MAX_SECTORS // SECTORS_PER_MD_BLOCK)
            try:
                metadata = PoolMetadata(nr_md, table.block_size, track_writes=track_metadata_writes)
            except FormatError as e:
                # dm_pool_metadata_open failed: pool_create's "Error creating metadata object"
                for prefix, text in e.lines:
                    self.log.emit(prefix, text)
                raise TableError("Error creating metadata object", e.errno) from None
        elif metadata.data_block_size != table.block_size:
            self.log.emit(
                "thin metadata",
                f"changing the data block size (from {metadata.data_block_size} to "
                f"{table.block_size}) is not supported",
            )
            raise TableError("Error creating metadata object")
        self.pmd = metadata
        metadata.metadata_sm.log = self.log
        self.sectors_per_block = table.block_size
        self.block_bytes = table.block_size * SECTOR
        self.mode = PM_WRITE if not metadata.needs_check else PM_READ_ONLY
        self.out_of_data_space = False
        self.no_space_deadline: float | None = None
        self.table: PoolTable | None = None
        self.pending: tuple[PoolTable, int] | None = None
        self.load(table, length_sectors)

    def __repr__(self) -> str:
        return f"Pool(name={self.name!r}, block_size={self.sectors_per_block})"

    # -- tables ---------------------------------------------------------------------

    def load(self, table: PoolTable, length_sectors: int) -> None:
        """Load a table into the inactive slot (pool_ctr on an existing pool object)."""
        if self.table is not None and table.features.discard_enabled != self.pf.discard_enabled:
            raise TableError("Discard support cannot be disabled once enabled")
        self.pending = (table, length_sectors)
        # pool_ctr: dm_pool_register_metadata_threshold, from the device's size now
        self.pmd.metadata_sm.register_threshold(
            self.metadata_threshold(), self._metadata_low_callback
        )

    def _metadata_low_callback(self) -> None:
        """dm-thin.c: metadata_low_callback."""
        self.log.emit(
            "thin", f"{self.name}: reached low water mark for metadata device: sending event."
        )
        self._event()

    def _adjusted(self, table: PoolTable) -> PoolFeatures:
        """pool_io_hints: disable_passdown_if_not_supported."""
        pf = table.features
        if pf.discard_enabled and pf.discard_passdown and not self.data_dev_discards:
            self.log.emit(
                "thin",
                f"Data device ({self.data_dev_name}) discard unsupported: "
                "Disabling discard passdown.",
            )
            pf = replace(pf, discard_passdown=False)
        return pf

    def _bind_pending(self) -> None:
        table, length = self.pending
        self.pending = None
        self.table = table
        self.length_sectors = length
        self.requested_pf = table.features
        self.adjusted_pf = self._adjusted(table)
        self.pf = replace(self.adjusted_pf, mode=self.mode)
        self.low_water_blocks = table.low_water_blocks
        self._new_table = True

    def suspend(self) -> None:
        """pool_postsuspend: the pool commits when it is suspended."""
        if self.suspended:
            return
        self._commit()
        self.suspended = True

    def resume(self) -> None:
        """Swap in a loaded table, then pool_preresume and pool_resume.

        A failed preresume leaves the new table live and the pool suspended, as dm does.
        """
        try:
            self._resume()
        except ThinsimError as e:
            # dm-table.c: dm_table_resume_targets
            self.log.emit("table", f"{self.name}: thin-pool: preresume failed, error = -{e.errno}")
            raise

    def _resume(self) -> None:
        # dm-ioctl.c: do_resume -- a live device with no new table is left alone; a new
        # table is swapped in under a suspend
        if not self.suspended:
            if self.pending is None:
                return
            self.suspend()
        if self.pending is not None:
            self._bind_pending()
            new_mode = self.requested_pf.mode
        else:
            new_mode = self.mode
        self._bind_control_target(new_mode)
        need_commit = self._maybe_resize_data_dev()
        need_commit |= self._maybe_resize_metadata_dev()
        if need_commit:
            self._commit()
        self.low_water_triggered = False
        self.suspended = False

    def _bind_control_target(self, new_mode: int) -> None:
        self.pf = replace(self.adjusted_pf, mode=self.mode)
        self._set_mode(new_mode)

    def _maybe_resize_data_dev(self) -> bool:
        data_size = self.length_sectors // self.sectors_per_block
        sb_size = self.pmd.data_dev_size()
        if data_size < sb_size:
            self.log.emit(
                "thin",
                f"{self.name}: pool target ({data_size} blocks) too small: expected {sb_size}",
            )
            raise error_for(E.EINVAL)
        if data_size > sb_size:
            if self.pmd.needs_check:
                self.log.emit(
                    "thin", f"{self.name}: unable to grow the data device until repaired."
                )
                return False
            if sb_size:
                self.log.emit(
                    "thin",
                    f"{self.name}: growing the data device from {sb_size} to {data_size} blocks",
                )
            try:
                self.pmd.resize_data_dev(data_size)
            except NoSpace:
                self._metadata_operation_failed("dm_pool_resize_data_dev", E.ENOSPC)
                raise error_for(E.ENOSPC) from None
            return True
        return False

    def metadata_dev_blocks(self) -> int:
        """get_metadata_dev_size_in_blocks."""
        return min(self.metadata_bytes // SECTOR, THIN_METADATA_MAX_SECTORS) // SECTORS_PER_MD_BLOCK

    def _maybe_resize_metadata_dev(self) -> bool:
        dev_blocks = self.metadata_dev_blocks()
        sb_blocks = self.pmd.metadata_dev_size()
        if dev_blocks < sb_blocks:
            self.log.emit(
                "thin",
                f"{self.name}: metadata device ({dev_blocks} blocks) too small: expected {sb_blocks}",
            )
            raise error_for(E.EINVAL)
        if dev_blocks > sb_blocks:
            if self.pmd.needs_check:
                self.log.emit(
                    "thin", f"{self.name}: unable to grow the metadata device until repaired."
                )
                return False
            warn_if_metadata_device_too_big(self.log, self.metadata_bytes, "loop0")
            self.log.emit(
                "thin",
                f"{self.name}: growing the metadata device from {sb_blocks} to {dev_blocks} blocks",
            )
            if self.mode == PM_OUT_OF_METADATA_SPACE:
                self._set_mode(PM_WRITE)
            try:
                self.pmd.resize_metadata_dev(dev_blocks, self.log)
            except NoSpace:
                self._metadata_operation_failed("dm_pool_resize_metadata_dev", E.ENOSPC)
                raise error_for(E.ENOSPC) from None
            return True
        return False

    def _metadata_write_failed(self, e: MetadataWriteError) -> None:
        """What the loop device under the metadata logs when a write to its file fails
        (loop.c: lo_write_bvec)."""
        if e.length:
            self.log.line(f"loop: Write error at byte offset {e.offset}, length {e.length}.")

    def _metadata_operation_failed(self, op: str, errno: int) -> None:
        """dm-thin.c: metadata_operation_failed -- abort the transaction, go read-only."""
        self.log.emit("thin", f"{self.name}: metadata operation '{op}' failed: error = -{errno}")
        self._abort_read_only()

    def _abort_read_only(self) -> None:
        """abort_transaction, then set_pool_mode(PM_READ_ONLY)."""
        self.log.emit("thin", f"{self.name}: aborting current metadata transaction")
        self.pmd.abort()
        self.pmd.needs_check = True
        self._set_mode(PM_READ_ONLY)

    def find_block(self, td, vblock: int, _write: bool = False):
        """dm_thin_find_block for a bio (pmd.lookup's result): thin_bio_map's lookup, then
        the worker's (process_cell) where the map could not do it without reading a node.

        A node read from the metadata device that fails its checks ends the bio with EIO,
        the pool's mode unchanged, as dm-thin does: the worker logs the failed lookup and
        errors the bio (bio_io_error), the first time the node is read; after that the
        map's own lookup fails on the block dm-bufio kept, and errors the bio with no
        line of dm-thin's.  (The kernel's lines are rate-limited, 10 per call site in 5
        s; the model logs each.)"""
        try:
            if _write:
                return self.pmd.lookup_for_write(td, vblock)
            return self.pmd.lookup(td, vblock)
        except CorruptNode as e:
            self._find_failed(e)

    def _find_failed(self, e: CorruptNode) -> None:
        """``find_block``'s lookup met a node that fails its checks: EIO (see there)."""
        e.log(self.log)
        if not e.again:
            fn = "process_cell" if self.mode == PM_WRITE else "__process_bio_read_only"
            self.log.emit("thin", f"{fn}: dm_thin_find_block() failed: error = -{e.errno}")
        raise error_for(E.EIO) from None

    # -- modes -----------------------------------------------------------------------

    def _event(self) -> None:
        self.event_nr += 1

    def _set_mode(self, new_mode: int) -> None:
        """dm-thin.c: set_pool_mode."""
        old_mode = self.mode
        if new_mode == PM_WRITE and self.pmd.needs_check:
            self.log.emit(
                "thin", f"{self.name}: unable to switch pool to write mode until repaired."
            )
            new_mode = old_mode if old_mode != new_mode else PM_READ_ONLY
        if old_mode == PM_FAIL:
            new_mode = old_mode
        if new_mode == PM_OUT_OF_DATA_SPACE:
            self.out_of_data_space = True
            if not self.pf.error_if_no_space and self.no_space_timeout:
                self.no_space_deadline = self.clock.now + self.no_space_timeout
        elif new_mode == PM_WRITE:
            self.no_space_deadline = None
            self.out_of_data_space = False
            self.pf = replace(self.pf, error_if_no_space=self.requested_pf.error_if_no_space)
        self.mode = new_mode
        self.pf = replace(self.pf, mode=new_mode)
        if old_mode != new_mode:
            self._notify_mode_change()

    def _notify_mode_change(self) -> None:
        extra = ""
        if self.mode == PM_OUT_OF_DATA_SPACE:
            extra = " (error IO)" if self.pf.error_if_no_space else " (queue IO)"
        self._event()
        self.log.emit("thin", f"{self.name}: switching pool to {_MODE_DESC[self.mode]}{extra} mode")

    def _no_space_timeout(self) -> None:
        """do_no_space_timeout: queued I/O now fails, and so does later I/O."""
        self.no_space_deadline = None
        if self.mode == PM_OUT_OF_DATA_SPACE and not self.pf.error_if_no_space:
            self.pf = replace(self.pf, error_if_no_space=True)
            self._notify_mode_change()

    # -- commit ----------------------------------------------------------------------

    def _commit(self) -> bool:
        """dm-thin.c: commit -- then check for metadata and data space.

        False where the kernel's commit() returns an error: the pool is read-only (or out
        of metadata space, or failed), or the commit itself failed and was aborted.  The
        callers that act on it (a flush's bios, alloc_data_block) fail; the others ignore
        it, as the kernel's ``(void) commit(pool)`` callers do."""
        if self.mode >= PM_OUT_OF_METADATA_SPACE:
            return False
        try:
            self.pmd.commit()
        except NoSpace:
            self._metadata_operation_failed("dm_pool_commit_metadata", E.ENOSPC)
            return False
        except MetadataWriteError as e:
            self._metadata_write_failed(e)
            self._metadata_operation_failed("dm_pool_commit_metadata", e.errno)
            return False
        if self.pmd.free_metadata_blocks() == 0 and self.mode < PM_OUT_OF_METADATA_SPACE:
            self.log.emit("thin", "No free metadata blocks")
            self._set_mode(PM_OUT_OF_METADATA_SPACE)
        if self.mode == PM_OUT_OF_DATA_SPACE and self.pmd.free_data_blocks():
            self._set_mode(PM_WRITE)
        return True

    def commit(self) -> bool:
        """Commit the current transaction, as the kernel does on a flush (or for time).
        False when it failed (see ``_commit``)."""
        return self._commit()

    # -- messages ----------------------------------------------------------------------

    def message(self, text: str) -> None:
        """dm-thin.c: pool_message.  Raises the kernel's errno; commits on success."""
        argv = text.split()
        if not argv:
            raise error_for(E.EINVAL)
        if self.mode >= PM_OUT_OF_METADATA_SPACE:
            self.log.emit(
                "thin",
                f"{self.name}: unable to service pool target messages in READ_ONLY or FAIL mode",
            )
            raise error_for(E.EOPNOTSUPP)
        name = argv[0].lower()
        handler = {
            "create_thin": self._msg_create_thin,
            "create_snap": self._msg_create_snap,
            "delete": self._msg_delete,
            "set_transaction_id": self._msg_set_transaction_id,
            "reserve_metadata_snap": self._msg_reserve,
            "release_metadata_snap": self._msg_release,
        }.get(name)
        if handler is None:
            self.log.emit("thin", f"Unrecognised thin pool target message received: {argv[0]}")
            raise error_for(E.EINVAL)
        try:
            handler(argv)
        except CorruptNode as e:
            # The kernel logs the node, then the message's failure, and returns the
            # error, its transaction as the failed btree operation left it.  The model's
            # operations are not written to stop halfway, so its transaction is aborted,
            # as metadata_operation_failed does for the worker's failed operations
            # (abort_transaction, read-only mode): a model pool never goes on from half a
            # change.
            e.log(self.log)
            self.log.emit("thin", _MESSAGE_FAILED[name](argv))
            self._abort_read_only()
            raise error_for(e.errno) from None
        self._commit()

    def _check_arg_count(self, argv, required: int) -> None:
        if len(argv) != required:
            self.log.emit(
                "thin", f"Message received with {len(argv)} arguments instead of {required}."
            )
            raise error_for(E.EINVAL)

    def _read_dev_id(self, arg: str) -> int:
        v = kstrtoull(arg)
        if v is None or v > MAX_DEV_ID:
            self.log.emit("thin", f"Message received with invalid device id: {arg}")
            raise error_for(E.EINVAL)
        return v

    def _msg_create_thin(self, argv) -> None:
        self._check_arg_count(argv, 2)
        dev = self._read_dev_id(argv[1])
        try:
            self.pmd.create_thin(dev)
        except (FileExistsError, NoSpace) as e:
            self.log.emit(
                "thin", f"Creation of new thinly-provisioned device with id {argv[1]} failed."
            )
            raise error_for(E.EEXIST if isinstance(e, FileExistsError) else E.ENOSPC) from None

    def _msg_create_snap(self, argv) -> None:
        self._check_arg_count(argv, 3)
        dev = self._read_dev_id(argv[1])
        origin = self._read_dev_id(argv[2])
        try:
            self.pmd.create_snap(dev, origin)
        except (FileExistsError, KeyError) as e:
            self.log.emit("thin", f"Creation of new snapshot {argv[1]} of device {argv[2]} failed.")
            raise error_for(E.EEXIST if isinstance(e, FileExistsError) else E.ENODATA) from None

    def _msg_delete(self, argv) -> None:
        self._check_arg_count(argv, 2)
        dev = self._read_dev_id(argv[1])
        try:
            self.pmd.delete_thin(dev)
        except (KeyError, BlockingIOError, NoSpace) as e:
            self.log.emit("thin", f"Deletion of thin device {argv[1]} failed.")
            code = {BlockingIOError: E.EBUSY, KeyError: E.ENODATA}.get(type(e), E.ENOSPC)
            raise error_for(code) from None

    def _msg_set_transaction_id(self, argv) -> None:
        self._check_arg_count(argv, 3)
        old = kstrtoull(argv[1])
        if old is None:
            self.log.emit("thin", f"set_transaction_id message: Unrecognised id {argv[1]}.")
            raise error_for(E.EINVAL)
        new = kstrtoull(argv[2])
        if new is None:
            self.log.emit("thin", f"set_transaction_id message: Unrecognised new id {argv[2]}.")
            raise error_for(E.EINVAL)
        try:
            self.pmd.set_transaction_id(old, new)
        except CorruptNode:
            raise
        except ValueError:
            self.log.emit("thin metadata", "mismatched transaction id")
            self.log.emit("thin", f"Failed to change transaction id from {argv[1]} to {argv[2]}.")
            raise error_for(E.EINVAL) from None

    def _msg_reserve(self, argv) -> None:
        self._check_arg_count(argv, 1)
        self._commit()
        try:
            self.pmd.reserve_metadata_snap()
        except BlockingIOError:
            self.log.emit(
                "thin metadata",
                "Pool metadata snapshot already exists: release this before taking another.",
            )
            self.log.emit("thin", "reserve_metadata_snap message failed.")
            raise error_for(E.EBUSY) from None
        except NoSpace:
            self.log.emit("thin", "reserve_metadata_snap message failed.")
            raise error_for(E.ENOSPC) from None

    def _msg_release(self, argv) -> None:
        self._check_arg_count(argv, 1)
        try:
            self.pmd.release_metadata_snap()
        except CorruptNode:
            raise
        except ValueError:
            self.log.emit("thin metadata", "No pool metadata snapshot found: nothing to release.")
            self.log.emit("thin", "release_metadata_snap message failed.")
            raise error_for(E.EINVAL) from None

    # -- status ------------------------------------------------------------------------

    def metadata_threshold(self) -> int:
        """calc_metadata_threshold: from the metadata device's current size."""
        return min(1024, self.metadata_dev_blocks() // 4)

    def status(self, noflush: bool = False) -> str:
        """pool_status STATUSTYPE_INFO: the params, with their trailing space."""
        if self.mode == PM_FAIL:
            return "Fail"
        if not noflush and not self.suspended:
            self._commit()
        pmd = self.pmd
        total_md = pmd.metadata_dev_size()
        used_md = total_md - pmd.free_metadata_blocks()
        total_data = pmd.data_dev_size()
        used_data = total_data - pmd.free_data_blocks()
        held = str(pmd.held_root) if pmd.held_root else "-"
        if self.mode == PM_OUT_OF_DATA_SPACE:
            mode = "out_of_data_space"
        elif self.mode >= PM_OUT_OF_METADATA_SPACE:
            mode = "ro"
        else:
            mode = "rw"
        pf = self.pf
        if not pf.discard_enabled:
            discard = "ignore_discard"
        elif pf.discard_passdown:
            discard = "discard_passdown"
        else:
            discard = "no_discard_passdown"
        nospace = "error_if_no_space" if pf.error_if_no_space else "queue_if_no_space"
        check = "needs_check" if pmd.needs_check else "-"
        return (
            f"{pmd.trans_id} {used_md}/{total_md} {used_data}/{total_data} {held} {mode} "
            f"{discard} {nospace} {check} {self.metadata_threshold()} "
        )

    def table_params(self, metadata_dev: str = "7:0", data_dev: str = "7:1") -> str:
        """pool_status STATUSTYPE_TABLE."""
        return (
            f"{metadata_dev} {data_dev} {self.sectors_per_block} {self.low_water_blocks} "
            + self.requested_pf.emit()
        )

    def _check(self) -> None:
        """Assert the invariants of the pool and everything under it."""
        self.pmd._check()
        assert self.mode in (
            PM_WRITE,
            PM_OUT_OF_DATA_SPACE,
            PM_OUT_OF_METADATA_SPACE,
            PM_READ_ONLY,
            PM_FAIL,
        )
        assert self.pf.mode == self.mode
        assert (
            self.mode == PM_OUT_OF_DATA_SPACE
        ) == self.out_of_data_space or self.mode > PM_OUT_OF_DATA_SPACE
        for dev_id, thin in self.thins.items():
            assert thin.td is self.pmd.devices.get(dev_id), dev_id

    # -- the data path -----------------------------------------------------------------

    def _wait_for_space(self) -> None:
        """A bio queued while out of data space: nothing else runs in the model, so it
        waits (in simulated time) until no_space_timeout fails it with ENOSPC."""
        if self.pf.error_if_no_space:
            raise error_for(E.ENOSPC)
        if self.no_space_deadline is None:
            # no_space_timeout == 0: queued for ever; the model cannot wait for ever
            raise error_for(E.ENOSPC, "I/O queued with no no_space_timeout")
        self.clock.now = max(self.clock.now, self.no_space_deadline)
        self._no_space_timeout()
        raise error_for(E.ENOSPC)

    def alloc_data_block(self) -> int:
        """dm-thin.c: alloc_data_block."""
        pmd = self.pmd
        free = pmd.free_data_blocks()
        if free <= self.low_water_blocks and not self.low_water_triggered:
            self.log.emit(
                "thin", f"{self.name}: reached low water mark for data device: sending event."
            )
            self.low_water_triggered = True
            self._event()
        if not free:
            # commit to see if that frees some space; a failed commit ends it here
            if not self._commit():
                raise NoSpace
            free = pmd.free_data_blocks()
            if not free:
                self._set_mode(PM_OUT_OF_DATA_SPACE)
                raise NoSpace
        try:
            b = pmd.alloc_data_block()
        except NoSpace:
            self._set_mode(PM_OUT_OF_DATA_SPACE)
            raise
        if not pmd.free_metadata_blocks() and not self._commit():
            # "commit before we use up the metadata reserve": when that commit fails the
            # transaction (and the block just allocated) is aborted and the bio is not
            # provisioned (provision_block -> retry_bios_on_resume: EIO once read-only)
            raise NoSpace
        return b

    def _unserviceable(self) -> None:
        """handle_unserviceable_bio / retry_bios_on_resume."""
        if self.mode == PM_OUT_OF_DATA_SPACE:
            self._wait_for_space()
        raise error_for(E.EIO)

    def _new_block_for(self) -> int:
        if self.mode != PM_WRITE:
            self._unserviceable()
        try:
            return self.alloc_data_block()
        except NoSpace:
            self._unserviceable()
            raise  # not reached

    def write_block(self, td, vblock: int, within: int, data: bytes) -> None:
        """One bio's worth of write to one virtual block (thin_bio_map + process_bio)."""
        if self.mode == PM_FAIL:
            raise error_for(E.EIO)
        bb = self.block_bytes
        whole = within == 0 and len(data) == bb
        pmd = self.pmd
        r = self.find_block(td, vblock, True)
        store = self.store
        try:
            if r is None:
                # provision_block -> schedule_zero
                b = self._new_block_for()
                off = b * bb
                if self.pf.zero_new_blocks and not whole:
                    store.zero(off, bb)
                store.write(off + within, data)
                self._insert_new(td, vblock, b)
                return
            data_block, shared = r
            if shared:
                # process_shared_bio -> break_sharing -> schedule_internal_copy
                b = self._new_block_for()
                off = b * bb
                if not whole:
                    store.copy(data_block * bb, off, bb)
                store.write(off + within, data)
                # the insert, where it only sets the value in the leaf the lookup found
                # (a leaf already copied in this transaction: most of a day's writes)
                self._insert(td, vblock, b, True)
                return
            pmd._walk = None
            off = data_block * bb
            store.write(off + within, data)
        except OSError:
            pmd._walk = None
            self._data_write_failed(off)

    def write_each_fast(
        self, td, offsets: list[int], start: int, data: bytes, seen: int, peak: int
    ):
        """``write_block`` of ``data`` at each of ``offsets[start:]`` (byte offsets into the
        device, each write within one block) in turn, the transaction manager at rest
        after each (``at_rest``), as long as none fails and the log keeps ``seen`` lines
        (the write that logged one is not followed by ``at_rest``: the caller's part):
        a container's random 4 KiB writes, without a call a write.  The commonest case's
        steps are inline: a write to a block the device has not mapped, in write mode,
        its data block allocated without an event or a commit
        (``_DiskLowLevel.new_in_place``), its insert made in the leaf the lookup found
        (``PoolMetadata.lookup_for_new`` and ``insert_new_at``); any other case is
        ``write_block``'s (a block found mapped: its lookup, the same walk, finds it
        again).  Returns (the index after the last write made, the most data blocks in
        use after any write made or ``peak``, the error that write failed with or None)."""
        pmd = self.pmd
        data_sm = pmd.data_sm
        ll = data_sm.ll
        lookup = pmd.lookup_for_new
        new_in_place = ll.new_in_place
        at_rest = pmd.tm.at_rest
        lines = self.log.lines
        bb = self.block_bytes
        for k in range(start, len(offsets)):
            off = offsets[k]
            vblock = off // bb
            within = off - vblock * bb
            try:
                if self.mode != PM_WRITE:
                    self.write_block(td, vblock, within, data)
                else:
                    try:
                        r = lookup(td, vblock)
                    except CorruptNode as e:
                        self._find_failed(e)
                    if r is not None:
                        self.write_block(td, vblock, within, data)
                    else:
                        # alloc_data_block where free space is above the low water mark
                        # (or the event raised already): no event, no commit for want
                        # of a free block
                        free = data_sm.old_nr_blocks - ll.nr_allocated
                        b = None
                        if free > self.low_water_blocks or (free and self.low_water_triggered):
                            pmd.in_service = True  # PoolMetadata.alloc_data_block
                            b = new_in_place(data_sm.begin)
                        if b is None:
                            self._write_new(td, vblock, within, data)
                        else:
                            data_sm.begin = b + 1
                            self._write_allocated(td, vblock, within, data, b)
            except ThinsimError as e:
                return k + 1, peak, e
            allocated = ll.nr_allocated
            peak = max(peak, allocated)
            if len(lines) != seen:
                return k + 1, peak, None  # the caller reads the lines, then at rest
            at_rest()
        return len(offsets), peak, None

    def _write_allocated(self, td, vblock: int, within: int, data: bytes, b: int) -> None:
        """``write_block``'s steps for a block ``lookup_for_new`` found unmapped, after
        ``new_in_place`` allocated data block ``b``: alloc_data_block's check of the
        metadata reserve, the data written, the insert."""
        pmd = self.pmd
        bb = self.block_bytes
        store = self.store
        try:
            unchanged = pmd.free_metadata_blocks()
            if not unchanged and not self._commit():
                self._unserviceable()  # alloc_data_block's NoSpace, in _new_block_for
            off = b * bb
            if self.pf.zero_new_blocks and not (within == 0 and len(data) == bb):
                store.zero(off, bb)
            store.write(off + within, data)
            # nothing changed the metadata since the lookup unless that commit ran
            if not (unchanged and pmd.insert_new_at(td, vblock, b)):
                self._insert(td, vblock, b)
        except OSError:
            pmd._walk = None
            self._data_write_failed(off)

    def _write_new(self, td, vblock: int, within: int, data: bytes) -> None:
        """``write_block``'s steps for a block its lookup found unmapped, from the data
        block's allocation on (the insert walks down from the root: ``lookup_for_new``
        keeps no walk for ``insert_in_place``)."""
        bb = self.block_bytes
        store = self.store
        try:
            b = self._new_block_for()
            off = b * bb
            if self.pf.zero_new_blocks and not (within == 0 and len(data) == bb):
                store.zero(off, bb)
            store.write(off + within, data)
            self._insert(td, vblock, b)
        except OSError:
            self.pmd._walk = None
            self._data_write_failed(off)

    def write_blocks(
        self, td, vblocks, withins, data: bytes, start: int, end: int, rest: bool = False
    ) -> tuple[int, int, ThinsimError | None]:
        """``write_block(td, vblocks[k], withins[k], data)`` for k from ``start`` to ``end``
        (a run of small writes, ascending), stopping after a write that logged a line (the
        caller reads it before the next write) or at the first that fails.  Returns (writes
        done, the most data blocks allocated after any of them, the failed write's error
        or None).  ``rest``: between two writes the caller says no one holds a node
        (``tm.at_rest``), as it would after each one.

        A write to a block mapped in the leaf where the last one set its value in place
        (``PoolMetadata.overwrite_leaf``; a day's churn puts some 12 writes in each leaf,
        the first of them shadowing it) does what ``write_block`` does for it without the
        walks down the tree: the allocation (alloc_data_block), the copy or write, then
        the value set in the leaf with the old block released (``set_in_leaf``), the
        lookup's and insert's walks going down the same nodes.  The shared writes that
        follow it in the leaf are taken together where that leaves the same
        (``_leaf_run``: their blocks allocated as one run, their old blocks released by
        one ``dec_many``)."""
        pmd = self.pmd
        tm = pmd.tm
        sm = tm.sm
        bb = self.block_bytes
        store = self.store
        lines = self.log.lines
        nlines = len(lines)
        ll = pmd.data_sm.ll
        snapshotted = td.snapshotted_time
        whole_size = len(data) == bb
        peak = 0
        leaf = None  # the leaf of the last write set in place, while it holds
        keys = values = nodes = None
        root = commit_count = j = 0
        k = start
        try:
            while k < end:
                if rest and k > start:
                    held = len(tm.blocks)
                    tm.at_rest()
                    if leaf is not None and len(tm.blocks) != held:
                        # the cache wrote nodes out: the walk would read them back
                        blocks = tm.blocks
                        for b, node in nodes:
                            if blocks.get(b) is not node:
                                leaf = None
                                break
                vb = vblocks[k]
                within = withins[k]
                if (
                    leaf is not None
                    and pmd.root == root
                    and pmd.commit_count == commit_count
                    and not sm._bops
                ):
                    if j >= len(keys) or keys[j] > vb:
                        j = 0
                    j = bisect_left(keys, vb, j)
                    if j == len(keys) or keys[j] != vb:
                        leaf = None
                else:
                    leaf = None
                if leaf is None and self.mode == PM_WRITE:
                    found = pmd.overwrite_leaf(td, vb)
                    if found is not None:
                        leaf, j, nodes = found
                        keys, values = leaf.keys, leaf.values
                        root, commit_count = pmd.root, pmd.commit_count
                if leaf is None or self.mode != PM_WRITE:
                    leaf = None
                    if self.mode != PM_WRITE or not self._write_first_in_leaf(td, vb, within, data):
                        self.write_block(td, vb, within, data)
                else:
                    value = values[j]
                    data_block = value >> TIME_BITS
                    if (
                        k + 1 < end
                        and snapshotted > (value & TIME_MASK)
                        and not store.keeps_data
                        and (ran := self._leaf_run(td, leaf, j, vblocks, withins, data, k, end))
                    ):
                        k += ran
                        peak = max(peak, ll.nr_allocated)
                        continue
                    if snapshotted > (value & TIME_MASK):
                        # write_block's shared case
                        b = self._new_block_for()
                        off = b * bb
                        try:
                            if not (within == 0 and whole_size):
                                store.copy(data_block * bb, off, bb)
                            store.write(off + within, data)
                        except OSError:
                            self._data_write_failed(off)
                        if pmd.commit_count != commit_count:
                            # the allocation committed: the walk's nodes are no shadows
                            # now, so the insert walks down (overwrite_in_place declines)
                            leaf = None
                            self._insert(td, vb, b)
                        else:
                            try:
                                pmd.set_in_leaf(td, leaf, j, b)
                            except NoSpace:
                                self._metadata_operation_failed("dm_thin_insert_block", E.ENOSPC)
                                raise error_for(E.EIO) from None
                    else:
                        off = data_block * bb
                        try:
                            store.write(off + within, data)
                        except OSError:
                            self._data_write_failed(off)
                a = ll.nr_allocated
                peak = max(peak, a)
                k += 1
                if len(lines) != nlines:
                    break
        except ThinsimError as e:
            return k - start, peak, e
        return k - start, peak, None

    def _write_first_in_leaf(self, td, vblock: int, within: int, data: bytes) -> bool:
        """``write_block`` of a block mapped and shared in a leaf not in place yet
        (``PoolMetadata.shared_leaf``: a day's first write to a leaf a snapshot shares),
        its steps without the lookup's and the insert's walks down the tree: the
        allocation (alloc_data_block), the copy and the write, the leaf's shadow as the
        insert's walk makes it (``shadow_leaf``), then the value set and the old block
        released (``set_in_leaf``).  False, with nothing done, where the block is not
        such a one."""
        pmd = self.pmd
        found = pmd.shared_leaf(td, vblock)
        if found is None:
            return False
        parent, pi, lb, leaf, j = found
        value = leaf.values[j]
        if td.snapshotted_time <= (value & TIME_MASK):
            return False  # not shared: written in place, no metadata changes
        pmd._walk = None
        commit_count = pmd.commit_count
        bb = self.block_bytes
        store = self.store
        b = self._new_block_for()
        off = b * bb
        try:
            if not (within == 0 and len(data) == bb):
                store.copy((value >> TIME_BITS) * bb, off, bb)
            store.write(off + within, data)
        except OSError:
            self._data_write_failed(off)
        tm = pmd.tm
        if pmd.commit_count != commit_count or tm.sm._bops or tm.blocks.get(lb) is not leaf:
            # the allocation committed, left counts queued or let the leaf go: the
            # insert walks down the tree
            self._insert(td, vblock, b)
            return True
        try:
            pmd.set_in_leaf(td, pmd.shadow_leaf(parent, pi, lb), j, b)
        except NoSpace:
            self._metadata_operation_failed("dm_thin_insert_block", E.ENOSPC)
            raise error_for(E.EIO) from None
        return True

    # bounds on what one data block's release (a count of 2 or more going down by one) can
    # take: metadata blocks allocated (a data bitmap shadowed, an index entry written back,
    # a reference-count btree insert or removal; their own bitmaps' shadows), and nodes
    # added to the node cache (shadows, splits, siblings read back), with room to spare
    _RUN_MD_PER_RELEASE = 256
    _RUN_NODES_PER_RELEASE = 64

    def _leaf_run(self, td, leaf, j: int, vblocks, withins, data: bytes, k: int, end: int) -> int:
        """``write_blocks``' writes from ``k`` (the first at index ``j`` of ``leaf``, found
        as there) taken as a run, where that provably leaves what they leave one at a
        time: how many it did (0: none; the caller takes them one at a time).

        A run is writes to distinct blocks of the leaf, each shared (so each allocates a
        block, copies, sets its value in place and releases the old block).  One at a
        time the order is alloc, release, alloc, release...; here the allocations come
        first, as one run of consecutive blocks (``DiskSpaceMap.new_run``), then the
        values, then the releases in the same order (one ``dec_many``).  The orders leave
        the same state when neither part sees the other:

        - the allocations change no metadata: their bitmap is a shadow of this
          transaction and holds its index-cache slot, which no released block's bitmap
          but the last one's shares (so no release writes that entry back before every
          allocation is made; the last release finds the same entry, and the same
          state, in both orders);
        - no release frees a block (every count is 2 or more), so the allocations see
          the same free blocks and counts, and the count of blocks allocated only grows;
        - each allocation's checks (alloc_data_block) pass plainly: data above the low
          water mark (or the event sent), metadata above its reserve and threshold with
          room for what the releases may take (``_RUN_MD_PER_RELEASE`` each), so no event,
          commit or failure comes between;
        - the node cache has room for what the releases may add (``_RUN_NODES_PER_RELEASE``
          each), so the caller's rest between two writes (``tm.at_rest``) does nothing;
        - the store keeps no payload: none of its operations fails."""
        pmd = self.pmd
        data_sm = pmd.data_sm
        ll = data_sm.ll
        tm = pmd.tm
        msm = tm.sm
        if msm._bops:
            return 0
        # most runs end at their second write (into the next leaf, or to a block written
        # this day already): that one is checked first, as the gather checks it (nothing
        # changes before the gather, so the order of the checks is free)
        keys, values = leaf.keys, leaf.values
        snapshotted = td.snapshotted_time
        vb = vblocks[k + 1]
        if vb <= vblocks[k]:
            return 0
        i = bisect_left(keys, vb, j)
        if i == len(keys) or keys[i] != vb or snapshotted <= (values[i] & TIME_MASK):
            return 0
        # where the allocations go (next: nearly half the calls end here, a release into
        # another bitmap having taken its ie-cache slot; one write at a time takes it back)
        try:
            b0 = ll.find_common_free(data_sm.begin)
        except NoSpace:
            return 0
        index = b0 // ll.ENTRIES_PER_BITMAP
        slot = ie_slot(index)
        if ll.bitmaps[index] not in tm.shadows or ll.dirty.get(slot) != index:
            return 0
        # how many writes the checks allow, most limiting first
        cap = end - k
        blocks = tm.blocks
        limit = getattr(blocks, "limit", None)
        if limit is not None:
            cap = min(cap, (limit - len(blocks)) // self._RUN_NODES_PER_RELEASE)
        mfree = msm.nr_free()
        cap = min(cap, (mfree - pmd.metadata_reserve - 1) // self._RUN_MD_PER_RELEASE)
        t = msm.threshold
        if msm.threshold_pending():
            cap = min(cap, (mfree - t - 1) // self._RUN_MD_PER_RELEASE)
        free = data_sm.nr_free()
        cap = min(cap, free if self.low_water_triggered else free - self.low_water_blocks)
        if cap < 2:
            return 0
        # the writes
        gather = _leaf_gather if _C_GATHER is None else _C_GATHER
        olds, idx = gather(
            vblocks, k, k + cap, keys, values, j, snapshotted, TIME_BITS, ll.maps, index
        )
        r = len(olds)
        if r < 2 or len(set(olds)) != r:
            return 0
        b, n = data_sm.new_run(r, b0)
        pmd.in_service = True  # dm_pool_alloc_data_block
        if n < r:
            del olds[n:], idx[n:]
        self.store.break_sharing_run(olds, b, withins[k : k + n], data, self.block_bytes)
        pmd.set_run_in_leaf(td, leaf, idx, b, olds)
        return n

    def _data_write_failed(self, off: int) -> None:
        """A write to the data device failed (its file system is full, or its file cannot
        be written).  loop.c: lo_write_bvec logs it and loop_handle_cmd ends the request
        with -EIO.  A bio remapped to the data device ends with that; a new mapping whose
        zeroing, copy or overwrite failed is dropped (process_prepared_mapping: cell_error)
        with the block it allocated still counted, as the kernel leaves it (measured on
        Debian's 6.1: each failed provisioning write raised the pool's used data blocks
        by one).  The block layer's "I/O error, dev ..." line is not logged: its sector,
        flags and segment count depend on how the page cache and the caller's buffer made
        up the request."""
        at = getattr(self.store, "offset", 0) + off
        self.log.line(f"loop: Write error at byte offset {at}, length 4096.")
        # get_pool_io_error_code
        raise error_for(E.ENOSPC if self.out_of_data_space else E.EIO) from None

    def _insert(self, td, vblock: int, data_block: int, looked_up: bool = False) -> None:
        """process_prepared_mapping: a failed insert aborts the transaction; the bio fails.
        ``looked_up``: the block was found mapped by this bio's ``find_block``, and the
        insert that only sets its value in that leaf is made without walking down again
        (``PoolMetadata.overwrite_in_place``) where it would be that one."""
        pmd = self.pmd
        try:
            if not (looked_up and pmd.overwrite_in_place(td, vblock, data_block)):
                pmd.insert_block(td, vblock, data_block)
        except NoSpace:
            self._metadata_operation_failed("dm_thin_insert_block", E.ENOSPC)
            raise error_for(E.EIO) from None

    def _insert_new(self, td, vblock: int, data_block: int) -> None:
        """``_insert`` of a block this bio's ``find_block`` found unmapped: made in the leaf
        that lookup found, without walking down again, where the insert would change
        nothing else (``PoolMetadata.insert_in_place``: a container's writes to its
        device, nearly all to blocks it has not mapped yet)."""
        if not self.pmd.insert_in_place(td, vblock, data_block):
            self._insert(td, vblock, data_block)

    def write_whole_blocks(self, td, vblock: int, data) -> None:
        """Whole-block writes to consecutive virtual blocks from ``vblock``: what one
        ``write_block`` a block does, with runs of new blocks above the device's highest
        mapped block provisioned in bulk."""
        bb = self.block_bytes
        nblocks = len(data) // bb
        pmd = self.pmd
        keeps = self.store.keeps_data
        i = 0
        while i < nblocks:
            vb = vblock + i
            n = self._bulk_limit(td, vb, nblocks - i)
            if n == 0:
                self.write_block(td, vb, 0, bytes(data[i * bb : (i + 1) * bb]))
                i += 1
                continue
            try:
                b, n = pmd.data_sm.new_run(n)
            except NoSpace:
                self.write_block(td, vb, 0, bytes(data[i * bb : (i + 1) * bb]))
                i += 1
                continue
            if keeps:
                try:
                    self.store.write(b * bb, bytes(data[i * bb : (i + n) * bb]))
                except OSError:
                    self._data_write_failed(b * bb)
            pmd.append_blocks(td, vb, b, n)
            i += n

    def _bulk_limit(self, td, vb: int, limit: int) -> int:
        """How many of the next whole-block writes may be provisioned in one step."""
        if self.mode != PM_WRITE or limit < 2:
            return 0
        pmd = self.pmd
        try:
            highest = pmd.highest_mapped(td)
        except CorruptNode as e:
            # not a lookup the kernel makes: the one-block path meets the node as it does
            if not e.again:
                e.forget()
            return 0
        if highest is not None and vb <= highest:
            return 0
        free_md = pmd.free_metadata_blocks()
        if free_md < 512:
            return 0
        # The one-block path commits (alloc_data_block) or fails (an insert) at the block
        # where free metadata runs out; a bulk step must end before that can happen.  A
        # step of n blocks takes far fewer than n / 32 + 64 metadata blocks (new leaves
        # hold at least a third of 252 entries, a sequential fill closes them at 248; the
        # rest is a few shadows), so with this cap metadata stays free to the step's end.
        limit = min(limit, (free_md - 64) * 32)
        free = pmd.free_data_blocks()
        if not self.low_water_triggered:
            # the allocation that sees free <= low water mark raises the event: leave it
            # to the one-block path
            limit = min(limit, free - self.low_water_blocks)
        return max(0, min(limit, free))

    def read_block(self, td, vblock: int, within: int, length: int) -> bytes:
        if self.mode == PM_FAIL:
            raise error_for(E.EIO)
        r = self.find_block(td, vblock)
        if r is None:
            return bytes(length)
        try:
            return self.store.read(r[0] * self.block_bytes + within, length)
        except OSError:
            raise error_for(E.EIO) from None

    def discard_blocks(self, td, begin: int, end: int) -> None:
        """process_discard_bio for whole blocks [begin, end)."""
        if self.mode == PM_FAIL:
            raise error_for(E.EIO)
        if self.mode >= PM_OUT_OF_METADATA_SPACE or begin >= end:
            return
        try:
            self._discard_blocks(td, begin, end)
        except NoSpace:
            self._metadata_operation_failed("dm_thin_remove_range", E.ENOSPC)
            raise error_for(E.EIO) from None
        except CorruptNode as e:
            # process_prepared_discard: dm_thin_remove_range failed
            e.log(self.log)
            self._metadata_operation_failed("dm_thin_remove_range", e.errno)
            raise error_for(E.EIO) from None

    def _discard_blocks(self, td, begin: int, end: int) -> None:
        pmd = self.pmd
        if not self.pf.discard_passdown:
            pmd.remove_range(td, begin, end)
            return
        # break_up_discard_bio
        bb = self.block_bytes
        data_sm = pmd.data_sm
        pinned = []
        discard = self.store.discard
        while begin < end:
            try:
                runs = pmd.take_leftmost_runs(td, begin, end)
            except CorruptNode as e:
                # nodes of this transaction only; the ordinary path meets it as the kernel
                if not e.again:
                    e.forget()
                runs = None
            if runs is not None:
                # each run's steps after its removal walks (see take_leftmost_runs):
                # remove_range's decrements, a mapping at a time, then the pin
                # (dm_pool_inc_data_range), which leave every count as it was, so the
                # passdowns after them all read the counts each would have read
                self._dec_inc_runs(runs)
                for vb, ve, db, maybe_shared in runs:
                    de = db + (ve - vb)
                    pinned.append((db, de))
                    if maybe_shared:
                        self._pass_down(db, de, True)
                    else:
                        discard(db * bb, (de - db) * bb)
                begin = ve
                continue
            try:
                run = pmd.find_mapped_range(td, begin, end)
            except CorruptNode as e:
                # break_up_discard_bio: "silently fail, letting any mappings we've
                # created complete" (the discard bio ends well)
                e.log(self.log)
                break
            if run is None:
                break
            vb, ve, db, maybe_shared = run
            de = db + (ve - vb)
            pmd.remove_range(td, vb, ve)
            data_sm.inc_many(range(db, de))  # dm_pool_inc_data_range
            pinned.append((db, de))
            # passdown (double checking the shared status when maybe shared)
            self._pass_down(db, de, maybe_shared)
            begin = ve
        # dm_pool_dec_data_range of each run in turn
        data_sm.dec_many(chain.from_iterable(range(db, de) for db, de in pinned))

    def _dec_inc_runs(self, runs) -> None:
        """For each of ``take_leftmost_runs``' runs in turn, its blocks' counts decremented
        (``_data_block_dec`` of each value) and incremented again (the pin): in place
        (``_DiskLowLevel.dec_inc_runs_in_place``) up to a run that cannot be, which takes
        the space map's calls.  Where those calls fail, the runs before are passed down
        first, as each run's steps one after the other leave it."""
        data_sm = self.pmd.data_sm
        ll = data_sm.ll
        k = 0
        n = len(runs)
        while k < n:
            k = ll.dec_inc_runs_in_place(runs, k)
            if k == n:
                break
            vb, ve, db, _ = runs[k]
            de = db + (ve - vb)
            try:
                if de - db == 1:
                    data_sm.dec(db)
                else:
                    data_sm.dec_many(range(db, de))
                data_sm.inc_many(range(db, de))
            except BaseException:
                for vb, ve, db, maybe_shared in runs[:k]:
                    self._pass_down(db, db + (ve - vb), maybe_shared)
                raise
            k += 1

    def _pass_down(self, db: int, de: int, maybe_shared: bool) -> None:
        """A removed run's passdown: its blocks discarded on the data device, where maybe
        shared only the runs of those no other mapping holds (double checked)."""
        bb = self.block_bytes
        discard = self.store.discard
        if not maybe_shared:
            discard(db * bb, (de - db) * bb)
            return
        for b, e in self.pmd.data_sm.ll.runs_at_most_one(db, de):
            discard(b * bb, (e - b) * bb)

    def flush(self, td) -> None:
        """An empty flush bio to a thin (it carries sector 0).

        In the read-only and out-of-data-space modes it takes __process_bio_read_only's
        path: a write to an unmapped block 0 is unserviceable.  Then, if the thin changed in
        this transaction, the pool commits (issue, process_deferred_bios); changes lost to an
        aborted transaction fail it with EIO.
        """
        if self.mode == PM_FAIL:
            raise error_for(E.EIO)
        if self.mode != PM_WRITE and self.find_block(td, 0) is None:
            self._unserviceable()
        if td.changed:
            if td.aborted_with_changes:
                raise error_for(E.EIO)
            if not self._commit():
                # process_deferred_bios: the flush bios of a failed commit end with EIO
                raise error_for(E.EIO)
