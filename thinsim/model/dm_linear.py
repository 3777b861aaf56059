"""dm-linear.c's ``linear`` target and dm-target.c's ``error`` target on the simulated
kernel, registered with the core (dm_register_target) when the simulated kernel is
imported (thinsim/model/__init__.py)."""

from __future__ import annotations

from ..constants import SECTOR_SIZE as SECTOR
from . import blockio
from .devices import DmDevice, HostState, Target
from .dm import TargetType, dm_get_device, dm_register_target, io_opt
from .pool import TableError


def _ctr_linear(state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
    if len(argv) != 2:
        raise TableError("Invalid argument count")
    start = _sscanf_llu(argv[1])
    if start is None:
        raise TableError("Invalid device sector")
    under = dm_get_device(state, target, argv[0], "Device lookup failed")
    target.obj = ("linear", under, start)


def _sscanf_llu(text: str) -> int | None:
    """sscanf(argv, "%llu%c", ...) == 1: digits after optional space and sign, nothing
    after them."""
    s = text.lstrip()
    body = s[1:] if s[:1] in "+-" else s
    if not body.isdigit() or not body.isascii():
        return None
    value = int(body) & ((1 << 64) - 1)
    return (-value) & ((1 << 64) - 1) if s[:1] == "-" else value


class LinearType(TargetType):
    """dm-linear.c: linear_target.  ``target.obj`` is ("linear", device, start sector)."""

    name = "linear"

    def ctr(self, state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
        _ctr_linear(state, dev, target, argv)

    def table(self, state: HostState, target: Target) -> str:
        return f"{target.devs[0]} {target.obj[2]}"

    def ima(self, state: HostState, target: Target) -> str:
        # linear_status, STATUSTYPE_IMA
        return (
            f"target_name=linear,target_version=1.4.0,device_name={target.devs[0]},"
            f"start={target.obj[2]};"
        )

    def remaps_to(self, target: Target) -> tuple[object, int] | None:
        _, under, start = target.obj
        return under, start * SECTOR

    def iterate_devices(self, target: Target) -> list[tuple[str, int, int]]:
        return [(target.devs[0], target.obj[2], target.length)]

    def io_opt(self, state: HostState, target: Target) -> int:
        return io_opt(state, target.obj[1])

    # linear_map: the same bytes, ``start`` sectors into the device under it

    def read(self, state: HostState, target: Target, offset: int, length: int) -> bytes:
        _, under, start = target.obj
        return blockio.read(state, under, start * SECTOR + offset, length)

    def write(self, state: HostState, target: Target, offset: int, data: bytes) -> None:
        _, under, start = target.obj
        blockio.write(state, under, start * SECTOR + offset, data)

    def discard(self, state: HostState, target: Target, offset: int, length: int) -> None:
        _, under, start = target.obj
        blockio.discard(state, under, start * SECTOR + offset, length)

    def supports_discard(self, state: HostState, target: Target) -> bool:
        return blockio.supports_discard(state, target.obj[1])


class ErrorType(TargetType):
    """dm-target.c: error_target -- every I/O fails (the defaults)."""

    name = "error"

    def ctr(self, state: HostState, dev: DmDevice, target: Target, argv: list[str]) -> None:
        target.obj = ("error",)


dm_register_target(LinearType())
dm_register_target(ErrorType())
