"""Run every recorded host script on the simulated host and say which ones match the real
host's stdout, stderr and exit status (after the recorder's masking).  A development tool
for issue 3: the scripts run in /run/thinsim/work, as they did in the VM."""

import os, sys, subprocess, shutil, difflib, re

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from record import mask

HERE = os.path.dirname(os.path.abspath(__file__))
REC = os.path.join(HERE, "recorded")
SCR = os.path.join(HERE, "scripts")
names = sys.argv[1:] or sorted(f[:-3] for f in os.listdir(SCR) if f.endswith(".sh"))
ok = 0
for n in names:
    if not all(os.path.exists(f"{REC}/{n}.{x}") for x in ("out", "err", "rc")):
        continue
    w = "/run/thinsim/work"
    shutil.rmtree("/run/thinsim", ignore_errors=True)
    os.makedirs(w)
    env = {"PATH": os.environ["PATH"], "HOME": "/root", "LANG": "C.UTF-8"}
    p = subprocess.run(
        [sys.executable, "-m", "thinsim.cli", "run", f"{SCR}/{n}.sh"],
        cwd=w,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out, err = mask(p.stdout), mask(p.stderr)
    wo, we, wr = (open(f"{REC}/{n}.{x}").read() for x in ("out", "err", "rc"))
    good = out == wo and err == we and str(p.returncode) == wr.strip()
    ok += good
    d1 = sum(
        1 for l in difflib.unified_diff(wo.splitlines(), out.splitlines(), n=0) if l[:1] in "+-"
    )
    d2 = sum(
        1 for l in difflib.unified_diff(we.splitlines(), err.splitlines(), n=0) if l[:1] in "+-"
    )
    print(
        f"{'OK ' if good else 'BAD'} {n}: stdout diff lines {d1}, stderr {d2}, rc {p.returncode} vs {wr.strip()}"
    )
print(ok, "match")
