"""Numbers the kernel and its tools fix, defined once for the model, the simulated host and
the real-kernel backend alike."""

from __future__ import annotations

#: The block layer's sector (include/linux/blk_types.h: SECTOR_SHIFT 9).
SECTOR_SIZE = 512
SECTOR_SHIFT = 9

#: Block majors (include/uapi/linux/major.h: LOOP_MAJOR; device-mapper's is dynamic, 254 on
#: Debian 12 as on every host the recordings were made on).
LOOP_MAJOR = 7
DM_MAJOR = 254

#: persistent-data's metadata block (dm-thin-metadata.c: THIN_METADATA_BLOCK_SIZE).
METADATA_BLOCK_SIZE = 4096

# The on-disk format of dm-thin's metadata (dm-thin-metadata.c, persistent-data/*.c), which
# the model writes and the thin tools' port reads.
THIN_SUPERBLOCK_LOCATION = 0
THIN_SUPERBLOCK_MAGIC = 27022010
THIN_VERSION = 2
#: Each block kind's checksum is crc32c of the block after its csum field, XORed with these.
SUPERBLOCK_CSUM_XOR = 160774
BTREE_CSUM_XOR = 121107  # dm-btree-internal.h: BTREE_CSUM_XOR
INDEX_CSUM_XOR = 160478  # dm-space-map-common.c
BITMAP_CSUM_XOR = 240779  # dm-space-map-common.c
#: dm-btree-internal.h: a node header's flags.
INTERNAL_NODE = 1
LEAF_NODE = 2
#: dm-space-map-common.c: entries of a space map bitmap block (2 bits each after a 16-byte
#: header): 16320.
ENTRIES_PER_BITMAP = (METADATA_BLOCK_SIZE - 16) * 4

#: The largest O_DIRECT request the scenario executor and the kernel backend issue: I/O is
#: split at data-block boundaries, and at this size inside huge blocks.
MAX_REQUEST = 8 << 20

#: dm-thin-metadata.h: THIN_METADATA_MAX_SECTORS (DM_SM_METADATA_MAX_SECTORS), the most of a
#: metadata device a pool uses.
THIN_METADATA_MAX_SECTORS = 255 * ((1 << 14) - 64) * 8
