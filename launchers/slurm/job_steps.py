"""The batch script's record keeping: ``python -m hpc.launchers.slurm.job_steps start|finish``.

``start RUN_DIR`` marks the run RUNNING with its Slurm job id, nodes and restart
count (after a requeue, with why the previous attempt ended, in Slurm's words:
:mod:`hpc.launchers.slurm.reason`); ``finish RUN_DIR EXIT_CODE`` records the end,
leaving a requeue decision (:mod:`hpc.launchers.slurm.requeue`) as it is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpc.exitcodes import COMPLETED_IDLE, FAILED_HANG, NODE_LOST, PREEMPTED, PREFLIGHT_FAILED
from hpc.hostlist import expand
from hpc.launchers.slurm.preflight import EXCLUDED, excluded_after
from hpc.launchers.slurm.reason import nodes_down, restart_reason
from hpc.launchers.slurm.requeue import restart_count
from hpc.rundir.records import finished, load, update
from hpc.states import JobState

USAGE = "usage: python -m hpc.launchers.slurm.job_steps start|finish RUN_DIR [EXIT_CODE]"


def slurm_job_id(env: Mapping[str, str]) -> str | None:
    """``ARRAYID_TASK`` for an array task, else ``SLURM_JOB_ID`` (None outside Slurm)."""
    array = env.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{env.get('SLURM_ARRAY_TASK_ID')}" if array else env.get("SLURM_JOB_ID")


def start(run_dir: Path, env: Mapping[str, str]) -> None:
    job_id = slurm_job_id(env)
    restarts = restart_count(env)
    extra: dict[str, Any] = {"nodes": env.get("SLURM_JOB_NODELIST"), "restart_count": restarts}
    if restarts and job_id:  # why the previous attempt ended, in Slurm's words
        before = load(run_dir).get("extra") or {}
        ours = before.get("interrupted_attempt") == restarts - 1
        reason = restart_reason(job_id, before.get("last_interruption") if ours else None)
        if reason:
            extra["last_interruption"] = reason
        if reason == "node_fail":  # Slurm requeued it: its unresponsive nodes are avoided
            down = nodes_down(expand(str(before.get("nodes") or "")))
            if down:
                extra[EXCLUDED] = excluded_after({"extra": before}, down)
    update(run_dir, state=JobState.RUNNING, job_id=job_id, extra=extra)


def finish(run_dir: Path, code: int) -> None:
    record = load(run_dir)
    current = record.get("state")
    if finished(run_dir):  # a stop signal or requeue after the end changes nothing
        if (current, record.get("exit_code")) != (JobState.COMPLETED, 0):
            update(run_dir, state=JobState.COMPLETED, exit_code=0)
        return
    by_slurm = (
        current == JobState.REQUEUED and (record.get("extra") or {}).get("requeued_by") == "slurm"
    )
    stopped = current in (JobState.PREEMPTED, JobState.FAILED, JobState.CANCELLED) or by_slurm
    resubmitted = current == JobState.REQUEUED and code == PREEMPTED  # preemption.mode=resubmit
    if code == PREEMPTED and (stopped or resubmitted):  # the decision recorded the state
        update(run_dir, exit_code=code)
        return
    if code == FAILED_HANG:  # the watchdog's end (job.json has the hang's message)
        update(run_dir, state=JobState.FAILED_HANG, exit_code=code)
        return
    if code == COMPLETED_IDLE:  # the idle policy's end: not a failure, not requeued
        update(run_dir, state=JobState.COMPLETED_IDLE, exit_code=code)
        return
    if code == PREFLIGHT_FAILED:  # the pre-flight reading recorded the nodes
        update(run_dir, state=JobState.FAILED_PREFLIGHT, exit_code=code)
        return
    if code == NODE_LOST:  # resubmitted without the node (REQUEUED), or no resubmit left
        if current == JobState.REQUEUED:
            update(run_dir, exit_code=code)
        else:
            update(run_dir, state=JobState.NODE_LOST, exit_code=code)
        return
    state = JobState.COMPLETED if code == 0 else JobState.FAILED
    update(run_dir, state=state, exit_code=code)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("start", "finish"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        if args[0] == "start":
            start(Path(args[1]), os.environ)
        else:
            finish(Path(args[1]), int(args[2]) if len(args) > 2 else 0)
    except (OSError, ValueError) as exc:
        print(f"hpc-launch: could not update the run record: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
