"""A schedule's occurrence: ``python -m hpc.slurm_schedules.fire NAME ID`` (inside its Slurm job).

1. For the self-resubmitting mechanism: submit the following occurrence first
   (under the store lock, and only while the schedule still exists with this ID),
   so a failing launch never ends the schedule.
2. Run ``hpc-launch [-m] OVERRIDES`` with the interpreter and working directory
   of schedule time, outside the Slurm job's environment (no SLURM_* variables
   leak into the sweep's own sbatch).
3. Record the launch (time, job, exit code, array ids, sweep dir) in the schedule's
   history.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import subprocess
import sys
import time

from hpc.exitcodes import BUDGET_REFUSED
from hpc.launchers.slurm import client
from hpc.slurm_schedules import cron, resubmit, store

# Slurm variables of this small job that must not reach the sweep's submission.
_DROP = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")
_KEEP = ("SLURM_CONF",)


def launch_env(schedule: store.Schedule) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEEP or not k.startswith(_DROP)}
    env.update(schedule.env)
    env["HPC_STATE_DIR"] = schedule.state_dir
    env["HPC_SCHEDULE"] = schedule.name
    return env


def resubmit_next(name: str, sched_id: str, job_id: str | None) -> str:
    """Submit the next occurrence; a line for the log."""
    with store.locked():
        try:
            schedule = store.load(name)
        except LookupError:
            return "schedule removed: not resubmitting"
        if schedule.id != sched_id:
            return "schedule was replaced: not resubmitting"
        if schedule.pending_job_id and schedule.pending_job_id != job_id:
            # Another occurrence is already queued (this one was started by hand).
            return f"occurrence {schedule.pending_job_id} is already queued"
        now = _dt.datetime.now(cron.zone(schedule.zone))
        after = now
        if schedule.pending_begin:  # started a little early (clock skew): not again
            begin = _dt.datetime.fromisoformat(schedule.pending_begin)
            if now < begin <= now + _dt.timedelta(seconds=90):
                after = begin
        try:
            new_id, when = resubmit.submit_next(schedule, after=after)
        except client.SlurmError as exc:
            schedule.pending_job_id = None
            schedule.pending_begin = None
            store.add_history(
                schedule,
                {"time": now.isoformat(), "job_id": job_id, "error": f"resubmit failed: {exc}"},
            )
            store.save(schedule)
            return f"error: could not submit the next occurrence: {exc}"
        store.save(schedule)
    return f"next occurrence: job {new_id} at {when.isoformat()}"


def run_launch(schedule: store.Schedule) -> tuple[int, str, str]:
    cmd = [schedule.python, "-m", "hpc.cli.launch"]
    if schedule.multirun:
        cmd.append("-m")
    cmd += schedule.overrides
    proc = subprocess.run(
        cmd, cwd=schedule.workdir, env=launch_env(schedule), capture_output=True, text=True
    )
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode, proc.stdout, proc.stderr


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m hpc.slurm_schedules.fire NAME ID", file=sys.stderr)
        return 2
    name, sched_id = args
    job_id = os.environ.get("SLURM_JOB_ID")
    try:
        schedule = store.load(name)
    except (LookupError, ValueError) as exc:
        print(f"hpc-launch schedule: {exc}", file=sys.stderr)
        return 0  # removed: nothing to do, and not a failure worth a mail
    if schedule.id != sched_id:
        print(f"hpc-launch schedule {name}: replaced by another; not firing", file=sys.stderr)
        return 0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"hpc-launch schedule {name}: firing at {stamp} (job {job_id})", flush=True)
    if schedule.mechanism == "resubmit":
        print(f"hpc-launch schedule {name}: {resubmit_next(name, sched_id, job_id)}", flush=True)
    started = _dt.datetime.now(cron.zone(schedule.zone))
    code, out, err = run_launch(schedule)
    entry: dict[str, object] = {
        "time": started.isoformat(),
        "job_id": job_id,
        "exit_code": code,
    }
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if schedule.multirun and code == 0 and lines:
        entry["arrays"] = lines[-1].split(",")
    found = re.search(r"queued as array\(s\) \S+; (\S+)/sweep\.json", err)
    if found:
        entry["sweep_dir"] = found.group(1)
    found = re.search(r"^(\S+): started, run directory (\S+)", err, re.M)
    if found:
        entry["launched_job"], entry["run_dir"] = found.group(1), found.group(2)
    if code == BUDGET_REFUSED:  # a spent budget: this occurrence is skipped, not failed
        errors = [ln for ln in err.splitlines() if "budget" in ln]
        entry["skipped"] = (errors[-1] if errors else "a budget is spent").removeprefix(
            "hpc-launch: error: "
        )
    elif code != 0:
        errors = [ln for ln in err.splitlines() if ln.strip()]
        entry["error"] = errors[-1] if errors else f"hpc-launch exit code {code}"
    with store.locked():
        try:
            current = store.load(name)
        except LookupError:
            return code
        if current.id == sched_id:
            store.add_history(current, entry)
            store.save(current)
    print(f"hpc-launch schedule {name}: hpc-launch exited with {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
