"""Docker's devicemapper driver in the planner: the base device, layers and containers as
snapshots, transaction ids, dm.blkdiscard and dm.min_free_space, as deviceset.go does them."""

from __future__ import annotations

from thinsim import plan
from thinsim.plan.engine import Simulation

KiB, MiB = 1 << 10, 1 << 20

DOCKER = """\
[plan]
horizon = "{horizon}"

[docker]
mkfs_bytes = "1MiB"
{docker_extra}

[pool]
data = "1GiB"
metadata = "16MiB"
low_water_mark = 0

[[activities]]
type = "docker_pull"
every = "1d"
layers = {layers}
shared_layers = {shared}

{run}
"""
RUN = """
[[activities]]
type = "docker_run"
every = "1d"
writes = "256KiB"
lifetime = "1h"
"""


def docker(layers='["10MiB", "1MiB"]', shared=1, run=RUN, horizon="2d", docker_extra=""):
    return plan.parse(DOCKER.format(**locals()), "docker.toml")


def test_the_pool_is_docker_1_12_s_loop_lvm_pool_unless_the_file_says_otherwise():
    w = plan.parse('[plan]\nhorizon = "1d"\n[docker]\n', "d.toml")
    p = w.pool
    assert (p.data, p.metadata, p.block_size, p.low_water_mark, p.features) == (
        100 << 30, 2 << 30, 64 * KiB, 32768, ["skip_block_zeroing"]
    )  # fmt: skip
    assert Simulation(w).pool.table() == (
        "0 209715200 thin-pool 7:0 7:1 128 32768 1 skip_block_zeroing "
    )


def test_each_device_change_is_a_message_then_a_transaction_id_as_deviceset_go_sends_them():
    sim = Simulation(docker(), record=True)
    sim.run()
    messages = [op[2] for op in sim.ops if op[1] == "message"]
    assert messages[:12] == [
        "create_thin 1",  # the base device: Docker's first id is 1
        "set_transaction_id 0 1",
        "create_snap 2 1",  # layer 1 on the base
        "set_transaction_id 1 2",
        "create_snap 3 2",  # layer 2
        "set_transaction_id 2 3",
        "create_snap 4 3",  # the container's -init layer on the image's top
        "set_transaction_id 3 4",
        "create_snap 5 4",  # the container on its -init layer
        "set_transaction_id 4 5",
        "delete 5",  # docker rm an hour later: the container, then its -init layer
        "set_transaction_id 5 6",
    ]
    # before a device is deleted it is discarded whole (dm.blkdiscard, on for loop-lvm)
    i = sim.ops.index((3600, "message", "delete 5"))
    assert [op[1:3] for op in sim.ops[i - 3 : i]] == [
        ("activate", "c1"), ("discard", "c1"), ("deactivate", "c1")
    ]  # fmt: skip


def test_layers_and_containers_use_what_they_wrote_and_removal_gives_it_back():
    r = plan.run(docker())
    days = {row["day"]: row for row in r["timeline"]}
    # the base's mkfs (1 MiB: 16 blocks), layer 1 (10 MiB: 160), layer 2 (16)
    assert days[2.0]["volumes"] == {
        "base": {"dev": 1, "mapped": 16, "exclusive": 0, "shared": 16},
        "layer1": {"dev": 2, "mapped": 176, "exclusive": 0, "shared": 176},
        "layer2": {"dev": 3, "mapped": 192, "exclusive": 16, "shared": 176},
        "layer3": {"dev": 6, "mapped": 192, "exclusive": 16, "shared": 176},
    }
    assert days[2.0]["data_used"] == 16 + 160 + 16 + 16
    # day 1's container is alive at the sample: its -init layer's 16 KiB (one block) and 64
    # random 4 KiB writes (64 blocks, none zeroed: skip_block_zeroing)
    assert days[1.0]["data_used"] == 208 + 1 + 64
    s = r["summary"]
    assert s["data_zeroed"] == 0
    # each removal's blkdiscard passes down the container's 64 blocks and its -init's one
    assert s["discards_passed_down"] == 2 * 65 * 64 * KiB
    assert s["final_status"] == (
        "0 2097152 thin-pool 12 423/4096 208/16384 - rw discard_passdown queue_if_no_space - 1024 "
    )


def test_dm_min_free_space_refuses_a_new_device_with_docker_s_exact_error():
    r = plan.run(docker(layers='["500MiB"]', shared=0, run="", horizon="3d"))
    refused = [e for e in r["events"] if e["kind"] == "docker_refused"]
    # day 0 and 1 pull 8000 blocks each; on day 2 368 of 16384 are free, 10% is 1638
    assert [(e["t"], e["text"]) for e in refused] == [
        (
            2 * 86400,
            (
                "docker pull (layer 1): devmapper: Thin Pool has 368 free data blocks which is "
                "less than minimum required 1638 free data blocks. Create more free space in thin "
                "pool or use dm.min_free_space option to change behavior"
            ),
        )
    ]
    assert r["timeline"][-1]["data_used"] == 16 + 2 * 8000


def test_a_min_free_space_of_0_lets_docker_fill_the_pool_to_the_kernel_s_refusal():
    r = plan.run(docker(layers='["500MiB"]', shared=0, run="", horizon="3d",
                        docker_extra='min_free_space = "0%"'))  # fmt: skip
    kinds = [e["kind"] for e in r["events"]]
    assert "docker_refused" not in kinds
    assert r["summary"]["stopped_by"] == "out_of_data_space"
    assert r["summary"]["data_full_at_s"] == 2 * 86400
