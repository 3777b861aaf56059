"""Status lines parsed as dm-thin.c prints them (thinsim/status.py), checked against every
status line recorded on the real kernel under tests/: each parses, and gives itself back."""

import re
from pathlib import Path

import pytest

from thinsim.errors import InvalidArgumentError
from thinsim.status import PoolStatus, ThinStatus

TESTS = Path(__file__).parent
RECORDINGS = [
    *sorted((TESTS / "kernel" / "recorded").glob("*.txt")),
    *sorted((TESTS / "host" / "recorded").glob("*.out")),
]
# a status line, not a table line (whose fourth word names a device: MAJ:MIN or a path)
POOL_LINE = re.compile(r"(\d+ \d+ thin-pool (?:\d+ \d+/\d+ .*|Fail|Error))$")
THIN_LINE = re.compile(r"(\d+ \d+ thin (?:\d+ (?:\d+|-)|Fail|Error|-))$")


def recorded(pattern: re.Pattern) -> list[str]:
    found = set()
    for path in RECORDINGS:
        for line in path.read_text().splitlines():
            m = pattern.search(line)
            if m:
                found.add(m.group(1))
    return sorted(found)


def test_every_recorded_pool_status_line_parses_and_prints_back_byte_for_byte():
    lines = recorded(POOL_LINE)
    assert len(lines) > 100
    for line in lines:
        assert str(PoolStatus.parse(line)) == line


def test_every_recorded_thin_status_line_parses_and_prints_back_byte_for_byte():
    lines = recorded(THIN_LINE)
    assert len(lines) > 50
    for line in lines:
        assert str(ThinStatus.parse(line)) == line


def test_the_recordings_hold_every_mode_the_kernel_prints_but_failure():
    modes = {PoolStatus.parse(line).mode for line in recorded(POOL_LINE)}
    discards = {PoolStatus.parse(line).discards for line in recorded(POOL_LINE)}
    assert modes == {"rw", "ro", "out_of_data_space"}
    assert discards == {"ignore_discard", "discard_passdown", "no_discard_passdown"}


def test_a_pool_status_gives_every_field_pool_status_prints():
    s = PoolStatus.parse(
        "0 8388608 thin-pool 3 116/1024 17/65536 42 ro no_discard_passdown error_if_no_space "
        "needs_check 256 "
    )
    assert s == PoolStatus(
        0, 8388608, "ro", 3, 116, 1024, 17, 65536, 42, "no_discard_passdown",
        "error_if_no_space", True, 256,
    )  # fmt: skip
    assert (s.free_data_blocks, s.free_metadata_blocks, s.read_only, s.failed) == (
        65519, 908, True, False
    )  # fmt: skip


def test_no_held_root_is_a_dash_and_parses_as_none():
    s = PoolStatus.parse(
        "0 2097152 thin-pool 0 112/1024 0/16384 - rw discard_passdown queue_if_no_space - 256 "
    )
    assert (s.held_metadata_root, s.needs_check, s.mode) == (None, False, "rw")


@pytest.mark.parametrize("word", ["Fail", "Error"])
def test_a_failed_pool_or_one_whose_metadata_cannot_be_read_has_no_figures(word):
    s = PoolStatus.parse(f"0 2097152 thin-pool {word}")
    assert (s.mode, s.failed, s.transaction_id, s.free_data_blocks) == (word, True, None, None)
    assert str(s) == f"0 2097152 thin-pool {word}"


@pytest.mark.parametrize("word", ["Fail", "Error", "-"])
def test_a_thin_of_a_failed_pool_or_without_a_device_has_no_figures(word):
    s = ThinStatus.parse(f"0 2048 thin {word}")
    assert (s.state, s.mapped_sectors, s.highest_mapped_sector) == (word, None, None)
    assert str(s) == f"0 2048 thin {word}"


def test_a_thin_status_gives_mapped_sectors_and_the_highest_blocks_last_sector():
    s = ThinStatus.parse("0 20971520 thin 256 16383")
    assert (s.mapped_sectors, s.highest_mapped_sector) == (256, 16383)
    assert (s.mapped_blocks(128), s.highest_mapped_block(128)) == (2, 127)
    empty = ThinStatus.parse("0 2048 thin 0 -")
    assert (empty.mapped_blocks(128), empty.highest_mapped_block(128)) == (0, None)


@pytest.mark.parametrize(
    "line",
    [
        # no trailing space: pool_status ends every word with one
        "0 8 thin-pool 0 1/2 3/4 - rw discard_passdown queue_if_no_space - 5",
        "0 8 thin-pool 0 1/2 3/4 - rw discard queue_if_no_space - 5 ",
        "0 8 thin-pool 0 7:0 7:1 128 0 0 ",  # a table line
        "0 8 thin 254:0 1",
        "0 8 linear 7:0 0",
        "",
    ],
)
def test_a_line_the_kernel_could_not_have_printed_is_refused_with_einval(line):
    parse = ThinStatus.parse if " thin " in line else PoolStatus.parse
    with pytest.raises(InvalidArgumentError):
        parse(line)
