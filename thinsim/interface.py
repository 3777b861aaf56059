"""The interface both backends implement: a thin pool and its thin devices.

Units: bytes in every argument, except where the kernel itself speaks in sectors or blocks
(``data_block_size_sectors``, ``low_water_mark_blocks``, the table and status lines).
Errors: every failure raises :class:`thinsim.errors.ThinsimError` (or a subclass) whose
``errno`` is what the kernel returns for it, and ``kernel_log`` the lines the kernel logged
for it (also in its message); a failed operation changes nothing a user can observe after
the next commit.  A removed device (a deactivated thin, a closed pool) answers ENXIO.  Arguments of the wrong type or range (a str size, None as a
message, a negative length) raise EINVAL before anything is touched (``check_*`` below).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence

from .constants import MAX_REQUEST, SECTOR_SIZE, THIN_METADATA_MAX_SECTORS
from .errors import InvalidArgumentError, NoDeviceError, NoSpaceError
from .status import PoolStatus, ThinStatus, ThinUsage

FEATURES = (
    "skip_block_zeroing",
    "ignore_discard",
    "no_discard_passdown",
    "read_only",
    "error_if_no_space",
)


class Thin(abc.ABC):
    """An active thin device (a ``thin`` target) of ``length`` bytes.

    I/O is at byte offsets; the kernel path splits it at data-block boundaries.  Reads of
    unmapped blocks return zeros and allocate nothing.  Writes provision or copy blocks as
    dm-thin does and raise ENOSPC or EIO where the kernel fails the bio.
    """

    dev_id: int

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``."""

    @abc.abstractmethod
    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` (bytes-like) at ``offset``: provisions unmapped blocks, breaks
        sharing of blocks shared with a snapshot (by snapshot time), overwrites the rest.
        ENOSPC, with nothing written, when it starts at or runs past the end."""

    @abc.abstractmethod
    def discard(self, offset: int, length: int) -> None:
        """Discard a range: whole blocks inside it are unmapped (and passed down to the data
        device when the pool does so and nothing else references them).  EOPNOTSUPP when
        the pool ignores discards; EINVAL when not sector aligned."""

    @abc.abstractmethod
    def flush(self) -> None:
        """A flush: commits the pool's metadata if this thin changed since the last commit."""

    @abc.abstractmethod
    def status(self) -> str:
        """``dmsetup status`` of the thin: ``"0 LEN thin MAPPED_SECTORS HIGHEST|-"``."""

    def status_info(self) -> ThinStatus:
        """:meth:`status` parsed (thinsim.status.ThinStatus): mapped sectors and the highest
        mapped block's last sector, or ``Fail`` when the pool is in failure mode."""
        return ThinStatus.parse(self.status())

    @abc.abstractmethod
    def table(self) -> str:
        """``dmsetup table`` of the thin: ``"0 LEN thin MAJ:MIN DEV_ID"``."""

    @abc.abstractmethod
    def deactivate(self) -> None:
        """Remove the thin device (the thin stays in the pool's metadata).  Every call on
        it after this raises ENXIO, as device-mapper answers for a removed device."""

    @abc.abstractmethod
    def suspend(self) -> None:
        """``dmsetup suspend`` of the thin device (no I/O reaches it until :meth:`resume`)."""

    @abc.abstractmethod
    def resume(self) -> None:
        """``dmsetup resume`` of the thin device."""


class Pool(abc.ABC):
    """A thin pool built from what a ``thin-pool`` table says.

    Created active (loaded and resumed).  ``data_size`` and ``metadata_size`` are the
    devices' sizes in bytes; the table length defaults to the whole data device.
    """

    data_block_size_sectors: int

    # -- as a context manager: closed at the end of the with block, however it ends ------

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- messages: each commits when it succeeds ------------------------------------------

    @abc.abstractmethod
    def message(self, text: str) -> None:
        """Send a pool message as ``dmsetup message POOL 0 TEXT`` does."""

    def create_thin(self, dev_id: int) -> None:
        """A new, empty thin.  EEXIST if ``dev_id`` exists; EINVAL if above 2**24 - 1."""
        check_int("dev_id", dev_id, minimum=None)
        self.message(f"create_thin {dev_id}")

    def create_snap(self, dev_id: int, origin_id: int) -> None:
        """A snapshot of ``origin_id`` sharing all of its blocks.  EEXIST, ENODATA."""
        check_int("dev_id", dev_id, minimum=None)
        check_int("origin_id", origin_id, minimum=None)
        self.message(f"create_snap {dev_id} {origin_id}")

    def delete(self, dev_id: int) -> None:
        """Delete a thin.  ENODATA if absent, EBUSY if active."""
        check_int("dev_id", dev_id, minimum=None)
        self.message(f"delete {dev_id}")

    def set_transaction_id(self, current: int, new: int) -> None:
        """Compare and swap the pool's transaction id.  EINVAL if ``current`` is wrong."""
        check_int("current", current, minimum=None)
        check_int("new", new, minimum=None)
        self.message(f"set_transaction_id {current} {new}")

    def reserve_metadata_snap(self) -> None:
        """Hold a snapshot of the metadata (for thin_dump -m).  EBUSY if one is held."""
        self.message("reserve_metadata_snap")

    def release_metadata_snap(self) -> None:
        """Release the held metadata snapshot.  EINVAL if none is held."""
        self.message("release_metadata_snap")

    # -- devices and tables --------------------------------------------------------------

    @abc.abstractmethod
    def activate(self, dev_id: int, length: int) -> Thin:
        """Activate thin ``dev_id`` as a device of ``length`` bytes (a positive multiple of
        512: EINVAL otherwise).  ENODATA if absent."""

    def reload(
        self,
        *,
        data_size: int | None = None,
        metadata_size: int | None = None,
        length_sectors: int | None = None,
        low_water_mark_blocks: int | None = None,
        features: Sequence[str] | None = None,
    ) -> None:
        """Grow the devices, then suspend, load a new table, resume.  Unchanged fields keep
        their values; the table length follows ``data_size`` unless given.  Bad arguments
        raise before anything is touched, and so does a shrink, which the kernel refuses in
        the pool's preresume (dm-thin.c: maybe_resize_data_dev and
        maybe_resize_metadata_dev, EINVAL) only after the new table is live, leaving the
        pool suspended: the error carries the line it logs (``254:0: pool target (512
        blocks) too small: expected 1024``).

        Both backends through :meth:`reload_table`, with the table words they keep:
        ``data_size``, ``metadata_size``, ``_length`` (sectors), ``_bs``, ``_lwm`` (words)
        and ``_features``."""
        self._check_open()
        check_reload_args(
            self.data_size,
            data_size=data_size,
            metadata_size=metadata_size,
            length_sectors=length_sectors,
            low_water_mark_blocks=low_water_mark_blocks,
            features=features,
        )
        new_data = self.data_size if data_size is None else data_size
        new_md = self.metadata_size if metadata_size is None else metadata_size
        if length_sectors is None:
            length_sectors = new_data // SECTOR_SIZE if data_size is not None else self._length
        self._check_no_shrink(new_md, length_sectors)
        self.reload_table(
            metadata_size=new_md,
            data_size=new_data,
            length_sectors=length_sectors,
            block_size=self._bs,
            low_water_mark=self._lwm
            if low_water_mark_blocks is None
            else str(low_water_mark_blocks),
            features=self._features if features is None else features,
        )

    @abc.abstractmethod
    def suspend(self) -> None:
        """Suspend the pool (it commits)."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Resume the pool (re-arms the low water mark event)."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Commit the metadata now."""

    @abc.abstractmethod
    def status(self, noflush: bool = False) -> str:
        """``dmsetup status [--noflush]`` of the pool: ``"0 LEN thin-pool ..."`` with the
        kernel's trailing space.  Commits first unless ``noflush`` or suspended."""

    def status_info(self, noflush: bool = False) -> PoolStatus:
        """:meth:`status` parsed (thinsim.status.PoolStatus): transaction id, used and total
        metadata and data blocks, held root, mode, discard and no-space modes, needs_check,
        metadata low water mark."""
        return PoolStatus.parse(self.status(noflush))

    def thin_usage(self) -> dict[int, ThinUsage]:
        """Each thin's mapped, exclusive and shared data blocks by dev_id, as ``thin_ls -m``
        counts them on a metadata snapshot (so the figures are the committed ones:
        :meth:`metadata_dump` reserves, dumps and releases it)."""
        return usage_from_dump(self.metadata_dump())

    @abc.abstractmethod
    def log_lines(self) -> list[str]:
        """The kernel log lines starting with ``device-mapper:`` printed since the previous
        call (or since the pool was made), oldest first, without timestamps.  On a real
        host these are every device's, not only this pool's."""

    @abc.abstractmethod
    def table(self) -> str:
        """``dmsetup table`` of the pool, with its trailing space."""

    @property
    @abc.abstractmethod
    def event_nr(self) -> int:
        """The pool device's event counter (``dmsetup info``'s Event number)."""

    @abc.abstractmethod
    def reload_table(
        self,
        *,
        metadata_size: int,
        data_size: int,
        length_sectors: int,
        block_size: str,
        low_water_mark: str,
        features: Sequence[str],
    ) -> None:
        """:meth:`reload` as a shell does it, with the table's words as written (the kernel
        parses ``block_size`` and ``low_water_mark``, so malformed ones are refused with its
        log lines): set the devices to exactly these sizes (``truncate`` and ``losetup -c``
        where a size changes; the sizes stay even if the reload fails), suspend, load the
        table ``0 LEN thin-pool MD DATA BS LWM [N f1 ... fN]``, resume.  If the load or the
        resume fails, the pool is resumed again when it was left suspended (a table that
        fails in preresume stays loaded, so that resume fails too; its error is ignored) and
        the first error is raised."""

    @abc.abstractmethod
    def metadata_dump(self) -> str:
        """thin_dump's XML of the metadata under a snapshot: ``reserve_metadata_snap``,
        ``thin_dump -m``, ``release_metadata_snap``.  If the reserve fails its error is
        raised and nothing else is done."""

    @abc.abstractmethod
    def allocated_bytes(self) -> int:
        """The data device's allocated size (``du`` of its backing file: st_blocks * 512)."""

    def close(self) -> None:
        """Release the pool (and, for the kernel backend, every device it made).  Safe to
        call twice; every other call after it raises ENXIO (its devices are gone)."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""

    @property
    @abc.abstractmethod
    def devno(self) -> str:
        """The pool device's ``MAJOR:MINOR``: its name in the kernel's log lines."""

    def _check_open(self) -> None:
        if self.closed:
            raise NoDeviceError(f"the pool was closed: its devices are gone ({self!r})")

    def _check_no_shrink(self, metadata_size: int, length_sectors: int) -> None:
        """What the pool's preresume refuses (dm-thin.c, 6.1): a data device of fewer blocks
        than the metadata records, then a metadata device of fewer blocks; the error is
        raised with the line the kernel logs (its message and ``kernel_log``), before
        anything is touched."""
        now = self.status_info(noflush=True)
        if now.failed:
            return  # the kernel's table load decides; its error comes back as it is
        bs = self.data_block_size_sectors
        blocks = length_sectors // bs
        if blocks < now.total_data_blocks:
            raise _refused(
                f"device-mapper: thin: {self.devno}: pool target ({blocks} blocks) too small: "
                f"expected {now.total_data_blocks}"
            )
        md_blocks = min(metadata_size // SECTOR, THIN_METADATA_MAX_SECTORS) // 8
        if md_blocks < now.total_metadata_blocks:
            raise _refused(
                f"device-mapper: thin: {self.devno}: metadata device ({md_blocks} blocks) too "
                f"small: expected {now.total_metadata_blocks}"
            )


def _refused(line: str) -> InvalidArgumentError:
    """EINVAL for what the kernel would refuse logging LINE, which thinsim refuses first."""
    error = InvalidArgumentError(line)
    error.kernel_log = (line,)
    return error


class Machine(abc.ABC):
    """The machine pools are made on, spoken to as dmsetup and losetup are: tables as words.

    What a scenario (the language of tests/kernel/README.md) runs on, so that one executor
    (:mod:`thinsim.executor`) drives the model and the real kernel alike.  Pools it makes are
    on fresh zero-filled backing files attached as loop0 (metadata) and loop1 (data), so that
    their tables show ``7:0 7:1``; dm minors are handed out lowest-free-first from 0 (a
    failed create takes one and gives it back), the dm major is 254.
    """

    @abc.abstractmethod
    def create_pool(
        self,
        *,
        metadata_size: int,
        data_size: int,
        length_sectors: int,
        block_size: str,
        low_water_mark: str,
        features: Sequence[str],
    ) -> Pool:
        """Fresh sparse metadata and data files of these sizes on loop devices, and a
        ``thin-pool`` device over them with the table ``0 LEN thin-pool MD DATA BS LWM
        [N f1 ... fN]`` (the feature group only when ``features`` is non-empty), the words
        as given.  A rejected table raises the kernel's errno (its log lines logged) and
        leaves nothing made."""

    @abc.abstractmethod
    def log_lines(self) -> list[str]:
        """The kernel log lines starting with ``device-mapper:`` printed since the previous
        call (or since the machine was made), oldest first, without timestamps."""

    @abc.abstractmethod
    def set_no_space_timeout(self, seconds: int) -> None:
        """Set dm_thin_pool's module parameter ``no_space_timeout`` (seconds; 0 queues I/O
        for ever); :meth:`close` puts back the value it had."""

    def close(self) -> None:
        """Remove every device and file this machine made; restore module parameters."""


def usage_from_dump(xml: str) -> dict[int, ThinUsage]:
    """thin_ls's MAPPED_BLOCKS, EXCLUSIVE_BLOCKS and SHARED_BLOCKS per device from thin_dump's
    XML (thin_tools/ls.py: rows): mapped from the device's details, exclusive the mappings
    whose data block no other mapping references."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    per_dev: dict[int, list[int]] = {}
    counts: dict[int, int] = {}
    for dev in root.iter("device"):
        blocks: list[int] = []
        for m in dev:
            if m.tag == "single_mapping":
                blocks.append(int(m.get("data_block")))
            elif m.tag == "range_mapping":
                start = int(m.get("data_begin"))
                blocks.extend(range(start, start + int(m.get("length"))))
        per_dev[int(dev.get("dev_id"))] = blocks
        for b in blocks:
            counts[b] = counts.get(b, 0) + 1
    out = {}
    for dev in root.iter("device"):
        dev_id = int(dev.get("dev_id"))
        mapped = int(dev.get("mapped_blocks"))
        exclusive = sum(1 for b in per_dev[dev_id] if counts[b] == 1)
        out[dev_id] = ThinUsage(
            dev_id,
            mapped,
            exclusive,
            mapped - exclusive,
            int(dev.get("transaction")),
            int(dev.get("creation_time")),
            int(dev.get("snap_time")),
        )
    return dict(sorted(out.items()))


# -- argument checks, shared by the backends ------------------------------------------------
#
# Each backend runs these before it touches anything (a device, a file, the model's state),
# so a bad argument raises the same error on both and changes nothing.  Types a kernel call
# could not even be given (a str size, None as a message) are EINVAL, as the ioctl that
# receives garbage answers.

SECTOR = SECTOR_SIZE


def _name(value: object) -> str:
    return type(value).__name__


def check_int(name: str, value: object, *, minimum: int | None = 0) -> int:
    """``value`` as an int of at least ``minimum`` (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, not {_name(value)}: {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"{name} must be at least {minimum}, not {value}")
    return value


def check_features(features: object) -> list[str]:
    """A sequence of feature names (a lone str is one name's letters: refused)."""
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise InvalidArgumentError(
            f"features must be a sequence of str such as {list(FEATURES[:1])!r}, "
            f"not {_name(features)}: {features!r}"
        )
    for f in features:
        if not isinstance(f, str):
            raise InvalidArgumentError(f"a feature must be a str, not {_name(f)}: {f!r}")
    return list(features)


def check_pool_args(
    data_size: object,
    metadata_size: object,
    data_block_size_sectors: object,
    low_water_mark_blocks: object,
    features: object,
    length_sectors: object,
) -> None:
    """What a pool's constructor takes: the types, and the table length against the data
    device, as dm-table.c checks a target against its device (EINVAL)."""
    check_int("data_size", data_size)
    check_int("metadata_size", metadata_size)
    check_int("data_block_size_sectors", data_block_size_sectors)
    check_int("low_water_mark_blocks", low_water_mark_blocks)
    check_features(features)
    length = data_size // SECTOR if length_sectors is None else length_sectors
    check_length_sectors(length, data_size)


def check_length_sectors(length_sectors: object, data_size: int) -> int:
    """A pool table's length: dm-table.c: dm_table_add_target refuses a zero-length target,
    device_area_is_invalid one that runs past its data device."""
    check_int("length_sectors", length_sectors)
    if length_sectors == 0:
        raise InvalidArgumentError(
            f"zero-length target: the pool's table length is 0 sectors "
            f"(data_size {data_size} bytes)"
        )
    if length_sectors > data_size // SECTOR:
        raise InvalidArgumentError(
            f"data device too small for target: length {length_sectors} sectors, "
            f"data device {data_size // SECTOR} sectors"
        )
    return length_sectors


def check_reload_args(
    current_data_size: int,
    *,
    data_size: object,
    metadata_size: object,
    length_sectors: object,
    low_water_mark_blocks: object,
    features: object,
) -> None:
    """What ``Pool.reload`` takes (``None`` keeps a value)."""
    new_data = current_data_size
    if data_size is not None:
        new_data = check_int("data_size", data_size)
    if metadata_size is not None:
        check_int("metadata_size", metadata_size)
    if length_sectors is not None:
        check_length_sectors(length_sectors, new_data)
    elif data_size is not None:
        check_length_sectors(new_data // SECTOR, new_data)
    if low_water_mark_blocks is not None:
        check_int("low_water_mark_blocks", low_water_mark_blocks)
    if features is not None:
        check_features(features)


def check_message(text: object) -> str:
    """A pool message: a str with at least one word (dm-ioctl.c: target_message refuses
    an empty one with EINVAL)."""
    if not isinstance(text, str):
        raise InvalidArgumentError(f"a message must be a str, not {_name(text)}: {text!r}")
    if not text.split():
        raise InvalidArgumentError("empty message")
    return text


def check_activate(dev_id: object, length: object) -> None:
    """A thin's id and length: the length a positive number of whole sectors (a table
    speaks in sectors; dm-table.c refuses a zero-length target)."""
    check_int("dev_id", dev_id)
    check_int("length", length, minimum=SECTOR)
    if length % SECTOR:
        raise InvalidArgumentError(f"length must be a multiple of {SECTOR} bytes, not {length}")


def check_read(offset: object, length: object) -> None:
    check_int("offset", offset)
    check_int("length", length)


def check_write(offset: object, data: object, size: int) -> memoryview:
    """A write's offset and data (any bytes-like object), inside a device of ``size`` bytes.

    A write that starts at or runs past the end is refused whole (ENOSPC) before anything
    is written: a block device would write the part that fits and return a short count,
    which a call that returns nothing cannot report."""
    check_int("offset", offset)
    try:
        view = memoryview(data)
    except TypeError:
        raise InvalidArgumentError(
            f"data must be bytes-like (bytes, bytearray, memoryview), not {_name(data)}"
        ) from None
    if not (view.ndim == 1 and view.format == "B" and view.contiguous):
        view = memoryview(view.tobytes())
    if view.nbytes and offset + view.nbytes > size:
        raise NoSpaceError(
            f"a write of {view.nbytes} bytes at offset {offset} runs past the end of the "
            f"device ({size} bytes)"
        )
    return view


def io_requests(offset: int, length: int, block_size_sectors: int) -> Iterator[tuple[int, int]]:
    """The (offset, length) requests one I/O is issued as: split at data-block boundaries
    (and at MAX_REQUEST inside larger blocks), ascending, so that at most one block is in
    flight and the kernel allocates blocks in the order the model does.

    >>> list(io_requests(61440, 8192, 128))
    [(61440, 4096), (65536, 4096)]
    """
    step = min(block_size_sectors * SECTOR, MAX_REQUEST)
    pos, end = offset, offset + length
    while pos < end:
        nxt = min(end, (pos // step + 1) * step)
        yield pos, nxt - pos
        pos = nxt


def check_discard(offset: object, length: object) -> None:
    check_int("offset", offset)
    check_int("length", length)
