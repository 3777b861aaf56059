"""The simulated host: what runs on the simulated kernel (thinsim/model/): the ported
tools (tools/), the runner, its process and sandbox (run.py, server.py, sandbox.py), the
private /dev and /sys (devnodes.py, sysfs.py), and the host's state file (state.py);
and the real host (real.py, diff.py)."""
