"""Scripts recorded on a real Debian 12 host (tests/host, in the VM) print the same stdout,
stderr and exit status on the simulated host, after the recorder's masking (dd timings,
dmesg timestamps).  The list grows as the simulated commands reach the real ones.

The kernel tests (marker ``kernel``, in the VM ``make test`` boots) run recorded scripts on the
real kernel again and hold them to their recordings too (in CI four whose output is the
kernel's, see KERNEL_SCRIPTS).  Together the two make ``thinsim diff SCRIPT`` identical for
such a script in MATCHING: the real side prints the recording, the simulated side prints the
recording.  They also catch a recording that no longer says what the kernel prints (a changed
script recorded with an old output, or a kernel that changed).
"""

import os
import sys
from pathlib import Path

import pytest

HOST = Path(__file__).parent / "host"
sys.path.insert(0, str(HOST))
from harness import REAL_DEVICE_SCRIPTS, SCRIPTS, recorded, run_simulated

from thinsim.host import real, realdev
from thinsim.host.real import mask

MATCHING = [
    line.strip()
    for line in (HOST / "MATCHING").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


@pytest.mark.parametrize("name", MATCHING)
def test_a_recorded_host_script_prints_on_the_simulated_host_what_it_printed(name):
    if name in REAL_DEVICE_SCRIPTS and realdev.unavailable() is not None:
        pytest.skip(f"no real block devices for simulated ones here: {realdev.unavailable()}")
    r = run_simulated(SCRIPTS / f"{name}.sh")
    out, err, rc = recorded(name)
    assert mask(r.stdout) == out
    assert mask(r.stderr) == err
    assert str(r.returncode) == rc.strip()


# In CI the VM re-runs four scripts whose output is the kernel's own: the walkthrough `make run`
# shows, the seed's thin pool, Docker's loop-lvm pool, and where metadata blocks land (the
# held root).  A script costs 9 to 50 s under emulation (measured in CI: 05 9 s, 06 13 s,
# 00 28 s, 16 37 s; 12 29 s, 25 27 s, 13 42 s, 21 49 s, 22 49 s), and CI's VM time goes
# mostly to the differential machine; THINSIM_HOST_SCRIPTS=all (or a comma-separated list of
# names) runs more: `thinsim diff tests/host/scripts/*.sh` does all of them too.
KERNEL_SCRIPTS = (
    "00_seed_walkthrough",
    "05_seed_thin",
    "06_docker_looplvm",
    "16_thin_check_dump",
)


def kernel_scripts() -> list[str]:
    chosen = os.environ.get("THINSIM_HOST_SCRIPTS", "")
    if chosen == "all":
        return sorted(p.stem for p in SCRIPTS.glob("*.sh"))
    return chosen.split(",") if chosen else list(KERNEL_SCRIPTS)


@pytest.mark.kernel
@pytest.mark.parametrize("name", kernel_scripts())
def test_a_recorded_host_script_prints_on_the_kernel_what_it_printed_when_recorded(name, wiped_vm):
    r = real.run_in_vm(SCRIPTS / f"{name}.sh").normalised()
    out, err, rc = recorded(name)
    assert (r.stdout, r.stderr, str(r.returncode)) == (out, err, rc.strip())


def test_the_scripts_ci_runs_on_the_kernel_are_recorded_scripts():
    for name in KERNEL_SCRIPTS:
        assert (SCRIPTS / f"{name}.sh").is_file(), name
