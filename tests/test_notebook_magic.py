"""The labs' ``%%thinsim`` cell magic (thinsim/notebook.py): cells run on one simulated host
kept for the notebook, their output as a terminal shows it, explain mode on by default."""

import pytest

from thinsim import notebook


@pytest.fixture
def session():
    s = notebook.Session()
    yield s
    s.close()


def test_a_cell_sees_the_devices_files_and_variables_of_the_cells_before(session):
    out, status = session.run(
        "dd if=/dev/zero of=disk.img bs=1 count=0 seek=1G status=none\n"
        "losetup --find --show disk.img\nNAME=mydevice\n"
    )
    assert (out, status) == ("/dev/loop0\n", 0)
    out, status = session.run(
        'dmsetup create $NAME --table "0 2048 linear /dev/loop0 0"\npwd\ndmsetup table'
    )
    assert (out, status) == ("/run/thinsim/work\nmydevice: 0 2048 linear 7:0 0\n", 0)


def test_a_failed_command_is_explained_by_default_and_its_status_is_the_cells(session):
    session.run("dd if=/dev/zero of=d bs=1 count=0 seek=1M status=none; losetup -f d")
    session.run('dmsetup create lin --table "0 2048 linear /dev/loop0 0"')
    out, status = session.run("dmsetup message lin 0 hello")
    assert status == 1
    assert out == (
        "device-mapper: message ioctl on lin  failed: Invalid argument\n"
        "Command failed.\n"
        "thinsim --explain: dmsetup failed; the kernel logged (dmesg):\n"
        "  device-mapper: ioctl: Target type does not support messages\n"
    )
    out, _ = session.run("dmsetup message lin 0 hello", explain=False)
    assert out == "device-mapper: message ioctl on lin  failed: Invalid argument\nCommand failed.\n"


def test_the_magic_prints_the_cells_output_and_sh_returns_it(capsys):
    try:
        notebook.thinsim_magic("", "echo to-out; echo to-err >&2; echo again")
        assert capsys.readouterr().out == "to-out\nto-err\nagain\n"
        assert notebook.sh("echo $((6 * 7))") == "42\n"
        # a cell is sent by its length in bytes: characters of several bytes included
        assert notebook.sh("echo 'é → ü'\necho end") == "é → ü\nend\n"
    finally:
        notebook.reset()


def test_load_ext_thinsim_registers_the_cell_magic():
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_line_magic("load_ext", "thinsim")
    assert "thinsim" in ip.magics_manager.magics["cell"]
    assert "thinsim_reset" in ip.magics_manager.magics["line"]
    assert "thinsim" in ip.magics_manager.magics["line"]  # %thinsim backend ...


def test_host_blocks_reads_a_files_blocks_on_the_notebooks_host():
    try:
        notebook.sh("printf 'A%.0s' $(seq 4096) > f; printf 'B%.0s' $(seq 4096) >> f")
        blocks = notebook.HostBlocks("f")
        assert blocks[1] == b"B" * 4096 and blocks[0] == b"A" * 4096
        assert len(blocks) == 2
    finally:
        notebook.reset()


def test_the_kernel_backend_where_it_cannot_run_says_it_needs_root_and_dm_thin(monkeypatch):
    from IPython.core.error import UsageError

    monkeypatch.setattr(notebook, "kernel_unavailable", lambda: "not root")
    with pytest.raises(notebook.BackendUnavailable, match=r"as root on the real dm-thin.*not root"):
        notebook.set_backend("kernel")
    assert notebook.backend() == "model"  # nothing changed
    with pytest.raises(UsageError, match="thinsim vm"):
        notebook.thinsim_line_magic("backend kernel")
    with pytest.raises(UsageError, match="usage"):
        notebook.thinsim_line_magic("backend qemu")


def test_the_backend_set_in_the_environment_makes_every_cell_say_why_it_cannot_run(
    monkeypatch, capsys
):
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    monkeypatch.setattr(notebook, "kernel_unavailable", lambda: "no thin-pool target")
    monkeypatch.setenv(notebook.BACKEND_ENV, "kernel")
    ip = get_ipython()
    try:
        notebook.load_ipython_extension(ip)
        assert notebook.backend() == "kernel"  # not the model silently instead
        with pytest.raises(UsageError, match="no thin-pool target.*thinsim vm"):
            notebook.thinsim_magic("", "echo hello")
        with pytest.raises(notebook.BackendUnavailable):
            notebook.sh("echo hello")
        notebook.thinsim_line_magic("backend")
        assert capsys.readouterr().out == "kernel\n"
    finally:
        notebook.set_backend("model")
    assert notebook.sh("echo $((6 * 7))") == "42\n"
    notebook.reset()


def test_the_kernel_backend_explains_the_commands_the_model_explains():
    from thinsim.host import realshell
    from thinsim.host.tools import COMMANDS

    assert realshell.EXPLAINED == tuple(sorted(set(COMMANDS) - {"dmesg"}))
