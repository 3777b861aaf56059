import os

import pytest
from hypothesis import HealthCheck, settings

from thinsim.backends.kernel import KernelPool, unavailable_reason
from thinsim.backends.model import ModelPool

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


def in_ci() -> bool:
    """CI sets CI=true; there a missing kernel must fail the run, never skip it."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_kernel() -> None:
    """Skip (fail in CI) unless the kernel backend can run here."""
    reason = unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI must run the kernel tests, but: {reason}", pytrace=False)
    pytest.skip(reason)


class Backend:
    """Makes pools on one backend and closes them after the test."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pools = []

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def pool(self, data_size=1 * GiB, metadata_size=4 * MiB, block_size=128, lwm=0, features=()):
        if self.name == "model":
            pool = ModelPool(data_size, metadata_size, block_size, lwm, features, store="memory")
        else:
            pool = KernelPool(data_size, metadata_size, block_size, lwm, features)
        self.pools.append(pool)
        return pool

    def close(self) -> None:
        for pool in reversed(self.pools):
            pool.close()


@pytest.fixture(params=["model", pytest.param("kernel", marks=pytest.mark.kernel)])
def backend(request):
    """Each backend in turn; the kernel one only where root and dm-thin are (the VM)."""
    if request.param == "kernel":
        require_kernel()
    b = Backend(request.param)
    yield b
    b.close()


@pytest.fixture
def kernel():
    """For tests that drive the real kernel only: skip (fail in CI) where it is missing."""
    require_kernel()
