"""The metadata device's on-disk format, written from a model pool's metadata.

Layouts from dm-thin-metadata.c (struct thin_disk_superblock, disk_device_details),
persistent-data/dm-btree-internal.h (struct btree_node), dm-space-map-common.h
(disk_index_entry, disk_metadata_index, disk_bitmap_header, disk_sm_root).  Every block
is written at the block number the model gave it, which is the kernel's, with the
kernel's checksums, so Debian's thin_check and thin_dump read the file as they read one
a kernel wrote.
"""

from __future__ import annotations

import errno as E
import os
import struct
import sys
import tempfile
from array import array

import numpy as np
from crc32c import crc32c as _crc32c

from ..constants import (
    BITMAP_CSUM_XOR,
    BTREE_CSUM_XOR,
    INDEX_CSUM_XOR,
    INTERNAL_NODE,
    LEAF_NODE,
    METADATA_BLOCK_SIZE,
    SUPERBLOCK_CSUM_XOR,
    THIN_SUPERBLOCK_MAGIC,
    THIN_VERSION,
)
from ..errors import ThinsimError
from . import native
from .btree import Node
from .metadata import THIN_SUPERBLOCK_LOCATION, PoolMetadata
from .space_map import ENTRIES_PER_BITMAP

BLOCK = METADATA_BLOCK_SIZE
MAX_METADATA_BITMAPS = 255


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c_raw_table(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """lib/crc32c's byte-at-a-time table, in Python: the reference :func:`crc32c_raw` is held
    to (tests/test_disk.py)."""
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c_raw(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """The Castagnoli CRC register after ``data`` (the kernel's crc32c(): no final xor).

    The crc32c package (SSE 4.2 or slicing-by-8 in C) takes 0.4 us a metadata block where
    the table in Python takes 250 us, and every block read or written is checksummed: it
    made reopening a 15 TiB pool's metadata take minutes.  Its crc32c() is the register's
    final xor with ~0 on both sides."""
    return _crc32c(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def bm_checksum(data: bytes, xor: int) -> int:
    """persistent-data/dm-block-manager.c: dm_bm_checksum."""
    return (crc32c_raw(data) ^ xor) & 0xFFFFFFFF


def _seal(block: bytearray, xor: int) -> bytes:
    # the checksum of the block after its csum field, read in place (no copy of it)
    csum = (_crc32c(memoryview(block)[4:], 0) ^ 0xFFFFFFFF ^ xor) & 0xFFFFFFFF
    _U32.pack_into(block, 0, csum)
    return bytes(block)


_U32 = struct.Struct("<I")
_NODE_HEADER = struct.Struct("<IQIII")
_DETAILS_VALUE = struct.Struct("<QQII")
# array('Q') holds the disk's little-endian u64s as they are, where the machine's are
_NATIVE_LE = sys.byteorder == "little" and array("Q").itemsize == 8

# btree node I/O's common cases in C (``_disk.c``; None: the Python below, the reference,
# which THINSIM_NO_C=1 asks for): each returns None where it leaves a node to Python
_C = native.disk()
_C_HARDWARE_CRC = _C is not None and _C.setup(Node, array("Q", [0]), _crc32c, True)
_C_ENCODE = _C.encode_node if _C is not None else None
_C_PARSE = _C.parse_node if _C is not None else None
_C_LOAD = _C.load_node if _C is not None else None


def encode_node(b: int, node: Node) -> bytes:
    """struct btree_node at block ``b``.  Keys and u64 values are copied into the block as
    whole arrays (their bytes are the disk's on a little-endian machine): packing them one
    argument an entry took 4-5 times as long (about 25 us a node), and a day of churn on a
    1 TiB thin writes some 180k nodes.  The bytes are :func:`encode_node_reference`'s
    (tests/test_disk.py).  Where it is built, ``_disk.c`` encodes the nodes of u64 or u32
    values, a third of the time (tests/test_disk_c.py holds it to the same bytes)."""
    if _C_ENCODE is not None:
        data = _C_ENCODE(b, node)
        if data is not None:
            return data
    keys = node.keys
    vals = node.values
    n = len(keys)
    if not _NATIVE_LE or type(keys) is not array or (n and type(vals) is not list and
                                                     type(vals) is not array):  # fmt: skip
        return encode_node_reference(b, node)
    buf = bytearray(BLOCK)
    leaf = node.leaf
    vsize = node.value_size if leaf else 8
    max_entries = node.max_entries
    _NODE_HEADER.pack_into(buf, 4, LEAF_NODE if leaf else INTERNAL_NODE, b, n, max_entries, vsize)
    if n:
        buf[32 : 32 + 8 * n] = keys
        at = 32 + 8 * max_entries
        if vsize == 8:
            if type(vals) is array:
                buf[at : at + 8 * n] = vals
            else:
                struct.pack_into(f"<{n}Q", buf, at, *vals)
        elif vsize == 4:
            # reference counts, kept in a u64 array (none reaches 2^32: the metadata
            # would need more blocks than it can have)
            v = np.frombuffer(vals, dtype=np.uint64) if type(vals) is array else np.array(vals)
            buf[at : at + 4 * n] = v.astype("<u4").tobytes()
        elif vsize == 24:
            pack = _DETAILS_VALUE.pack_into
            for i, (mapped, trans, ctime, stime) in enumerate(vals):
                pack(buf, at + 24 * i, mapped, trans, ctime, stime)
        else:
            raise ValueError(f"no encoding for {vsize}-byte values")
    elif vsize not in (4, 8, 24):
        raise ValueError(f"no encoding for {vsize}-byte values")
    return _seal(buf, BTREE_CSUM_XOR)


def encode_node_reference(b: int, node: Node) -> bytes:
    """:func:`encode_node` one entry at a time with struct: what the fast path is held to."""
    buf = bytearray(BLOCK)
    n = len(node.keys)
    flags = LEAF_NODE if node.leaf else INTERNAL_NODE
    vsize = node.value_size if node.leaf else 8
    struct.pack_into("<IQIII", buf, 4, flags, b, n, node.max_entries, vsize)
    keys_at = 32
    struct.pack_into(f"<{n}Q", buf, keys_at, *node.keys)
    values_at = keys_at + 8 * node.max_entries
    vals = node.values
    if vsize == 8:
        struct.pack_into(f"<{n}Q", buf, values_at, *vals)
    elif vsize == 4:
        struct.pack_into(f"<{n}I", buf, values_at, *vals)
    elif vsize == 24:
        for i, (mapped, trans, ctime, stime) in enumerate(vals):
            struct.pack_into("<QQII", buf, values_at + 24 * i, mapped, trans, ctime, stime)
    else:
        raise ValueError(f"no encoding for {vsize}-byte values")
    block = bytes(buf)
    return struct.pack("<I", bm_checksum(block[4:], BTREE_CSUM_XOR)) + block[4:]


def _bitmap_summary(ll, index: int) -> tuple[int, int]:
    """(nr_free, none_free_before) of bitmap ``index``: its disk_index_entry."""
    n = min(ENTRIES_PER_BITMAP, ll.nr_blocks - index * ENTRIES_PER_BITMAP)
    m = ll.maps[index]
    if m is None:
        return n, 0
    nr_free = m.count(0, 0, n)
    first_free = m.find(0, 0, n)
    return nr_free, (first_free if first_free >= 0 else n)


_NO_BITS = bytes(ENTRIES_PER_BITMAP // 4)


def _bitmap_bits(ll, index: int) -> bytes:
    """The 2-bit entries of bitmap ``index`` as the kernel lays them out."""
    m = ll.maps[index]
    if m is None:
        return _NO_BITS
    counts = np.frombuffer(
        m, dtype=np.uint8, count=min(ENTRIES_PER_BITMAP, ll.nr_blocks - index * ENTRIES_PER_BITMAP)
    )
    padded = np.zeros(ENTRIES_PER_BITMAP, dtype=np.uint8)
    # dm-space-map-common.c: sm_set_bitmap -- bit 2i is the high bit, 2i+1 the low
    padded[: len(counts)] = ((counts & 1) << 1) | (counts >> 1)
    q = padded.reshape(-1, 4)
    return (q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)).tobytes()


def _decode_bitmap(block: bytes, n: int) -> bytearray | None:
    """The first ``n`` counts (0-3) of an on-disk bitmap block, one byte each, padded to
    a whole bitmap; None when all of them are zero."""
    raw = np.frombuffer(block, dtype=np.uint8, count=ENTRIES_PER_BITMAP // 4, offset=16)
    if not raw.any():
        return None
    fields = np.stack([(raw >> s) & 3 for s in (0, 2, 4, 6)], axis=1).reshape(-1)
    counts = ((fields & 1) << 1) | (fields >> 1)
    counts[n:] = 0
    if not counts.any():
        return None
    return bytearray(counts.tobytes())


def encode_bitmap(b: int, bits: bytes) -> bytes:
    buf = bytearray(BLOCK)
    struct.pack_into("<IQ", buf, 4, 0, b)
    buf[16 : 16 + len(bits)] = bits
    return _seal(buf, BITMAP_CSUM_XOR)


def encode_metadata_index(b: int, entries) -> bytes:
    buf = bytearray(BLOCK)
    struct.pack_into("<IQ", buf, 4, 0, b)
    for i, (blocknr, _bits, nr_free, nfb) in enumerate(entries):
        struct.pack_into("<QII", buf, 16 + 16 * i, blocknr, nr_free, nfb)
    return _seal(buf, INDEX_CSUM_XOR)


def _sm_root(ll, bitmap_root: int) -> bytes:
    root = struct.pack("<QQQQ", ll.nr_blocks, ll.nr_allocated, bitmap_root, ll.ref_root)
    return root + bytes(128 - len(root))


def encode_superblock(
    pmd: PoolMetadata, b: int, *, held_copy: bool = False, nr_md_blocks: int | None = None
) -> bytes:
    """struct thin_disk_superblock (a held copy has its space map roots wiped)."""
    buf = bytearray(BLOCK)
    flags = 1 if pmd.needs_check else 0
    if held_copy:
        time, trans_id, flags = pmd.held_superblock
        root, details_root = pmd._held
        held_root = 0
        data_root = md_root = bytes(128)
    else:
        time, trans_id = pmd.time, pmd.trans_id
        root, details_root = pmd.root, pmd.details_root
        held_root = pmd.held_root
        dll = pmd.data_sm.ll
        data_root = _sm_root(dll, dll.index_root)
        md_root = _sm_root(pmd.metadata_sm.ll, pmd.metadata_sm.index_block)
    struct.pack_into("<IQ", buf, 4, flags, b)
    struct.pack_into(
        "<QIIQQ", buf, 32, THIN_SUPERBLOCK_MAGIC, THIN_VERSION, time, trans_id, held_root
    )
    buf[64:192] = data_root
    buf[192:320] = md_root
    md_blocks = (
        getattr(pmd, "_sb_nr_blocks", pmd.metadata_sm.nr_blocks)
        if nr_md_blocks is None
        else nr_md_blocks
    )
    struct.pack_into(
        "<QQIIQIII", buf, 320, root, details_root, pmd.data_block_size, 8, md_blocks, 0, 0, 0
    )
    # dm-thin-metadata.c: sb_prepare_for_write -- over the whole block after the csum
    return _seal(buf, SUPERBLOCK_CSUM_XOR)


class _Encoder:
    """Metadata blocks as the kernel has them after the commit that is being written."""

    def __init__(self, pmd: PoolMetadata) -> None:
        self.pmd = pmd
        self.mll = pmd.metadata_sm.ll
        self.dll = pmd.data_sm.ll
        self._bitmap_index = None
        self._held = pmd.tm.blocks.get  # (a dict's: a node not held is not read back)
        self._special = (pmd.metadata_sm.index_block, pmd.held_root)

    def live_blocks(self) -> list[int]:
        """Every block the metadata space map counts."""
        return list(self.mll.counts())

    def _bitmap_of(self, b: int):
        """(ll, index) of the bitmap at block ``b``, or None: a search in the bitmaps'
        block numbers, sorted once per encoder (a data device of a PiB has a million)."""
        if self._bitmap_index is None:
            self._bitmap_index = []
            for ll in (self.mll, self.dll):
                blocks = np.frombuffer(ll.bitmaps, dtype=np.uint64)
                order = np.argsort(blocks, kind="stable")
                self._bitmap_index.append((ll, blocks[order], order))
        for ll, blocks, order in self._bitmap_index:
            i = int(np.searchsorted(blocks, b))
            if i < len(blocks) and int(blocks[i]) == b:
                return ll, int(order[i])
        return None

    def encode(self, b: int) -> bytes | None:
        """Block ``b``'s contents; None when it is free (nothing of the commit is there)."""
        pmd = self.pmd
        if b == THIN_SUPERBLOCK_LOCATION:
            return encode_superblock(pmd, b)
        mll = self.mll
        if not mll.get_count(b):
            return None
        node = self._held(b)
        if (
            type(node) is Node
            and b not in self._special
            and not (node.leaf and node.value_size == 16)
        ):
            return encode_node(b, node)  # a btree node held: most of a commit's blocks
        if b == pmd.metadata_sm.index_block:
            entries = [
                (blocknr, None, *_bitmap_summary(mll, i)) for i, blocknr in enumerate(mll.bitmaps)
            ]
            return encode_metadata_index(b, entries)
        if b == pmd.held_root:
            return encode_superblock(pmd, b, held_copy=True)
        node = pmd.tm.node(b)
        if isinstance(node, Node):
            if node.leaf and node.value_size == 16:
                # the data space map's index tree: values are disk_index_entry
                dll = self.dll
                values = {k: (dll.bitmaps[k], *_bitmap_summary(dll, k)) for k in node.keys}
                return _encode_index_leaf(b, node, values)
            return encode_node(b, node)
        where = self._bitmap_of(b)
        if where is None:
            raise TypeError(f"metadata block {b} is counted but holds no btree node")
        return encode_bitmap(b, _bitmap_bits(*where))


def metadata_blocks(pmd: PoolMetadata) -> dict[int, bytes]:
    """Every live metadata block as the kernel would have written it at the last commit."""
    enc = _Encoder(pmd)
    out = {b: enc.encode(b) for b in enc.live_blocks()}
    out[THIN_SUPERBLOCK_LOCATION] = enc.encode(THIN_SUPERBLOCK_LOCATION)
    return out


def _encode_index_leaf(b: int, node: Node, index_values) -> bytes:
    buf = bytearray(BLOCK)
    n = len(node.keys)
    struct.pack_into("<IQIII", buf, 4, LEAF_NODE, b, n, node.max_entries, 16)
    struct.pack_into(f"<{n}Q", buf, 32, *node.keys)
    values_at = 32 + 8 * node.max_entries
    for i, k in enumerate(node.keys):
        blocknr, nr_free, nfb = index_values[k]
        struct.pack_into("<QII", buf, values_at + 16 * i, blocknr, nr_free, nfb)
    return _seal(buf, BTREE_CSUM_XOR)


_ZERO_BLOCK = bytes(BLOCK)
_IOV_MAX = 1024  # Linux's UIO_MAXIOV: the most buffers one pwritev takes


class MetadataWriteError(ThinsimError):
    """A write to the metadata device failed.  ``errno`` is what the bio ended with;
    ``offset`` and ``length`` are where in the file the write that failed went."""

    def __init__(self, errno: int, offset: int, length: int) -> None:
        super().__init__(errno=errno)
        self.offset = offset
        self.length = length


class MetadataDevice:
    """The file under a pool's metadata device (a loop device's backing file, the device
    starting ``offset`` bytes in), written as dm-bufio and dm-transaction-manager write it.

    A commit writes only the blocks the transaction changed -- the copy-on-write metadata
    puts every change in a block allocated or shadowed since the last commit (btree nodes,
    bitmaps, index blocks), so the blocks of the commit on disk are never written over --
    then flushes, then writes the superblock and flushes again (dm_tm_pre_commit,
    dm_tm_commit).  A crash at any point leaves the last commit or the new one on disk.

    ``pwrite``, ``pwritev`` and ``fdatasync`` are the system calls used; tests replace
    them to fail.  Consecutive blocks go in one ``pwritev``: on these VMs a block at a
    time costs several times more, most for pages the file never had (a commit's new
    shadows).
    """

    @staticmethod
    def pwrite(fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    @staticmethod
    def pwritev(fd: int, buffers: list, offset: int) -> int:
        return os.pwritev(fd, buffers, offset)

    @staticmethod
    def fdatasync(fd: int) -> None:
        os.fdatasync(fd)

    def __init__(self, path: str | os.PathLike | None, offset: int = 0) -> None:
        self.path = None if path is None else os.fspath(path)
        self.offset = offset
        self.flags_on_disk = 0

    def __repr__(self) -> str:
        return f"MetadataDevice({self.path!r}, offset={self.offset})"

    def _io(self, fd: int, b: int, data: bytes) -> None:
        at = self.offset + b * BLOCK
        try:
            n = self.pwrite(fd, data, at)
        except OSError:
            n = -1
        if n != len(data):
            # loop.c: lo_write_bvec fails the request, and loop_handle_cmd ends it with
            # -EIO whatever the file system said (ENOSPC included)
            raise MetadataWriteError(E.EIO, at, len(data))

    def _io_run(self, fd: int, b: int, datas: list) -> None:
        """``_io`` of consecutive blocks from ``b``, in one system call where it writes
        them all; where it does not, the rest a block at a time (a failure is then
        reported at the block it is at, as ``_io`` reports it)."""
        done = 0
        if len(datas) > 1:
            try:
                n = self.pwritev(fd, datas, self.offset + b * BLOCK)
            except OSError:
                n = 0
            if n == len(datas) * BLOCK:
                return
            done = max(n, 0) // BLOCK
        for k in range(done, len(datas)):
            self._io(fd, b + k, datas[k])

    def _io_blocks(self, fd: int, items) -> None:
        """``_io`` of ``(block, data)`` pairs in ascending block order, runs of
        consecutive blocks written together (``_io_run``)."""
        first = -1
        run: list = []
        for b, data in items:
            if run and b == first + len(run) and len(run) < _IOV_MAX:
                run.append(data)
                continue
            if run:
                self._io_run(fd, first, run)
            first, run = b, [data]
        if run:
            self._io_run(fd, first, run)

    def _flush(self, fd: int) -> None:
        # a REQ_PREFLUSH to a loop device is vfs_fsync of its file (lo_req_flush)
        try:
            self.fdatasync(fd)
        except OSError:
            raise MetadataWriteError(E.EIO, self.offset, 0) from None

    def _open(self) -> int:
        if self.path is None:  # the file is lost (the host could not reopen it)
            raise MetadataWriteError(E.EIO, self.offset, 0)
        try:
            return os.open(self.path, os.O_RDWR)
        except OSError:
            raise MetadataWriteError(E.EIO, self.offset, 0) from None

    def write(self, pmd: PoolMetadata) -> None:
        """Write a commit: the blocks changed since the last one (zeros where a block was
        written and freed again: dm-bufio writes those buffers too, so they take space in
        a sparse file), a flush, the superblock, a flush.  MetadataWriteError when a write
        fails; then nothing on disk says the new commit happened."""
        tm = pmd.tm
        enc = _Encoder(pmd)
        changed = sorted((tm.dirty or set()) - {THIN_SUPERBLOCK_LOCATION})
        spilled = tm.spilled
        blocks = tm.blocks
        count = enc.mll.get_count
        fd = self._open()
        try:
            self._io_blocks(
                fd,
                (
                    (b, enc.encode(b) or _ZERO_BLOCK)
                    for b in changed
                    # not those written before the commit, as they are (save_nodes)
                    if not (b in spilled and b not in blocks and count(b))
                ),
            )
            self._flush(fd)
            self._io(fd, THIN_SUPERBLOCK_LOCATION, enc.encode(THIN_SUPERBLOCK_LOCATION))
            self._flush(fd)
        finally:
            os.close(fd)
        tm.dirty = set()
        spilled.clear()
        self.flags_on_disk = 1 if pmd.needs_check else 0
        if self.path is not None and getattr(tm, "device_complete", False):
            # the commit is on the device: its clean nodes can be read back from there,
            # and the next transaction's nodes written there before its commit
            reader = self.__dict__.get("_reader")
            if reader is None or (reader.path, reader.offset) != (self.path, self.offset):
                reader = self._reader = NodeReader(self.path, self.offset)
            tm.read_on_demand(reader.load, save=self.save_nodes)

    def save_nodes(self, nodes) -> bool:
        """Write ``(block, node)`` pairs of the transaction before its commit, as dm-bufio
        writes dirty buffers back when its cache is full (transaction.BlockCache): they
        are blocks the commit on disk does not use, so a crash leaves it as it was.  False
        when a write failed (the nodes then stay in memory; the commit writes them)."""
        try:
            fd = self._open()
        except MetadataWriteError:
            return False
        try:
            self._io_blocks(
                fd, ((b, encode_node(b, node)) for b, node in sorted(nodes, key=lambda bn: bn[0]))
            )
        except MetadataWriteError:
            return False
        finally:
            os.close(fd)
        return True

    def write_all(self, pmd: PoolMetadata) -> None:
        """Write every live block of the last commit (a full image), in a commit's order."""
        tm = pmd.tm
        tm.dirty = set(tm.dirty or ()) | set(_Encoder(pmd).live_blocks())
        tm.device_complete = True
        self.write(pmd)

    def drop_transaction(self, pmd: PoolMetadata) -> None:
        """An aborted transaction's blocks: dm_pool_abort_metadata destroys the block
        manager, which writes its dirty buffers out (the file's size on disk counts them);
        a failure goes unreported.  None of them belongs to the commit on disk."""
        tm = pmd.tm
        changed = sorted((tm.dirty or set()) - {THIN_SUPERBLOCK_LOCATION})
        tm.dirty = set()
        tm.spilled.clear()
        if not changed:
            return
        try:
            fd = self._open()
        except MetadataWriteError:
            return
        try:
            for b in changed:
                self._io(fd, b, _ZERO_BLOCK)
        except MetadataWriteError:
            pass
        finally:
            os.close(fd)

    def close(self, pmd: PoolMetadata) -> None:
        """dm_pool_metadata_close of a pool that did not commit (read-only): the block
        manager writes what is dirty -- the uncommitted blocks, and the superblock if
        abort_transaction set needs_check in it (dm_pool_metadata_set_needs_check)."""
        self.drop_transaction(pmd)
        flags = 1 if pmd.needs_check else 0
        if flags == self.flags_on_disk:
            return
        try:
            fd = self._open()
        except MetadataWriteError:
            return
        try:
            self._io(fd, THIN_SUPERBLOCK_LOCATION, encode_superblock(pmd, 0))
            self._flush(fd)
            self.flags_on_disk = flags
        except MetadataWriteError:
            pass
        finally:
            os.close(fd)


class ScratchMetadataDevice(MetadataDevice):
    """An anonymous temporary file (gone when the pool is) as the metadata device of a pool
    that has none: its commits are written there, unflushed, so that its clean btree nodes
    can leave memory and be read back (transaction.BlockCache).  What it costs: each commit
    encodes and writes the blocks it changed (a few us a block: encode_node, a pwrite), and
    the file takes the metadata's size on disk."""

    @staticmethod
    def fdatasync(fd: int) -> None:
        pass  # nothing needs to survive this process

    def __init__(self, dir: str | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=dir)  # noqa: SIM115 -- held as long as the pool
        super().__init__(f"/proc/self/fd/{self._file.fileno()}")


def keep_metadata_on_file(
    pmd: PoolMetadata,
    path: str | os.PathLike | None = None,
    offset: int = 0,
    cache_nodes: int | None = None,
) -> MetadataDevice:
    """From now on write ``pmd``'s commits to ``path`` (a scratch file when None) and keep
    only a bounded cache of its nodes in memory: ``cache_nodes`` of them
    (transaction.DEFAULT_CACHE_NODES when None).  Call it between transactions: the last
    commit is written whole first."""
    if pmd.tm.dirty is None:
        pmd.tm.dirty = set()
    pmd.device = ScratchMetadataDevice() if path is None else MetadataDevice(path, offset)
    pmd.device.write_all(pmd)
    if cache_nodes is not None:
        pmd.tm.blocks.limit = cache_nodes
    return pmd.device


def write_metadata(pmd: PoolMetadata, path: str | os.PathLike, offset: int = 0) -> None:
    """Write the model's committed metadata, every live block of it, into the metadata
    device file, and zeros where the kernel would have written blocks freed since (so the
    sparse file's size on disk is the kernel's).  From then on the blocks written are
    tracked."""
    MetadataDevice(path, offset).write_all(pmd)


# -- reading ----------------------------------------------------------------------------


class CorruptMetadata(ValueError):
    """The device does not hold valid dm-thin metadata."""


class CorruptNode(CorruptMetadata):
    """A btree node read from the device at I/O time fails dm-btree-spine.c's node_check
    (the block manager's validator): ``errno`` is what the check returns (ENOTBLK for a
    block that says it is another, EILSEQ for the others), ``lines`` what the kernel
    logs on the way (node_check's line, then dm_bm_validate_buffer's), ``again`` whether
    the block was read before (dm-bufio keeps a buffer that failed its validation, so a
    later lookup fails on it without waiting for the device)."""

    def __init__(self, b: int, errno: int, check: str) -> None:
        super().__init__(f"btree node at block {b}: {check}")
        self.block = b
        self.errno = errno
        self.lines = [
            ("btree spine", f"node_check failed: {check}"),
            ("block manager", f"btree_node validator check failed for block {b}"),
        ]
        self.again = False
        self._seen: set[int] = set()

    def forget(self) -> None:
        """The block was not read as the kernel reads it (a lookup only the model makes):
        the next read fails as the first one would."""
        self._seen.discard(self.block)

    def log(self, log) -> None:
        for prefix, text in self.lines:
            log.emit(prefix, text)


def node_check(data: bytes, b: int) -> CorruptNode | None:
    """dm-btree-spine.c: node_check, in its order (where it is, its checksum, its entry
    counts, its flags): the CorruptNode it fails with, or None."""
    csum, flags, bnr, n, max_entries, vsize = struct.unpack_from("<IIQIII", data, 0)
    if bnr != b:
        return CorruptNode(b, E.ENOTBLK, f"blocknr {bnr} != wanted {b}")
    computed = bm_checksum(data[4:], BTREE_CSUM_XOR)
    if computed != csum:
        return CorruptNode(b, E.EILSEQ, f"csum {computed} != wanted {csum}")
    if 32 + (8 + vsize) * max_entries > BLOCK:
        return CorruptNode(b, E.EILSEQ, "max_entries too large")
    if n > max_entries:
        return CorruptNode(b, E.EILSEQ, "too many entries")
    if not flags & (INTERNAL_NODE | LEAF_NODE):
        return CorruptNode(b, E.EILSEQ, "node is neither INTERNAL or LEAF")
    return None


def _check(block: bytes, xor: int, what: str, b: int) -> None:
    want = struct.unpack_from("<I", block, 0)[0]
    if bm_checksum(block[4:], xor) != want:
        raise CorruptMetadata(f"bad checksum in {what} at block {b}")


_BIG_ENDIAN = sys.byteorder == "big"


def parse_node(data: bytes, b: int) -> Node:
    """A btree node block read from the device (struct btree_node), checked as
    dm-btree-spine.c's btree_node_check checks it: CorruptMetadata when it is not one."""
    _check(data, BTREE_CSUM_XOR, "btree node", b)
    return _parse_checked_node(data, b)


def _parse_checked_node(data: bytes, b: int) -> Node:
    """:func:`parse_node` of a block whose checksum is known to be a node's.  Where it is
    built, ``_disk.c`` parses the nodes with u64 or u32 values that pass."""
    if _C_PARSE is not None:
        node = _C_PARSE(data, b)
        if node is not None:
            return node
    nflags, bnr, n, max_entries, vsize = _NODE_HEADER.unpack_from(data, 4)
    if bnr != b:
        raise CorruptMetadata(f"btree node at block {b} says it is block {bnr}")
    if n > max_entries or 32 + (8 + vsize) * max_entries > BLOCK:
        raise CorruptMetadata(f"btree node at block {b} has {n} of {max_entries} entries")
    keys = array("Q")
    mv = memoryview(data)
    keys.frombytes(mv[32 : 32 + 8 * n])
    at = 32 + 8 * max_entries
    leaf = bool(nflags & LEAF_NODE)
    if not leaf or vsize == 8:
        values = array("Q")
        values.frombytes(mv[at : at + 8 * n])
        if _BIG_ENDIAN:  # the disk's are little-endian
            values.byteswap()
    elif vsize == 4:
        values = array("Q")
        values.frombytes(
            np.frombuffer(data, dtype="<u4", count=n, offset=at).astype(np.uint64).tobytes()
        )
    elif vsize == 24:
        values = [_DETAILS_VALUE.unpack_from(data, at + 24 * i) for i in range(n)]
    elif vsize == 16:
        values = array("Q", struct.unpack_from("<" + "Q8x" * n, data, at))
    else:
        raise CorruptMetadata(f"unexpected value size {vsize} at block {b}")
    if _BIG_ENDIAN:
        keys.byteswap()
    return Node(leaf, max_entries, vsize if leaf else 8, keys, values)


_OTHER_XORS = (BITMAP_CSUM_XOR, INDEX_CSUM_XOR, SUPERBLOCK_CSUM_XOR)


class NodeReader:
    """Reads committed btree nodes back from a metadata device file on demand (the
    transaction manager's BlockCache misses).  The file is opened on the first read and
    kept open; ``load`` returns None for a block that holds no btree node (a bitmap, an
    index block, a superblock), and raises CorruptMetadata for one that fails its checks."""

    def __init__(self, path: str, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._fd = -1

    def __getstate__(self):
        return {"path": self.path, "offset": self.offset, "_fd": -1}

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def load(self, b: int) -> Node:
        if self._fd < 0:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise CorruptMetadata(f"cannot read block {b}: {e}") from None
        if _C_LOAD is not None:
            # a valid node with u64 or u32 values in one call; anything else is read
            # again below, where what it is is found out
            node = _C_LOAD(self._fd, self.offset + b * BLOCK, b)
            if node is not None:
                return node
        data = os.pread(self._fd, BLOCK, self.offset + b * BLOCK)
        if len(data) < BLOCK:
            raise CorruptMetadata(f"block {b} is beyond the end of the device")
        want = _U32.unpack_from(data, 0)[0]
        crc = _crc32c(memoryview(data)[4:], 0) ^ 0xFFFFFFFF
        if want == (crc ^ BTREE_CSUM_XOR) & 0xFFFFFFFF:
            # a node's checksum: node_check's other checks, without the checksum again
            _f, bnr, n, max_entries, vsize = _NODE_HEADER.unpack_from(data, 4)
            if (bnr == b and n <= max_entries and 32 + (8 + vsize) * max_entries <= BLOCK
                    and _f & (INTERNAL_NODE | LEAF_NODE)):  # fmt: skip
                return _parse_checked_node(data, b)
        elif want in {(crc ^ x) & 0xFFFFFFFF for x in _OTHER_XORS}:
            # a bitmap, an index block, a superblock: not a node (never a KeyError, which
            # the model's callers take for a missing key)
            return None
        failed = node_check(data, b)
        if failed is not None:
            # dm-bufio keeps a block that failed its validation: a later lookup fails on
            # it at once (CorruptNode.again)
            seen = self.__dict__.setdefault("invalid", set())
            failed.again = b in seen
            failed._seen = seen
            seen.add(b)
            raise failed
        return parse_node(data, b)


def superblock_is_blank(data: bytes) -> bool:
    """dm-thin-metadata.c: __superblock_all_zeroes (the first 512 bytes)."""
    return not any(data[:512])


def read_metadata(path: str | os.PathLike, offset: int = 0) -> PoolMetadata:
    """Open metadata a kernel (or thinsim) wrote: the state of its last commit, with the
    allocation cursors at 0 as a freshly opened pool has them.

    Only what dm_pool_metadata_open reads is read here: the superblock and the space maps
    (their bitmaps, index and reference count trees).  The mapping and details trees'
    nodes are read from the file when they are first used, and clean ones are dropped
    again beyond the cache's size (transaction.BlockCache), so opening a pool costs the
    same whatever its thins map, and memory follows the cache, not the metadata."""
    with open(path, "rb") as f:
        pmd = _read_metadata(f.fileno(), offset)
    # what changes from now on is not what the file holds until a commit writes it
    pmd.tm.dirty = set()
    pmd.tm.device_complete = True
    pmd.tm.read_on_demand(NodeReader(os.fspath(path), offset).load)
    return pmd


def _read_metadata(fd: int, offset: int) -> PoolMetadata:
    from array import array

    from .btree import BTreeInfo, ValueType
    from .metadata import TIME_BITS
    from .space_map import (
        BigCounts,
        DiskSpaceMap,
        LowLevel,
        MetadataSpaceMap,
        _Block,
        _DiskLowLevel,
    )
    from .transaction import TransactionManager

    def block(b: int) -> bytes:
        data = os.pread(fd, BLOCK, offset + b * BLOCK)
        if len(data) < BLOCK:
            raise CorruptMetadata(f"block {b} is beyond the end of the device")
        return data

    sb = block(0)
    _check(sb, SUPERBLOCK_CSUM_XOR, "superblock", 0)
    (flags,) = struct.unpack_from("<I", sb, 4)
    magic, _version, time, trans_id, held_root = struct.unpack_from("<QIIQQ", sb, 32)
    if magic != THIN_SUPERBLOCK_MAGIC:
        raise CorruptMetadata("bad magic in superblock")
    d_nr, d_alloc, d_index, d_ref = struct.unpack_from("<QQQQ", sb, 64)
    m_nr, m_alloc, m_index, m_ref = struct.unpack_from("<QQQQ", sb, 192)
    root, details_root, data_block_size, _mbs, sb_md_blocks = struct.unpack_from("<QQIIQ", sb, 320)

    sm = MetadataSpaceMap()
    tm = TransactionManager(sm)
    sm.tm = tm
    tm.blocks[0] = _Block("superblock")

    def walk(b: int, levels: int) -> None:
        """Read a whole (small) tree into the cache: the space maps' index and reference
        count trees, which opening the space maps reads."""
        if b in tm.blocks:
            return
        node = tm.blocks[b] = parse_node(block(b), b)
        if not node.leaf:
            for child in node.values:
                walk(child, levels)
        elif levels > 1:
            for child in node.values:
                walk(child, levels - 1)

    def load_bitmaps(ll, entries, nr_blocks, nr_allocated):
        ll.nr_blocks = nr_blocks
        ll.maps = [None] * len(entries)
        ll.bitmaps = array("Q")
        for i, bnr in enumerate(entries):
            data = block(bnr)
            _check(data, BITMAP_CSUM_XOR, "bitmap", bnr)
            ll.bitmaps.append(bnr)
            m = _decode_bitmap(data, min(ENTRIES_PER_BITMAP, nr_blocks - i * ENTRIES_PER_BITMAP))
            if m is not None:
                ll.maps[i] = m
        # dm-space-map-common.c: sm_ll_open_*: the count is the root's, not the bitmaps'
        # (thin_restore's differ by the empty mapping root it frees after its commit)
        ll.nr_allocated = nr_allocated

    def load_big(ll):
        walk(ll.ref_root, 1)
        ll.big = BigCounts(ll.ref_info.items(ll.ref_root))

    # metadata space map
    index = block(m_index)
    _check(index, INDEX_CSUM_XOR, "metadata index", m_index)
    nr_bitmaps = -(-m_nr // ENTRIES_PER_BITMAP)
    md_entries = [struct.unpack_from("<Q", index, 16 + 16 * i)[0] for i in range(nr_bitmaps)]
    mll = LowLevel(tm)
    mll.ref_root = m_ref
    load_bitmaps(mll, md_entries, m_nr, m_alloc)
    load_big(mll)
    sm.ll = mll
    sm.index_block = m_index

    # data space map
    dll = object.__new__(_DiskLowLevel)
    LowLevel.__init__(dll, tm)
    dll.index_info = BTreeInfo(tm, 1, ValueType(16))
    dll.index_root = d_index
    dll.ref_root = d_ref
    dll.dirty = {}
    walk(d_index, 1)
    entries = [blocknr for _i, blocknr in sorted(dll.index_info.items(d_index))]
    load_bitmaps(dll, entries, d_nr, d_alloc)
    load_big(dll)
    data_sm = object.__new__(DiskSpaceMap)
    data_sm.ll = dll
    data_sm.begin = 0
    data_sm.old_nr_blocks = d_nr

    pmd = object.__new__(PoolMetadata)
    pmd.data_block_size = data_block_size
    pmd.time = time
    pmd.trans_id = trans_id
    pmd.held_root = held_root
    pmd.needs_check = bool(flags & 1)
    pmd.in_service = False
    pmd.commit_count = 0
    pmd.devices = {}
    pmd.device = None
    pmd.tm = tm
    pmd.metadata_sm = sm
    pmd.data_sm = data_sm
    pmd._sb_nr_blocks = sb_md_blocks
    pmd._setup_btree_details()
    pmd.root = root
    pmd.details_root = details_root
    # the mapping and details trees are read when they are used (BlockCache)
    if held_root:
        held = block(held_root)
        _check(held, SUPERBLOCK_CSUM_XOR, "metadata snapshot", held_root)
        tm.blocks[held_root] = _Block("superblock")
        (h_flags,) = struct.unpack_from("<I", held, 4)
        _m, _v, h_time, h_trans, _h = struct.unpack_from("<QIIQQ", held, 32)
        h_root, h_details = struct.unpack_from("<QQ", held, 320)
        pmd._held = (h_root, h_details)
        pmd.held_superblock = (h_time, h_trans, h_flags)
    else:
        pmd._held = None
        pmd.held_superblock = None
    # the committed view is this one
    mll.commit()
    dll.commit()
    sm.old_nr_allocated = mll.nr_allocated
    sm.old_nr_blocks = mll.nr_blocks
    sm._committed = (m_index,)
    pmd._set_metadata_reserve()
    pmd._save_committed()
    _ = TIME_BITS
    return pmd
