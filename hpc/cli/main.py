"""``hpc``: subcommands around launched jobs (status, show, topo, cost, ...).

Each subcommand's module is imported only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence

from hpc.rundir import records

# Subcommands implemented in their own modules: name -> "module:function(argv) -> int".
DELEGATED = {
    "topo": "hpc.topology.cli:main",
    "cost": "hpc.cost.cli:main",
    "sweep": "hpc.slurm_schedules.cli:main",
    "config": "hpc.cli.config:main",
    "jobstats": "hpc.cli.jobstats:main",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpc", description="Inspect and manage hpc-launch jobs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", help="list recent runs, or one sweep's tasks")
    status.add_argument("sweep", nargs="?", metavar="SWEEP", help="a sweep dir or array id")
    status.add_argument("--metric", default="accuracy", help="with SWEEP: rank tasks by this")
    status.add_argument("--mode", choices=("max", "min"), default="max", help="with SWEEP")
    status.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    status.add_argument("--json", action="store_true", help="print records as JSON")
    status.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        nargs="?",
        const=2.0,
        default=None,
        help="refresh every SECONDS (at least 2)",
    )
    show = sub.add_parser("show", help="print one run's record")
    show.add_argument("run_dir", metavar="RUN_DIR")
    logs = sub.add_parser("logs", help="print (or follow) a run's log")
    logs.add_argument("ref", metavar="RUN_OR_JOB")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    sync = sub.add_parser("sync", help="send a run's spooled metrics to MLflow (after an outage)")
    sync.add_argument("run_dir", metavar="RUN_DIR")
    cancel = sub.add_parser("cancel", help="cancel a run")
    cancel.add_argument("ref", metavar="RUN_OR_JOB")
    for name in DELEGATED:
        sub.add_parser(name, help=f"{name} subcommands (see hpc {name} --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in DELEGATED:
        module_name, _, func = DELEGATED[args_list[0]].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            print(f"hpc: error: {args_list[0]}: not available ({exc})", file=sys.stderr)
            return 2
        return int(getattr(module, func)(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "status":
        if args.sweep:
            from hpc.cli.sweeps import show  # noqa: PLC0415 (lazy: subcommand module, loads hydra)

            return show(
                args.sweep, metric=args.metric, mode=args.mode, watch=args.watch, as_json=args.json
            )
        if args.watch is None:
            return cmd_status(args.limit, args.json)
        while True:  # throttled: at most one backend query per 2 s
            print("\033[2J\033[H", end="")
            cmd_status(args.limit, args.json)
            time.sleep(max(2.0, args.watch))
    if args.command == "sync":
        # lazy: subcommand module, loaded when it runs
        from hpc.runtime.tracking import sync_run  # noqa: PLC0415

        try:
            left = sync_run(args.run_dir)
        except (FileNotFoundError, ValueError) as exc:
            print(f"hpc: error: {exc}", file=sys.stderr)
            return 2
        print(
            f"hpc: {'all records sent' if not left else f'{left} records still unsent'}",
            file=sys.stderr,
        )
        return 0 if not left else 1
    if args.command == "show":
        return cmd_show(args.run_dir)
    if args.command in ("logs", "cancel"):
        from hpc.cli import jobs  # noqa: PLC0415 (lazy: subcommand module, loads hydra)

        try:
            run = jobs.find_run(args.ref)
            if args.command == "cancel":
                print(f"hpc: {jobs.cancel(run)}", file=sys.stderr)
                return 0
            for line in jobs.follow_logs(run, args.follow):
                print(line, flush=True)
            return 0
        except (LookupError, FileNotFoundError, ValueError) as exc:
            print(f"hpc: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


def cmd_status(limit: int, as_json: bool) -> int:
    # lazy: loads hydra; `hpc --help` stays light
    from hpc.cli.jobs import refresh_states  # noqa: PLC0415

    if limit < 1:
        print("hpc: error: --limit: must be >= 1", file=sys.stderr)
        return 2
    runs = records.recent_runs(limit)
    for warning in refresh_states(runs):
        print(f"hpc: warning: {warning}", file=sys.stderr)
    if as_json:
        print(json.dumps(runs, indent=2))
        return 0
    if not runs:
        print("no runs yet (hpc-launch writes one record per launch)", file=sys.stderr)
        return 0
    from rich.console import Console  # noqa: PLC0415 (lazy: rich only for the table)
    from rich.table import Table  # noqa: PLC0415 (lazy: rich only for the table)

    table = Table(title="recent runs")
    for column in ("name", "launcher", "job id", "state", "started", "run dir"):
        table.add_column(column)
    for run in runs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.get("created", 0)))
        table.add_row(
            str(run.get("name")),
            str(run.get("launcher")),
            str(run.get("job_id")),
            run["state"],
            started,
            str(run.get("run_dir")),
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return 0


def cmd_show(run_dir: str) -> int:
    try:
        record = records.load(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"hpc: error: {exc}", file=sys.stderr)
        return 2
    # lazy: loads hydra; `hpc --help` stays light
    from hpc.cli.jobs import refresh_states  # noqa: PLC0415

    refresh_states([record])
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
