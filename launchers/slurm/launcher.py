"""The Slurm launcher: the plan is an sbatch script; submission goes through sbatch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc.backend import LaunchTask
from hpc.defaults import EXIT_GRACE_S
from hpc.exitcodes import COMPLETED_IDLE
from hpc.launchers.base import (
    NOTHING_DISCOVERED,
    JobHandle,
    Launcher,
    MachineFacts,
    Plan,
    prepare_run,
)
from hpc.launchers.local import follow_file
from hpc.launchers.slurm import client, runs
from hpc.launchers.slurm import container as slurm_container
from hpc.launchers.slurm.script import (
    SCRIPT_NAME,
    container_step,
    job_environment,
    render_script,
    sbatch_directives,
)
from hpc.launchers.slurm.sweep import submit_sweep
from hpc.rundir import records
from hpc.spec.jobspec import JobSpec
from hpc.states import TERMINAL, JobState
from hpc.sweeps.plan import SweepPlan


@dataclass
class SlurmClusterConfig:
    kind: str = "slurm"
    python: str | None = None  # interpreter on the nodes; default: the submitting one
    setup: list[str] = field(default_factory=list)  # shell lines run before srun
    sbatch_args: list[str] = field(default_factory=list)  # extra raw sbatch options
    array_parallelism: int | None = None  # the % in --array=0-N%P
    submit_retries: int = 5
    # srun --wait: seconds the other tasks may run once one has exited (0: no limit).
    exit_grace_s: float = EXIT_GRACE_S


def excluded_nodes(run_dir: Path) -> list[str]:
    """A resumed run's exclusion list: nodes that failed its pre-flight check or were
    lost while it ran (``extra.excluded_nodes`` in job.json); none for a new run."""
    if not records.record_path(run_dir).exists():
        return []
    try:
        extra = records.load(run_dir).get("extra") or {}
    except (OSError, ValueError):
        return []
    return sorted(str(node) for node in extra.get("excluded_nodes") or [])


def _ended_idle(run_dir: Path) -> bool:
    """The batch shell recorded accounting.idle's stop (job.json COMPLETED_IDLE)."""
    try:
        return records.load(run_dir).get("state") == JobState.COMPLETED_IDLE
    except (OSError, ValueError):
        return False


class SlurmLauncher(Launcher):
    schema = SlurmClusterConfig
    name = "slurm"
    container_runtimes = slurm_container.RUNTIMES

    def validate(self, cfg: dict[str, Any]) -> None:
        slurm_container.validate(cfg)

    def plan(self, spec: JobSpec, facts: MachineFacts = NOTHING_DISCOVERED) -> Plan:
        exclude = excluded_nodes(spec.run_dir)
        text = render_script(spec, directives=sbatch_directives(spec, exclude=exclude))
        box = container_step(spec)
        return Plan(
            launcher=self.name,
            spec=spec,
            text=text,
            commands=[["sbatch", "--parsable", str(spec.run_dir / SCRIPT_NAME)]],
            env=job_environment(spec),
            files={spec.config_file.name: spec.config_yaml(), SCRIPT_NAME: text},
            notes=box.notes if box else [],
        )

    def submit(self, plan: Plan) -> SlurmJob:
        spec = plan.spec
        prepare_run(plan, None)
        retries = int(spec.config["cluster"].get("submit_retries", 5))
        try:
            job_id = client.submit(str(spec.run_dir / SCRIPT_NAME), retries=retries)
        except client.SlurmError as exc:
            records.update(spec.run_dir, state="FAILED", message=f"sbatch: {exc}")
            raise
        records.update(
            spec.run_dir,
            job_id=job_id,
            state="PENDING",
            extra={"log_file": str(spec.run_dir / "logs" / f"slurm-{job_id}.out")},
        )
        return SlurmJob(job_id, spec.run_dir)

    def attach(self, record: dict[str, Any]) -> SlurmJob:
        if not record.get("job_id"):
            raise LookupError(f"{record.get('run_dir')}: no Slurm job id recorded")
        return SlurmJob(str(record["job_id"]), Path(record["run_dir"]), runs.log_file(record))

    def refresh_states(self, records: list[dict[str, Any]]) -> list[str]:
        return runs.refresh_states(records)

    def submit_sweep(self, plan: SweepPlan, dry_run: bool, launch_task: LaunchTask) -> int:
        return submit_sweep(plan, dry_run=dry_run)


class SlurmJob(JobHandle):
    """A submitted Slurm job (or one array task: ``123_4``)."""

    poll_s = 2.0

    def __init__(self, job_id: str, run_dir: Path, log_file: Path | None = None) -> None:
        self.job_id = job_id
        self.run_dir = Path(run_dir)
        self.log_file = log_file or self.run_dir / "logs" / f"slurm-{job_id}.out"
        self.last_line = ""
        self.message: str | None = None
        self.on_line: Callable[[str], None] | None = None
        self._state: client.JobState | None = None

    def refresh(self) -> client.JobState | None:
        self._state = client.states([self.job_id]).get(self.job_id, self._state)
        return self._state

    def status(self) -> str:
        state = self._state or self.refresh()
        return state.state if state else "UNKNOWN"

    def cancel(self) -> None:
        client.cancel(self.job_id)

    def describe_cancel(self) -> str:
        return f"scancel {self.job_id}"

    def forward(self, signum: int) -> None:
        """Ctrl-C while following a Slurm job cancels it."""
        self.cancel()

    def logs(self, follow: bool = False) -> Iterator[str]:
        yield from follow_file(self.log_file, follow=follow, done=self._finished)

    def _finished(self) -> bool:
        state = self.refresh()
        return bool(state and state.state in TERMINAL)

    def wait(self) -> int:
        offset = 0
        while True:
            state = self.refresh()
            offset = self._tail(offset)
            if state and state.state in TERMINAL:
                self._tail(offset)
                if not self._follow_successor():
                    break
                offset, state = 0, None
            time.sleep(self.poll_s)
        code = (
            state.exit_code
            if state.exit_code is not None
            else (0 if state.state == "COMPLETED" else 1)
        )
        if state.state != "COMPLETED" and code == 0:
            code = 1
        if _ended_idle(self.run_dir):  # the batch shell exits 0 for it: Slurm says COMPLETED
            self.message = f"{JobState.COMPLETED_IDLE} (exit code {COMPLETED_IDLE})"
            return COMPLETED_IDLE
        # a message is a warning on success (hpc-launch prints it so): none when all went well
        self.message = None if code == 0 else f"{state.state} (exit code {code})"
        records.update(self.run_dir, state=state.state, exit_code=code)
        return code

    def _follow_successor(self) -> bool:
        """``preemption.mode=resubmit``: the job that ended handed the run to its
        successor (job.json names it): follow that one."""
        try:
            record = records.load(self.run_dir)
        except (FileNotFoundError, ValueError):
            return False
        successor = str(record.get("job_id") or "")
        extra = record.get("extra") or {}
        if not successor or successor == self.job_id or record.get("state") in TERMINAL:
            return False
        if str(extra.get("resubmitted_from") or "") != self.job_id:
            return False
        print(f"hpc-launch: job {self.job_id} handed the run to job {successor}", flush=True)
        self.job_id, self._state = successor, None
        self.log_file = self.run_dir / "logs" / f"slurm-{successor}.out"
        return True

    def _tail(self, offset: int) -> int:
        if not self.log_file.exists():
            return offset
        with open(self.log_file, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        for line in data.decode(errors="replace").splitlines():
            if line.strip():
                self.last_line = line
                if self.on_line:
                    self.on_line(line)
        return offset + len(data)
