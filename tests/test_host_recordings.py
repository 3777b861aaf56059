"""Scripts recorded on a real Debian 12 host (tests/host, in the VM) print the same stdout,
stderr and exit status on the simulated host, after the recorder's masking (dd timings,
dmesg timestamps).  The list grows as the simulated commands reach the real ones."""

import sys
from pathlib import Path

import pytest

HOST = Path(__file__).parent / "host"
sys.path.insert(0, str(HOST))
from harness import SCRIPTS, recorded, run_simulated
from record import mask

MATCHING = [
    line.strip()
    for line in (HOST / "MATCHING").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


@pytest.mark.parametrize("name", MATCHING)
def test_a_recorded_host_script_prints_on_the_simulated_host_what_it_printed(name):
    r = run_simulated(SCRIPTS / f"{name}.sh")
    out, err, rc = recorded(name)
    assert mask(r.stdout) == out
    assert mask(r.stderr) == err
    assert str(r.returncode) == rc.strip()
