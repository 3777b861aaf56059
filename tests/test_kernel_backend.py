"""The kernel backend where no kernel is needed: what it says on a host that cannot run it,
and how its ledger decides what a dead run left (tests/test_kernel_cleanup.py does the same
with real devices in the VM)."""

import os

import pytest

from thinsim.backends import dmtools, ledger
from thinsim.backends.identity import FileId
from thinsim.backends.kernel import KernelPool, KernelUnavailableError


def test_without_root_it_says_so_and_how_to_get_the_vm(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = dmtools.unavailable_reason()
    assert reason.startswith("the kernel backend needs root (this process runs as uid 1000)")
    assert "`thinsim vm -- COMMAND`" in reason


def test_a_kernel_without_device_mapper_is_named_as_the_reason(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(dmtools.shutil, "which", lambda tool: f"/sbin/{tool}")
    monkeypatch.setattr(dmtools, "_misc_devices", lambda: "237 loop-control\n")
    reason = dmtools.unavailable_reason()
    assert "has no device-mapper (no device-mapper in /proc/misc" in reason
    assert "`thinsim vm -- COMMAND`" in reason


def test_device_mapper_without_dm_thin_is_named_as_the_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(dmtools.shutil, "which", lambda tool: f"/sbin/{tool}")
    monkeypatch.setattr(dmtools, "_misc_devices", lambda: "236 device-mapper\n")
    real_path = dmtools.Path
    monkeypatch.setattr(
        dmtools,
        "Path",
        lambda p: tmp_path / "absent" if p == "/sys/module/dm_thin_pool" else real_path(p),
    )
    reason = dmtools.unavailable_reason()
    assert "has device-mapper but dm-thin is not loaded" in reason


def test_on_a_host_that_cannot_run_it_a_pool_fails_before_touching_anything(tmp_path):
    if dmtools.unavailable_reason() is None:
        pytest.skip("this host can run the kernel backend")
    with pytest.raises(KernelUnavailableError) as e:
        KernelPool(1 << 30, 4 << 20, workdir=tmp_path)
    assert "`thinsim vm -- COMMAND`" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_ledger_lines_say_what_still_exists():
    text = (
        "dir /s/thinsim-ab\nfile /s/thinsim-ab/meta\nfile /s/thinsim-ab/data\n"
        "loop /dev/loop0 /s/thinsim-ab/meta\nloop /dev/loop1 /s/thinsim-ab/data\n"
        "dm thinsim-ab-pool\ndm thinsim-ab-thin0\n-dm thinsim-ab-thin0\n-loop /dev/loop1\n"
        "adopted /elsewhere/data\n"
    )
    e = ledger.Entries.parse("ab", text)
    assert e.dms == ["thinsim-ab-pool"]
    assert e.loops == {"/dev/loop0": "/s/thinsim-ab/meta"}
    assert e.files == ["/s/thinsim-ab/meta", "/s/thinsim-ab/data"]
    assert e.adopted == ["/elsewhere/data"]


def test_recovery_leaves_a_live_runs_ledger_alone_and_cleans_a_dead_ones(tmp_path):
    ledgers, work = tmp_path / "ledgers", tmp_path / "work"
    work.mkdir()
    mine, adopted = work / "data", work / "theirs"
    adopted.write_bytes(b"keep me")
    led = ledger.Ledger("cafe0001", ledgers)
    fd = os.open(mine, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # as KernelPool makes it
    led.add("file", str(mine))
    led.add("id", str(FileId.of_fd(fd)), str(mine))
    os.close(fd)
    led.add("adopted", str(adopted))
    assert ledger.recover(ledgers) == []  # alive: its flock is held
    assert mine.exists()
    os.close(led._fd)  # the run dies: the kernel drops its flock
    assert ledger.recover(ledgers) == [f"file {mine}"]
    assert not mine.exists()
    assert adopted.read_bytes() == b"keep me"
    assert list(ledgers.iterdir()) == []
