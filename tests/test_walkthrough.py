"""``make run``'s walkthrough (examples/seed-walkthrough.sh) is the recorded host script
00_seed_walkthrough with its explanations printed and its commands quoted as a user would
paste them (issue 14): its output, without the explanations and with each command's quoting
taken off again, is the recording, byte for byte."""

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "host"))
from harness import recorded, run_simulated

from thinsim.host.real import mask

WALKTHROUGH = ROOT / "examples" / "seed-walkthrough.sh"


def _as_recorded(out: str) -> str:
    """The lines the recorded script prints: explanations (``# `` lines but the section
    titles, which follow an empty line) dropped, each ``$ `` line's arguments joined as
    ``$*``."""
    lines = []
    for line in out.split("\n"):
        if line.startswith("# ") and lines[-1:] != [""]:
            continue
        if line.startswith("$ "):
            line = "$ " + " ".join(shlex.split(line[2:]))
        lines.append(line)
    return "\n".join(lines)


def test_the_walkthrough_prints_the_recording_with_its_explanations_and_quoted_commands():
    r = run_simulated(WALKTHROUGH)
    out, err, rc = recorded("00_seed_walkthrough")
    assert _as_recorded(mask(r.stdout)) == out
    assert mask(r.stderr) == err
    assert str(r.returncode) == rc.strip()
    assert "$ dmsetup create mydevice --table '0 209715200 linear /dev/loop0 2048'\n" in r.stdout
    assert "$ sh -c 'dmesg | grep device-mapper:'\n" in r.stdout
    assert "# A sparse 101 GiB file stands in for the study's /dev/sdc1.\n" in r.stdout


def test_a_printed_command_pasted_into_a_shell_gets_the_arguments_it_was_run_with():
    args = ["dmsetup", "create", "x", "--table", "0 8 linear /dev/loop0 0", "it's", "", "a:b,c"]
    script = f'. <(sed -n "/^quoted()/,/^}}/p" {shlex.quote(str(WALKTHROUGH))}); quoted "$@"'
    printed = subprocess.run(
        ["bash", "-c", script, "bash", *args], capture_output=True, text=True, check=True
    ).stdout
    assert printed == "dmsetup create x --table '0 8 linear /dev/loop0 0' 'it'\\''s' '' a:b,c\n"
    assert shlex.split(printed) == args
