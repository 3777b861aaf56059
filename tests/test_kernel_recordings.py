"""The model reproduces, byte for byte, what a real 6.1 kernel printed for each scenario.

Transcripts were recorded in the VM (tests/kernel/record.sh) and are kept under
tests/kernel/recorded; the scenarios are in tests/kernel/scenarios.
"""

from pathlib import Path

import pytest

from thinsim.model_executor import ModelExecutor
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


@pytest.mark.parametrize("recorded", RECORDED, ids=lambda p: p.stem)
def test_the_model_prints_what_the_kernel_printed(recorded):
    scenario = _scenario(recorded.stem)
    transcript = run(parse(scenario.read_text()), ModelExecutor())
    assert transcript == recorded.read_text()
