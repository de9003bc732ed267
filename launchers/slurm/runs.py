"""Slurm runs after submission: re-attaching from job.json, batched state queries."""

from __future__ import annotations

import re
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


def array_tasks(key: str) -> list[str]:
    """``123_4`` -> [123_4]; ``123_[0-3,7%2]`` (squeue's pending array) -> 123_0 ... 123_7."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", key)
    if not match:
        return [key]
    out = []
    for part in match.group(2).split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            out += [f"{match.group(1)}_{i}" for i in range(int(low), int(high or low) + 1)]
    return out


def refresh_states(runs: list[dict[str, Any]]) -> list[str]:
    """States of the active runs with one squeue/sacct query; an array task's state
    comes from a query of its whole array (a pending task shows as ``123_[4-7]``)."""
    active = [r for r in runs if r.get("state") in ACTIVE and r.get("job_id")]
    if not active:
        return []
    ids = sorted({str(r["job_id"]).split("_")[0] for r in active})
    try:
        states = client.states(ids, retries=1)
    except client.SlurmError as exc:
        return [f"Slurm not reachable ({exc}); states may be stale"]
    found: dict[str, client.JobState] = {}
    for key, state in states.items():
        for task in array_tasks(key):
            found.setdefault(task, state)
    for run in active:
        now = found.get(str(run["job_id"]))
        if now:
            run["state"] = now.state
            if now.reason and now.reason not in ("None", "(null)"):
                run["reason"] = now.reason
    return []
