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
