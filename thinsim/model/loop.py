"""drivers/block/loop.c on the simulated kernel: binding a file to a loop device
(LOOP_CONFIGURE), unbinding it (LOOP_CLR_FD), LOOP_SET_CAPACITY; and the model backend's
loop devices over a data store (devices.StoreLoop).  The device keeps its file open
(lo_backing_file): loopfile.py."""

from __future__ import annotations

import errno as E
import os

from ..constants import SECTOR_SIZE as SECTOR
from ..errors import error_for
from . import loopfile
from .devices import HostState, LoopDevice, StoreLoop


def loop_attach(
    state: HostState,
    number: int,
    path: str,
    *,
    offset: int = 0,
    sizelimit: int = 0,
    read_only: bool = False,
) -> LoopDevice:
    """LOOP_CONFIGURE: bind ``path`` to loop ``number``.  EBUSY if bound already.  The
    device keeps the file open (lo_backing_file), not its name: see loopfile.py."""
    if number in state.loops:
        raise error_for(E.EBUSY)
    try:
        fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
    except OSError as e:
        raise error_for(e.errno) from None
    try:
        st = os.fstat(fd)
        size = max(0, st.st_size - offset)
        if sizelimit:
            size = min(size, sizelimit)
        loop = LoopDevice(
            number,
            os.path.abspath(path),
            st.st_ino,
            st.st_dev,
            offset=offset,
            sizelimit=sizelimit,
            read_only=read_only,
            size=size - size % SECTOR,
        )
        loopfile.hold(loop, fd)
    finally:
        os.close(fd)
    state.loops[number] = loop
    return loop


def loop_add_store(state: HostState, size: int, store=None) -> StoreLoop:
    """The model backend's loop device: the lowest free number, ``size`` bytes of
    ``store`` (see StoreLoop)."""
    n = state.free_loop()
    loop = state.loops[n] = StoreLoop(n, "", 0, 0, size=size, store=store)
    return loop


def loop_detach(state: HostState, loop: LoopDevice) -> None:
    """loop_clr_fd (__loop_clr_fd): the device is unbound and lets its file go."""
    del state.loops[loop.number]
    if not isinstance(loop, StoreLoop):
        loopfile.release(loop)


def loop_set_capacity(state: HostState, loop: LoopDevice) -> None:
    """LOOP_SET_CAPACITY: the device takes its backing file's new size."""
    size = max(0, loopfile.size(loop) - loop.offset)
    if loop.sizelimit:
        size = min(size, loop.sizelimit)
    loop.size = size - size % SECTOR
