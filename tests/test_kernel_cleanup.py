"""Killing a run half way leaves no loop or dm device behind.

Recovery path for SIGKILL: the ledger.  Every device and file is written to a ledger file
(flock-held by its run) before it is made; a run killed outright leaves an unlocked ledger,
and the next kernel pool made on the host (or ``python -m thinsim.backends.kernel
--recover``) tears down what it lists.  SIGINT and SIGTERM need no recovery: the run tears
down its own devices on the way out.

These drive the real kernel (the VM); the ledger tests at the end need none.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from thinsim.backends import ledger
from thinsim.backends.kernel import KernelPool
from thinsim.errors import ExistsError, InvalidArgumentError

MiB = 1 << 20

# A run that makes a pool, a thin and a snapshot, then writes for ever: a signal after its
# "ready" line lands in I/O with every device in place.
STEADY = textwrap.dedent(
    """
    from thinsim.backends.kernel import KernelPool

    pool = KernelPool(64 << 20, 4 << 20, recover_stale=False)
    pool.create_thin(0)
    thin = pool.activate(0, 64 << 20)
    pool.create_snap(1, 0)
    pool.activate(1, 64 << 20)
    i = 0
    while True:
        thin.write(i % 1024 * 65536, b"k" * 65536)
        i += 1
        if i == 2:
            print("ready", flush=True)
    """
)
# A run that keeps making and closing pools, so that a signal lands anywhere: in set-up,
# in I/O or in teardown.
CYCLING = textwrap.dedent(
    """
    from thinsim.backends.kernel import KernelPool

    while True:
        with KernelPool(64 << 20, 4 << 20, recover_stale=False) as pool:
            pool.create_thin(0)
            thin = pool.activate(0, 64 << 20)
            pool.create_snap(1, 0)
            pool.activate(1, 64 << 20)
            thin.write(0, b"k" * 65536)
            print("ready", flush=True)
    """
)


@pytest.fixture
def isolated(tmp_path, monkeypatch, kernel):
    """A private ledger folder and backing-file folder for the child run."""
    scratch = Path(os.environ.get("THINSIM_SCRATCH") or tmp_path) / f"kill-{tmp_path.name}"
    scratch.mkdir()
    ledgers = tmp_path / "ledgers"
    monkeypatch.setenv("THINSIM_LEDGER_DIR", str(ledgers))
    monkeypatch.setenv("THINSIM_KERNEL_DIR", str(scratch))
    yield scratch, ledgers
    ledger.recover(ledgers)  # whatever a failed assertion left


def our_uuids() -> set[str]:
    return {uuid for uuid in dm_uuids() if uuid.startswith(ledger.UUID_PREFIX)}


def dm_uuids() -> list[str]:
    proc = subprocess.run(
        ["dmsetup", "info", "-c", "--noheadings", "-o", "uuid"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line.strip() for line in proc.stdout.splitlines()]


def loops_under(folder: Path) -> list[str]:
    """Loop devices whose backing file is inside ``folder``."""
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        path = ledger.backing_file(entry.name)
        if path and path.startswith(str(folder) + "/"):
            found.append(entry.name)
    return found


def run_child(code: str, readies: int = 1) -> subprocess.Popen:
    """Start ``code`` and return once it has printed ``readies`` lines ``ready``."""
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job would be
    )
    for _ in range(readies):
        line = child.stdout.readline()
        assert line == "ready\n", line
    return child


@pytest.mark.kernel
def test_sigkill_half_way_leaves_devices_that_the_next_start_removes(isolated):
    scratch, ledgers = isolated
    before = our_uuids()
    child = run_child(STEADY)
    # Kill the whole group (dmsetup and losetup children too) in the middle of its writes.
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    # What the kill left behind: the pool and both thins, both loop devices, the ledger.
    assert len(our_uuids() - before) == 3
    assert len(loops_under(scratch)) == 2
    assert len(list(ledgers.glob("*.ledger"))) == 1
    ledger.recover(ledgers)
    assert our_uuids() - before == set()
    assert loops_under(scratch) == []
    assert list(scratch.iterdir()) == []
    assert list(ledgers.glob("*.ledger")) == []


@pytest.mark.kernel
def test_sigkill_at_any_point_of_set_up_or_teardown_is_recovered_too(isolated):
    scratch, ledgers = isolated
    before = our_uuids()
    child = run_child(CYCLING, readies=3)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    ledger.recover(ledgers)
    assert our_uuids() - before == set()
    assert loops_under(scratch) == []
    assert list(scratch.iterdir()) == []
    assert list(ledgers.glob("*.ledger")) == []


@pytest.mark.kernel
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_or_sigterm_half_way_leaves_nothing_without_any_recovery(isolated, signum):
    scratch, ledgers = isolated
    before = our_uuids()
    child = run_child(STEADY)
    if signum == signal.SIGINT:
        os.killpg(child.pid, signum)  # Ctrl-C reaches the whole foreground group
    else:
        os.kill(child.pid, signum)  # kill PID
    child.communicate()
    assert child.returncode != 0
    assert our_uuids() - before == set()
    assert loops_under(scratch) == []
    assert list(scratch.iterdir()) == []
    assert list(ledgers.glob("*.ledger")) == []


@pytest.mark.kernel
def test_a_rejected_pool_table_leaves_nothing_behind(isolated):
    scratch, ledgers = isolated
    before = our_uuids()
    with pytest.raises(InvalidArgumentError):
        KernelPool(64 * MiB, 4 * MiB, 100)  # not a multiple of 128 sectors
    assert our_uuids() - before == set()
    assert loops_under(scratch) == []
    assert list(scratch.iterdir()) == []
    assert list(ledgers.glob("*.ledger")) == []


@pytest.mark.kernel
def test_backing_files_it_did_not_create_are_refused_unless_adopted_and_then_kept(isolated):
    scratch, _ = isolated
    meta, data = scratch / "my-meta", scratch / "my-data"
    for path in (meta, data):
        path.touch()
    with pytest.raises(ExistsError):
        KernelPool(64 * MiB, 4 * MiB, metadata_file=meta, data_file=data)
    with KernelPool(64 * MiB, 4 * MiB, metadata_file=meta, data_file=data, adopt_files=True) as p:
        p.create_thin(0)
        p.activate(0, MiB).write(0, b"kept" * 128)
    assert meta.stat().st_size == 4 * MiB and data.stat().st_size == 64 * MiB
    # The metadata outlives the pool: the thin and its data are there on the next start.
    with KernelPool(64 * MiB, 4 * MiB, metadata_file=meta, data_file=data, adopt_files=True) as p:
        with pytest.raises(ExistsError):
            p.create_thin(0)
        assert p.activate(0, MiB).read(0, 512) == b"kept" * 128
    assert loops_under(scratch) == []
