"""Device nodes in the simulated host's private /dev, kept in step with its devices.

On a real Debian host, /dev has loop0 to loop7 from the moment loop.ko loads (and loopN for
every device made later), loop-control, mapper/control, a dm-N node for every device-mapper
device and, from udev, a mapper/NAME symlink to ../dm-N.  Scripts look at them (`ls
/dev/mapper`, `readlink -f`, `test -b`), so the private /dev that thinsim/host/sandbox.py
mounts gets the same names.

The nodes must never reach a real device of the host: a node with the simulated numbers
(254:0, 7:0) would open the host's own vda or loop0.  So every node here has major 0, which no
driver registers: opening one fails with ENXIO ("No such device or address"), and reads and
writes of simulated devices go through the simulated commands only.  `ls -l` therefore shows
"0, N" where a real host shows "254, N": the one visible difference.

Where the run has real devices (thinsim/host/realdev.py), a device's node is instead a real
loop device of the host bound to the device's FUSE file, which the namespace's init makes:
``ls -l`` shows that loop device's numbers ("7, M").
"""

from __future__ import annotations

import os
import stat
import sys

from .state import HostState, open_host

DEV = "/dev"
FIRST_LOOPS = 8  # loop.ko's max_loop default (CONFIG_BLK_DEV_LOOP_MIN_COUNT) on Debian
_LOOP_BASE = 0  # minors under major 0: loops from 0, dm devices from 4096
_DM_BASE = 4096


def _node(path: str, minor: int, kind: int = stat.S_IFBLK) -> None:
    if os.path.lexists(path):
        return
    try:
        os.mknod(path, kind | 0o660, os.makedev(0, minor))
    except PermissionError:
        _request(path, minor, kind)


def _request(path: str, minor: int, kind: int) -> None:
    """A script in thinsim's sandbox (thinsim/host/sandbox.py) has no CAP_MKNOD: the
    namespace's init makes the node (major 0 only), asked on the THINSIM_NODES socket."""
    import errno
    import socket

    address = os.environ.get("THINSIM_NODES")
    if address is None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(address)
        s.send(f"{'b' if kind == stat.S_IFBLK else 'c'} {minor} {path}".encode())
        reply = int(s.recv(16) or errno.EIO)
    if reply == errno.EEXIST:
        return
    if reply:
        raise OSError(reply, os.strerror(reply), path)


def _symlink(target: str, path: str) -> None:
    if os.path.islink(path) and os.readlink(path) == target:
        return
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


def sync(state: HostState, dev: str = DEV) -> None:
    """Make the private /dev show the host's loop and device-mapper devices.  Does nothing
    unless thinsim mounted that /dev (THINSIM_PRIVATE_DEV names it)."""
    from . import sysfs

    sysfs.sync(state)  # the private /sys/block, when there is one
    if os.environ.get("THINSIM_PRIVATE_DEV") != dev:
        return
    from . import realdev

    real = {}
    if realdev.current is not None and dev == DEV:
        realdev.current.sync(state)
        real = realdev.current.nodes()
    try:
        _sync(state, dev, real)
    except (PermissionError, ConnectionError, FileNotFoundError):
        pass  # no mknod in a user namespace (thinsim run as non-root): names only matter less


def _sync(state: HostState, dev: str, real: dict[str, int] | None = None) -> None:
    """REAL: the nodes that are a real loop device of the host (thinsim/host/realdev.py,
    whose init made them), path -> its number; every other is major 0."""
    real = real or {}
    for path in list_block_nodes(dev):
        if path not in real and _major(path) not in (0, None):
            os.unlink(path)  # a real device's node whose loop device is gone: major 0 again
    mapper = os.path.join(dev, "mapper")
    os.makedirs(mapper, exist_ok=True)
    _node(os.path.join(dev, "loop-control"), 0, stat.S_IFCHR)
    _node(os.path.join(mapper, "control"), 1, stat.S_IFCHR)
    # Loop nodes stay once made, as on a real host (loop_add makes them; nothing here removes).
    for n in set(range(FIRST_LOOPS)) | set(state.loops):
        _node(os.path.join(dev, f"loop{n}"), _LOOP_BASE + n)
    # a dm device has a disk (dm-N) from its first table load, and udev's mapper/NAME link
    # from then on; one without a table has neither unless `dmsetup mknodes` made the node
    want = {d.minor: d.name for d in state.dm.values() if d.disk_added}
    made = {d.name: d.minor for d in state.dm.values() if getattr(d, "mknod", False)}
    for entry in os.listdir(dev):
        if entry.startswith("dm-") and entry[3:].isdigit() and int(entry[3:]) not in want:
            os.unlink(os.path.join(dev, entry))
    names = set(want.values()) | set(made)
    for entry in os.listdir(mapper):
        # only udev's symlinks and libdm's nodes go; a plain file there (a dd to a missing
        # name) stays
        path = os.path.join(mapper, entry)
        if entry not in names and (os.path.islink(path) or _is_block(path)):
            os.unlink(path)
    for minor, name in want.items():
        _node(os.path.join(dev, f"dm-{minor}"), _DM_BASE + minor)
        _symlink(f"../dm-{minor}", os.path.join(mapper, name))
    for name, minor in made.items():
        if name not in want.values():
            _node(os.path.join(mapper, name), _DM_BASE + minor)


def list_block_nodes(dev: str) -> list[str]:
    return [os.path.join(dev, e) for e in os.listdir(dev) if e.startswith(("loop", "dm-"))]


def _major(path: str) -> int | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return os.major(st.st_rdev) if stat.S_ISBLK(st.st_mode) else None


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.lstat(path).st_mode)
    except OSError:
        return False


def main() -> int:
    """Called by thinsim/host/sandbox.py once /dev is mounted: the nodes of THINSIM_HOST's
    devices."""
    sync_host()
    return 0


def sync_host() -> bool:
    """The nodes of THINSIM_HOST's devices; whether some of them are to be real block
    devices (thinsim/host/realdev.py), which only the host's process can serve."""
    from .realdev import wanted

    host = os.environ.get("THINSIM_HOST")
    if host is None:
        return False
    with open_host(host, write=False) as state:
        sync(state)
        return bool(wanted(state))


if __name__ == "__main__":
    sys.exit(main())
