"""The ``thinsim`` command."""

from __future__ import annotations

import argparse
import json
import sys


def _scenario(args) -> int:
    from .executor import ScenarioExecutor
    from .scenario import ScenarioError, parse, steps

    def fail(message: str) -> int:
        print(f"thinsim scenario: {args.file}: {message}", file=sys.stderr)
        return 1

    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as e:
        return fail(e.strerror or str(e))
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        return fail(f"line {lineno}: not UTF-8 text (byte 0x{data[e.start]:02x})")
    try:
        ops = parse(text)
    except ScenarioError as e:
        return fail(str(e))
    transcript = steps(ops, ScenarioExecutor.on_model())
    for op in ops:  # steps() runs one operation per part it yields
        try:
            part = next(transcript)
        except ScenarioError as e:
            return fail(str(e))
        except Exception as e:  # noqa: BLE001 (a line the model cannot take: no traceback)
            return fail(
                f"line {op.lineno}: {op.line!r}: the model failed ({type(e).__name__}: {e})"
            )
        try:
            sys.stdout.write(part)
            sys.stdout.flush()
        except BrokenPipeError:
            _die_of_sigpipe()
    return 0


def _die_of_sigpipe() -> None:
    """End as a C tool whose reader went away ends (`thinsim scenario x | head -1`): killed
    by SIGPIPE, which Python ignores, without its complaint about the unflushed stdout."""
    import os
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)


def _run(args) -> int:
    if args.backend == "kernel":
        from .host.real import RealHostError, run_scripts
        from .vm import VMError

        if args.host or args.workdir or args.explain:
            option = "--host" if args.host else "--workdir" if args.workdir else "--explain"
            print(f"thinsim run: {option} is for the simulated host", file=sys.stderr)
            return 2
        try:
            (result,) = run_scripts([(args.script, args.args)])
        except (RealHostError, VMError) as exc:
            print(f"thinsim run: {exc}", file=sys.stderr)
            return 2
        if args.mask:
            result = result.masked()
        sys.stdout.buffer.write(result.stdout.encode("utf-8", "surrogateescape"))
        sys.stderr.buffer.write(result.stderr.encode("utf-8", "surrogateescape"))
        return result.returncode if isinstance(result.returncode, int) else 124

    from .host.run import run_script

    if args.host is not None and _make_host_folder("run", args.host):
        return 1
    return run_script(args.script, args.args, args.host, args.workdir, args.explain)


def _make_host_folder(command: str, host: str) -> bool:
    """Make a --host folder as ``mkdir`` without -p does: the folder itself if need be, never
    its parents (a typo in them is an error, not a new tree); True when that failed, with
    mkdir's words on stderr."""
    import os

    try:
        os.mkdir(host)
    except FileExistsError:
        return False  # a folder already (a file there is open_host's to refuse)
    except OSError as e:
        print(f"thinsim {command}: cannot create directory '{host}': {e.strerror}", file=sys.stderr)
        return True
    return False


def _diff(args) -> int:
    from .host.diff import main

    return main(args.scripts, args.timeout)


def _labs(args) -> int:
    from .labs import main

    return main(args.rest)


def _shell(args) -> int:
    import os

    from .host.run import run_shell

    if args.host is not None and _make_host_folder("shell", args.host):
        return 1
    return run_shell(args.host or os.path.expanduser("~/.thinsim/host"), args.explain)


def _host(args) -> int:
    import os

    from .host import realdev
    from .host.server import stop

    realdev.sweep()  # the loop devices runs killed outright left bound
    host = args.dir or os.path.expanduser("~/.thinsim/host")
    if not os.path.isdir(host):
        print(f"thinsim host stop: {host}: no such host folder", file=sys.stderr)
        return 1
    stop(host)
    return 0


def _bench(args) -> int:
    from .bench import host_commands, run_all

    if args.plan:
        from .bench import plan_benchmarks

        results = plan_benchmarks(quick=args.quick)
    elif args.host:
        results = host_commands(
            n=20 if args.quick else 100, before=args.before, full=not args.quick, lab=args.lab
        )
    else:
        results = run_all(quick=args.quick)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        for k, v in sorted(results.items()):
            print(f"{k:24} {v}")
    return 0


def _plan(args) -> int:
    from .plan import PlanError, load, plot, text, to_csv, to_json

    def fail(message: str) -> int:
        print(f"thinsim plan: {message}", file=sys.stderr)
        return 2

    try:
        w = load(args.workload)
        if args.sweep:
            from .plan.sweep import sweep, sweep_text

            results = sweep(w, args.sweep, jobs=args.jobs, scheduler=args.scheduler,
                            progress=not args.quiet)  # fmt: skip
            if args.plot:
                from .plan.sweep import sweep_plot

                sweep_plot(results, args.plot)
            if args.csv:
                from .plan.sweep import sweep_csv

                with open(args.csv, "w") as f:
                    f.write(sweep_csv(results))
            out = (
                json.dumps(results, indent=1, default=str) + "\n"
                if args.json
                else (sweep_text(results))
            )
            sys.stdout.write(out)
            return 0
        if args.scheduler:
            return fail("--scheduler runs a sweep: give --sweep too")
        from .plan.engine import Simulation

        sim = Simulation(w, record=bool(args.script))
        result = sim.run()
    except PlanError as e:
        return fail(str(e))
    if args.script:
        from .plan.script import ScriptError, write_script

        try:
            write_script(sim, args.script)
        except ScriptError as e:
            return fail(str(e))
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(to_csv(result))
    if args.plot:
        plot(result, args.plot)
    sys.stdout.write(to_json(result) + "\n" if args.json else text(result))
    return 0


def _vm(args) -> int:
    from .vm import main

    return main(args.rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vm"]:
        # Everything after "vm" is thinsim vm's own (its COMMAND may look like options).
        from .vm import main as vm_main

        return vm_main(argv[1:])
    if argv[:1] == ["labs"]:  # its options are thinsim labs' own (thinsim/labs.py)
        from .labs import main as labs_main

        return labs_main(argv[1:])
    parser = argparse.ArgumentParser(prog="thinsim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("scenario", help="run a scenario file on the model, print its transcript")
    p.add_argument("file")
    p.set_defaults(func=_scenario)
    p = sub.add_parser("run", help="run a bash script on a simulated host (or the real one)")
    p.add_argument(
        "--backend",
        choices=("sim", "kernel"),
        default="sim",
        help="kernel: on the real tools, in a fresh /run/thinsim/work (in a VM when this host "
        "has no dm-thin)",
    )
    p.add_argument("--mask", action="store_true", help="kernel: mask dd timings, dmesg times")
    p.add_argument("--host", help="the host's state folder (default: a fresh one)")
    p.add_argument(
        "--explain",
        action="store_true",
        help="after a simulated command that fails, print the kernel log lines that say why",
    )
    p.add_argument(
        "--workdir",
        metavar="DIR",
        help="run the script in DIR/work, an empty folder only the run sees (thinsim diff: "
        "/run/thinsim, where the real host runs scripts)",
    )
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run)
    p = sub.add_parser(
        "diff", help="run scripts on the simulated and the real host, diff their outputs"
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds per script and side")
    p.add_argument("scripts", nargs="+", metavar="SCRIPT")
    p.set_defaults(func=_diff)
    p = sub.add_parser(
        "labs", help="run the labs (notebooks/) and keep their outputs (thinsim labs -h)"
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_labs)
    p = sub.add_parser("shell", help="an interactive bash on a simulated host")
    p.add_argument("--host", help="the host's state folder (default: ~/.thinsim/host)")
    p.add_argument(
        "--explain",
        action="store_true",
        help="after a simulated command that fails, print the kernel log lines that say why",
    )
    p.set_defaults(func=_shell)
    p = sub.add_parser("host", help="the simulated host's process (thinsim host stop [DIR])")
    p.add_argument("action", choices=["stop"])
    p.add_argument("dir", nargs="?", help="the host folder (default: ~/.thinsim/host)")
    p.set_defaults(func=_host)
    p = sub.add_parser("bench", help="measure the model's speed and memory")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--quick", action="store_true", help="smaller sizes (for a smoke run)")
    p.add_argument(
        "--host",
        action="store_true",
        help="per-command time of the simulated host (dmsetup status, message, 4 KiB dd)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="the capacity planner's workloads (examples/plans: snapshots_1t, docker_year)",
    )
    p.add_argument("--before", action="store_true", help="with --host: also a process per command")
    p.add_argument("--lab", action="store_true", help="with --host: a 1,000-command script")
    p.set_defaults(func=_bench)
    p = sub.add_parser(
        "plan", help="run a workload file on the model: capacity over simulated time"
    )
    p.add_argument("workload", help="a workload file (TOML; see `pydoc thinsim.plan`)")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the timeline as CSV")
    p.add_argument("--plot", metavar="FILE", help="draw use over time (.png or .svg)")
    p.add_argument(
        "--sweep",
        action="append",
        metavar="FIELD=V1,V2,...",
        help="run every combination of these values (repeatable), e.g. pool.block_size=64KiB,1MiB",
    )
    p.add_argument("--jobs", type=int, default=None, help="processes for a sweep (default: cores)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run the sweep on this Dask scheduler")
    p.add_argument(
        "--script",
        metavar="FILE",
        help="write the run's operations as a bash script for the kernel",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_plan)
    p = sub.add_parser(
        "vm", help="run a command as root in a VM with a dm-thin kernel (thinsim vm -h)"
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_vm)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # ^C: thinsim run and thinsim diff have ended their scripts
        return 130


if __name__ == "__main__":
    sys.exit(main())
