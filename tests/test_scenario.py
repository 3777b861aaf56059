"""The scenario language: parsing, the data pattern, and the transcript the runner writes."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from thinsim.errors import error_for
from thinsim.scenario import OP_NAMES, Executor, parse, parse_size, pattern, run

SCENARIOS = Path(__file__).parent / "kernel" / "scenarios"


def test_sizes_take_binary_suffixes_or_plain_bytes():
    assert parse_size("512") == 512
    assert parse_size("4k") == 4096
    assert parse_size("3M") == 3 << 20
    assert parse_size("2G") == 2 << 30
    assert parse_size("1T") == 1 << 40


@pytest.mark.parametrize("text", ["", "4K", "1.5M", "-1", "0x10", "4kb", "k"])
def test_a_malformed_size_is_rejected(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_a_line_is_parsed_into_name_args_and_kwargs_with_its_comment_dropped():
    (op,) = parse("  write   0 64k   4k 7   # a comment\n")
    assert (op.name, op.args, op.kwargs, op.line) == (
        "write",
        [0, 65536, 4096, 7],
        {},
        "write 0 64k 4k 7",
    )


def test_pool_keywords_keep_table_fields_verbatim():
    (op,) = parse("pool md=4M data=1G bs=+0128 lwm=junk len=77 features=A,b")
    assert op.kwargs == {
        "md": 4 << 20,
        "data": 1 << 30,
        "bs": "+0128",
        "lwm": "junk",
        "len": 77,
        "features": ["A", "b"],
    }


def test_msg_keeps_its_words_as_text():
    (op,) = parse("msg create_thin 0x1")
    assert op.args == ["create_thin", "0x1"]


@pytest.mark.parametrize(
    "line",
    [
        "bogus",
        "pool md=4M data=1G bs=128",
        "pool md=4M data=1G bs=128 lwm=0 color=red",
        "pool md=4M md=4M data=1G bs=128 lwm=0",
        "thin 0",
        "thin 0 100 7",
        "write 0 0",
        "write 0 0 4k 1 2",
        "read x 0 4k",
        "status now",
        "msg",
        "reload len=1k",
    ],
)
def test_a_malformed_line_is_rejected_with_its_line_number(line):
    with pytest.raises(ValueError, match="line 2"):
        parse("status\n" + line)


def test_the_pattern_names_the_seed_and_the_sector_offset():
    data = pattern(3, 1024, 1024)
    assert data[:512] == (b"3:1024\n" * 74)[:512]
    assert data[512:] == (b"3:1536\n" * 74)[:512]


def test_an_unaligned_pattern_is_a_slice_of_the_aligned_one():
    assert pattern(9, 700, 900) == pattern(9, 512, 2048)[188 : 188 + 900]


def test_a_pattern_of_many_mebibytes_has_the_right_length():
    assert len(pattern(1, 0, 16 << 20)) == 16 << 20


class RecordingExecutor(Executor):
    """Records every call; fails msg calls with EEXIST and logs one line per call."""

    def __init__(self):
        self.calls = []
        self._log = []

    def _op(self, name, **kwargs):
        self.calls.append((name, kwargs))
        self._log.append(f"device-mapper: {name}")
        return []

    def pool(self, **kw):
        return self._op("pool", **kw)

    def reload(self, **kw):
        self._op("reload", **kw)
        if kw["low_water_blocks"] == "bad":
            raise error_for(errno.EINVAL)
        return []

    def msg(self, **kw):
        self._op("msg", **kw)
        raise error_for(errno.EEXIST)

    def status(self):
        self._op("status")
        return ["0 100 thin-pool 0 1/2 0/1 - rw discard_passdown queue_if_no_space - 1 "]

    def discard(self, **kw):
        self._op("discard", **kw)
        raise error_for(errno.EOPNOTSUPP)

    def log_lines(self):
        out, self._log = self._log, []
        return out


for _name in OP_NAMES:
    if _name not in vars(RecordingExecutor):
        setattr(RecordingExecutor, _name, lambda self, _n=_name, **kw: self._op(_n, **kw))
RecordingExecutor.__abstractmethods__ = frozenset()


def test_the_transcript_shows_each_op_then_output_then_error_then_log():
    ex = RecordingExecutor()
    text = run(
        parse("pool md=1M data=2M bs=128 lwm=0\nstatus\nmsg  create_thin 0\ndiscard 0 0 4k"), ex
    )
    assert text == (
        "$ pool md=1M data=2M bs=128 lwm=0\n"
        "log: device-mapper: pool\n"
        "$ status\n"
        "0 100 thin-pool 0 1/2 0/1 - rw discard_passdown queue_if_no_space - 1 \n"
        "log: device-mapper: status\n"
        "$ msg create_thin 0\n"
        "error: EEXIST\n"
        "log: device-mapper: msg\n"
        "$ discard 0 0 4k\n"
        "error: EOPNOTSUPP\n"
        "log: device-mapper: discard\n"
    )


def test_reload_gets_the_whole_table_with_unchanged_fields_as_before():
    ex = RecordingExecutor()
    run(
        parse(
            "pool md=1M data=2M bs=128 lwm=0 features=skip_block_zeroing\n"
            "reload lwm=bad data=4M\n"  # fails: the table fields stay, the file sizes do not
            "reload md=2M\n"
            "reload data=8M len=100 features=\n"
        ),
        ex,
    )
    reloads = [kw for name, kw in ex.calls if name == "reload"]
    common = {"block_size_sectors": "128"}
    assert reloads[0] == {
        **common,
        "md_bytes": 1 << 20,
        "data_bytes": 4 << 20,
        "length_sectors": 8192,
        "low_water_blocks": "bad",
        "features": ["skip_block_zeroing"],
    }
    assert reloads[1] == {
        **common,
        "md_bytes": 2 << 20,
        "data_bytes": 4 << 20,
        "length_sectors": 4096,
        "low_water_blocks": "0",
        "features": ["skip_block_zeroing"],
    }
    assert reloads[2] == {
        **common,
        "md_bytes": 2 << 20,
        "data_bytes": 8 << 20,
        "length_sectors": 100,
        "low_water_blocks": "0",
        "features": [],
    }


def test_write_seed_defaults_to_one_and_other_ops_get_named_arguments():
    ex = RecordingExecutor()
    run(parse("write 3 4k 8k\nwrite_nosync 3 0 512 9\nthin 3 2048\nno_space_timeout 3"), ex)
    assert ex.calls[:4] == [
        ("write", {"thin_id": 3, "offset": 4096, "length": 8192, "seed": 1}),
        ("write_nosync", {"thin_id": 3, "offset": 0, "length": 512, "seed": 9}),
        ("thin", {"thin_id": 3, "length_sectors": 2048}),
        ("no_space_timeout", {"seconds": 3}),
    ]


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.scn")), ids=lambda p: p.stem)
def test_every_recorded_scenario_parses(path):
    assert parse(path.read_text())
