"""Two labs (issue 14) run on the real kernel, their ``%%thinsim`` cells on the kernel backend
(thinsim/notebook.py, in the VM ``make test`` boots), and print what they print on the model:
the outputs kept in the notebooks, which tests/test_notebooks.py holds to a fresh run on the
model.  Compared as labs.differences compares a fresh run with the kept outputs, masking only
what varies from run to run on either side: dd's timings, dmesg's timestamps and the backing
files' device and inode numbers (which the guest's ext4 on its RAM disk numbers apart from the
file system under the model), as the recorded host scripts are compared
(tests/test_host_recordings.py); pictures by kind.  Explain mode is on in the labs: on the
kernel its lines are the kernel log's (thinsim/host/realshell.py), so they are compared too.

And when the notebook's kernel ends, shut down or killed, every loop and dm device its cells
made is gone.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thinsim import labs, notebook
from thinsim.host import real, realshell

pytest.importorskip("nbclient", reason="the labs' dependencies: pip install -e '.[labs]'")
pytest.importorskip("ipykernel", reason="the labs' dependencies: pip install -e '.[labs]'")

import nbformat

# Mostly shell cells, deterministic, and between them: devices and tables, a table's error
# explained, a pool's status as blocks are provisioned, du against ls, thin_dump of a
# metadata snapshot (the picture's source).  Each takes about a minute under emulation.
KERNEL_LABS = ("01-loop-devices-and-tables", "02-thin-pool-provisioning")


def _wait_for_the_lab_shells_end(limit: float = 300) -> None:
    """The lab shell's guardian unmounts the guest's scratch last, once its clean-up is done;
    the notebook's kernel may have ended before (jupyter kills a kernel slow to exit)."""
    deadline = time.monotonic() + limit
    while os.path.ismount(realshell.LAB_MOUNT) and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture
def notebook_home(tmp_path, monkeypatch):
    """The guest's root file system is read-only: Jupyter's connection files, IPython's and
    matplotlib's folders go to a writable one (matplotlib's font cache copied, not rebuilt:
    that takes long under emulation, and its warning would be a cell's output)."""
    for name, folder in (("JUPYTER_RUNTIME_DIR", "jupyter"), ("IPYTHONDIR", "ipython")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    mpl = tmp_path / "matplotlib"
    mpl.mkdir()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "matplotlib"
    for fonts in cache.glob("fontlist-*.json"):
        shutil.copy(fonts, mpl)
    monkeypatch.setenv("MPLCONFIGDIR", str(mpl))


@pytest.mark.kernel
@pytest.mark.parametrize("name", KERNEL_LABS)
def test_a_lab_prints_on_the_kernel_what_it_prints_on_the_model(
    name, wiped_vm, notebook_home, monkeypatch
):
    monkeypatch.setenv(notebook.BACKEND_ENV, "kernel")
    path = labs.NOTEBOOKS / f"{name}.ipynb"
    kept = nbformat.read(path, as_version=4)
    fresh = labs.execute(path, timeout=900)  # a cell's limit: under emulation, on a busy host
    errors = [o for c in fresh.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]  # fmt: skip
    assert errors == []
    assert labs.differences(kept, fresh) == []
    _wait_for_the_lab_shells_end()
    assert (real.dm_devices(), real.loop_devices()) == ([], [])


@pytest.mark.kernel
def test_a_notebooks_devices_on_the_kernel_are_removed_when_its_kernel_is_killed(wiped_vm):
    # a notebook's kernel, in short: a Python that made devices on the kernel backend
    code = (
        "import sys, time; from thinsim import notebook; notebook.set_backend('kernel'); "
        "print(notebook.sh('dd if=/dev/zero of=d bs=1M count=1 status=none; losetup -f d; "
        'dmsetup create lin --table "0 2048 linear /dev/loop0 0"; dmsetup ls\'), flush=True); '
        "time.sleep(600)"
    )
    env = {**os.environ, "PYTHONPATH": str(labs.ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout.readline() == "lin\t(254:0)\n"
        assert (real.dm_devices(), real.loop_devices()) == (["lin"], ["/dev/loop0"])
    finally:
        proc.kill()
        proc.wait()
    _wait_for_the_lab_shells_end()
    assert (real.dm_devices(), real.loop_devices()) == ([], [])
