"""Schedules as a self-resubmitting Slurm job (for clusters without ``scrontab``).

One small batch job per schedule, named ``hpc-sched-NAME``, is pending at any
time: submitted with ``--begin`` at the next cron time (cluster local time) and
``--dependency=singleton`` (never two of one schedule at once). When it starts,
``python -m hpc.slurm_schedules.fire`` first submits the job for the following time,
then runs ``hpc-launch`` — so a failing sweep never ends the schedule.
"""

from __future__ import annotations

import datetime as _dt
import os
import pwd
import shlex
from pathlib import Path

from hpc.files import write_atomic
from hpc.launchers.slurm import client, render
from hpc.quoting import one_line, shell_join, shell_word
from hpc.slurm_schedules import cron, store
from hpc.slurm_schedules.store import Schedule

NAME = "resubmit"
SCHED_TIME = "00:15:00"  # the schedule's own job only submits; the sweep is separate


def script_path(schedule: Schedule) -> Path:
    return store.directory() / f"{schedule.name}.sbatch"


def sbatch_directives(schedule: Schedule) -> list[str]:
    """The #SBATCH (and #SCRON) options of a schedule's own small job."""
    logs = store.directory() / "logs"
    opts = [
        ("job-name", schedule.job_name),
        ("output", f"{logs}/{schedule.name}-%j.out"),
        ("open-mode", "append"),
        ("chdir", schedule.workdir),
        ("nodes", "1"),
        ("ntasks", "1"),
        ("cpus-per-task", "1"),
        ("time", schedule.sbatch.get("time") or SCHED_TIME),
    ]
    for key in ("partition", "account", "qos", "mem"):
        if schedule.sbatch.get(key):
            opts.append((key, schedule.sbatch[key]))
    return render.directives((k, f"--{k}", v) for k, v in opts)


def fire_command(schedule: Schedule) -> str:
    """The shell line that fires the schedule (interpreter and state dir of schedule time).

    It is also a crontab line that ``/bin/sh`` runs: every value must be one plain line.
    """
    state_dir = one_line("HPC_STATE_DIR", schedule.state_dir)
    python = one_line("python (the interpreter of hpc sweep)", schedule.python)
    words = [one_line("--name", schedule.name), one_line("schedule id", schedule.id)]
    return (
        f"HPC_STATE_DIR={shlex.quote(state_dir)} exec {shlex.quote(python)} "
        f"-m hpc.slurm_schedules.fire {shlex.join(words)}"
    )


def script_text(schedule: Schedule) -> str:
    """The schedule's own job (``slurm/templates/schedule.sbatch``)."""
    return render.render(
        "schedule.sbatch",
        name=shell_word(schedule.name),
        cron=shell_word(schedule.cron),
        zone=shell_word(schedule.zone),
        launches=("-m " if schedule.multirun else "") + shell_join(schedule.overrides),
        directives=render.sbatch_block(sbatch_directives(schedule)),
        fire=fire_command(schedule),
    )


def install(schedule: Schedule, retries: int = 5) -> None:
    """Write the batch script and submit the first occurrence."""
    write_atomic(script_path(schedule), script_text(schedule))
    submit_next(schedule, retries=retries)


def submit_next(
    schedule: Schedule, after: _dt.datetime | None = None, retries: int = 5
) -> tuple[str, _dt.datetime]:
    """Submit the occurrence after ``after`` (default now); record it in ``schedule``."""
    when = cron.next_time(schedule.cron, schedule.zone, after)
    # sbatch reads --begin in its own local zone: pin it to the schedule's zone in
    # case this node's differs from the login node's.
    pin = cron.zone_name() != schedule.zone
    saved = os.environ.get("TZ")
    if pin:
        os.environ["TZ"] = schedule.zone
    try:
        job_id = client.submit(
            str(script_path(schedule)),
            [f"--begin={cron.wall_clock(when)}", "--dependency=singleton"],
            retries=retries,
        )
    finally:
        if pin and saved is None:
            os.environ.pop("TZ", None)
        elif pin:
            os.environ["TZ"] = saved  # type: ignore[assignment]
    schedule.pending_job_id = job_id
    schedule.pending_begin = when.isoformat()
    return job_id, when


def remove(schedule: Schedule) -> list[str]:
    """Cancel the schedule's pending job(s); a running one (firing now) finishes."""
    done = []
    if schedule.pending_job_id:
        try:
            client.cancel(schedule.pending_job_id)
            done.append(f"scancel {schedule.pending_job_id}")
        except client.SlurmError as exc:
            if "Invalid job id" not in str(exc) and "already completed" not in str(exc):
                raise
    # Anything else of this schedule still pending (e.g. submitted by a firing job
    # just before the schedule's file was deleted).
    client.run(
        ["scancel", "--name", schedule.job_name, "--state", "PENDING", "--user", _user()],
        retries=3,
    )
    return done


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
