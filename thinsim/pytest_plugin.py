"""thinsim's pytest plugin: regression tests of dm-thin that run on the model or a real host.

Installed with thinsim (entry point ``pytest11``), so any test suite gets:

- ``--thinsim-backend=model|kernel``: where the fixtures make pools and run scripts.  The
  model by default; ``kernel`` drives the real kernel of the host pytest runs on (root and
  dm-thin needed: where they are missing, tests that need them skip with the reason, and
  fail under ``CI=true``, where a missing kernel must never pass for a green run).
- ``thinsim_pool``: makes pools (``thinsim_pool(data_size, metadata_size, block_size,
  low_water_mark, features)``, sizes in bytes) and removes every device it made at teardown.
- ``thinsim_host``: a shell host for scripts, ``thinsim_host.run(SCRIPT_TEXT)`` or
  ``.run_file(PATH, *ARGS)`` giving stdout, stderr and the exit status: a simulated host
  (``thinsim run``) on the model, the real tools (``thinsim run --backend kernel``'s way:
  only the devices the script made are removed afterwards) on the kernel.  Its devices are
  real block devices for any program (mkfs.ext4, mount, Python's ``open()``): the kernel's
  on the kernel, the model's served through FUSE and a real loop device where the machine
  has them; ``thinsim_host.require_block_devices()`` skips a test, with the reason, where
  it has not.
- ``thinsim_backend``: the backend's name, ``"model"`` or ``"kernel"``.
- markers ``thinsim_kernel_only`` (skipped on the model) and ``thinsim_model_only`` (skipped
  on the kernel: what only a simulation can do, such as simulated time).

The names all start with ``thinsim`` so they meet nothing of a suite's own (thinsim's tests
have a ``backend`` fixture and a ``kernel`` marker of their own, built on the pieces here).
Nothing from the rest of thinsim is imported until a fixture needs it.  The module has no
assert to rewrite (PYTEST_DONT_REWRITE), so a conftest may import it before pytest loads it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

BACKENDS = ("model", "kernel")
MiB, GiB = 1 << 20, 1 << 30


# -- is a real kernel here? ------------------------------------------------------------------


def in_ci() -> bool:
    """CI sets CI=true; there a missing kernel must fail the run, never skip it."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_kernel() -> None:
    """Skip the test (fail it under CI=true) unless the kernel backend can run here, with
    the reason (thinsim.backends.dmtools.unavailable_reason: root, the tools, dm-thin,
    loop devices)."""
    from .backends.dmtools import unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI must run the kernel tests, but: {reason}", pytrace=False)
    pytest.skip(reason)


# -- pools ----------------------------------------------------------------------------------


class Backend:
    """Makes pools on one backend (``"model"`` or ``"kernel"``) and closes them all in
    :meth:`close`: every thin, the pool, its loop devices and files."""

    def __init__(self, name: str) -> None:
        if name not in BACKENDS:
            raise ValueError(f"unknown thinsim backend {name!r}: {' or '.join(BACKENDS)}")
        self.name = name
        self.pools: list = []

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def pool(
        self,
        data_size: int = 1 * GiB,
        metadata_size: int = 4 * MiB,
        block_size: int = 128,
        low_water_mark: int = 0,
        features: Sequence[str] = (),
        **kwargs,
    ):
        """A pool (thinsim.interface.Pool): ``data_size`` and ``metadata_size`` in bytes,
        ``block_size`` in sectors, ``low_water_mark`` in data blocks, ``features`` as the
        table names them.  Other keywords go to ModelPool or KernelPool (``length_sectors``;
        ``store`` for the model, "memory" unless given)."""
        if self.name == "model":
            from .backends.model import ModelPool

            kwargs.setdefault("store", "memory")
            pool = ModelPool(
                data_size, metadata_size, block_size, low_water_mark, features, **kwargs
            )
        else:
            from .backends.kernel import KernelPool

            pool = KernelPool(
                data_size, metadata_size, block_size, low_water_mark, features, **kwargs
            )
        self.pools.append(pool)
        return pool

    __call__ = pool

    def devices(self, pool) -> tuple[str, str, str]:
        """MAJOR:MINOR of the pool's metadata and data devices and of the pool itself, as its
        tables name them.  The model's are always 7:0 7:1 254:0 (a fresh host); the kernel's
        are whatever the host gave."""
        if self.name == "model":
            return "7:0", "7:1", "254:0"
        paths = (pool.metadata_dev, pool.data_dev, f"/dev/mapper/{pool.name}")
        numbers = (os.stat(p).st_rdev for p in paths)
        return tuple(f"{os.major(n)}:{os.minor(n)}" for n in numbers)

    def close(self) -> None:
        """Close every pool made here, newest first (each close is safe twice)."""
        while self.pools:
            self.pools.pop().close()


# -- shell hosts ----------------------------------------------------------------------------


class Host:
    """Runs bash scripts on one backend, as ``thinsim diff`` runs each side: ``bash SCRIPT``
    in an empty ``/run/thinsim/work`` with a Debian root shell's environment, stdin from
    /dev/null.  On the model a simulated host (``thinsim run``: its dmsetup, losetup, dd,
    thin tools ... are the simulator's, a fresh host each run); on the kernel the real tools,
    the script in a private mount namespace, and afterwards only the dm and loop devices a
    record proves it made removed (thinsim.host.real.run_on_host; the run's private folder
    goes under ``$THINSIM_REAL_DIR``, /var/tmp by default)."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self._n = 0

    def __repr__(self) -> str:
        return f"Host({self.name!r})"

    def run(self, script: str, *args: str, timeout: float = 300):
        """Run the text ``script`` (written to a file first): a
        thinsim.host.real.Result with ``stdout``, ``stderr`` and ``returncode``."""
        self._n += 1
        path = self.folder / f"script{self._n}.sh"
        path.write_text(script)
        return self.run_file(path, *args, timeout=timeout)

    def run_file(self, path: str | os.PathLike[str], *args: str, timeout: float = 300):
        """Run the script file at ``path`` with ``args``."""
        path = Path(path).resolve()
        if self.name == "model":
            from .host.diff import run_simulated

            return run_simulated(path, args, timeout)
        from .host.real import run_on_host

        return run_on_host(path, args, timeout)

    @property
    def block_devices(self) -> str | None:
        """None where the scripts' devices (``/dev/mapper/NAME``, ``/dev/loopN``) are real
        block devices that any program opens, mkfs.ext4, mount and Python's ``open()``
        included; else what this machine lacks for them.  On the kernel they are the real
        ones; on the model, simulated devices served through FUSE and a real loop device
        (thinsim/host/realdev.py), which need root, /dev/fuse and the loop driver."""
        return None if self.name == "kernel" else block_devices_missing()

    def require_block_devices(self) -> None:
        """Skip the test, with the reason, where :attr:`block_devices` says what is missing
        (fail it under CI=true, as a missing kernel does: a green run must not hide it)."""
        reason = self.block_devices
        if reason is not None and in_ci():
            pytest.fail(
                f"CI must run this test on real block devices, but: {reason}", pytrace=False
            )
        if reason is not None:
            pytest.skip(f"the simulated host's devices are not real block devices here: {reason}")


_real_devices: list[str | None] = []  # the probe's answer, once per process


def block_devices_missing() -> str | None:
    """What a simulated host here lacks for real block devices (None: nothing), as its
    sandbox tells the script (THINSIM_REAL_DEVICES: "1", or "0: what it lacks"; unset where
    the kernel refused the sandbox itself).  Asked of a run, once: the run is what decides."""
    if not _real_devices:
        from .host.diff import run_simulated

        with tempfile.TemporaryDirectory(prefix="thinsim-probe-") as folder:
            probe = Path(folder) / "probe.sh"
            probe.write_text('echo "${THINSIM_REAL_DEVICES-0: no sandbox (namespaces refused)}"\n')
            result = run_simulated(probe, (), 120)
        answer = result.stdout.strip()
        if result.returncode != 0 or not answer:
            answer = f"0: thinsim run failed ({result.returncode}): {result.stderr.strip()}"
        _real_devices.append(None if answer == "1" else answer.removeprefix("0: "))
    return _real_devices[0]


# -- pytest hooks and fixtures --------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("thinsim", "thinsim: dm-thin on the model or a real kernel")
    group.addoption(
        "--thinsim-backend",
        choices=BACKENDS,
        default="model",
        help="where thinsim_pool and thinsim_host make pools and run scripts: the model "
        "(default) or this host's real kernel (root and dm-thin)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "thinsim_kernel_only: needs the real kernel (skipped unless --thinsim-backend=kernel)",
    )
    config.addinivalue_line(
        "markers",
        "thinsim_model_only: needs the model (skipped with --thinsim-backend=kernel)",
    )


def backend_name(config: pytest.Config) -> str:
    return config.getoption("--thinsim-backend")


def pytest_runtest_setup(item: pytest.Item) -> None:
    name = backend_name(item.config)
    if name == "model" and item.get_closest_marker("thinsim_kernel_only"):
        pytest.skip("needs the real kernel: run with --thinsim-backend=kernel")
    if name == "kernel" and item.get_closest_marker("thinsim_model_only"):
        pytest.skip("runs on the model only (--thinsim-backend=model)")
    if name == "kernel" and item.get_closest_marker("thinsim_kernel_only"):
        require_kernel()


@pytest.fixture(scope="session")
def thinsim_backend(request: pytest.FixtureRequest) -> str:
    """``"model"`` or ``"kernel"``: what ``--thinsim-backend`` chose."""
    return backend_name(request.config)


@pytest.fixture
def thinsim_pool(thinsim_backend: str):
    """A pool maker: ``thinsim_pool(data_size, metadata_size, block_size=128,
    low_water_mark=0, features=())`` gives a thinsim.interface.Pool on the chosen backend;
    every pool it made is closed at teardown (thins, pool, loop devices, files)."""
    if thinsim_backend == "kernel":
        require_kernel()
    maker = Backend(thinsim_backend)
    yield maker
    maker.close()


@pytest.fixture
def thinsim_host(thinsim_backend: str, tmp_path_factory: pytest.TempPathFactory):
    """A shell host on the chosen backend: ``thinsim_host.run(SCRIPT)`` gives the script's
    ``stdout``, ``stderr`` and ``returncode``."""
    if thinsim_backend == "kernel":
        require_kernel()
    return Host(thinsim_backend, tmp_path_factory.mktemp("thinsim-scripts"))
