"""The model reproduces, byte for byte, what a real 6.1 kernel printed for each scenario.

Transcripts were recorded in the VM (dev/kernel/record.sh) and are kept under
tests/kernel/recorded; the scenarios are in tests/kernel/scenarios.
"""

from pathlib import Path

import pytest

from thinsim.executor import ScenarioExecutor
from thinsim.scenario import parse, run

KERNEL = Path(__file__).parent / "kernel"
# The walkthrough `make run` shows is recorded too (its scenario lives in examples/).
SCENARIO_DIRS = (KERNEL / "scenarios", Path(__file__).parent.parent / "examples")
RECORDED = sorted(p for p in (KERNEL / "recorded").glob("*.txt") if p.stem != "ENVIRONMENT")


def _scenario(name: str) -> Path:
    for folder in SCENARIO_DIRS:
        if (folder / f"{name}.scn").exists():
            return folder / f"{name}.scn"
    raise FileNotFoundError(name)


def test_recordings_exist_for_every_scenario():
    scenarios = {p.stem for folder in SCENARIO_DIRS for p in folder.glob("*.scn")}
    assert scenarios, "no scenarios"
    assert scenarios <= {p.stem for p in RECORDED}


# Divergences the differential test found that the model does not follow yet.  Each is held
# as a strict expected failure: the test goes red the day the model prints the recording, so
# the entry must then be removed.
KNOWN_DIVERGENCES: dict[str, str] = {}


def _marked(recorded: Path):
    reason = KNOWN_DIVERGENCES.get(recorded.stem)
    if reason is None:
        return recorded
    return pytest.param(recorded, marks=pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize("recorded", [_marked(p) for p in RECORDED], ids=lambda p: p.stem)
def test_the_model_prints_what_the_kernel_printed(recorded):
    scenario = _scenario(recorded.stem)
    transcript = run(parse(scenario.read_text()), ScenarioExecutor.on_model())
    assert transcript == recorded.read_text()


@pytest.mark.parametrize(
    "name", ["discard_passdown", "discard_no_passdown", "zeroing", "provision_4k", "walkthrough"]
)
def test_a_real_sparse_data_file_takes_the_space_the_kernels_took(name, tmp_path):
    """With the data on a real file, ``du`` is measured, not computed: hole punching for
    passed-down discards and real zero writes must leave what tmpfs showed in the VM."""
    from thinsim.model.store import FileStore

    files = iter(range(1000))

    def store():
        return FileStore(tmp_path / f"data{next(files)}")

    probe = FileStore(tmp_path / "probe", 1 << 20)
    if not probe.supports_discard():
        pytest.skip("this file system cannot punch holes")
    transcript = run(parse(_scenario(name).read_text()), ScenarioExecutor.on_model(store))
    assert transcript == (KERNEL / "recorded" / f"{name}.txt").read_text()


# Scenarios that between them take every operation of the executor on the real kernel:
# pools the kernel refuses (and the cleanup that gives the next pool loop0, loop1 and minor 0
# again), reloads that grow both devices and one that fails in preresume, and a mixed one
# with suspends of the pool and of thins, unsynced writes, flushes, discards, dumps, du and
# no_space_timeout.  About 3 minutes in the VM under emulation.
ON_THE_KERNEL = ["invalid_tables", "resize_data", "gen_mixed_5"]


@pytest.mark.kernel
@pytest.mark.parametrize("name", ON_THE_KERNEL)
def test_the_executor_prints_on_the_kernel_what_the_recorder_recorded(name, kernel):
    """The one executor (thinsim/executor.py) on the kernel backend, as dev/kernel/record.py
    runs it, prints the recording again: the recorder's path stays tested in every VM run."""
    from thinsim.backends.dmtools import run_command

    leftovers = run_command(["dmsetup", "ls"], check=False).stdout
    bound = [d for d in ("loop0", "loop1") if Path("/sys/block", d, "loop").exists()]
    assert "No devices found" in leftovers and not bound, (
        f"the scenarios need a machine with no dm device and loop0/loop1 free: "
        f"dmsetup ls: {leftovers.strip()!r}, bound: {bound}"
    )
    executor = ScenarioExecutor.on_kernel()
    try:
        transcript = run(parse(_scenario(name).read_text()), executor)
    finally:
        executor.close()
    assert transcript == (KERNEL / "recorded" / f"{name}.txt").read_text()
