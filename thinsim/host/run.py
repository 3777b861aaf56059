"""``thinsim run`` and ``thinsim shell``: bash on a simulated host.

The simulated commands come first on PATH as small shims that call back into thinsim with
the host folder in ``THINSIM_HOST``.  Commands that are not simulated but could be pointed
at a simulated device node (mkfs, mount, cat ...) get a guard shim that refuses when an
argument names one, and otherwise runs the real command.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from . import devnodes
from .state import is_device_path, open_host
from .tools import COMMANDS, GUARDED, IO

# The folder this thinsim is imported from.  Every process a run starts imports thinsim from
# here, not whichever thinsim its python would find (an install of another checkout).
ROOT = str(Path(__file__).resolve().parents[2])

SHIM = """#!{python}
import sys
sys.path.insert(0, {root!r})
from thinsim.host.run import shim_main
sys.exit(shim_main({name!r}, sys.argv[1:]))
"""


def this_thinsim(module: str, *args: str) -> list[str]:
    """The argv that runs MODULE's main(ARGS) with this python and this thinsim, wherever it
    runs from (``python -m`` would import the thinsim installed, from another folder)."""
    code = f"import sys; sys.path.insert(0, {ROOT!r}); from {module} import main; sys.exit(main())"
    return [sys.executable, "-c", code, *args]


def make_shims(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in list(COMMANDS) + list(GUARDED):
        path = folder / name
        path.write_text(SHIM.format(python=sys.executable, root=ROOT, name=name))
        path.chmod(0o755)


def _real(name: str) -> str | None:
    shim_dir = os.environ.get("THINSIM_SHIMS", "")
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != shim_dir
    )
    return shutil.which(name, path=path)


def _names_device(argv: list[str]) -> str | None:
    for a in argv:
        for part in (a, a.split("=", 1)[-1]):
            if is_device_path(part):
                return part
    return None


def shim_main(name: str, argv: list[str]) -> int:
    host = os.environ.get("THINSIM_HOST")
    if host is None:
        sys.stderr.write(f"thinsim: {name}: THINSIM_HOST is not set\n")
        return 1
    if name in COMMANDS:
        if name == "dd" and _names_device(argv) is None:
            return _exec_real(name, argv)
        with open_host(host) as state:
            status = COMMANDS[name](state, argv, IO())
            devnodes.sync(state)
        return _exit_as(status)
    device = _names_device(argv)
    if device is not None:
        sys.stderr.write(
            f"thinsim: {name} on {device} is not simulated: refused, so that it cannot reach "
            "the real device\n"
        )
        return 1
    return _exec_real(name, argv)


def _exit_as(status: int) -> int:
    """The status a shell must see from a command that ran, its state saved.  A command
    the real one of which dies of a signal (a thin tool's abort, or its write to a pipe
    nobody reads: status -N) dies of it here too, with the signal's default action back
    (Python ignores SIGPIPE), so the shell sees 128+N.  Output still buffered is written
    first; where that fails (a full disk, a closed descriptor) it is dropped, as a C++
    stream drops it, without Python's complaint at exit."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        status = status if status < 0 else -signal.SIGPIPE
    except (OSError, ValueError):
        _flush_stderr()
        os._exit(status if status >= 0 else 128 - status)
    if status < 0:
        _flush_stderr()
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status  # the signal is blocked: the status a shell would show
    return status


def _flush_stderr() -> None:
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _exec_real(name: str, argv: list[str]) -> int:
    real = _real(name)
    if real is None:
        sys.stderr.write(f"{name}: command not found\n")
        return 127
    # Python ignores SIGPIPE and exec keeps ignored signals: give the real command the
    # default back, or `cat file | head` would print "write error: Broken pipe"
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.execv(real, [name, *argv])
    return 127  # not reached


def run_script(script: str, args: list[str], host: str | None = None) -> int:
    """Run ``script`` with bash on a simulated host; returns the script's exit status."""
    with tempfile.TemporaryDirectory(prefix="thinsim-") as tmp:
        host_dir = host or os.path.join(tmp, "host")
        return _bash([script, *args], host_dir, Path(tmp) / "bin")


def run_shell(host: str) -> int:
    with tempfile.TemporaryDirectory(prefix="thinsim-") as tmp:
        return _bash(["-i"], host, Path(tmp) / "bin")


PRIVATE_DEV = Path(__file__).with_name("private_dev.sh")


def _isolation() -> list[str] | None:
    """The command prefix that gives the script a private /dev and /sys block folders in its
    own mount namespace (a user namespace too when not root), or None where the kernel
    refuses."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix.insert(1, "--map-root-user")
    # this python, as in the run (python3 on PATH may have no thinsim); no host to load
    env = {k: v for k, v in os.environ.items() if k != "THINSIM_HOST"}
    env["THINSIM_PYTHON"] = sys.executable
    probe = subprocess.run(
        [*prefix, "sh", str(PRIVATE_DEV), "true"], capture_output=True, env=env, check=False
    )
    if probe.returncode != 0:
        return None
    return [*prefix, "sh", str(PRIVATE_DEV)]


def _bash(argv: list[str], host: str, shims: Path) -> int:
    make_shims(shims)
    env = dict(os.environ)
    env["THINSIM_HOST"] = os.path.abspath(host)
    env["THINSIM_SHIMS"] = str(shims)
    env["THINSIM_PYTHON"] = sys.executable
    env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
    prefix = _isolation()
    if prefix is None:
        sys.stderr.write(
            "thinsim: warning: no private /dev or /sys here (unshare refused); commands that "
            "are not simulated are still refused device paths, but shell redirections are not, "
            "and /sys shows the real devices\n"
        )
        prefix = []
    return subprocess.call([*prefix, "bash", *argv], env=env)
