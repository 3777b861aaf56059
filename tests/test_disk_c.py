"""Btree node I/O's C routines (thinsim/model/_disk.c) give what the Python they stand in
for, the reference, gives: the same bytes for a node encoded, the same nodes (their types
too) for a block parsed or read from a file, and the same errors -- for valid nodes of
each value size, and for nodes and blocks of any shape, which C leaves to Python."""

import os
import struct
from array import array
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinsim.constants import (
    BITMAP_CSUM_XOR,
    BTREE_CSUM_XOR,
    INDEX_CSUM_XOR,
    SUPERBLOCK_CSUM_XOR,
)
from thinsim.model import disk
from thinsim.model.btree import Node, calc_max_entries

pytestmark = pytest.mark.skipif(
    disk._C is None, reason="no C compiler or Python headers here, or THINSIM_NO_C set"
)

_u64 = st.integers(0, (1 << 64) - 1)
_u32 = st.integers(0, (1 << 32) - 1)


@contextmanager
def _python():
    """A context in which disk.py runs its Python only (as THINSIM_NO_C=1 runs it)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("_C_ENCODE", "_C_PARSE", "_C_LOAD"):
            mp.setattr(disk, name, None)
        yield


def _shape(x):
    """What a result is, to the types of its parts."""
    if isinstance(x, Node):
        return (
            type(x),
            (type(x.leaf), x.leaf),
            (type(x.max_entries), x.max_entries),
            (type(x.value_size), x.value_size),
            _shape(x.keys),
            _shape(x.values),
        )
    if isinstance(x, array):
        return (type(x), x.typecode, x.tolist())
    if isinstance(x, list):
        return (type(x), [_shape(v) for v in x])
    return (type(x), x)


def _outcome(f, *args):
    try:
        r = f(*args)
    except Exception as e:  # noqa: BLE001 -- whatever it is, both ways raise it alike
        extra = tuple(getattr(e, a, None) for a in ("errno", "lines", "again", "block"))
        return ("raised", type(e), str(e), extra)
    return ("returned", _shape(r))


def _both(f, *args):
    """f(*args) with C and in Python: the two outcomes."""
    c = _outcome(f, *args)
    with _python():
        py = _outcome(f, *args)
    return c, py


@st.composite
def _valid_nodes(draw, value_sizes=(8, 4)):
    leaf = draw(st.booleans())
    vsize = draw(st.sampled_from(value_sizes)) if leaf else 8
    max_entries = calc_max_entries(vsize)
    n = draw(st.integers(0, max_entries))
    keys = array("Q", sorted(draw(st.lists(_u64, min_size=n, max_size=n, unique=True))))
    if vsize == 24:
        values = draw(st.lists(st.tuples(_u64, _u64, _u32, _u32), min_size=n, max_size=n))
    else:
        # reference counts above 2^32 cannot happen; both ways keep their low 32 bits
        values = array("Q", draw(st.lists(_u64, min_size=n, max_size=n)))
    return Node(leaf, max_entries, vsize, keys, values)


@given(_valid_nodes(), _u64)
def test_a_node_of_u64_or_u32_values_is_encoded_in_c_to_the_pythons_bytes(node, b):
    data = disk._C_ENCODE(b, node)
    assert data is not None
    with _python():
        assert data == disk.encode_node(b, node)


def test_the_checksum_is_the_same_with_the_cpus_crc32_or_the_crc32c_package():
    nodes = [
        Node(True, 252, 8, array("Q", range(k)), array("Q", range(0, 7 * k, 7)))
        for k in (0, 1, 100, 252)
    ]
    with_cpu = [disk._C_ENCODE(b, n) for b, n in enumerate(nodes)]
    try:
        assert not disk._C.setup(Node, array("Q", [0]), disk._crc32c, False)
        with_package = [disk._C_ENCODE(b, n) for b, n in enumerate(nodes)]
    finally:
        disk._C.setup(Node, array("Q", [0]), disk._crc32c, True)
    assert with_cpu == with_package
    with _python():
        assert with_cpu == [disk.encode_node(b, n) for b, n in enumerate(nodes)]


class _SubNode(Node):
    __slots__ = ()


@st.composite
def _odd_nodes(draw):
    """Nodes as the model never makes them: lists for arrays, other typecodes, as many
    values as keys or not, value sizes C does not do, counts that do not fit a block."""
    node = draw(_valid_nodes((8, 4, 24, 16, 3)))
    n = len(node.keys)
    if draw(st.booleans()):
        node.max_entries = draw(st.one_of(st.integers(0, 600), st.sampled_from([1 << 32, -1])))
    if draw(st.booleans()):
        node.leaf = draw(st.sampled_from([0, 1, None, "", "x"]))
    if draw(st.booleans()):
        node.keys = draw(
            st.sampled_from(
                [list(node.keys), array("q", [k >> 1 for k in node.keys]), array("L", [])]
            )
        )
    if draw(st.booleans()) and not isinstance(node.values, list):
        drop = draw(st.integers(0, 2))
        node.values = draw(
            st.sampled_from(
                [list(node.values), array("q"), node.values[: max(0, n - drop)], array("I")]
            )
        )
    if draw(st.booleans()):
        node = _SubNode(node.leaf, node.max_entries, node.value_size, node.keys, node.values)
    return node


# numpy warns of the u32 values in a list that do not fit (Python's path, the reference)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@given(_odd_nodes(), st.one_of(_u64, st.sampled_from([-1, 1 << 64])))
def test_a_node_of_any_shape_encodes_or_fails_as_in_python(node, b):
    c, py = _both(disk.encode_node, b, node)
    assert c == py


def _block(b: int, node: Node) -> bytes:
    with _python():
        return disk.encode_node(b, node)


@st.composite
def _blocks(draw, b=None):
    """(block number, 4096 bytes): a node's (at block ``b``, or any), with its header
    changed or not, its checksum sealed again as a node's, another block's or not at all."""
    node = draw(_valid_nodes((8, 4, 24)))
    b = draw(_u64) if b is None else b
    data = bytearray(_block(b, node))
    if draw(st.booleans()):
        at, fmt = draw(st.sampled_from([(4, "<I"), (8, "<Q"), (16, "<I"), (20, "<I"), (24, "<I")]))
        small = st.integers(0, 600) if fmt == "<I" else st.sampled_from([b ^ 1, b])
        value = draw(st.one_of(small, _u32 if fmt == "<I" else _u64))
        struct.pack_into(fmt, data, at, value)
    if draw(st.booleans()):
        data[draw(st.integers(32, 4095))] ^= 1 << draw(st.integers(0, 7))
    seal = draw(
        st.sampled_from(
            [BTREE_CSUM_XOR, BTREE_CSUM_XOR, BITMAP_CSUM_XOR, INDEX_CSUM_XOR, SUPERBLOCK_CSUM_XOR]
        )
    )
    if draw(st.integers(0, 9)):
        struct.pack_into("<I", data, 0, disk.bm_checksum(bytes(data[4:]), seal))
    return b, bytes(data)


@given(_blocks())
def test_a_block_parses_to_the_pythons_node_or_fails_as_in_python(block):
    b, data = block
    for f in (disk._parse_checked_node, disk.parse_node):
        c, py = _both(f, data, b)
        assert c == py
    c, py = _both(disk._parse_checked_node, data[:100], b)
    assert c == py


@given(_valid_nodes(), _u64)
def test_a_valid_node_of_u64_or_u32_values_is_parsed_in_c(node, b):
    data = _block(b, node)
    back = disk._C_PARSE(data, b)
    assert back is not None
    assert _shape(back) == _shape(disk._C_PARSE(bytearray(data), b))
    with _python():
        assert _shape(back) == _shape(disk._parse_checked_node(data, b))


@given(st.data(), st.integers(1, 8), st.integers(0, 3))
def test_a_block_read_from_a_file_is_the_pythons_node_or_fails_as_in_python(
    tmp_path_factory, data, nr_blocks, offset
):
    """NodeReader.load, block after block, then each again (a block that failed its
    checks fails at once the second time), and beyond the end of the file."""
    path = tmp_path_factory.mktemp("md") / "md"
    offset *= 512
    with open(path, "wb") as f:
        f.write(b"\xee" * offset)
        for i in range(nr_blocks):
            # most say they are the block they are, some another
            b = data.draw(st.one_of(st.just(i), st.just(i), st.integers(0, nr_blocks)))
            f.write(data.draw(_blocks(b))[1])
        if data.draw(st.booleans()):
            f.write(bytes(100))  # a block cut short
    c_reader = disk.NodeReader(str(path), offset)
    py_reader = disk.NodeReader(str(path), offset)
    for b in [*range(nr_blocks + 2), *range(nr_blocks), 1 << 40]:
        c = _outcome(c_reader.load, b)
        with _python():
            py = _outcome(py_reader.load, b)
        assert c == py


def test_a_valid_node_is_read_from_a_file_in_c(tmp_path):
    path = tmp_path / "md"
    nodes = [
        Node(True, calc_max_entries(4), 4, array("Q", [1, 5, 9]), array("Q", [3, 4, 1 << 31])),
        Node(False, 252, 8, array("Q", [0, 1 << 63]), array("Q", [7, 8])),
        Node(True, 252, 8, array("Q"), array("Q")),
    ]
    path.write_bytes(b"".join(_block(b, n) for b, n in enumerate(nodes)))
    fd = os.open(path, os.O_RDONLY)
    try:
        for b, node in enumerate(nodes):
            back = disk._C_LOAD(fd, b * 4096, b)
            assert _shape(back) == _shape(node)
        assert disk._C_LOAD(fd, 3 * 4096, 3) is None  # beyond the end: Python says what
        assert disk._C_LOAD(fd, 0, 1) is None  # the block says it is another
    finally:
        os.close(fd)
