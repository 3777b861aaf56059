"""thin_check, thin_dump, thin_ls, thin_delta, thin_restore, thin_repair and
thin_metadata_size on the simulated host: thinsim.thin_tools over the host's files, where
/dev/loopN, /dev/dm-N and /dev/mapper/NAME are the simulated devices.

A device a live (or loaded) table holds cannot be opened O_EXCL, as bd_claim refuses it on
a real host: thin_check and thin_dump of a pool's metadata device say "Device or resource
busy", while ``-m`` (no O_EXCL) reads it."""

from __future__ import annotations

import errno as E
import os

from ...model import blockio, devices
from ...model.devices import device_size
from ...model.dm import dm_open_count, table_devnos
from ...thin_tools import run_tool
from ...thin_tools.common import READER_START_S, Files, Handle, Output, RealFiles, Stat
from .. import command
from ..state import DmDevice, HostState, LoopDevice, is_device_path


def _claimed(state: HostState, dev) -> bool:
    """Whether a table (live or loaded) holds ``dev`` open exclusively (dm_get_device)."""
    if isinstance(dev, DmDevice):
        return dm_open_count(state, dev) > 0
    return any(
        dev.devno in table_devnos(d) + table_devnos(d, inactive=True) for d in state.dm.values()
    )


class _DeviceHandle(Handle):
    def __init__(self, state: HostState, dev, write: bool) -> None:
        self.state = state
        self.dev = dev
        self.size = device_size(state, dev)
        self.writable = write

    def pread(self, offset: int, length: int) -> bytes:
        self._between_bios()
        data = blockio.read(self.state, self.dev, offset, length)
        return data + bytes(length - len(data))

    def pwrite(self, offset: int, data: bytes) -> None:
        self._between_bios()
        blockio.write(self.state, self.dev, offset, data)

    def _between_bios(self) -> None:
        """Each block the tool reads or writes on a loop device is a bio of its own: other
        commands run between two (command.between_bios), so that a thin_check of a big
        metadata device holds no other command for its whole length.  Not on a dm device,
        whose open the tool does not count (dev_remove would not see it busy); EIO once
        the machine's state was loaded again."""
        if isinstance(self.dev, LoopDevice) and not command.between_bios():
            raise OSError(E.EIO, os.strerror(E.EIO))


class HostFiles(Files):
    """The simulated host's files: simulated devices by path, plain files as they are."""

    def __init__(self, state: HostState) -> None:
        self.state = state
        self.real = RealFiles()

    def _device(self, path: str):
        """The device the node names (None for a loop device with no file bound: it reads
        as empty); FileNotFoundError when there is no such node."""
        if devices.node_devno(self.state, path) is None:
            raise FileNotFoundError(E.ENOENT, os.strerror(E.ENOENT), path)
        dev = devices.lookup(self.state, path)
        if isinstance(dev, LoopDevice) and dev.number not in self.state.loops:
            return None
        return dev

    def stat(self, path: str) -> Stat:
        if is_device_path(path):
            dev = self._device(path)
            return Stat("blk", device_size(self.state, dev) if dev is not None else 0)
        return self.real.stat(path)

    def open(self, path: str, *, write: bool = False, excl: bool = False) -> Handle:
        if is_device_path(path):
            dev = self._device(path)
            if dev is None:
                return _EmptyHandle()
            if excl and _claimed(self.state, dev):
                raise OSError(E.EBUSY, os.strerror(E.EBUSY), path)
            if write and isinstance(dev, LoopDevice) and dev.read_only:
                raise OSError(E.EROFS, os.strerror(E.EROFS), path)
            return _DeviceHandle(self.state, dev, write)
        return self.real.open(path, write=write, excl=excl)

    def read_text(self, path: str) -> bytes:
        if is_device_path(path):
            dev = self._device(path)
            if dev is None:
                return b""
            return blockio.read(self.state, dev, 0, device_size(self.state, dev))
        return self.real.read_text(path)


class _EmptyHandle(Handle):
    size = 0

    def pread(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def pwrite(self, offset: int, data: bytes) -> None:
        raise OSError(E.ENOSPC, os.strerror(E.ENOSPC))


def _run(name: str, state: HostState, argv: list[str], io) -> int:
    # run_tool returns -6 or -13 where the real tool dies of SIGABRT or SIGPIPE; the shim
    # (host/run.py: shim_main) then dies of it too, once the host's state is saved
    out = Output(io.stdout, io.stderr, reader_start_s=READER_START_S)
    return run_tool(name, argv, out, HostFiles(state))


def thin_check(state: HostState, argv: list[str], io) -> int:
    return _run("thin_check", state, argv, io)


def thin_dump(state: HostState, argv: list[str], io) -> int:
    return _run("thin_dump", state, argv, io)


def thin_ls(state: HostState, argv: list[str], io) -> int:
    return _run("thin_ls", state, argv, io)


def thin_delta(state: HostState, argv: list[str], io) -> int:
    return _run("thin_delta", state, argv, io)


def thin_restore(state: HostState, argv: list[str], io) -> int:
    return _run("thin_restore", state, argv, io)


def thin_repair(state: HostState, argv: list[str], io) -> int:
    return _run("thin_repair", state, argv, io)


def thin_metadata_size(state: HostState, argv: list[str], io) -> int:
    return _run("thin_metadata_size", state, argv, io)
