"""``thinsim run`` and ``thinsim shell`` as commands: their --host folder."""

import os
import subprocess

import pytest

from thinsim.host.run import this_thinsim


def thinsim(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        this_thinsim("thinsim.cli", *args),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", ["run", "shell"])
def test_a_host_folder_whose_parent_is_missing_is_an_error_as_mkdir_words_it(tmp_path, command):
    script = tmp_path / "script.sh"
    script.write_text("echo ran\n")
    host = tmp_path / "missing" / "host"
    args = [command, "--host", str(host)] + ([str(script)] if command == "run" else [])
    r = thinsim(*args)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        f"thinsim {command}: cannot create directory '{host}': No such file or directory\n"
    )
    assert not host.parent.exists()  # e4b6105 made missing/ and missing/host, and ran


def test_a_host_folder_under_a_file_is_an_error_that_makes_nothing(tmp_path):
    (tmp_path / "file").write_text("")
    r = thinsim("run", "--host", "file/host", "/dev/null", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "thinsim run: cannot create directory 'file/host': Not a directory\n"


def test_a_host_folder_is_made_when_its_parent_exists_and_keeps_its_devices(tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("truncate -s 1M f; losetup -f f; dmsetup create e --table '0 8 error'\n")
    r = thinsim("run", "--host", "host", str(script), cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    assert os.path.isdir(tmp_path / "host")
    script.write_text("dmsetup ls\n")
    r = thinsim("run", "--host", "host", str(script), cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "e\t(254:0)\n", "")
