"""File systems on simulated thins, held to the real kernel (issue 13, item 4): a script that
makes a file system on a thin, mounts it, writes and deletes files, snapshots the thin, mounts
the snapshot and trims runs in the VM twice, on real dm-thin and under ``thinsim run``, where
the same kernel's ext4, loop and FUSE drive the model (thinsim/host/realdev.py).  Whatever the
file system writes, the pool's numbers (status, thin_ls, the data file's size) must come out
equal: a difference is the model's.

The scripts are recorded host scripts (tests/host/scripts, recorded from the VM like the
others), held to their recordings here too; what in them could depend on timing, and what
takes it out, is said at their top.  Under emulation (TCG), both sides: 35_ext4_on_thin
135 to 414 s (by the machine's load), 36_xfs_on_thin 162 s; the kernel side alone of each
took 48 to 86 s when recorded.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_ci

from thinsim.host import real, realdev

HOST = Path(__file__).parent / "host"
sys.path.insert(0, str(HOST))
from harness import SCRIPTS, recorded, run_simulated

# the scripts that make file systems on thins (00_seed_walkthrough's ext2 is on a loop device)
FILE_SYSTEM_SCRIPTS = ("35_ext4_on_thin", "36_xfs_on_thin")


@pytest.mark.kernel
@pytest.mark.parametrize("name", FILE_SYSTEM_SCRIPTS)
def test_a_file_system_on_thins_leaves_the_same_pool_on_the_kernel_and_the_simulated_host(
    name, wiped_vm
):
    subprocess.run(["modprobe", "fuse"], capture_output=True, check=False)
    if realdev.unavailable() is not None:
        why = f"no real devices for the simulated side in the VM: {realdev.unavailable()}"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    kernel = real.run_in_vm(SCRIPTS / f"{name}.sh").normalised()
    # the recording still says what the kernel prints (it is also the simulated host's
    # expectation on the host: tests/test_host_recordings.py)
    out, err, rc = recorded(name)
    assert (kernel.stdout, kernel.stderr, str(kernel.returncode)) == (out, err, rc.strip())
    simulated = run_simulated(SCRIPTS / f"{name}.sh")
    simulated = real.Result(simulated.stdout, simulated.stderr, simulated.returncode).masked()
    assert (simulated.stdout, simulated.stderr) == (kernel.stdout, kernel.stderr)
    assert simulated.returncode == kernel.returncode == 0
