"""What every backend shares when it submits: the run directory and its job.json.

The interface itself (Launcher, Plan, JobHandle, SubmitError) lives in the core,
:mod:`hpc.backend`; it is re-exported here for the backends' convenience.
"""

from __future__ import annotations

import sys
import time

from hpc.backend import NOTHING_DISCOVERED, JobHandle, Launcher, MachineFacts, Plan, SubmitError
from hpc.credentials import ENV_FILE, write_env_file
from hpc.files import write_atomic
from hpc.rundir import records
from hpc.runtime.store import prepare_store
from hpc.spec.jobspec import JobSpec

__all__ = [
    "NOTHING_DISCOVERED",
    "JobHandle",
    "Launcher",
    "MachineFacts",
    "Plan",
    "SubmitError",
    "prepare_run",
    "record_resume_changes",
]


def prepare_run(plan: Plan, job_id: str | None, state: str = "PENDING") -> None:
    """Write the plan's files into its run directory; create job.json, or refresh it
    for a new attempt of an existing run (a resume keeps the record and its MLflow run)."""
    spec = plan.spec
    (spec.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    for name, content in plan.files.items():
        write_atomic(spec.run_dir / name, content)
    if spec.secrets:
        write_env_file(spec.run_dir / ENV_FILE, spec.secrets)
    if spec.tracking_uri:  # a new SQLite store: created once here, not by every job at once
        problem = prepare_store(spec.tracking_uri, str(spec.config["tracking"]["experiment"]))
        if problem:
            print(f"hpc-launch: warning: MLflow store not prepared: {problem}", file=sys.stderr)
    if records.record_path(spec.run_dir).exists():
        records.update(spec.run_dir, job_id=job_id, state=state, exit_code=None)
        if spec.resume_changes:
            record_resume_changes(spec)
        return
    records.create(records.RunRecord.for_spec(spec, plan.launcher, job_id=job_id, state=state))


def record_resume_changes(spec: JobSpec) -> None:
    """Append the config changes a resume was allowed to make to job.json's history."""
    extra = records.load(spec.run_dir).get("extra") or {}
    entry = {
        "time": time.time(),
        "changes": spec.resume_changes,
        "config_hash": records.config_hash(spec.config["job"]),
    }
    history = [*extra.get("resume_changes", []), entry]
    records.update(spec.run_dir, extra={"resume_changes": history})
