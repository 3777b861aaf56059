"""Scripts recorded on a real Debian 12 host (tests/host, in the VM) print the same stdout,
stderr and exit status on the simulated host, after the recorder's masking (dd timings,
dmesg timestamps).  The list grows as the simulated commands reach the real ones."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HOST = Path(__file__).parent / "host"
sys.path.insert(0, str(HOST))
from record import mask  # noqa: E402

WORK = Path("/run/thinsim/work")  # where the VM ran them: paths appear in the output
MATCHING = ["12_thin_messages"]


@pytest.mark.parametrize("name", MATCHING)
def test_a_recorded_host_script_prints_on_the_simulated_host_what_it_printed(name):
    try:
        shutil.rmtree(WORK.parent, ignore_errors=True)
        WORK.mkdir(parents=True)
    except PermissionError:
        pytest.skip(f"cannot make {WORK}")
    env = {"PATH": os.environ["PATH"], "HOME": "/root", "LANG": "C.UTF-8"}
    r = subprocess.run(
        [sys.executable, "-m", "thinsim.cli", "run", str(HOST / "scripts" / f"{name}.sh")],
        cwd=WORK,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    shutil.rmtree(WORK.parent, ignore_errors=True)
    recorded = HOST / "recorded"
    assert mask(r.stdout) == (recorded / f"{name}.out").read_text()
    assert mask(r.stderr) == (recorded / f"{name}.err").read_text()
    assert str(r.returncode) == (recorded / f"{name}.rc").read_text().strip()
