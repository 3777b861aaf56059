"""Status lines as typed values: what dm-thin.c's pool_status and thin_status print, parsed.

The kernel's own order and words (drivers/md/dm-thin.c, Linux 6.1), after the
``START LENGTH TARGET`` that dmsetup puts before a target's status:

- pool_status: ``Fail`` in failure mode; otherwise ``TRANSACTION_ID
  USED_META/TOTAL_META USED_DATA/TOTAL_DATA HELD_ROOT|- MODE DISCARDS NO_SPACE
  needs_check|- METADATA_LOW_WATER_MARK`` with a space after each word (so the line ends in
  one), MODE ``out_of_data_space``, ``ro`` or ``rw``, DISCARDS ``ignore_discard``,
  ``discard_passdown`` or ``no_discard_passdown``, NO_SPACE ``error_if_no_space`` or
  ``queue_if_no_space``; ``Error`` when reading the metadata failed.
- thin_status: ``Fail`` when its pool is in failure mode; ``-`` when the thin has no device
  in the metadata; otherwise ``MAPPED_SECTORS HIGHEST_SECTOR|-`` (the highest mapped
  block's last sector); ``Error`` when reading the metadata failed.

``str()`` of a parsed status gives the line back byte for byte; anything else is refused
(EINVAL), so a line the kernel could not have printed never passes for one.
"""

from __future__ import annotations

import dataclasses
import re

from .errors import InvalidArgumentError

POOL_MODES = ("rw", "ro", "out_of_data_space")
DISCARD_MODES = ("ignore_discard", "discard_passdown", "no_discard_passdown")
NO_SPACE_MODES = ("queue_if_no_space", "error_if_no_space")

_HEAD = re.compile(r"^(\d+) (\d+) (thin-pool|thin) (.*)$", re.DOTALL)
_POOL = re.compile(
    r"^(\d+) (\d+)/(\d+) (\d+)/(\d+) (-|\d+) "
    rf"({'|'.join(POOL_MODES)}) ({'|'.join(DISCARD_MODES)}) ({'|'.join(NO_SPACE_MODES)}) "
    r"(needs_check|-) (\d+) $"
)
_THIN = re.compile(r"^(\d+) (\d+|-)$")


def _head(line: str, target: str) -> tuple[int, int, str]:
    if not isinstance(line, str):
        raise InvalidArgumentError(f"a status line must be a str, not {type(line).__name__}")
    m = _HEAD.match(line)
    if m is None or m.group(3) != target:
        raise InvalidArgumentError(f"not a {target} status line: {line!r}")
    return int(m.group(1)), int(m.group(2)), m.group(4)


@dataclasses.dataclass(frozen=True)
class PoolStatus:
    """A ``thin-pool`` status line.  ``mode`` is ``rw``, ``ro``, ``out_of_data_space``,
    ``Fail`` (failure mode: the kernel prints nothing else, so every other figure is None)
    or ``Error`` (the kernel could not read its metadata: the same)."""

    start: int
    length: int
    mode: str
    transaction_id: int | None = None
    used_metadata_blocks: int | None = None
    total_metadata_blocks: int | None = None
    used_data_blocks: int | None = None
    total_data_blocks: int | None = None
    held_metadata_root: int | None = None  # the held metadata snapshot's block, or None: '-'
    discards: str | None = None  # ignore_discard, discard_passdown, no_discard_passdown
    no_space: str | None = None  # queue_if_no_space, error_if_no_space
    needs_check: bool | None = None
    metadata_low_water_mark: int | None = None  # in metadata blocks

    @classmethod
    def parse(cls, line: str) -> PoolStatus:
        """The status of ``dmsetup status POOL`` (one line, trailing space included)."""
        start, length, rest = _head(line, "thin-pool")
        if rest in ("Fail", "Error"):
            return cls(start, length, rest)
        m = _POOL.match(rest)
        if m is None:
            raise InvalidArgumentError(f"not a thin-pool status line: {line!r}")
        g = m.groups()
        return cls(
            start,
            length,
            g[6],
            transaction_id=int(g[0]),
            used_metadata_blocks=int(g[1]),
            total_metadata_blocks=int(g[2]),
            used_data_blocks=int(g[3]),
            total_data_blocks=int(g[4]),
            held_metadata_root=None if g[5] == "-" else int(g[5]),
            discards=g[7],
            no_space=g[8],
            needs_check=g[9] == "needs_check",
            metadata_low_water_mark=int(g[10]),
        )

    @property
    def failed(self) -> bool:
        """In failure mode, or its metadata unreadable: no figures."""
        return self.mode in ("Fail", "Error")

    @property
    def read_only(self) -> bool:
        """The pool refuses new mappings (``ro``, or ``Fail``)."""
        return self.mode in ("ro", "Fail")

    @property
    def free_data_blocks(self) -> int | None:
        return None if self.failed else self.total_data_blocks - self.used_data_blocks

    @property
    def free_metadata_blocks(self) -> int | None:
        return None if self.failed else self.total_metadata_blocks - self.used_metadata_blocks

    def __str__(self) -> str:
        head = f"{self.start} {self.length} thin-pool "
        if self.failed:
            return head + self.mode
        held = "-" if self.held_metadata_root is None else str(self.held_metadata_root)
        return head + (
            f"{self.transaction_id} {self.used_metadata_blocks}/{self.total_metadata_blocks} "
            f"{self.used_data_blocks}/{self.total_data_blocks} {held} {self.mode} "
            f"{self.discards} {self.no_space} {'needs_check' if self.needs_check else '-'} "
            f"{self.metadata_low_water_mark} "
        )


@dataclasses.dataclass(frozen=True)
class ThinStatus:
    """A ``thin`` status line.  ``state`` is ``ok`` (figures given), ``Fail`` (its pool is
    in failure mode), ``-`` (no such thin in the metadata) or ``Error``; the figures are
    None unless ``ok``.  ``highest_mapped_sector`` is the last sector of the highest mapped
    block (None: ``-``, nothing mapped)."""

    start: int
    length: int
    state: str
    mapped_sectors: int | None = None
    highest_mapped_sector: int | None = None

    @classmethod
    def parse(cls, line: str) -> ThinStatus:
        """The status of ``dmsetup status THIN``."""
        start, length, rest = _head(line, "thin")
        if rest in ("Fail", "Error", "-"):
            return cls(start, length, rest)
        m = _THIN.match(rest)
        if m is None:
            raise InvalidArgumentError(f"not a thin status line: {line!r}")
        highest = None if m.group(2) == "-" else int(m.group(2))
        return cls(start, length, "ok", int(m.group(1)), highest)

    def mapped_blocks(self, data_block_size_sectors: int) -> int | None:
        """The mapped sectors in data blocks of the pool's size."""
        if self.mapped_sectors is None:
            return None
        return self.mapped_sectors // data_block_size_sectors

    def highest_mapped_block(self, data_block_size_sectors: int) -> int | None:
        """The highest mapped block (virtual, in the thin), or None when none is."""
        if self.highest_mapped_sector is None:
            return None
        return self.highest_mapped_sector // data_block_size_sectors

    def __str__(self) -> str:
        head = f"{self.start} {self.length} thin "
        if self.state != "ok":
            return head + self.state
        highest = "-" if self.highest_mapped_sector is None else str(self.highest_mapped_sector)
        return head + f"{self.mapped_sectors} {highest}"


@dataclasses.dataclass(frozen=True)
class ThinUsage:
    """One thin's data blocks as thin_ls counts them (thin-provisioning-tools 0.9.0,
    thin_ls's MAPPED_BLOCKS, EXCLUSIVE_BLOCKS, SHARED_BLOCKS): mapped, the mapped blocks no
    other mapping references (data space map count 1), and the rest."""

    dev_id: int
    mapped_blocks: int
    exclusive_blocks: int
    shared_blocks: int
    transaction_id: int
    creation_time: int
    snap_time: int
