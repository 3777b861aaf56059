"""``thinsim run`` and ``thinsim shell``: bash on a simulated host.

The simulated commands come first on PATH as small shims with the host folder in
``THINSIM_HOST`` (thinsim/host/shims.py): clients of the host's process
(thinsim/host/server.py; the compiled client.c, or Python shims where there is no
compiler), which runs them.  Commands that are not simulated but could be pointed at a
simulated device node (mkfs, mount, cat ...) get a guard shim that refuses when an argument
names one, and otherwise runs the real command.  The script runs in the sandbox of
thinsim/host/sandbox.py (own PID and mount namespaces, no capability that reaches devices).

A run leaves nothing behind however it ends: its files live in the namespace's tmpfs,
unshare dies with thinsim run (PR_SET_PDEATHSIG, SIGKILL included) and the namespace's init
with unshare (--kill-child), and the init's death ends every process of the namespace.
SIGTERM, SIGINT and SIGHUP end the run at once too, and thinsim run returns only when every
process of it is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from . import devnodes, leftovers, loopfile, server, sysfs
from .server import STARTED, connect, request, standard_streams
from .shims import ROOT, make_shims, names_device, real_command
from .state import open_host
from .tools import COMMANDS, IO


def this_thinsim(module: str, *args: str) -> list[str]:
    """The argv that runs MODULE's main(ARGS) with this python and this thinsim, wherever it
    runs from (``python -m`` would import the thinsim installed, from another folder)."""
    code = f"import sys; sys.path.insert(0, {ROOT!r}); from {module} import main; sys.exit(main())"
    return [sys.executable, "-c", code, *args]


def shim_main(name: str, argv: list[str]) -> int:
    host = os.environ.get("THINSIM_HOST")
    if host is None:
        sys.stderr.write(f"thinsim: {name}: THINSIM_HOST is not set\n")
        return 1
    if os.environ.get("THINSIM_SERVER") != "0":
        return client_main(name, argv)
    if name in COMMANDS:
        if name == "dd" and names_device(argv) is None:
            return _exec_real(name, argv)
        io = IO(defer=True)  # what the command runs waits for the lock's release
        with open_host(host) as state:
            before = len(state.log.lines)
            status = COMMANDS[name](state, argv, io)
            devnodes.sync(state)
            said = state.log.lines[before:]
        try:
            io.finish()
            server.explain(name, status, said, sys.stderr)
        except BrokenPipeError:  # as _exit_as: the reader is gone
            status = status if status < 0 else -signal.SIGPIPE
        except (OSError, ValueError):
            pass  # output that cannot be written is dropped, as _exit_as drops it
        return _exit_as(status)
    device = names_device(argv)
    if device is not None:
        sys.stderr.write(
            f"thinsim: {name} on {device} is not simulated: refused, so that it cannot reach "
            f"the real device{server._why_not_real()}\n"
        )
        return 1
    sysfs.refresh_names(host, argv)  # a file read in /sys shows the name the file has now
    return _exec_real(name, argv)


def client_main(name: str, argv: list[str]) -> int:
    """A simulated command as a Python client (no C compiler): thinsim/host/client.c in
    Python."""
    host = os.environ["THINSIM_HOST"]
    streams = standard_streams()
    try:
        with connect(host) as conn:
            answer = request(conn, name, argv, streams)
    except OSError:
        answer = ""
    if not answer:
        # no process could start (a full host folder), or it died before it took the
        # command: the command runs here, on the host state's file, as it did before
        # there was one
        os.environ["THINSIM_SERVER"] = "0"
        for fd in (0, 1, 2):  # the closed streams' placeholders go: closed, as they were
            if not streams & (1 << fd):
                os.close(fd)
        return shim_main(name, argv)
    answer = answer.removeprefix(STARTED.decode())
    if not answer:
        return _died(name)
    kind, arg = answer[:1], answer[1:]
    if kind == "X":
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.execv(arg, [name, *argv])
    if kind == "S":
        signal.signal(int(arg), signal.SIG_DFL)
        os.kill(os.getpid(), int(arg))
        return 128 + int(arg)
    if kind == "E":
        return int(arg)
    sys.stderr.write(f"thinsim: {name}: the host's process answered {answer!r}\n")
    return 1


def _died(name: str) -> int:
    """The host's process died (kill -9) while it ran the command: the command ends with
    it, as a process does when its machine goes down, and is not run again (its input
    may be read, its output written).  The host goes on from what the process saved and
    its pools committed; the next command starts a new process."""
    sys.stderr.write(
        f"thinsim: {name}: the host's process died while it ran the command; the host goes "
        "on from what it had committed\n"
    )
    return 1


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
    real = real_command(name)
    if real is None:
        sys.stderr.write(f"{name}: command not found\n")
        return 127
    # Python ignores SIGPIPE and exec keeps ignored signals: give the real command the
    # default back, or `cat file | head` would print "write error: Broken pipe"
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.execv(real, [name, *argv])
    return 127  # not reached


def run_script(
    script: str,
    args: list[str],
    host: str | None = None,
    workdir: str | None = None,
    explain: bool = False,
) -> int:
    """Run ``script`` with bash on a simulated host; returns the script's exit status (128+N
    when signal N ended it).  With WORKDIR, the script runs in WORKDIR/work, an empty folder
    that only the run sees there (thinsim diff runs scripts where the real host does).
    With EXPLAIN, a simulated command that fails is followed on stderr by the kernel log
    lines it caused (server.explain)."""
    return _run(["bash", script, *args], host, workdir, explain)


def run_shell(host: str, explain: bool = False) -> int:
    return _run(["bash", "-i"], host, explain=explain)


class _Stopped(BaseException):
    """thinsim run itself got SIGTERM, SIGINT or SIGHUP: the run ends, script and all."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _stop(signum, frame):
    for sig in STOP_SIGNALS:  # the ending is under way: once is enough
        signal.signal(sig, signal.SIG_IGN)
    raise _Stopped(signum)


def _run(
    command: list[str], host: str | None, workdir: str | None = None, explain: bool = False
) -> int:
    env = {k: v for k, v in os.environ.items() if k != "THINSIM_HOST"}
    if explain:
        env[server.EXPLAIN] = "1"
    if host is not None:
        env["THINSIM_HOST"] = os.path.abspath(host)
        leftovers.sweep_host(host)  # what commands killed in a run killed outright left
        # a host whose state file fails its checks is refused before anything runs (the
        # one-line HostStateError), not at the script's first simulated command
        with open_host(host, write=False):
            pass
    env["THINSIM_PYTHON"] = sys.executable
    from . import realdev

    realdev.sweep()  # the loop devices of runs killed outright (their records, checked)
    old = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
    private = None
    try:
        if workdir is not None:
            # held locked while the run lives: a run killed outright leaves it to the next
            private, held = leftovers.private_folder(leftovers.WORK_PREFIX)
            os.mkdir(os.path.join(private, "work"))
        status, why = _sandboxed(command, env, private, workdir)
        if status is None:
            sys.stderr.write(
                f"thinsim: warning: no sandbox here ({why}): the script runs with the real "
                "/dev, /proc and /sys; commands that are not simulated are still refused "
                "device paths, but shell redirections are not\n"
            )
            cwd = None if private is None else os.path.join(private, "work")
            status = _unsandboxed(command, env, cwd)
        return status
    except _Stopped as stop:
        return 128 + stop.signum
    finally:
        if private is not None:  # nothing of the run is left to write in it
            leftovers.remove_private_folder(private, held)
        realdev.sweep()  # what the init could not detach (it was killed)
        if host is not None:  # the host's process and the loop devices' files go with the run
            server.stop(env["THINSIM_HOST"])
            loopfile.stop(env["THINSIM_HOST"])
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _sandbox_argv(
    report: int, private: str | None, workdir: str | None, fds: list[int] | None = None
) -> list[str]:
    """``unshare`` into new mount and PID namespaces (a user namespace too when not root)
    whose init is thinsim/host/sandbox.py; --kill-child: the init dies with unshare."""
    unshare = shutil.which("unshare") or "unshare"
    prefix = [unshare, "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user"]
    args = [str(report)]
    if workdir is not None:
        args += ["--workdir", str(private), workdir]
    if fds:
        args += ["--pass-fds", ",".join(map(str, fds))]
    return [*prefix, *this_thinsim("thinsim.host.sandbox", *args, "--")]


def _sandboxed(
    command: list[str], env: dict[str, str], private: str | None, workdir: str | None
) -> tuple[int | None, str]:
    """Run COMMAND in the sandbox; (None, why) when it could not be set up (nothing ran).
    Ending the run (a _Stopped) ends the namespace: its init, so the kernel kills every
    process in it, and waits until they are all gone."""
    from .sandbox import die_with_parent, named_fds  # not in every shim's imports: ctypes costs

    fds = named_fds(command)  # <(...): the script's /dev/fd/N
    report, write = os.pipe()
    try:
        proc = subprocess.Popen(
            _sandbox_argv(write, private, workdir, fds) + command,
            env=env,
            pass_fds=(write, *fds),
            # SIGKILL: unshare, then (--kill-child) the init.  thinsim run has no threads.
            preexec_fn=die_with_parent(),  # noqa: PLW1509
        )
    except OSError as exc:
        os.close(report)
        return None, exc.strerror or str(exc)
    finally:
        os.close(write)
    init = None
    try:
        lines = []
        with os.fdopen(report, "rb") as f:
            report = -1
            for line in f:
                lines.append(line.decode(errors="replace").rstrip("\n"))
                if lines[-1].startswith("pid "):
                    init = os.pidfd_open(int(lines[-1][4:]))
                if lines[-1] == "ready":
                    break
        if lines[-1:] != ["ready"]:
            proc.wait()
            errors = [x[7:] for x in lines if x.startswith("error: ")]
            return None, errors[0] if errors else "unshare failed"
        return _status(proc.wait()), ""
    except _Stopped:
        if report >= 0:
            os.close(report)
        # unshare waits for the init, whose exit the kernel completes only once every other
        # process of its PID namespace has been killed and reaped.  SIGTERM first: an init
        # killed by SIGKILL has unshare complain ("sigprocmask unblock failed").
        if init is not None:
            signal.pidfd_send_signal(init, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                signal.pidfd_send_signal(init, signal.SIGKILL)
        else:
            proc.kill()  # the init dies with unshare (--kill-child)
        proc.wait()
        raise
    finally:
        if init is not None:
            os.close(init)


def _status(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def _unsandboxed(command: list[str], env: dict[str, str], cwd: str | None) -> int:
    """Where the kernel refuses namespaces: the shims on PATH, in a folder of the host's."""
    tmp, held = leftovers.private_folder(leftovers.UNSANDBOXED_PREFIX)
    try:
        shims = Path(tmp) / "bin"
        make_shims(shims)
        env = dict(env)
        env.setdefault("THINSIM_HOST", os.path.join(tmp, "host"))
        env["THINSIM_SHIMS"] = str(shims)
        env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
        from .sandbox import named_fds

        proc = subprocess.Popen(command, env=env, cwd=cwd, pass_fds=named_fds(command))
        try:
            return _status(proc.wait())
        except _Stopped:
            proc.kill()
            proc.wait()
            raise
        finally:
            # the host's process and the loop devices' files go with the run (in the
            # sandbox, they die with the namespace)
            server.stop(env["THINSIM_HOST"])
            loopfile.stop(env["THINSIM_HOST"])
    finally:
        leftovers.remove_private_folder(tmp, held)
