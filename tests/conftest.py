import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import thinsim
from thinsim.host import real
from thinsim.pytest_plugin import Backend, in_ci, require_kernel  # tests import in_ci from here

# The plugin thinsim installs (entry point pytest11); named here too for a checkout whose
# thinsim is not installed (or installed from an older one).  Loaded once either way.
pytest_plugins = ["thinsim.pytest_plugin"]

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("THINSIM_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.load_profile("ci")

MiB, GiB = 1 << 20, 1 << 30


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "kernel: drives the real kernel (root and dm-thin: run inside `thinsim vm`); "
        "`make test` runs these in one VM boot, the others on the host",
    )
    # An installed plugin is imported before pyproject's pythonpath applies: started as
    # `pytest` from another checkout than the installed one, it would bring that checkout's
    # thinsim, and these tests would test it.
    ours = config.rootpath / "thinsim" / "__init__.py"
    if ours.is_file() and Path(thinsim.__file__).resolve() != ours.resolve():
        raise pytest.UsageError(
            f"these tests would test the thinsim at {Path(thinsim.__file__).parent}, not "
            f"this checkout's: run `python -m pytest` from {config.rootpath}, or install "
            f"this checkout (pip install -e .)"
        )


@pytest.fixture(params=["model", pytest.param("kernel", marks=pytest.mark.kernel)])
def backend(request):
    """Each backend in turn (thinsim.pytest_plugin.Backend: ``pool(...)``, ``devices(pool)``);
    the kernel one only where root and dm-thin are (the VM)."""
    if request.param == "kernel":
        require_kernel()
    b = Backend(request.param)
    yield b
    b.close()


@pytest.fixture
def kernel():
    """For tests that drive the real kernel only: skip (fail in CI) where it is missing."""
    require_kernel()


@pytest.fixture
def wiped_vm():
    """Inside ``thinsim vm`` only: each script runs on a machine as just booted (every dm and
    loop device removed, a fresh ext4 on the RAM disk /dev/ram0), which no real host must get."""
    if not real.in_vm() or real.dm_thin_here() is not None:
        why = "needs the VM that `make test` boots (it wipes every dm and loop device)"
        if in_ci():
            pytest.fail(f"CI must run the recorded scripts on the kernel, but: {why}")
        pytest.skip(why)
    if not os.path.exists(real.RAMDISK):
        subprocess.run(["modprobe", *real.BRD.split()], check=True)
    cwd = os.getcwd()
    yield
    os.chdir(cwd)  # run_in_vm leaves the guest in /


@pytest.fixture(scope="module", params=["c", "python"])
def add_many_both_ways(request):
    """A module's tests with add_many's C routine (thinsim/model/_space_map.c), then with
    the Python loop it falls back to (as THINSIM_NO_C=1 runs it): the two must leave the
    same states, so a bug in either shows in the tests of both."""
    from thinsim.model import space_map

    if request.param == "c" and space_map._C_RUN is None:
        pytest.skip("add_many in C: no compiler or Python headers here, or THINSIM_NO_C set")
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "python":
            mp.setattr(space_map, "_C_RUN", None)
        yield request.param
