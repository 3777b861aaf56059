"""thinsim's pytest plugin (thinsim/pytest_plugin.py): its option, fixtures and markers in
suites of their own (pytester), and the example suite examples/regression-suite, which runs
unchanged on the model here and on the real kernel in the VM."""

import fnmatch
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from thinsim.backends.dmtools import unavailable_reason
from thinsim.pytest_plugin import Backend, Host, block_devices_missing

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "examples" / "regression-suite"

pytest_plugins = ["pytester"]


def run(pytester, *args, env=None):
    """pytest in a fresh process, the plugin loaded by name as an installed one would be
    by its entry point, this checkout's thinsim first on the path."""
    old = os.environ.copy()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    os.environ.update(env or {})
    try:
        return pytester.runpytest_subprocess("-p", "thinsim.pytest_plugin", "-rs", *args)
    finally:
        os.environ.clear()
        os.environ.update(old)


POOLS = """
import pytest

MADE = []

def test_the_backend_is_the_model_unless_told(thinsim_backend):
    assert thinsim_backend == "model"

def test_a_pool_is_made_as_asked(thinsim_pool):
    pool = thinsim_pool(64 << 20, 4 << 20, block_size=256, low_water_mark=5,
                        features=["skip_block_zeroing"])
    MADE.append(pool)
    assert pool.table().endswith(" 256 5 1 skip_block_zeroing ")
    MADE.append(thinsim_pool(32 << 20, 4 << 20))

def test_every_pool_made_is_closed_at_teardown():
    assert len(MADE) == 2 and all(pool.closed for pool in MADE)
"""


def test_the_plugin_makes_pools_on_the_model_by_default_and_closes_them_at_teardown(pytester):
    pytester.makepyfile(POOLS)
    run(pytester).assert_outcomes(passed=3)


def test_the_host_fixture_gives_a_scripts_stdout_stderr_and_exit_status(pytester):
    pytester.makepyfile(
        """
        def test_a_script(thinsim_host):
            r = thinsim_host.run("echo out; echo err >&2; dmsetup version | head -1; exit 3\\n")
            assert (r.stdout, r.stderr, r.returncode) == (
                "out\\nLibrary version:   1.02.185 (2022-05-18)\\n", "err\\n", 3)
        """
    )
    run(pytester).assert_outcomes(passed=1)


MARKED = """
import pytest

@pytest.mark.thinsim_kernel_only
def test_kernel():
    pass

@pytest.mark.thinsim_model_only
def test_model():
    pass
"""


def test_a_kernel_only_test_is_skipped_on_the_model_and_says_how_to_run_it(pytester):
    pytester.makepyfile(MARKED)
    result = run(pytester)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs the real kernel: run with --thinsim-backend=kernel*"])


@pytest.fixture
def no_kernel():
    reason = unavailable_reason()
    if reason is None:
        pytest.skip("this host has dm-thin: nothing is missing to report")
    return reason


def test_without_a_kernel_its_tests_skip_with_the_reason_and_model_only_ones_too(
    pytester, no_kernel
):
    pytester.makepyfile(
        MARKED
        + "def test_pool(thinsim_pool):\n    thinsim_pool()\n"
        + "def test_host(thinsim_host):\n    pass\n"
    )
    result = run(pytester, "--thinsim-backend=kernel", env={"CI": ""})
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*" + no_kernel[:60] + "*"])
    result.stdout.fnmatch_lines(["*runs on the model only (--thinsim-backend=model)*"])


def test_without_a_kernel_its_tests_fail_under_ci(pytester, no_kernel):
    pytester.makepyfile(MARKED)
    result = run(pytester, "--thinsim-backend=kernel", env={"CI": "true"})
    result.assert_outcomes(errors=1, skipped=1)
    result.stdout.fnmatch_lines(["*CI must run the kernel tests, but: *"])


def test_a_backend_other_than_model_or_kernel_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x(): pass\n")
    result = run(pytester, "--thinsim-backend=vm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid choice: 'vm'*"])


def test_the_package_declares_the_plugin_under_its_module_name(pytester):
    # named as its module, a suite that also names it (pytest_plugins, -p) loads it once
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"thinsim.pytest_plugin": "thinsim.pytest_plugin"}


def test_every_file_of_the_package_besides_python_is_installed_with_it():
    # pip install (not editable) copies only what package-data names: thinsim run, which
    # compiles thinsim/host/client.c, could run no script of thinsim_host without it.
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = declared["package-data"]
    left_out = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "thinsim").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
        if not any(
            fnmatch.fnmatch(path.name, glob)
            for glob in globs.get(".".join(path.parent.relative_to(ROOT).parts), [])
        )
    ]
    assert left_out == []


def test_installed_and_named_in_a_conftest_the_plugin_is_loaded_once(pytester, tmp_path):
    # what pip install writes for the entry point, on the path as site-packages would be
    dist = tmp_path / "site" / "thinsim_plugin_probe-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: thinsim-plugin-probe\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[pytest11]\nthinsim.pytest_plugin = thinsim.pytest_plugin\n"
    )
    pytester.makepyfile(POOLS)
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path / 'site'}"}
    old = os.environ.copy()
    os.environ.update(env)
    try:  # by its entry point alone
        pytester.runpytest_subprocess("--thinsim-backend=model").assert_outcomes(passed=3)
    finally:
        os.environ.clear()
        os.environ.update(old)
    pytester.makeconftest('pytest_plugins = ["thinsim.pytest_plugin"]\n')
    run(pytester, env=env).assert_outcomes(passed=3)  # and by name twice more


def test_the_installed_thinsim_brings_the_plugin_by_its_entry_point_alone(pytester):
    # No -p, no conftest: what pip install wrote (make test's venv: pip install -e .) is
    # what loads it, and pytest names thinsim's distribution as the plugin's.
    pytester.makepyfile(
        """
        def test_loaded_from_thinsims_distribution(request, thinsim_backend):
            names = {dist.project_name for _, dist in
                     request.config.pluginmanager.list_plugin_distinfo()}
            assert "thinsim" in names and thinsim_backend == "model"
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_where_the_model_has_no_real_block_devices_a_test_that_needs_them_skips_saying_why_or_fails_in_ci(
    tmp_path, monkeypatch
):
    from thinsim import pytest_plugin

    monkeypatch.setattr(pytest_plugin, "_real_devices", ["no /dev/fuse (the fuse module)"])
    monkeypatch.delenv("CI", raising=False)
    host = pytest_plugin.Host("model", tmp_path)
    assert host.block_devices == "no /dev/fuse (the fuse module)"
    with pytest.raises(pytest.skip.Exception, match="not real block devices here: no /dev/fuse"):
        host.require_block_devices()
    # ... and under CI it fails, as a missing kernel does: a green run must not hide it
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run .* no /dev/fuse"):
        host.require_block_devices()
    assert pytest_plugin.Host("kernel", tmp_path).block_devices is None  # always real there


def test_the_probe_for_real_block_devices_asks_a_simulated_host(monkeypatch):
    from thinsim import pytest_plugin
    from thinsim.host.realdev import unavailable

    monkeypatch.setattr(pytest_plugin, "_real_devices", [])
    # the run decides; where this process lacks something, so does the run's init
    missing = pytest_plugin.block_devices_missing()
    assert missing is None if unavailable() is None else missing


# -- the example suite ----------------------------------------------------------------------


def run_suite(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "thinsim.pytest_plugin", "-p", "no:cacheprovider",
         "-q", "-rs", str(SUITE), *args],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})},
        check=False,
    )  # fmt: skip


def test_the_example_suite_passes_on_the_model_its_kernel_only_test_skipped():
    proc = run_suite()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and its ext4 test too where the simulated devices are not real block devices here
    missing = block_devices_missing()
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("11 passed, 1 skipped" if missing is None else "10 passed, 2 skipped")


@pytest.mark.kernel
def test_the_example_suite_passes_on_the_real_kernel_as_on_a_test_host(kernel):
    # The guest is a host with dm-thin: the suite drives it as a test host's would be, pools
    # through the kernel backend, scripts through the real tools (thinsim.host.real
    # .run_on_host, which leaves the host's own devices alone); its root is read-only, so
    # the scripts' private folders go on the scratch tmpfs.  CI=true: nothing may skip for
    # want of a kernel.
    # A loop device and a dm device of the host's own (a decoy of each) stay as they were.
    scratch = os.environ.get("THINSIM_SCRATCH", "/tmp")
    decoy = Path(scratch) / "decoy-file"
    decoy.write_bytes(bytes(1 << 20))
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(decoy)], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["dmsetup", "create", "decoy-theirs", "--table", "0 8 zero"], check=True)
    try:
        proc = run_suite(
            "--thinsim-backend=kernel", env={"CI": "true", "THINSIM_REAL_DIR": scratch}
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        last = proc.stdout.splitlines()[-1]
        assert last.startswith("11 passed, 1 skipped"), proc.stdout  # the model-only test
        assert "runs on the model only" in proc.stdout
        listed = subprocess.run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f"{loop} {decoy}" in " ".join(listed.split()), listed
        table = subprocess.run(["dmsetup", "table", "decoy-theirs"], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
        assert table.split() == ["0", "8", "zero"]
    finally:
        subprocess.run(["dmsetup", "remove", "decoy-theirs"], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)
        decoy.unlink()


# A suite killed outright (SIGKILL, no teardown) while a pool of thinsim_pool and a script of
# thinsim_host both have devices: the next pool and the next script made through the plugin
# (a next run's first ones) must remove what it left.
KILLED_SUITE = '''
import os

SCRIPT = """
truncate -s 8M file
loop=$(losetup -f --show file)
dmsetup create killed-$$-lin --table "0 1024 linear $loop 0"
touch @READY@
sleep 600
"""


def test_killed_half_way(thinsim_pool, thinsim_host):
    pool = thinsim_pool(64 << 20, 4 << 20)
    pool.create_thin(1)
    pool.activate(1, 16 << 20).write(0, b"x" * 65536)
    thinsim_host.run(SCRIPT.replace("@READY@", os.environ["READY"]))
'''


def dm_names() -> set[str]:
    out = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line and "No devices" not in line}


def loops() -> set[str]:
    out = subprocess.run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return {" ".join(line.split()) for line in out.splitlines()}


@pytest.mark.kernel
def test_a_suite_killed_outright_leaves_only_what_the_next_pool_and_script_remove(
    kernel, tmp_path, monkeypatch
):
    scratch = Path(os.environ.get("THINSIM_SCRATCH", "/tmp")) / f"killed-{tmp_path.name}"
    (scratch / "real").mkdir(parents=True)
    (scratch / "pools").mkdir()
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_killed.py").write_text(KILLED_SUITE)
    ready = scratch / "ready"
    env = {
        **os.environ, "CI": "true", "PYTHONPATH": str(ROOT), "READY": str(ready),
        "THINSIM_REAL_DIR": str(scratch / "real"), "THINSIM_KERNEL_DIR": str(scratch / "pools"),
    }  # fmt: skip
    argv = [sys.executable, "-m", "pytest", "-p", "thinsim.pytest_plugin", "-p",
            "no:cacheprovider", "-q", "--thinsim-backend=kernel", str(suite)]  # fmt: skip
    devices, loops_before = dm_names(), loops()
    proc = subprocess.Popen(argv, env=env, cwd=suite)
    try:
        for _ in range(6000):  # up to 10 minutes in a slow VM
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the killed suite never got to its script"
    finally:
        proc.kill()
        proc.wait()
    # Left behind: the pool and its thin, their two loop devices; the script's linear device
    # and its loop device (the script died with its runner: setpriv --pdeathsig).
    assert len(dm_names() - devices) == 3
    assert len(loops() - loops_before) == 3
    # The next run's first pool and first script, as its fixtures make them (in this process:
    # a second pytest under emulation costs a minute or more for nothing more to see).
    monkeypatch.setenv("THINSIM_REAL_DIR", env["THINSIM_REAL_DIR"])
    monkeypatch.setenv("THINSIM_KERNEL_DIR", env["THINSIM_KERNEL_DIR"])
    backend = Backend("kernel")
    backend.pool(64 << 20, 4 << 20).create_thin(1)
    backend.close()
    assert Host("kernel", tmp_path).run("echo next\n").stdout == "next\n"
    assert dm_names() == devices
    assert loops() == loops_before
    assert list((scratch / "real").iterdir()) == list((scratch / "pools").iterdir()) == []
