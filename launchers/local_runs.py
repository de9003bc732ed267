"""The local and mpirun backends as registered: their launchers plus the local value
rules, re-attaching to a run from its job.json (``hpc status/logs/cancel``; the
launcher process owns the workers) and local sweeps (the tasks in turn)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from hpc.backend import JobHandle, LaunchTask
from hpc.launchers.local import LocalLauncher, follow_file
from hpc.launchers.mpi import MpiLauncher
from hpc.rundir import records
from hpc.spec.errors import ConfigError
from hpc.spec.rules import check_local_gpus, local_gpu_count
from hpc.states import TERMINAL, JobState
from hpc.sweeps.plan import SweepPlan, is_secret_override, sweep_record, write_record


def validate_local(cfg: dict[str, Any]) -> None:
    """One node, no more GPUs than this machine has, a sensible number of workers."""
    res = cfg["resources"]
    if res["nodes"] != 1:
        raise ConfigError("resources.nodes", f"the local launcher runs 1 node, got {res['nodes']}")
    if res["gpus_per_node"]:
        check_local_gpus(res["gpus_per_node"], local_gpu_count())
    cpus = len(os.sched_getaffinity(0))
    if res["tasks_per_node"] > max(64, 4 * cpus):
        raise ConfigError(
            "resources.tasks_per_node",
            f"{res['tasks_per_node']} local workers on {cpus} CPUs is not sensible",
        )


class LocalRun(JobHandle):
    """A local run found through its record; its launcher process owns the workers."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.job_id = str(record.get("job_id") or "")
        self.run_dir = Path(record["run_dir"])
        extra = record.get("extra") or {}
        self.pid = extra.get("launcher_pid")
        self.log_file = Path(extra.get("log_file") or self.run_dir / "logs" / "rank0.log")

    def status(self) -> str:
        """A run whose launcher died without finishing shows as LOST."""
        state = str(self.record.get("state", "?"))
        if state in (JobState.PENDING, JobState.RUNNING) and self.pid:
            try:
                os.kill(int(self.pid), 0)
            except ProcessLookupError:
                return JobState.LOST
            except PermissionError:
                pass
        return state

    def cancel(self) -> None:
        if not self.pid or self.status() != JobState.RUNNING:
            raise LookupError(f"{self.run_dir}: not running")
        os.kill(int(self.pid), signal.SIGTERM)  # the launcher forwards it to every worker

    def describe_cancel(self) -> str:
        return f"SIGTERM to launcher pid {self.pid}"

    def logs(self, follow: bool = False) -> Iterator[str]:
        yield from follow_file(self.log_file, follow=follow, done=self._ended)

    def _ended(self) -> bool:
        self.record = {**self.record, **records.load(self.run_dir)}
        return records.finished(self.run_dir) or self.status() in (*TERMINAL, JobState.LOST)

    def wait(self) -> int:
        raise LookupError(f"{self.run_dir}: a re-attached local run cannot be waited for")


def refresh_local(runs: list[dict[str, Any]]) -> None:
    for run in runs:
        run["state"] = LocalRun(run).status()


def run_local_sweep(plan: SweepPlan, dry_run: bool, launch_task: LaunchTask) -> int:
    """Local sweeps run their tasks one after another, each a normal launch."""
    if dry_run:
        for task in plan.tasks:
            shown = [_hide_secret(o) for o in [*plan.base_overrides, *task.overrides]]
            print(" ".join(shown))
        return 0
    first = next(iter(plan.shapes.values()))
    write_record(plan.sweep_dir, sweep_record(plan, first.name, "local"))
    worst = 0
    for task in plan.tasks:
        code = launch_task([*plan.base_overrides, *task.overrides, f"run_dir={task.run_dir}"])
        worst = worst or code
    return worst


def _hide_secret(override: str) -> str:
    return f"{override.partition('=')[0]}=***" if is_secret_override(override) else override


class LocalBackend(LocalLauncher):
    """``cluster=local``: followed until it ends; sweeps run their tasks in turn."""

    follows_by_default: ClassVar[bool] = True

    def validate(self, cfg: dict[str, Any]) -> None:
        validate_local(cfg)

    def attach(self, record: dict[str, Any]) -> JobHandle:
        return LocalRun(record)

    def refresh_states(self, runs: list[dict[str, Any]]) -> list[str]:
        refresh_local(runs)
        return []

    def submit_sweep(self, plan: SweepPlan, dry_run: bool, launch_task: LaunchTask) -> int:
        return run_local_sweep(plan, dry_run, launch_task)


class MpiBackend(MpiLauncher):
    """``cluster=mpi``: local mpirun, followed until it ends; no sweeps."""

    follows_by_default: ClassVar[bool] = True

    def attach(self, record: dict[str, Any]) -> JobHandle:
        return LocalRun(record)

    def refresh_states(self, runs: list[dict[str, Any]]) -> list[str]:
        refresh_local(runs)
        return []
