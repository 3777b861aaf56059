"""thinsim.viz's pictures read what they draw from the pool's metadata: thin_dump's XML for
the block map, the metadata blocks for the mapping btrees (issue 14)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from thinsim import viz
from thinsim.backends.kernel import KernelPool
from thinsim.backends.model import ModelPool

XML = """\
<superblock uuid="" time="1" transaction="0" flags="0" version="2" data_block_size="128" nr_data_blocks="0">
  <device dev_id="1" mapped_blocks="3" transaction="0" creation_time="0" snap_time="1">
    <single_mapping origin_block="0" data_block="0" time="0"/>
    <single_mapping origin_block="1" data_block="3" time="1"/>
    <single_mapping origin_block="2" data_block="2" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="3" transaction="0" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="3" time="0"/>
  </device>
</superblock>
"""


@pytest.fixture
def snapped(backend):
    """Thin 1 with three blocks, snapshot 2 of it, then one block of thin 1 rewritten; on
    each backend (the kernel's pictures are drawn from its thin_dump, in the VM)."""
    pool = backend.pool(64 << 20, 4 << 20)
    pool.create_thin(1)
    thin = pool.activate(1, 16 << 20)
    thin.write(0, b"x" * 3 * 65536)
    pool.create_snap(2, 1)
    thin.write(65536, b"y" * 4096)
    yield pool
    plt.close("all")


def test_thin_dump_xml_is_read_into_each_thins_mappings_ranges_expanded():
    dump = viz.parse_thin_dump(XML)
    assert dump.data_block_size == 128 and dump.nr_data_blocks == 0
    assert dump.devices[1].mappings == [(0, 0, 0), (1, 3, 1), (2, 2, 0)]
    assert dump.devices[2].mappings == [(0, 0, 0), (1, 1, 0), (2, 2, 0)]
    assert dump.owners() == {0: [(1, 0), (2, 0)], 1: [(2, 1)], 2: [(1, 2), (2, 2)], 3: [(1, 1)]}


def test_a_pools_dump_is_the_one_its_metadata_dump_prints(snapped):
    assert viz.parse_thin_dump(snapped.metadata_dump()) == viz.parse_thin_dump(XML)


def test_the_block_map_marks_shared_exclusive_and_free_blocks(snapped):
    ax = viz.block_map(snapped)
    grid = ax.images[0].get_array().tolist()
    # pool row, thin 1, thin 2: 0 free or not mapped, 1 one thin's, 2 shared
    assert [row[:5] for row in grid] == [[2, 1, 2, 1, 0], [2, 0, 2, 1, 0], [2, 1, 2, 0, 0]]
    assert "1024" in ax.get_xlabel()


def test_a_block_the_pool_zeroed_and_one_written_whole_leave_the_same_metadata_and_data():
    # why the block map has no "zeroed" category (thinsim/viz.py): nothing a pool keeps
    # tells a block provisioned by a partial write (zeroed first) from one written whole
    seen = []
    for data in (b"x" * 4096, b"x" * 4096 + bytes(61440)):
        with ModelPool(64 << 20, 4 << 20, store="memory") as pool:
            pool.create_thin(1)
            thin = pool.activate(1, 16 << 20)
            thin.write(0, data)
            seen.append((pool.metadata_dump(), pool.status(), thin.read(0, 65536)))
    assert seen[0] == seen[1]


def _two_level_tree_half_shared(pool, flush: bool = False) -> None:
    # FLUSH: a flush (a commit) after each write, as a real pool's commits must be where
    # its nodes' block numbers are compared: the kernel also commits every second that
    # changed something, which under the VM's emulation falls anywhere in the writes.
    pool.create_thin(1)
    thin = pool.activate(1, 1 << 30)
    for i in range(400):  # more than a leaf holds: thin 1's tree gets two levels
        thin.write(i * 2 * 65536, b"x" * 4096)
        if flush:
            thin.flush()
    pool.create_snap(2, 1)
    for i in range(50):  # the first leaf's blocks only: the second stays shared
        thin.write(i * 2 * 65536, b"y" * 4096)
        if flush:
            thin.flush()


@pytest.mark.kernel
def test_a_real_pools_trees_read_under_a_metadata_snapshot_are_the_models(kernel):
    # The kernel side of the tree picture: its metadata file read under the snapshot that
    # reserve_metadata_snap holds, node for node (block numbers too) the model's.
    with KernelPool(1 << 30, 16 << 20) as real:
        _two_level_tree_half_shared(real, flush=True)
        real.message("reserve_metadata_snap")
        try:
            seen = viz.read_trees(real.metadata_path, metadata_snap=True)
        finally:
            real.message("release_metadata_snap")
    with ModelPool(1 << 30, 16 << 20) as model:
        _two_level_tree_half_shared(model, flush=True)
        assert seen == viz.read_trees(model)


def test_the_mapping_tree_shows_a_thins_leaf_shared_with_its_snapshot_until_written():
    with ModelPool(1 << 30, 16 << 20) as pool:
        _two_level_tree_half_shared(pool)
        top, roots, nodes = viz.read_trees(pool)
        assert sorted(roots) == [1, 2] and len(top) == 1
        leaves = {d: nodes[roots[d]].children for d in roots}
        assert len(leaves[1]) == len(leaves[2]) == 2
        assert leaves[1][0] != leaves[2][0] and leaves[1][1] == leaves[2][1]
        ax = viz.mapping_tree(pool)
        labels = [t.get_text() for t in ax.texts]
        assert f"#{leaves[1][1]}\nleaf: {nodes[leaves[1][1]].entries}\nthin 1,2" in labels
    plt.close("all")


def test_the_planners_picture_draws_on_the_axes_given():
    from thinsim import plan

    text = """
[plan]
horizon = "2d"
[pool]
data = "1GiB"
metadata = "16MiB"
[[volumes]]
name = "vm"
size = "512MiB"
[[activities]]
type = "fill"
volume = "vm"
size = "100MiB"
"""
    result = plan.run(plan.parse(text, "plan.toml"))
    ax = viz.use_over_time(result)
    assert [line.get_label() for line in ax.lines[:2]] == ["data used", "metadata used"]
    plt.close("all")
