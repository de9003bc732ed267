"""After a checkpointed stop under Slurm: requeue or not, and why.

``python -m hpc.launchers.slurm.requeue RUN_DIR SIGNAL`` exits 0 when the batch script should
run ``scontrol requeue`` and 1 when it should not, and records the decision in
job.json (``restart_count``, ``last_interruption``). Rules: requeue only when
``preemption.requeue`` is on, and stop after ``max_restarts_without_progress``
restarts in a row that did not move the newest checkpoint forward (a requeue
loop). The reason is ``time_limit`` when the job was near its end (the
lead-time signal, or SIGTERM at the limit), else ``preemption``; when Slurm is
already requeueing the job (``scontrol requeue`` by hand, a node failure) the
job does not requeue itself and records Slurm's reason (:mod:`hpc.launchers.slurm.reason`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpc.hostlist import expand
from hpc.launchers.slurm.reason import cancelled, job_fields, requeued_by_slurm
from hpc.rundir import records
from hpc.runtime.checkpoint import latest_step
from hpc.runtime.preemption import restarts_without_progress


def seconds_left(job_id: str) -> int | None:
    """Time left before the job's limit, from squeue's %L (``D-HH:MM:SS`` and shorter)."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", out)
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def restart_count(env: Mapping[str, str]) -> int:
    """This attempt's number: the batch script's ``HPC_RESTART_COUNT`` (Slurm's restart
    count, or the resubmission count), else Slurm's own."""
    value = env.get("HPC_RESTART_COUNT") or env.get("SLURM_RESTART_COUNT") or "0"
    return int(value) if value.isdigit() else 0


def classify(signal_name: str, left: int | None, lead_s: int) -> str:
    if left is not None and left <= lead_s + 90:
        return "time_limit"
    return "preemption"


def decide(run_dir: Path, signal_name: str) -> bool:
    record = records.load(run_dir)
    cfg = records.read_run_config(record["config_file"])
    pre = cfg.get("preemption") or {}
    extra = record.get("extra") or {}
    job_id = os.environ.get("SLURM_JOB_ID", "")
    reason = classify(
        signal_name, seconds_left(job_id) if job_id else None, int(pre.get("lead_s", 120))
    )
    step = latest_step(Path(record["checkpoint_dir"]))
    attempt = restart_count(os.environ)
    resubmit = pre.get("mode", "requeue") == "resubmit"
    fields = job_fields(job_id) if job_id else {}
    if job_id and cancelled(
        job_id, fields
    ):  # scancel: the SIGTERM is no preemption, the run is not to go on
        records.update(
            run_dir,
            state="CANCELLED",
            extra={"last_interruption": "cancelled"},
            message=f"cancelled at step {step}: not requeued",
        )
        print(f"hpc-launch: job {job_id} was cancelled at step {step}: not requeued", flush=True)
        return False
    nodes = expand(os.environ.get("SLURM_JOB_NODELIST", "")) or []
    by_slurm = (
        requeued_by_slurm(job_id, attempt, fields, nodes) if job_id and not resubmit else None
    )
    if by_slurm:  # scontrol requeue by hand, a node failure: Slurm requeues it already
        records.update(
            run_dir,
            state="REQUEUED",
            extra={
                "last_interruption": by_slurm,
                "interrupted_attempt": attempt,
                "requeued_by": "slurm",
            },
            message=f"{by_slurm} at step {step}: requeued by Slurm",
        )
        print(f"hpc-launch: {by_slurm} at step {step}: Slurm requeues the job", flush=True)
        return False
    idle, exhausted = restarts_without_progress(
        int(extra.get("idle_restarts", 0)), step, int(extra.get("restart_step", -1)), pre
    )
    restarts = int(extra.get("restart_count", 0))
    if not pre.get("requeue", True):
        records.update(
            run_dir,
            state="PREEMPTED",
            extra={"last_interruption": reason},
            message=f"stopped ({reason}) at step {step}; requeue is off",
        )
        return False
    if exhausted:
        records.update(
            run_dir,
            state="FAILED",
            extra={"last_interruption": reason},
            message=f"{idle} restarts without step progress: not requeued",
        )
        return False
    successor = os.environ.get("HPC_SUCCESSOR", "")
    if resubmit and not successor:
        records.update(
            run_dir,
            state="PREEMPTED",
            extra={"last_interruption": reason},
            message=f"stopped ({reason}) at step {step}; no successor was queued",
        )
        return False
    (run_dir / "PREEMPTED").unlink(missing_ok=True)
    extra = {
        "restart_count": restarts + 1,
        "last_interruption": reason,
        "restart_step": step,
        "idle_restarts": idle,
        "interrupted_attempt": attempt,
        "requeued_by": "job",
    }
    if resubmit:
        hand_over(run_dir, record, extra, f"{reason} at step {step}", successor)
    else:
        records.update(
            run_dir, state="REQUEUED", extra=extra, message=f"{reason} at step {step}: requeued"
        )
    print(
        f"hpc-launch: {reason} ({signal_name or 'signal'}) at step {step}: "
        + (f"job {successor} resumes the run" if resubmit else "requeueing"),
        flush=True,
    )
    return True


def hand_over(
    run_dir: Path, record: dict[str, Any], extra: dict[str, Any], what: str, successor: str
) -> None:
    """``preemption.mode=resubmit``: the successor job runs the run dir from now on, and
    ``hpc status`` and ``hpc logs`` follow it."""
    job_id = os.environ.get("SLURM_JOB_ID", "")
    log = Path(str((record.get("extra") or {}).get("log_file") or ""))
    if log.name == f"slurm-{job_id}.out":
        extra = {**extra, "log_file": str(log.with_name(f"slurm-{successor}.out"))}
    records.update(
        run_dir,
        state="REQUEUED",
        job_id=successor,
        extra={**extra, "resubmitted_from": job_id},
        message=f"{what}: resubmitted as job {successor}",
    )


def decide_hang(run_dir: Path) -> bool:
    """After the hang watchdog ended the step: requeue up to ``fault.hang_requeues`` times.

    A hang is not a preemption: no checkpoint was taken, the next attempt resumes from
    the last one there is. The count is ``extra.hang_requeues`` in job.json.
    """
    record = records.load(run_dir)
    cfg = records.read_run_config(record["config_file"])
    cap = int((cfg.get("fault") or {}).get("hang_requeues", 1))
    extra = record.get("extra") or {}
    used = int(extra.get("hang_requeues", 0))
    step = latest_step(Path(record["checkpoint_dir"]))
    hang = record.get("message") or "hang"
    pre = cfg.get("preemption") or {}
    successor = os.environ.get("HPC_SUCCESSOR", "")
    resubmit = pre.get("mode", "requeue") == "resubmit"
    why = ""
    if used >= cap:
        why = f"fault.hang_requeues={cap} used"
    elif not pre.get("requeue", True):
        why = "preemption.requeue is off"
    elif resubmit and not successor:
        why = "no successor was queued"
    if why:
        records.update(run_dir, state="FAILED_HANG", message=f"{hang}; not requeued ({why})")
        print(f"hpc-launch: hung; not requeued ({why})", flush=True)
        return False
    new_extra = {
        "hang_requeues": used + 1,
        "restart_count": int(extra.get("restart_count", 0)) + 1,
        "last_interruption": "hang",
        "interrupted_attempt": restart_count(os.environ),
        "requeued_by": "job",
    }
    resumes = f"resuming from {f'step {step}' if step >= 0 else 'the start'}"
    if resubmit:
        hand_over(run_dir, record, new_extra, f"{hang}; {resumes}", successor)
    else:
        records.update(
            run_dir,
            state="REQUEUED",
            extra=new_extra,
            message=f"{hang}; requeued ({used + 1} of fault.hang_requeues={cap}), {resumes}",
        )
    print(f"hpc-launch: hung; requeueing ({used + 1} of {cap})", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--hang"] and len(args) == 2:
        try:
            return 0 if decide_hang(Path(args[1])) else 1
        except (OSError, ValueError, KeyError) as exc:
            print(f"hpc-launch: requeue decision failed: {exc}", file=sys.stderr)
            return 1
    if len(args) not in (1, 2):
        print(
            "usage: python -m hpc.launchers.slurm.requeue [--hang] RUN_DIR [SIGNAL]",
            file=sys.stderr,
        )
        return 2
    try:
        return 0 if decide(Path(args[0]), args[1] if len(args) > 1 else "") else 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"hpc-launch: requeue decision failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
