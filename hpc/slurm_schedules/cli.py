"""``hpc sweep schedule|list|remove``: recurring launches that Slurm itself starts.

::

    hpc sweep schedule --cron "0 3 * * *" --name nightly -- cluster=slurm job.lr=0.01,0.1
    hpc sweep list
    hpc sweep remove nightly

Exit codes: 0 success, 2 bad input (bad cron, duplicate name, invalid overrides:
nothing is installed), 1 Slurm refused or failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from hpc.launchers.slurm import client
from hpc.rundir import records
from hpc.slurm_schedules import cron, resubmit, scrontab, store
from hpc.slurm_schedules.resubmit import _user
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import load_spec
from hpc.spec.sources import split_flags
from hpc.sweeps.plan import expand, plan_sweep

MECHANISMS = ("auto", "scrontab", "resubmit")
HISTORY_SHOWN = 3


def err(message: str) -> None:
    print(f"hpc sweep: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpc sweep", description="Schedule recurring hpc-launch sweeps on Slurm."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sched = sub.add_parser(
        "schedule",
        help="launch a sweep at cron times",
        usage='hpc sweep schedule --cron "MIN HOUR DOM MON DOW" --name NAME [options] '
        "-- OVERRIDES...",
        description="Validate the hpc-launch overrides now, then let Slurm launch "
        "`hpc-launch -m OVERRIDES` at every cron time (the cluster's local time), from "
        "this directory with this Python.",
    )
    sched.add_argument("--cron", required=True, help='five fields, e.g. "0 3 * * *"')
    sched.add_argument("--name", required=True, help="the schedule's name (unique)")
    sched.add_argument(
        "--mechanism",
        choices=MECHANISMS,
        default="auto",
        help="scrontab where the cluster has it (auto), else a self-resubmitting job",
    )
    for key in ("partition", "account", "qos", "time", "mem"):
        sched.add_argument(f"--{key}", help=f"for the schedule's own small job ({key})")
    sched.add_argument("overrides", nargs="*", metavar="OVERRIDES")
    lst = sub.add_parser("list", help="schedules, their next run and last launches")
    lst.add_argument("--json", action="store_true")
    rm = sub.add_parser("remove", help="remove a schedule (and its pending job)")
    rm.add_argument("name", metavar="NAME")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, overrides = args_list[:cut], args_list[cut + 1 :]
    args = build_parser().parse_args(args_list)
    try:
        if args.command == "schedule":
            return cmd_schedule(args, [*args.overrides, *overrides])
        if args.command == "list":
            return cmd_list(args.json)
        if args.command == "remove":
            return cmd_remove(args.name)
    except ConfigError as exc:
        err(f"error: {exc}")
        return 2
    except (LookupError, ValueError) as exc:
        err(f"error: {exc}")
        return 2
    return 2


def validate_overrides(overrides: list[str]) -> bool:
    """Validate as hpc-launch would; return whether it is a sweep (``-m``)."""
    if not overrides:
        raise ConfigError("OVERRIDES", "give the hpc-launch overrides after --")
    source, overrides = split_flags(overrides)  # -cd/-cp/-cn: kept, each launch uses them
    if any(o.startswith("-") for o in overrides):
        bad = next(o for o in overrides if o.startswith("-"))
        raise ConfigError(bad, "give hpc-launch overrides and config flags only (-m is implied)")
    _, combos, _ = expand(overrides)
    multirun = combos != [[]]
    if multirun:
        plan = plan_sweep(overrides, source=source)
        spec = next(iter(plan.shapes.values()))
    else:
        spec = load_spec(overrides, source=source)
        if spec.config.get("wait"):
            raise ConfigError("wait", "a scheduled launch cannot wait for its job (wait=false)")
    if spec.launcher != "slurm":
        raise ConfigError(
            "cluster", f"a schedule launches through Slurm: add cluster=slurm (got {spec.launcher})"
        )
    return multirun


def cmd_schedule(args: argparse.Namespace, overrides: list[str]) -> int:
    name = store.check_name(args.name)
    expr = cron.parse(args.cron)
    if store.exists(name):
        raise store.DuplicateError("--name", f"{name!r}: a schedule with this name exists")
    multirun = validate_overrides(overrides)
    mechanism = args.mechanism
    if mechanism in ("auto", "scrontab"):
        problem = scrontab.problem()
        if problem and mechanism == "scrontab":
            raise ConfigError("--mechanism", f"scrontab cannot be used: {problem}")
        mechanism = "resubmit" if problem else "scrontab"
    try:
        stale = queued_jobs([store.job_name(name)])
    except client.SlurmError as exc:
        err(f"error: Slurm: {exc}")
        return 1
    if stale:
        ids = ", ".join(j["job_id"] for j in stale)
        raise store.DuplicateError(
            "--name",
            f"{name!r}: Slurm job(s) {ids} named {store.job_name(name)} exist without a "
            "schedule; scancel them or choose another name",
        )
    schedule = store.Schedule(
        name=name,
        cron=expr,
        zone=cron.zone_name(),
        overrides=list(overrides),
        multirun=multirun,
        workdir=os.getcwd(),
        python=sys.executable,
        state_dir=str(records.state_dir().expanduser().resolve()),
        mechanism=mechanism,
        sbatch={
            k: str(getattr(args, k))
            for k in ("partition", "account", "qos", "time", "mem")
            if getattr(args, k)
        },
        env=store.env_snapshot(),
    )
    with store.locked():
        store.create(schedule)
        try:
            if mechanism == "scrontab":
                scrontab.install(schedule)
            else:
                resubmit.install(schedule)
        except (client.SlurmError, ConfigError) as exc:
            store.delete(name)
            if isinstance(exc, ConfigError):
                raise
            err(f"error: Slurm refused the schedule: {exc}")
            return 1
        store.save(schedule)
    when = (
        _dt.datetime.fromisoformat(schedule.pending_begin)
        if schedule.pending_begin
        else cron.next_time(expr, schedule.zone)
    )
    job = f" as job {schedule.pending_job_id}" if schedule.pending_job_id else ""
    err(
        f"schedule {name!r} ({mechanism}): next launch {when:%Y-%m-%d %H:%M} "
        f"{schedule.zone} (the cluster's local time){job}"
    )
    print(schedule.pending_job_id or name)
    return 0


def queued_jobs(job_names: list[str]) -> list[dict[str, str]]:
    """This user's queued jobs with these names: one squeue call."""
    if not job_names:
        return []
    out = client.run(
        ["squeue", "-h", "-u", _user(), "-n", ",".join(job_names), "-o", "%i|%j|%T|%r|%S"],
        retries=2,
    )
    jobs = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 5:
            keys = ("job_id", "name", "state", "reason", "start")
            jobs.append(dict(zip(keys, (p.strip() for p in parts), strict=True)))
    return jobs


def describe(
    schedule: Any, queue: list[dict[str, str]], crontab: str | None = None
) -> dict[str, Any]:
    mine = [j for j in queue if j["name"] == schedule.job_name]
    pending = [j for j in mine if j["state"] == "PENDING"]
    if schedule.mechanism == "resubmit" and schedule.pending_begin and pending:
        next_run = _dt.datetime.fromisoformat(schedule.pending_begin)
    else:
        next_run = cron.next_time(schedule.cron, schedule.zone)
    problem = None
    if schedule.mechanism == "resubmit" and not mine:
        problem = (
            f"its Slurm job {schedule.pending_job_id or ''} is gone: nothing will launch "
            f"(hpc sweep remove {schedule.name}, then schedule it again)"
        )
    if schedule.mechanism == "scrontab" and crontab is not None:
        span = scrontab.find_block(crontab, schedule.name)
        lines = crontab.splitlines()[span[0] : span[1] + 1] if span else []
        if not span:
            problem = "its scrontab lines are gone: nothing will launch"
        elif any(ln.startswith(("#DISABLED:", "#BAD:")) for ln in lines):
            problem = "Slurm disabled its scrontab line (was its job cancelled?)"
    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "zone": schedule.zone,
        "next_run": next_run.isoformat(),
        "mechanism": schedule.mechanism,
        "pending_job_id": schedule.pending_job_id,
        "slurm_jobs": mine,
        "overrides": schedule.overrides,
        "multirun": schedule.multirun,
        "workdir": schedule.workdir,
        "history": schedule.history[-HISTORY_SHOWN:],
        "launches": len(schedule.history),
        "problem": problem,
    }


def cmd_list(as_json: bool) -> int:
    schedules = store.all_schedules()
    queue: list[dict[str, str]] = []
    try:
        queue = queued_jobs([s.job_name for s in schedules])
    except client.SlurmError as exc:
        err(f"warning: Slurm not reachable ({exc}); queue states unknown")
    crontab = None
    if any(s.mechanism == "scrontab" for s in schedules):
        try:
            crontab = scrontab.read() or ""
        except client.SlurmError as exc:
            err(f"warning: scrontab -l failed ({exc})")
    rows = [describe(s, queue, crontab) for s in schedules]
    zones = sorted({r["zone"] for r in rows}) or [cron.zone_name()]
    if as_json:
        print(json.dumps({"zone": zones[0], "schedules": rows}, indent=2))
        return 0
    if not rows:
        print("no schedules (hpc sweep schedule --cron ... --name ... -- OVERRIDES)")
        return 0
    from rich.console import Console  # noqa: PLC0415 (lazy: rich only for the table, not --json)
    from rich.table import Table  # noqa: PLC0415 (lazy: rich only for the table, not --json)

    note = f"times are the cluster's local time ({', '.join(zones)})"
    table = Table(title="scheduled sweeps", caption=note)
    for column in ("name", "cron", "next run", "slurm job", "last launches", "launches"):
        table.add_column(column, overflow="fold")
    for row in rows:
        jobs = ", ".join(
            f"{j['job_id']} {j['state']}"
            + (f" ({j['reason']})" if j["reason"] not in ("None", "") else "")
            for j in row["slurm_jobs"]
        )
        if row["problem"]:
            jobs = f"[red]{row['problem']}[/red]"
        history = "\n".join(_history_line(h) for h in reversed(row["history"])) or "none yet"
        table.add_row(
            row["name"],
            f"{row['cron']}\n({row['mechanism']})",
            _fmt_time(row["next_run"]),
            jobs or "-",
            history,
            ("-m " if row["multirun"] else "") + " ".join(row["overrides"]),
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return 0


def _fmt_time(iso: str | None) -> str:
    if not iso:
        return "-"
    return _dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")


def _history_line(entry: dict[str, Any]) -> str:
    what = ""
    if entry.get("arrays"):
        what = f"array {','.join(entry['arrays'])}"
    elif entry.get("launched_job"):
        what = f"job {entry['launched_job']}"
    status = "ok" if entry.get("exit_code") == 0 else f"[red]{entry.get('error', 'failed')}[/red]"
    if entry.get("skipped"):
        status = f"[yellow]skipped: {entry['skipped']}[/yellow]"
    return f"{_fmt_time(entry.get('time'))} {what} {status}".replace("  ", " ")


def cmd_remove(name: str) -> int:
    store.check_name(name)
    with store.locked():
        schedule = store.load(name)
        try:
            if schedule.mechanism == "scrontab":
                done = scrontab.remove(schedule)  # first: a failed edit keeps the record
                store.delete(name)
            else:
                store.delete(name)  # first: a firing job then does not resubmit
                done = resubmit.remove(schedule)
                resubmit.script_path(schedule).unlink(missing_ok=True)
        except client.SlurmError as exc:
            err(f"error: {exc}")
            return 1
    err(f"removed schedule {name!r}" + (f" ({'; '.join(done)})" if done else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
