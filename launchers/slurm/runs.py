"""Slurm runs after submission: re-attaching from job.json, batched state queries."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hpc.launchers.slurm import client
from hpc.states import ACTIVE


def log_file(run: dict[str, Any]) -> Path:
    """The job's output: its recorded log, or slurm-%A_%a.out of an array task."""
    extra = run.get("extra") or {}
    if extra.get("log_file"):
        return Path(extra["log_file"])
    run_dir = Path(run["run_dir"])
    job = str(run.get("job_id") or "")
    if "_" in job:  # array task: slurm-%A_%a.out in the sweep's logs
        sweep = Path(extra.get("sweep_dir") or run_dir.parent)
        array_id, index = job.split("_", 1)
        for path in sorted((sweep / "logs").glob(f"slurm-*_{index}.out")):
            if path.name.startswith(f"slurm-{array_id}_"):
                return path
    return run_dir / "logs" / f"slurm-{job}.out"


def refresh_states(runs: list[dict[str, Any]]) -> None:
    """States of the active runs with one squeue/sacct query."""
    active = [r for r in runs if r.get("state") in ACTIVE and r.get("job_id")]
    if not active:
        return
    try:
        states = client.states([str(r["job_id"]) for r in active], retries=1)
    except client.SlurmError as exc:
        print(f"hpc: warning: Slurm not reachable ({exc}); states may be stale", file=sys.stderr)
        return
    for run in active:
        found = states.get(str(run["job_id"]))
        if found:
            run["state"] = found.state
            if found.reason and found.reason not in ("None", "(null)"):
                run["reason"] = found.reason
