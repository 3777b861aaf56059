"""The simulated dmsetup, piece by piece, against what Debian 12's dmsetup 1.02.185 printed
in the recorded host scripts (tests/host/recorded): the texts below are copied from there."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from thinsim.host.libdm_report import NUM, STR, FieldType, ObjectType, Report, ReportError
from thinsim.host.state import HostState
from thinsim.host.tools.common import IO
from thinsim.host.tools.dmsetup import _split_name, dmsetup, usage_text
from thinsim.model import loop

RECORDED = Path(__file__).parent / "host" / "recorded"


def run(state: HostState, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = dmsetup(state, list(argv), IO(io.StringIO(stdin), out, err))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[HostState]:
    """A host with loop0 on a 16 MiB file and loop1 on a 1 GiB file (sparse)."""
    state = HostState()
    for n, size in ((0, 16 << 20), (1, 1 << 30)):
        path = tmp_path / f"disk{n}.img"
        with open(path, "wb") as f:
            f.truncate(size)
        loop.loop_attach(state, n, str(path))
    yield state
    state._check()  # whatever the test did, the machine's devices are still consistent


def test_the_usage_text_is_the_one_dmsetup_prints_after_an_unknown_command():
    err = (RECORDED / "10_dmsetup_misc.err").read_text()
    block = err.split("$ dmsetup bogus\nUnknown command.\n", 1)[1].split("$ ", 1)[0]
    assert usage_text() == block


def test_an_unknown_long_option_is_getopts_message_and_exit_status_1(host):
    assert run(host, "--bogus") == (
        1,
        "",
        "dmsetup: unrecognized option '--bogus'\nCouldn't process command line.\n",
    )


def test_an_option_without_its_argument_is_refused_before_any_command_runs(host):
    rc, out, err = run(host, "status", "--target")
    assert (rc, out) == (1, "")
    assert err == (
        "dmsetup: option '--target' requires an argument\nCouldn't process command line.\n"
    )


def test_a_table_the_kernel_rejects_leaves_no_device_behind(host):
    rc, _, err = run(host, "create", "bad", "--table", "0 0 linear /dev/loop1 0")
    assert rc == 1
    assert err == "device-mapper: reload ioctl on bad (254:0) failed: Invalid argument\n" + (
        "Command failed.\n"
    )
    assert host.dm == {}
    assert host.log.lines[-2:] == [
        "device-mapper: table: 254:0: zero-length target",
        "device-mapper: ioctl: error adding target to table",
    ]


def test_a_rename_to_a_name_in_use_changes_nothing(host):
    for name, start in (("lin", "0"), ("thin0", "2048")):
        assert run(host, "create", name, "--table", f"0 1024 linear /dev/loop1 {start}")[0] == 0
    rc, _, err = run(host, "rename", "lin", "thin0")
    assert rc == 1
    assert err == (
        "device-mapper: rename ioctl on lin  failed: Device or resource busy\nCommand failed.\n"
    )
    assert sorted(host.dm) == ["lin", "thin0"]
    assert run(host, "info", "-c", "-o", "name,events")[1] == (
        "Name             Event \nlin                   0\nthin0                 0\n"
    )


def test_deps_lists_a_pools_data_device_before_its_metadata_device(host):
    table = "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
    assert run(host, "create", "pool", "--table", table)[0] == 0
    assert run(host, "deps", "pool") == (0, "2 dependencies\t: (7, 1) (7, 0)\n", "")
    assert run(host, "deps", "-o", "devname", "pool")[1] == "2 dependencies\t: (loop1) (loop0)\n"


def test_info_columns_pad_strings_left_and_numbers_right_sorted_by_minor(host):
    assert run(host, "create", "b", "--table", "0 8 linear /dev/loop1 0")[0] == 0
    assert run(host, "create", "a", "--table", "0 8 linear /dev/loop1 8")[0] == 0
    rc, out, _ = run(host, "info", "-c", "-O", "minor", "-o", "name,minor")
    assert (rc, out) == (0, "Name             Min\nb                  0\na                  1\n")


def test_a_selection_keeps_the_rows_it_matches(host):
    for name in ("pool", "thin0", "thin1"):
        assert run(host, "create", name, "--table", "0 8 linear /dev/loop1 0")[0] == 0
    rc, out, _ = run(host, "info", "-c", "-S", "name=~thin", "-o", "name")
    assert (rc, out) == (0, "Name            \nthin0           \nthin1           \n")


def test_a_field_that_cannot_be_shown_fails_the_command_after_the_other_rows(host):
    assert run(host, "create", "--notable", "empty")[0] == 0
    assert run(host, "create", "pool", "--table", "0 8 linear /dev/loop1 0")[0] == 0
    rc, out, err = run(host, "info", "-c", "-o", "name,blkdevname")
    assert rc == 1
    assert out == "Name             BlkDevName      \npool             dm-1            \n"
    assert err == (
        "Could not resolve block device name for 254:0.\n"
        "_do_report_object: report function failed for field blkdevname\n"
        "Command failed.\n"
    )


@pytest.mark.parametrize(
    "name, subsystem, split",
    [
        ("vg00-lvol1", "LVM", ("vg00", "lvol1", "")),
        ("vg--name-lv--name-snap", "LVM", ("vg-name", "lv-name", "snap")),
        ("pool", "LVM", ("pool", "", "")),
        ("a-b-c-d", "LVM", ("a", "b", "c")),
        ("vg-lv", "OTHER", ("", "", "")),
    ],
)
def test_splitname_reads_double_dashes_as_dashes_and_stops_after_the_layer(name, subsystem, split):
    assert _split_name(subsystem, name, "\0")[1:] == split


def test_the_report_engine_names_unknown_fields_after_listing_the_known_ones():
    warnings: list[str] = []
    types = [ObjectType(1, "Things", "thing_")]
    fields = [
        FieldType(1, STR, "Name", 4, "name", "Its name.", lambda o: (o, o)),
        FieldType(1, NUM, "N", 1, "count", "How many.", lambda o: ("1", 1)),
    ]
    with pytest.raises(ReportError):
        Report(
            0,
            types,
            fields,
            "name,bogus",
            " ",
            aligned=True,
            buffered=True,
            headings=True,
            field_prefixes=False,
            quoted=True,
            sort_keys="",
            selection=None,
            warn=warnings.append,
            out=lambda s: None,
        )
    assert warnings == [
        "Things Fields",
        "-------------",
        "  thing_all - All fields in this section.",
        "  name      - Its name.",
        "  count     - How many.",
        " ",
        "Special Fields",
        "--------------",
        "  selected  - Set if item passes selection criteria.",
        "  help      - Show help.",
        "  ?         - Show help.",
        " ",
        "Unrecognised field: bogus",
    ]
