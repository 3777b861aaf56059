"""Random operation sequences through the model, with every invariant checked after each
step, and the data read back checked against a plain dictionary of what was written."""

import errno

from helpers import KiB, MiB, make_pool
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from thinsim.errors import ThinsimError
from thinsim.model.thin import Thin

BLOCK = 64 * KiB
THIN_BLOCKS = 64
DATA_BLOCKS = 96

ids = st.integers(0, 5)
blocks = st.integers(0, THIN_BLOCKS - 1)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.pool = None
        self.thins = {}
        self.expected = {}  # dev -> {block: bytes}
        self.features = ()

    @rule(
        zeroing=st.booleans(),
        passdown=st.booleans(),
        error_if_no_space=st.booleans(),
        lwm=st.integers(0, 100),
    )
    @precondition(lambda self: self.pool is None)
    def create_pool(self, zeroing, passdown, error_if_no_space, lwm):
        features = []
        if not zeroing:
            features.append("skip_block_zeroing")
        if not passdown:
            features.append("no_discard_passdown")
        if error_if_no_space:
            features.append("error_if_no_space")
        self.features = tuple(features)
        self.pool = make_pool(data=DATA_BLOCKS * BLOCK, md=4 * MiB, lwm=lwm, features=features)

    def _message(self, text):
        before = self.pool.status()
        try:
            self.pool.message(text)
            return None
        except ThinsimError as e:
            # a failed message changes nothing a user can see
            assert self.pool.status() == before
            return e.errno

    @rule(dev=ids)
    @precondition(lambda self: self.pool is not None)
    def create_thin(self, dev):
        r = self._message(f"create_thin {dev}")
        if dev in self.expected:
            assert r == errno.EEXIST
        elif r is None:
            self.expected[dev] = {}

    @rule(dev=ids, origin=ids)
    @precondition(lambda self: self.pool is not None)
    def create_snap(self, dev, origin):
        r = self._message(f"create_snap {dev} {origin}")
        if dev in self.expected:
            assert r == errno.EEXIST
        elif origin not in self.expected:
            assert r == errno.ENODATA
        else:
            assert r is None
            self.expected[dev] = dict(self.expected[origin])

    @rule(dev=ids)
    @precondition(lambda self: self.pool is not None)
    def delete(self, dev):
        r = self._message(f"delete {dev}")
        if dev not in self.expected:
            assert r == errno.ENODATA
        elif dev in self.thins:
            assert r == errno.EBUSY
        else:
            assert r is None
            del self.expected[dev]

    @rule(dev=ids)
    @precondition(lambda self: self.pool is not None)
    def activate(self, dev):
        if dev in self.thins or dev not in self.expected:
            return
        self.thins[dev] = Thin(self.pool, dev, THIN_BLOCKS * BLOCK // 512)

    @rule(dev=ids)
    @precondition(lambda self: self.pool is not None)
    def deactivate(self, dev):
        if dev in self.thins:
            self.thins.pop(dev).close()

    @rule(
        dev=ids,
        block=blocks,
        start=st.integers(0, BLOCK // 512 - 1),
        sectors=st.integers(1, 300),
        fill=st.integers(1, 255),
    )
    @precondition(lambda self: self.pool is not None)
    def write(self, dev, block, start, sectors, fill):
        thin = self.thins.get(dev)
        if thin is None:
            return
        offset = block * BLOCK + start * 512
        length = min(sectors * 512, THIN_BLOCKS * BLOCK - offset)
        data = bytes([fill]) * length
        try:
            thin.write(offset, data)
            ok_until = offset + length
        except ThinsimError as e:
            assert e.errno in (errno.ENOSPC, errno.EIO)
            ok_until = None
        if ok_until is None:
            # some leading blocks may have been written: re-read them into the model
            for b in range(block, (offset + length - 1) // BLOCK + 1):
                self.expected[dev][b] = thin.read(b * BLOCK, BLOCK)
            return
        pos = offset
        while pos < offset + length:
            b, within = divmod(pos, BLOCK)
            n = min(BLOCK - within, offset + length - pos)
            old = self.expected[dev].get(b)
            if old is None:
                old = thin.read(b * BLOCK, BLOCK) if not self._zeroes(within, n) else bytes(BLOCK)
            buf = bytearray(old)
            buf[within : within + n] = data[pos - offset : pos - offset + n]
            self.expected[dev][b] = bytes(buf)
            pos += n

    def _zeroes(self, within, n):
        # with zeroing on, a newly provisioned block reads zeros outside the write
        return "skip_block_zeroing" not in self.features

    @rule(dev=ids, block=blocks, count=st.integers(0, 8), head=st.integers(0, 127))
    @precondition(lambda self: self.pool is not None)
    def discard(self, dev, block, count, head):
        thin = self.thins.get(dev)
        if thin is None:
            return
        offset = block * BLOCK + head * 512
        length = min(count * BLOCK, THIN_BLOCKS * BLOCK - offset)
        thin.discard(offset, length)
        first = -(-offset // BLOCK)
        last = (offset + length) // BLOCK
        for b in range(first, last):
            self.expected[dev].pop(b, None)

    @rule(dev=ids)
    @precondition(lambda self: self.pool is not None)
    def flush(self, dev):
        if dev in self.thins:
            self.thins[dev].flush()

    @rule()
    @precondition(lambda self: self.pool is not None)
    def status(self):
        line = self.pool.status()
        assert line.endswith(" ")

    @rule()
    @precondition(lambda self: self.pool is not None)
    def metadata_snap(self):
        if self.pool.pmd.held_root:
            assert self._message("reserve_metadata_snap") == errno.EBUSY
            assert self._message("release_metadata_snap") is None
        else:
            assert self._message("release_metadata_snap") == errno.EINVAL
            assert self._message("reserve_metadata_snap") is None

    @rule(extra=st.integers(1, 64))
    @precondition(lambda self: self.pool is not None)
    def grow_data(self, extra):
        pool = self.pool
        table = pool.table
        pool.suspend()
        pool.load(table, pool.length_sectors + extra * BLOCK // 512)
        pool.resume()

    @invariant()
    def invariants_hold(self):
        if self.pool is not None:
            self.pool._check()

    @invariant()
    def reads_return_what_was_written(self):
        for dev, thin in self.thins.items():
            exp = self.expected[dev]
            for b, data in exp.items():
                assert thin.read(b * BLOCK, BLOCK) == data, (dev, b)


TestPoolMachine = PoolMachine.TestCase
