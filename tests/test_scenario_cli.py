"""``thinsim scenario`` on bad input: one line naming the file and the line, no traceback.

Whatever the file holds (an unknown operation, a size too large for a file, an offset that is
not whole sectors, binary garbage, a line the model cannot take) or whatever it is (missing, a
folder, unreadable), the command says what is wrong in one line on stderr, starting
``thinsim scenario: FILE:`` and naming the line where there is one, and exits 1 (2 for a usage
error, as argparse words it), never with a Python traceback.
"""

from __future__ import annotations

import contextlib
import io
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinsim.cli import main
from thinsim.host.run import this_thinsim
from thinsim.scenario import OP_NAMES, ScenarioError, parse


def scenario(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        this_thinsim("thinsim.cli", "scenario", *args),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        check=False,
    )


def one_line_error(r: subprocess.CompletedProcess[str], path: str, line: int | None) -> str:
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    prefix = f"thinsim scenario: {path}: " + ("" if line is None else f"line {line}: ")
    assert r.stderr.startswith(prefix), r.stderr
    return r.stderr[len(prefix) :]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("status\nbogus\n", 2, "'bogus': unknown operation 'bogus'\n"),
        (
            "pool md=4M data=99999999999999999T bs=128 lwm=0\n",
            1,
            "'pool md=4M data=99999999999999999T bs=128 lwm=0': data: size '99999999999999999T'",
        ),
        ("\n\nthin 0 99999999999999999999999\n", 3, "'thin 0 99999999999999999999999': len: "),
        ("write 0 -512 4k\n", 1, "'write 0 -512 4k': off: bad size '-512' (want digits"),
        ("read 0 1 4k\n", 1, "'read 0 1 4k': off: '1' is not a multiple of 512 bytes\n"),
        ("reload md=8M\n", 1, "'reload md=8M': reload before any pool\n"),
    ],
)
def test_a_bad_line_is_one_line_naming_the_file_and_the_line(tmp_path, text, line, what):
    path = tmp_path / "s.scn"
    path.write_text(text)
    r = scenario(str(path))
    assert one_line_error(r, str(path), line).startswith(what)


def test_a_pool_on_an_empty_metadata_device_fails_in_the_transcript_as_the_kernels_does(tmp_path):
    # A metadata device under one block: the kernel's -EIO from the pool's constructor
    # (recorded in tests/host/recorded/32_small_metadata), then the scenario goes on.
    path = tmp_path / "s.scn"
    path.write_text("status\npool md=0 data=1G bs=128 lwm=0\nstatus\n")
    r = scenario(str(path))
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == (
        "$ status\nerror: ENXIO\n"
        "$ pool md=0 data=1G bs=128 lwm=0\nerror: EIO\n"
        "log: device-mapper: table: 254:0: thin-pool: Error creating metadata object (-EIO)\n"
        "log: device-mapper: ioctl: error adding target to table\n"
        "$ status\nerror: ENXIO\n"
    )


def test_binary_garbage_names_the_line_of_its_first_byte_that_is_not_utf8(tmp_path):
    path = tmp_path / "s.scn"
    path.write_bytes(b"status\n# a comment\nsta\xfftus\n")
    r = scenario(str(path))
    assert one_line_error(r, str(path), 3) == "not UTF-8 text (byte 0xff)\n"


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("/nonexistent/s.scn", "No such file or directory\n"),
        ("/", "Is a directory\n"),
        ("/proc/self/mem", "Input/output error\n"),  # opens, but read() fails
    ],
)
def test_a_file_that_cannot_be_read_is_one_line_naming_it(path, what):
    assert one_line_error(scenario(path), path, None) == what


def test_a_usage_error_exits_2_as_argparse_says_it():
    r = scenario()
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "the following arguments are required: file" in r.stderr


def test_line_numbers_count_newlines_only_as_an_editor_does():
    with pytest.raises(ScenarioError, match="line 2: 'bogus'") as e:
        parse("status \x0c\x1c\u2028\nbogus\n")
    assert e.value.lineno == 2


# what a scenario line might be made of: operation names, keywords, numbers of every size
_NUMBERS = st.one_of(
    st.integers(0, 4096).map(str),
    st.integers(-(1 << 70), 1 << 70).map(str),
    st.sampled_from(["0", "1", "512", "4k", "1M", "64M", "-1", "1E", "0x10", "4K", "9" * 30]),
    st.builds(lambda n, s: f"{n}{s}", st.integers(0, 1 << 66), st.sampled_from("kMGT")),
)
_WORDS = st.one_of(
    _NUMBERS,
    st.sampled_from(OP_NAMES),
    st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from(["md", "data", "bs", "lwm", "len", "features", "color", ""]),
        st.one_of(_NUMBERS, st.text(max_size=5)),
    ),
    st.text(max_size=8),
)
_LINES = st.one_of(
    st.builds(
        lambda op, words: " ".join([op, *words]),
        st.sampled_from(OP_NAMES),
        st.lists(_WORDS, max_size=6),
    ),
    st.just("pool md=4M data=64M bs=128 lwm=0"),
    st.just("msg create_thin 0"),
    st.just("thin 0 131072"),
    st.text(max_size=40),
)


def _run_cli(tmp_path, data: bytes) -> tuple[int, str]:
    """thinsim scenario in this process: an exception escaping main() is a traceback."""
    path = tmp_path / "fuzz.scn"
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["scenario", str(path)])
    return status, err.getvalue()


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(_LINES, max_size=8))
def test_random_scenario_lines_end_in_a_transcript_or_one_line_error(tmp_path_factory, lines):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    status, err = _run_cli(tmp_path, "\n".join(lines).encode("utf-8", "surrogatepass"))
    assert status in (0, 1)
    if status:
        assert err.startswith(f"thinsim scenario: {tmp_path / 'fuzz.scn'}: line ")
        assert err.count("\n") == 1
    else:
        assert err == ""


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_binary_garbage_ends_in_a_transcript_or_one_line_error(tmp_path_factory, data):
    status, err = _run_cli(tmp_path_factory.mktemp("fuzz"), data)
    assert status in (0, 1)
    assert err.count("\n") == (1 if status else 0)


def test_a_reader_that_goes_away_ends_it_by_sigpipe_as_a_c_tool_without_a_complaint(tmp_path):
    path = tmp_path / "s.scn"
    path.write_text("status\n" * 3000)
    proc = subprocess.Popen(
        this_thinsim("thinsim.cli", "scenario", str(path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.read(9) == b"$ status\n"
    proc.stdout.close()
    assert proc.wait(timeout=120) == -13  # SIGPIPE
    assert proc.stderr.read() == b""
