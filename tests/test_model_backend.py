"""The model backend is a thin layer over the simulated kernel's one device-mapper core
(thinsim/model/dm.py): its pools and thins are mapped devices there, each pool on two loop
devices of its own, and what the core refuses leaves nothing behind."""

from __future__ import annotations

import pytest

from thinsim.backends.model import ModelMachine, ModelPool
from thinsim.errors import ThinsimError

MiB, GiB = 1 << 20, 1 << 30


def _pool(machine: ModelMachine, block_size: str = "128"):
    return machine.create_pool(
        metadata_size=4 * MiB,
        data_size=GiB,
        length_sectors=GiB // 512,
        block_size=block_size,
        low_water_mark="0",
        features=[],
    )


def test_a_pool_and_its_thin_are_mapped_devices_of_the_core_with_its_minors():
    machine = ModelMachine()
    pool = _pool(machine)
    pool.message("create_thin 0")
    thin = pool.activate(0, GiB)
    kernel = machine._kernel
    kernel._check()
    assert sorted(d.minor for d in kernel.dm.values()) == [0, 1]
    assert (pool.minor, thin.minor) == (0, 1)
    assert pool.table() == "0 2097152 thin-pool 7:0 7:1 128 0 0 "
    assert thin.table() == "0 2097152 thin 254:0 0"
    machine.close()
    assert kernel.dm == {} and kernel.loops == {}


def test_pools_on_one_machine_get_loop_devices_of_their_own_and_free_them_on_close():
    machine = ModelMachine()
    first = _pool(machine)
    second = _pool(machine)
    assert second.table().split()[3:5] == ["7:2", "7:3"]
    assert second.minor == 1
    machine._kernel._check()
    first.close()
    third = _pool(machine)
    assert third.table().split()[3:5] == ["7:0", "7:1"]
    assert third.minor == 0
    machine.close()


def test_a_table_the_core_refuses_leaves_no_device_and_no_loop_device_behind():
    machine = ModelMachine()
    with pytest.raises(ThinsimError):
        _pool(machine, block_size="100")
    assert machine.log_lines() == [
        "device-mapper: table: 254:0: thin-pool: Invalid block size (-EINVAL)",
        "device-mapper: ioctl: error adding target to table",
    ]
    assert machine._kernel.dm == {} and machine._kernel.loops == {}
    pool = _pool(machine)
    assert pool.minor == 0 and pool.table().split()[3:5] == ["7:0", "7:1"]


def test_a_thin_the_core_refuses_frees_its_minor():
    pool = ModelPool(GiB, 4 * MiB)
    pool.suspend()
    with pytest.raises(ThinsimError):
        pool.activate(0, GiB)
    assert pool.log.lines[-2:] == [
        (
            "device-mapper: table: 254:1: thin: Unable to activate thin device while pool is "
            "suspended (-EINVAL)"
        ),
        "device-mapper: ioctl: error adding target to table",
    ]
    pool.resume()
    pool.message("create_thin 0")
    assert pool.activate(0, GiB).minor == 1
    pool.close()
