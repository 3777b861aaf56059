"""thin-provisioning-tools' emitter.h and override_emitter.cc: the events of a dump (and of
an XML being restored), and the emitter that puts the command line's overrides in."""

from __future__ import annotations

from .common import ToolError


class Emitter:
    """thin_provisioning::emitter: the events of a dump (and of an XML being restored)."""

    def begin_superblock(self, uuid, time, trans_id, flags, version, data_block_size,
                         nr_data_blocks, metadata_snap) -> None: ...  # fmt: skip

    def end_superblock(self) -> None: ...

    def begin_device(self, dev_id, mapped_blocks, trans_id, creation_time, snap_time): ...

    def end_device(self) -> None: ...

    def range_map(self, origin_begin, data_begin, time, length) -> None: ...

    def single_map(self, origin_block, data_block, time) -> None: ...


class OverrideError(ToolError):
    """override_error: a field the superblock lost and the command line must give."""


class Overrides:
    """override_options: --transaction-id, --data-block-size, --nr-data-blocks."""

    def __init__(self, transaction_id=None, data_block_size=None, nr_data_blocks=None):
        self.transaction_id = transaction_id
        self.data_block_size = data_block_size
        self.nr_data_blocks = nr_data_blocks

    def get(self, name: str, value=None):
        v = getattr(self, name)
        if v is not None:
            return v
        if value is None:
            raise OverrideError(name.replace("_", " "))
        return value


class OverrideEmitter(Emitter):
    """override_emitter.cc: the superblock's fields the command line overrides."""

    def __init__(self, inner: Emitter, overrides: Overrides) -> None:
        self.inner = inner
        self.o = overrides

    def begin_superblock(self, uuid, time, trans_id, flags, version, data_block_size,
                         nr_data_blocks, metadata_snap) -> None:  # fmt: skip
        o = self.o
        self.inner.begin_superblock(
            uuid, time, o.get("transaction_id", trans_id), flags, version,
            o.get("data_block_size", data_block_size), o.get("nr_data_blocks", nr_data_blocks),
            metadata_snap,
        )  # fmt: skip

    def end_superblock(self) -> None:
        self.inner.end_superblock()

    def begin_device(self, *args) -> None:
        self.inner.begin_device(*args)

    def end_device(self) -> None:
        self.inner.end_device()

    def range_map(self, *args) -> None:
        self.inner.range_map(*args)

    def single_map(self, *args) -> None:
        self.inner.single_map(*args)
