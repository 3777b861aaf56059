"""The model reproduces, byte for byte, what a real 6.1 kernel printed for each scenario.

Transcripts were recorded in the VM (tests/kernel/record.sh) and are kept under
tests/kernel/recorded; the scenarios are in tests/kernel/scenarios.
"""

from pathlib import Path

import pytest

from thinsim.model_executor import ModelExecutor
from thinsim.scenario import parse, run

KERNEL = Path(__file__).parent / "kernel"
RECORDED = sorted(p for p in (KERNEL / "recorded").glob("*.txt") if p.stem != "ENVIRONMENT")


def test_recordings_exist_for_every_scenario():
    scenarios = {p.stem for p in (KERNEL / "scenarios").glob("*.scn")}
    assert scenarios, "no scenarios"
    assert scenarios <= {p.stem for p in RECORDED}


@pytest.mark.parametrize("recorded", RECORDED, ids=lambda p: p.stem)
def test_the_model_prints_what_the_kernel_printed(recorded):
    scenario = KERNEL / "scenarios" / f"{recorded.stem}.scn"
    transcript = run(parse(scenario.read_text()), ModelExecutor())
    assert transcript == recorded.read_text()
