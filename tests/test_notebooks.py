"""The labs (notebooks/, issue 14) run from the start on the model, each in a fresh kernel, and
print what their kept outputs show (so that a browser shows a fresh run's outputs without
running anything), apart from timings and the backing files' device and inode numbers
(thinsim/labs.py: normalised).  `thinsim labs` writes a fresh run's outputs back."""

import pytest

from thinsim import labs
from thinsim.host import realdev

pytest.importorskip("nbclient", reason="the labs' dependencies: pip install -e '.[labs]'")
pytest.importorskip("ipykernel", reason="the labs' dependencies: pip install -e '.[labs]'")

import nbformat

NOTEBOOKS = labs.notebooks()

# Labs that run real programs on simulated devices (mkfs, mount, fstrim: thinsim/host/realdev.py);
# where this machine cannot make them real block devices, the simulated host refuses them, as
# for tests/host's REAL_DEVICE_SCRIPTS.
REAL_DEVICE_LABS = ("05-discard",)


def needs_real_devices(path):
    if path.stem in REAL_DEVICE_LABS and realdev.unavailable() is not None:
        pytest.skip(f"no real block devices for simulated ones here: {realdev.unavailable()}")


def test_the_labs_are_there_in_order():
    assert [p.name for p in NOTEBOOKS] == [
        "01-loop-devices-and-tables.ipynb",
        "02-thin-pool-provisioning.ipynb",
        "03-snapshots-and-cow.ipynb",
        "04-zeroing.ipynb",
        "05-discard.ipynb",
        "06-running-out.ipynb",
        "07-inside-the-metadata.ipynb",
        "08-docker-devicemapper.ipynb",
        "09-capacity-what-if.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_lab_runs_without_error_and_prints_what_its_kept_outputs_show(path):
    needs_real_devices(path)
    kept = nbformat.read(path, as_version=4)
    fresh = labs.execute(path)
    errors = [o for c in fresh.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]  # fmt: skip
    assert errors == []
    assert labs.differences(kept, fresh) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_lab_has_goals_a_picture_and_checked_exercises(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "**Goals.**" in text and "Exercise 1" in text
    # shell cells on the simulated host, or (the planner's lab) thinsim's Python
    assert any("%%thinsim" in c.source or "from thinsim import plan" in c.source for c in code)
    assert any("check(" in c.source for c in code)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)


def test_differences_mask_timings_and_report_a_changed_output():
    def nb(text):
        cell = nbformat.v4.new_code_cell("%%thinsim\ndd ...")
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        return nbformat.v4.new_notebook(cells=[cell])

    a = nb("512 bytes copied, 0.0001 s, 4.2 MB/s\n[    1.5] device-mapper: x\n")
    b = nb("512 bytes copied, 0.25 s, 2 kB/s\n[    7.25] device-mapper: x\n")
    assert labs.differences(a, b) == []
    assert len(labs.differences(a, nb("1024 bytes copied, 0.1 s, 1 MB/s\n"))) == 1


def test_the_html_of_a_lab_is_built_from_its_kept_outputs(tmp_path):
    (page,) = labs.html(tmp_path, NOTEBOOKS[:1])
    body = page.read_text()
    assert page.name == "01-loop-devices-and-tables.html"
    assert "Lab 1: loop devices" in body and "data:image/png;base64" in body


# The answers a student who understood each lab gives; the labs' checks compare them with
# what the model printed (none of these is in the labs).
SOLUTIONS = {
    "01-loop-devices-and-tables": {"answer_1": 6144, "answer_2": "0 2048 linear 7:0 2048"},
    # blocks 0, 16 and 48-51 of the thin; block 50 is the third of a run from data block 2
    "02-thin-pool-provisioning": {"answer_1": 6, "answer_2": 4},
    # two writes break two shared blocks (3 + 1 + 2); the delete frees none
    "03-snapshots-and-cow": {"answer_1": 6, "answer_2": 6},
    "04-zeroing": {"answer_1": 64, "answer_2": False},
    # of 32 blocks, the one 2 MiB to 2 MiB + 64 KiB is covered whole; 32 new blocks of 64 KiB
    # and rm gives the pool nothing back
    "05-discard": {"answer_1": 31, "answer_2": 2048, "answer_3": 0},
    # 4 free of 16 is at the mark when the 13th block is taken; 32 - (16 + 4 new blocks);
    # no_space_timeout turns the pool to error mode; needs_check keeps it read-only
    "06-running-out": {
        "answer_1": 13,
        "answer_2": 12,
        "answer_3": "error_if_no_space",
        "answer_4": False,
    },
    # blocks 10-12 written again; 300 mappings in two leaves, one copied by those writes
    "07-inside-the-metadata": {"answer_1": 3, "answer_2": 3},
    # one block shared by four thins; the container's copy and its four new blocks
    "08-docker-devicemapper": {"answer_1": 1, "answer_2": 5},
    # the planner's answers for the lab's workload (day 20: thinsim plan prints it too)
    "09-capacity-what-if": {"answer_1": 20, "answer_2": True},
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_labs_checks_accept_the_right_answers(path):
    needs_real_devices(path)
    fresh = labs.execute(path, SOLUTIONS[path.stem])
    verdicts = [
        line
        for c in fresh.cells
        if c.cell_type == "code" and "check(" in c.source
        for o in c.outputs
        if o.output_type == "stream"
        for line in o.text.splitlines()
        if line.startswith(("Right", "Not yet", "No answer"))
    ]
    assert len(verdicts) == len(SOLUTIONS[path.stem])
    assert all(v.startswith("Right") for v in verdicts), verdicts
