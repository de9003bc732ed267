"""``hpc status``, ``hpc logs`` and ``hpc cancel``: find runs and ask their backends."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpc import records

ACTIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "RESIZING",
}


def find_run(ref: str) -> dict[str, Any]:
    """A run by its directory, or by job id among the recent runs."""
    if Path(ref).is_dir() and records.record_path(ref).exists():
        return records.load(ref)
    for run in records.recent_runs(limit=1000):
        if run.get("job_id") == ref or str(run.get("job_id", "")).split("_")[0] == ref:
            return run
    raise LookupError(f"{ref}: no run directory or recent job with that id")


def refresh_states(runs: list[dict[str, Any]]) -> None:
    """Current states of active runs: one batched Slurm query; pid checks for local runs."""
    slurm = [
        r
        for r in runs
        if r.get("launcher") == "slurm" and r.get("state") in ACTIVE and r.get("job_id")
    ]
    if slurm:
        from hpc.launchers.slurm import client

        try:
            states = client.states([str(r["job_id"]) for r in slurm], retries=1)
        except client.SlurmError as exc:
            print(
                f"hpc: warning: Slurm not reachable ({exc}); states may be stale", file=sys.stderr
            )
            states = {}
        for run in slurm:
            found = states.get(str(run["job_id"]))
            if found:
                run["state"] = found.state
                if found.reason and found.reason not in ("None", "(null)"):
                    run["reason"] = found.reason
    for run in runs:
        if run.get("launcher") in ("local", "mpi"):
            run["state"] = local_state(run)
        elif run.get("launcher") == "k8s" and run.get("state") in ACTIVE:
            handle = _k8s_handle(run)
            if handle is not None:
                run["state"] = handle.status()
        finished = run.get("run_dir") and records.finished(run["run_dir"])
        if finished and run.get("state") not in ACTIVE:  # whatever came after the end
            run["state"], run["exit_code"] = "COMPLETED", 0


def _k8s_handle(run: dict[str, Any]) -> Any:
    from hpc.config import ConfigError
    from hpc.launchers.kubernetes.client import handle_from_record

    try:
        return handle_from_record(run["run_dir"])
    except ConfigError as exc:
        print(
            f"hpc: warning: Kubernetes not reachable ({exc}); states may be stale", file=sys.stderr
        )
        return None


def local_state(record: dict[str, Any]) -> str:
    """A local run whose launcher died without finishing shows as LOST."""
    state = str(record.get("state", "?"))
    pid = (record.get("extra") or {}).get("launcher_pid")
    if state in ("PENDING", "RUNNING") and pid:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return "LOST"
        except PermissionError:
            pass
    return state


def log_file(run: dict[str, Any]) -> Path:
    extra = run.get("extra") or {}
    if extra.get("log_file"):
        return Path(extra["log_file"])
    run_dir = Path(run["run_dir"])
    if run.get("launcher") == "slurm":
        job = str(run.get("job_id") or "")
        if "_" in job:  # array task: slurm-%A_%a.out in the sweep's logs
            sweep = Path(extra.get("sweep_dir") or run_dir.parent)
            array_id, index = job.split("_", 1)
            found = sorted((sweep / "logs").glob(f"slurm-*_{index}.out"))
            for path in found:
                if path.name.startswith(f"slurm-{array_id}_"):
                    return path
        return run_dir / "logs" / f"slurm-{job}.out"
    return run_dir / "logs" / "rank0.log"


def follow_logs(run: dict[str, Any], follow: bool) -> Iterator[str]:
    from hpc.launchers.local import follow_file

    if run.get("launcher") == "k8s":
        handle = _k8s_handle(run)
        if handle is None:
            raise LookupError(f"{run['run_dir']}: cannot reach its Kubernetes cluster")
        yield from handle.logs(follow)
        return

    last_check = [0.0, False]

    def done() -> bool:
        if time.monotonic() - last_check[0] < 2.0:  # throttle backend queries
            return bool(last_check[1])
        current = dict(run)
        current.update(records.load(run["run_dir"]))
        refresh_states([current])
        last_check[0], last_check[1] = time.monotonic(), current["state"] not in ACTIVE
        return bool(last_check[1])

    yield from follow_file(log_file(run), follow=follow, done=done)


def cancel(run: dict[str, Any]) -> str:
    if run.get("launcher") == "slurm":
        from hpc.launchers.slurm import client

        client.cancel(str(run["job_id"]))
        return f"scancel {run['job_id']}"
    if run.get("launcher") == "k8s":
        handle = _k8s_handle(run)
        if handle is None:
            raise LookupError(f"{run['run_dir']}: cannot reach its Kubernetes cluster")
        handle.cancel()
        return f"deleted MPIJob of {run['run_dir']}"
    if run.get("launcher") in ("local", "mpi"):
        pid = (run.get("extra") or {}).get("launcher_pid")
        if not pid or local_state(run) != "RUNNING":
            raise LookupError(f"{run['run_dir']}: not running")
        os.kill(int(pid), signal.SIGTERM)  # the launcher forwards it to every worker
        return f"SIGTERM to launcher pid {pid}"
    raise LookupError(f"cancel is not supported for launcher {run.get('launcher')!r}")
