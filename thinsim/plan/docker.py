"""Docker's devicemapper storage driver, as its operations reach the pool
(moby: daemon/graphdriver/devmapper/deviceset.go, Docker 1.12 and after).

- Device ids: ``getNextFreeDeviceID`` increments ``NextDeviceID`` before it looks, so the
  base device is 1, and the ids after it are the lowest free from there on.
- Transactions: every device change is ``openTransaction`` (the next id, saved to a file),
  the message (``create_thin``, ``create_snap``, ``delete``), then ``closeTransaction``:
  ``set_transaction_id OLD NEW``.  The pool's transaction id counts Docker's changes.
- The base device (``createBaseImage``): ``create_thin`` of ``dm.basesize`` (10 GiB), mkfs
  on it (``mkfs_bytes`` written from its start), and it is left inactive.
- A new device (an image layer, a container's ``-init`` layer, the container) is a
  snapshot of its parent (``AddDevice`` -> ``takeSnapshot``): first ``poolHasFreeSpace``
  reads the pool's status and refuses when less than ``dm.min_free_space`` (10%) of the
  data or metadata blocks is free, with Docker's exact error; an active parent is
  suspended around ``create_snap``.
- A layer is activated, its diff written, and deactivated; a container's ``-init`` layer
  gets Docker's few files (``init_bytes``), the container its writes.
- Removing a device (``DeleteDevice``): with ``dm.blkdiscard`` (on for loop-lvm) it is
  activated and discarded whole (``issueDiscard``: the kernel does not discard the blocks of
  a deleted thin), then deactivated and deleted in a transaction.
"""

from __future__ import annotations

from collections import deque

from .workload import Activity, DockerSpec, MessageFailed

MIN_FREE_DATA = (
    "devmapper: Thin Pool has {free} free data blocks which is less than minimum required "
    "{need} free data blocks. Create more free space in thin pool or use dm.min_free_space "
    "option to change behavior"
)
MIN_FREE_METADATA = (
    "devmapper: Thin Pool has {free} free metadata blocks which is less than minimum required "
    "{need} free metadata blocks. Create more free metadata space in thin pool or use "
    "dm.min_free_space option to change behavior"
)
MAX_DEVICE_ID = 0xFFFFFF


class DockerRefused(Exception):
    """What the daemon answers when it will not make a device (its message is Docker's)."""


class Docker:
    """The driver's state over a :class:`~thinsim.plan.engine.Simulation`."""

    def __init__(self, sim, spec: DockerSpec) -> None:
        self.sim = sim
        self.spec = spec
        self.transaction_id = 0
        self.next_device_id = 0
        self.used_ids: set[int] = set()
        self.images: deque[list[str]] = deque()  # each image: its layers, bottom first
        self.layer_users: dict[str, int] = {}  # images and containers on each layer
        self.containers: dict[str, str] = {}  # container -> the image top it runs
        self.n_layers = self.n_containers = 0
        self.refused = 0

    # -- deviceset.go -------------------------------------------------------------------

    def _next_free_id(self) -> int:
        for _ in range(MAX_DEVICE_ID + 1):
            self.next_device_id = (self.next_device_id + 1) & MAX_DEVICE_ID
            if (
                self.next_device_id not in self.used_ids
                and self.next_device_id not in self.sim.by_id
            ):
                self.used_ids.add(self.next_device_id)
                return self.next_device_id
        raise DockerRefused("devmapper: Unable to find a free device ID")

    def _message(self, text: str) -> None:
        try:
            self.sim.message(text)
        except MessageFailed:
            raise DockerRefused(f"devmapper: the pool refused '{text}'") from None

    def _close_transaction(self) -> None:
        """closeTransaction -> updatePoolTransactionID."""
        new = self.transaction_id + 1
        self._message(f"set_transaction_id {self.transaction_id} {new}")
        self.transaction_id = new

    def pool_has_free_space(self) -> None:
        """poolHasFreeSpace: DockerRefused with Docker's message when too little is free."""
        pct = self.spec.min_free_space
        if pct == 0:
            return
        st = self.sim.pool_status()
        if "data_total" not in st:
            raise DockerRefused("devmapper: the pool failed")
        for used, total, text in (
            (st["data_used"], st["data_total"], MIN_FREE_DATA),
            (st["metadata_used"], st["metadata_total"], MIN_FREE_METADATA),
        ):
            need = max(1, int(total * pct.numerator // pct.denominator))
            if total - used < need:
                raise DockerRefused(text.format(free=total - used, need=need))

    def create_base(self) -> None:
        """createBaseImage: the base device, mkfs on it, left inactive."""
        sim = self.sim
        dev = self._next_free_id()
        try:
            v = sim.create_thin("base", self.spec.basesize, "docker", dev_id=dev)
        except MessageFailed:
            raise DockerRefused("devmapper: the pool refused the base device") from None
        self._close_transaction()
        sim.activate(v)
        if self.spec.mkfs_bytes:
            sim.write_range(v, 0, self.spec.mkfs_bytes, sim.bs)
        v.cursor = self.spec.mkfs_bytes
        sim.deactivate(v)

    def add_device(self, name: str, parent: str):
        """AddDevice -> takeSnapshot -> createRegisterSnapDevice."""
        self.pool_has_free_space()
        sim = self.sim
        dev = self._next_free_id()
        try:
            v = sim.create_snap(name, parent, "docker", dev_id=dev)
        except MessageFailed:
            self.used_ids.discard(dev)
            raise DockerRefused(f"devmapper: the pool refused a snapshot of {parent}") from None
        self._close_transaction()
        return v

    def delete_device(self, name: str) -> None:
        """DeleteDevice: issueDiscard (dm.blkdiscard), deactivate, delete in a transaction."""
        sim = self.sim
        v = sim.vols[name]
        if self.spec.blkdiscard:
            if v.thin is None:
                sim.activate(v)
            sim.discard(v, 0, v.size)
        sim.deactivate(v)
        try:
            sim.delete(v)
        except MessageFailed:
            raise DockerRefused(f"devmapper: the pool refused to delete {name}") from None
        self.used_ids.discard(v.dev_id)
        self._close_transaction()

    def _write(self, v, nbytes: int, io: int, *, random: bool) -> None:
        """A layer's diff (sequential, on from the parent's end) or a container's writes
        (``io``-sized, at random over the device)."""
        sim = self.sim
        if not nbytes:
            return
        if not random:
            start = v.cursor if v.cursor + nbytes <= v.size else 0
            sim.write_range(v, start, nbytes, io)
            v.cursor = start + nbytes
            return
        slots = v.size // io
        sim.write_each(v, (sim.rng.integers(0, slots, nbytes // io) * io).tolist(), io)

    # -- activities -----------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.create_base()
        except DockerRefused as e:
            self._refused("docker daemon start", e)

    def _refused(self, what: str, e: DockerRefused) -> None:
        self.refused += 1
        self.sim.event("docker_refused", f"{what}: {e}")

    def pull(self, a: Activity) -> None:
        """docker pull: a new image; its first ``shared_layers`` layers are the previous
        image's, each other layer a snapshot of the one below, its diff written."""
        sim = self.sim
        prev = self.images[-1] if self.images else []
        layers = list(prev[: a.shared_layers]) if len(prev) >= a.shared_layers else []
        parent = layers[-1] if layers else "base"
        try:
            for size in a.layers[len(layers) :]:
                self.n_layers += 1
                name = f"layer{self.n_layers}"
                v = self.add_device(name, parent)
                sim.activate(v)
                self._write(v, size, a.io_size, random=False)
                sim.deactivate(v)
                layers.append(name)
                parent = name
        except DockerRefused as e:
            self._refused(f"docker pull (layer {len(layers) + 1})", e)
            return
        self.images.append(layers)
        for name in layers:
            self.layer_users[name] = self.layer_users.get(name, 0) + 1
        while a.keep and len(self.images) > a.keep:
            try:
                if not self._remove_image(self.images[0]):
                    break
            except DockerRefused as e:
                self._refused("docker rmi", e)
                break
            self.images.popleft()

    def _remove_image(self, layers: list[str]) -> bool:
        """docker rmi: refused while a container uses the image; the layers no other image
        uses are deleted, top first."""
        if layers[-1] in self.containers.values():
            return False
        for name in reversed(layers):
            self.layer_users[name] -= 1
            if self.layer_users[name] == 0:
                del self.layer_users[name]
                self.delete_device(name)
        return True

    def run(self, a: Activity) -> None:
        """docker run on the newest image: the -init layer, the container, its writes;
        ``docker rm`` after ``lifetime``."""
        if not self.images:
            return
        sim = self.sim
        image = self.images[-1]
        self.n_containers += 1
        name = f"c{self.n_containers}"
        try:
            init = self.add_device(f"{name}-init", image[-1])
        except DockerRefused as e:
            self._refused(f"docker run {name}", e)
            return
        sim.activate(init)
        self._write(init, a.init_bytes, 4096, random=False)
        sim.deactivate(init)
        try:
            c = self.add_device(name, init.name)
        except DockerRefused as e:
            self._refused(f"docker run {name}", e)
            try:
                self.delete_device(init.name)
            except DockerRefused as e2:
                self._refused(f"docker run {name} (removing its -init layer)", e2)
            return
        self.containers[name] = image[-1]
        sim.activate(c)
        self._write(c, a.writes, a.io_size, random=True)
        sim.deactivate(c)
        sim.at(sim.now + a.lifetime, a.index, self.remove, name)

    def remove(self, name: str) -> None:
        """docker rm: the container's device, then its -init layer."""
        if name not in self.containers:
            return
        del self.containers[name]
        try:
            self.delete_device(name)
            self.delete_device(f"{name}-init")
        except DockerRefused as e:
            self._refused(f"docker rm {name}", e)
