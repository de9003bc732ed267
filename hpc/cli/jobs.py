"""``hpc status``, ``hpc logs`` and ``hpc cancel``: find runs and ask their backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpc import registry
from hpc.backend import JobHandle, Launcher
from hpc.rundir import records
from hpc.states import ACTIVE, JobState


def find_run(ref: str) -> dict[str, Any]:
    """A run by its directory, or by job id among the recent runs."""
    if Path(ref).is_dir() and records.record_path(ref).exists():
        return records.load(ref)
    for run in records.recent_runs(limit=1000):
        if run.get("job_id") == ref or str(run.get("job_id", "")).split("_")[0] == ref:
            return run
    raise LookupError(f"{ref}: no run directory or recent job with that id")


def launcher_of(run: dict[str, Any]) -> Launcher:
    name = str(run.get("launcher"))
    try:
        return registry.get_launcher(name)
    except KeyError as exc:
        raise LookupError(f"{run.get('run_dir')}: {exc.args[0]}") from None


def attach(run: dict[str, Any]) -> JobHandle:
    return launcher_of(run).attach(run)


def refresh_states(runs: list[dict[str, Any]]) -> list[str]:
    """Current states: each backend refreshes its own runs (one query where it can).

    Returns one-line warnings: backends that could not be asked."""
    by_launcher: dict[str, list[dict[str, Any]]] = {}
    warnings: list[str] = []
    for run in runs:
        by_launcher.setdefault(str(run.get("launcher")), []).append(run)
    for name, group in by_launcher.items():
        try:
            launcher = registry.get_launcher(name)
        except KeyError as exc:
            warnings.append(f"{exc.args[0]}; states may be stale")
            continue
        warnings += launcher.refresh_states(group)
    for run in runs:
        finished = run.get("run_dir") and records.finished(run["run_dir"])
        if finished and run.get("state") not in ACTIVE:  # whatever came after the end
            run["state"], run["exit_code"] = JobState.COMPLETED.value, 0
    return warnings


def follow_logs(run: dict[str, Any], follow: bool) -> Iterator[str]:
    yield from attach(run).logs(follow)


def cancel(run: dict[str, Any]) -> str:
    handle = attach(run)
    handle.cancel()
    return handle.describe_cancel()
