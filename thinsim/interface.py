"""The interface both backends implement: a thin pool and its thin devices.

Units: bytes in every argument, except where the kernel itself speaks in sectors or blocks
(``data_block_size_sectors``, ``low_water_mark_blocks``, the table and status lines).
Errors: every failure raises :class:`thinsim.errors.ThinsimError` (or a subclass) whose
``errno`` is what the kernel returns for it; a failed operation changes nothing a user can
observe after the next commit.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

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
        """Write ``data`` at ``offset``: provisions unmapped blocks, breaks sharing of
        blocks shared with a snapshot (by snapshot time), overwrites the rest."""

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

    @abc.abstractmethod
    def table(self) -> str:
        """``dmsetup table`` of the thin: ``"0 LEN thin MAJ:MIN DEV_ID"``."""

    @abc.abstractmethod
    def deactivate(self) -> None:
        """Remove the thin device (the thin stays in the pool's metadata)."""


class Pool(abc.ABC):
    """A thin pool built from what a ``thin-pool`` table says.

    Created active (loaded and resumed).  ``data_size`` and ``metadata_size`` are the
    devices' sizes in bytes; the table length defaults to the whole data device.
    """

    data_block_size_sectors: int

    # -- messages: each commits when it succeeds ------------------------------------------

    @abc.abstractmethod
    def message(self, text: str) -> None:
        """Send a pool message as ``dmsetup message POOL 0 TEXT`` does."""

    def create_thin(self, dev_id: int) -> None:
        """A new, empty thin.  EEXIST if ``dev_id`` exists; EINVAL if above 2**24 - 1."""
        self.message(f"create_thin {dev_id}")

    def create_snap(self, dev_id: int, origin_id: int) -> None:
        """A snapshot of ``origin_id`` sharing all of its blocks.  EEXIST, ENODATA."""
        self.message(f"create_snap {dev_id} {origin_id}")

    def delete(self, dev_id: int) -> None:
        """Delete a thin.  ENODATA if absent, EBUSY if active."""
        self.message(f"delete {dev_id}")

    def set_transaction_id(self, current: int, new: int) -> None:
        """Compare and swap the pool's transaction id.  EINVAL if ``current`` is wrong."""
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
        """Activate thin ``dev_id`` as a device of ``length`` bytes.  ENODATA if absent."""

    @abc.abstractmethod
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
        their values; the table length follows ``data_size`` unless given."""

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

    @abc.abstractmethod
    def table(self) -> str:
        """``dmsetup table`` of the pool, with its trailing space."""

    @property
    @abc.abstractmethod
    def event_nr(self) -> int:
        """The pool device's event counter (``dmsetup info``'s Event number)."""

    def close(self) -> None:
        """Release the pool (and, for the kernel backend, every device it made)."""
