"""Run recorded host scripts (default: all) on the simulated host and say which ones match
the real host's stdout, stderr and exit status after the recorder's masking.  A development
tool: `python dev/host/compare.py [-d] [NAME...]` (-d prints the diffs)."""

import difflib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "..", "tests", "host"), HERE]
from harness import RECORDED, SCRIPTS, recorded, run_simulated

from thinsim.host.real import mask

args = sys.argv[1:]
show = "-d" in args
names = [a for a in args if a != "-d"] or sorted(p.stem for p in SCRIPTS.glob("*.sh"))
ok = 0
for n in names:
    if not (RECORDED / f"{n}.rc").exists():
        continue
    p = run_simulated(SCRIPTS / f"{n}.sh")
    out, err = mask(p.stdout), mask(p.stderr)
    wo, we, wr = recorded(n)
    good = out == wo and err == we and str(p.returncode) == wr.strip()
    ok += good
    diffs = []
    for what, want, got in (("stdout", wo, out), ("stderr", we, err)):
        d = list(
            difflib.unified_diff(
                want.splitlines(),
                got.splitlines(),
                f"real {what}",
                f"simulated {what}",
                n=1,
                lineterm="",
            )
        )
        diffs.append(d)
    d1, d2 = (sum(1 for line in d if line[:1] in "+-") for d in diffs)
    print(
        f"{'OK ' if good else 'BAD'} {n}: stdout diff lines {d1}, stderr {d2}, "
        f"rc {p.returncode} vs {wr.strip()}"
    )
    if show and not good:
        for d in diffs:
            print("\n".join(d))
print(ok, "match")
