"""Capping a running sweep: each array task, as it starts, checks the sweep's budgets.

A budget with ``hold: true`` that matches the sweep (its job name, user, account,
project) caps it: once consumed reaches the limit, the task that finds it so holds the
sweep's arrays (``scontrol hold``: every pending task stays queued, held) and requeues
itself held (``scontrol requeuehold``), so no task is lost; ``scontrol release ARRAY``
goes on. The reason is written to ``SWEEP_DIR/budget_hold.json``, which ``hpc status
SWEEP`` shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc.cost.estimate import budget_files
from hpc.cost.guard import job_key

if TYPE_CHECKING:
    from hpc.cost.budgets import Budget
from hpc.files import write_atomic

HOLD_FILE = "budget_hold.json"


@dataclass
class Hold:
    budget: Budget
    consumed: float

    def line(self) -> str:
        b = self.budget
        return (
            f"budget {b.name} ({b.scope()}) reached: consumed {b.fmt(self.consumed)} "
            f">= limit {b.fmt(b.limit)}"
        )


def reached(config: dict[str, Any], now: datetime | None = None) -> Hold | None:
    """The first holding budget of this sweep task's config that is spent, if any (what
    this task itself used so far, a moment since its start, is left out)."""
    files = budget_files()
    if not files:
        return None
    from hpc.cost.budgets import consumed, gather_usage, load_budgets  # noqa: PLC0415 (pyarrow)

    key = job_key(config, sweep=True)
    budgets = [b for b in load_budgets(files) if b.hold and b.matches(key)]
    if not budgets:
        return None
    now = now or datetime.now(UTC)
    me = {os.environ.get("SLURM_JOB_ID"), _array_task_id()}  # this task: just started
    usage = [u for u in gather_usage(budgets, now) if u.job_id not in me]
    for b in budgets:
        used = consumed(b, usage, now)
        if used >= b.limit:
            return Hold(b, used)
    return None


def _array_task_id() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else None


def _scontrol(*args: str) -> str | None:
    """None on success, else scontrol's message."""
    try:
        proc = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def hold_sweep(sweep_dir: Path, hold: Hold, job_id: str | None) -> list[str]:
    """Hold the sweep's arrays and requeue this task held; record why. Problems, if any."""
    sweep = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
    arrays = [str(a["array_id"]) for a in sweep.get("arrays", []) if a.get("array_id")]
    if not arrays and os.environ.get("SLURM_ARRAY_JOB_ID"):
        arrays = [os.environ["SLURM_ARRAY_JOB_ID"]]
    problems = []
    for array in arrays:
        why = _scontrol("hold", array)
        if why and "already" not in why.lower():
            problems.append(f"scontrol hold {array}: {why}")
    record = {
        "time": time.time(),
        "budget": hold.budget.name,
        "file": hold.budget.source,
        "unit": hold.budget.unit,
        "consumed": hold.consumed,
        "limit": hold.budget.limit,
        "message": hold.line(),
        "arrays": arrays,
        "held_by_task": _array_task_id() or job_id,
    }
    write_atomic(sweep_dir / HOLD_FILE, json.dumps(record, indent=2) + "\n")
    # ARRAY_TASK, not $SLURM_JOB_ID: requeueing the latter inside a task hits the whole array
    job_id = _array_task_id() or job_id
    if job_id:
        why = _scontrol("requeuehold", job_id)
        if why:
            problems.append(f"scontrol requeuehold {job_id}: {why}")
    return problems


def read_hold(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((sweep_dir / HOLD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
