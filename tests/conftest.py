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

    def devices(self, pool) -> tuple[str, str, str]:
        """MAJOR:MINOR of the pool's metadata and data devices and of the pool itself, as its
        tables name them.  The model's are always 7:0 7:1 254:0 (a fresh host); the kernel's
        are whatever the host gave, so the tests hold on a host that has devices of its own."""
        if self.name == "model":
            return "7:0", "7:1", "254:0"
        paths = (pool.metadata_dev, pool.data_dev, f"/dev/mapper/{pool.name}")
        numbers = (os.stat(p).st_rdev for p in paths)
        return tuple(f"{os.major(n)}:{os.minor(n)}" for n in numbers)

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
