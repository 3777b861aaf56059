"""Moved to thinsim/model/ with the rest of the simulated kernel: the device-mapper core
is thinsim/model/dm.py, the loop driver thinsim/model/loop.py, the devices and their one
lookup thinsim/model/devices.py.  This name re-exports their ioctls for old imports."""

from ..model.devices import device_size
from ..model.dm import (
    DM_DRIVER_VERSION,
    TARGET_VERSIONS,
    UNSIMULATED_TARGETS,
    NotSimulated,
    blkdev_name,
    dm_clear,
    dm_create,
    dm_load,
    dm_message,
    dm_open_count,
    dm_remove,
    dm_remove_all,
    dm_rename,
    dm_resume,
    dm_suspend,
    event_nr,
    lookup_device,
    loop_in_use,
    status_lines,
    table_devices,
    table_devnos,
    target_status,
)
from ..model.dm_thin import reopen_pools
from ..model.loop import loop_add_store, loop_attach, loop_detach, loop_set_capacity

__all__ = [
    "DM_DRIVER_VERSION",
    "TARGET_VERSIONS",
    "UNSIMULATED_TARGETS",
    "NotSimulated",
    "blkdev_name",
    "device_size",
    "dm_clear",
    "dm_create",
    "dm_load",
    "dm_message",
    "dm_open_count",
    "dm_remove",
    "dm_remove_all",
    "dm_rename",
    "dm_resume",
    "dm_suspend",
    "event_nr",
    "lookup_device",
    "loop_add_store",
    "loop_attach",
    "loop_detach",
    "loop_in_use",
    "loop_set_capacity",
    "reopen_pools",
    "status_lines",
    "table_devices",
    "table_devnos",
    "target_status",
]
