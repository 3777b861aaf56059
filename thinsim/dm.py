"""What device-mapper's core (drivers/md/dm-table.c, dm-ioctl.c) logs around targets."""

from __future__ import annotations

from .model.pool import KernelLog, TableError


def log_table_error(log: KernelLog, devno: str, target: str, e: TableError) -> None:
    """dm_table_add_target's failure: "%s: %s: %s (%pe)", then the ioctl's line."""
    log.emit("table", f"{devno}: {target}: {e.ti_error} (-{e.errno_name})")
    log.emit("ioctl", "error adding target to table")


def log_device_too_small(
    log: KernelLog,
    devno: str,
    dev_name: str,
    start: int,
    length: int,
    dev_sectors: int,
    first_table: bool,
) -> None:
    """dm-table.c: device_area_is_invalid; a device's first table also fails to set up
    its queue (dm-ioctl.c: table_load)."""
    log.emit(
        "table",
        f"{devno}: {dev_name} too small for target: start={start}, len={length}, "
        f"dev_size={dev_sectors}",
    )
    if first_table:
        log.emit("core", "Cannot calculate initial queue limits")
        log.emit("ioctl", "unable to set up device queue for new table.")
