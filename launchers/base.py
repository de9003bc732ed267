"""The launcher interface: ``plan(spec) -> Plan`` (pure), ``submit(plan) -> JobHandle``.

Modelled on torchx's dry run → inspectable plan → schedule: a plan holds
everything that would run and can be printed (``dry_run=true``) and tested as
text before anything is submitted.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hpc.jobspec import JobSpec


class SubmitError(RuntimeError):
    """The backend refused or could not take the job; ``str()`` is its own message."""


@dataclass
class Plan:
    """What a launcher would do. ``text`` is the printable artifact (script/manifest)."""

    launcher: str
    spec: JobSpec
    text: str
    commands: list[list[str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Files written into the run directory at submit: relative name -> content.
    files: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.spec.run_dir

    def __str__(self) -> str:
        return self.text


class JobHandle(abc.ABC):
    """A submitted job, concurrent.futures-like (after submitit's Job)."""

    job_id: str
    run_dir: Path
    # What a follower (``hpc-launch``'s progress display) reads: the job's newest output
    # line, a callback for each new line (handles that stream output call it), and the
    # final message once the job ended (why it failed, or a warning).
    last_line: str = ""
    on_line: Callable[[str], None] | None = None
    message: str | None = None

    def forward(self, signum: int) -> None:
        """Deliver ``signum`` to the job; a backend that cannot deliver signals cancels it."""
        self.cancel()

    def restart_signal(self) -> int | None:
        """The signal that means "checkpoint and restart" for this handle, if it has one."""
        return None

    @abc.abstractmethod
    def status(self) -> str:
        """Slurm-style state: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ..."""

    @abc.abstractmethod
    def cancel(self) -> None: ...

    @abc.abstractmethod
    def logs(self, follow: bool = False) -> Iterator[str]:
        """Lines of the job's main log; with ``follow`` keep reading until it ends."""

    @abc.abstractmethod
    def wait(self) -> int:
        """Block until the job ends; return its exit code."""

    def done(self) -> bool:
        return self.status() in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED"}


def prepare_run(plan: Plan, job_id: str | None, state: str = "PENDING") -> None:
    """Write the plan's files into its run directory; create job.json, or refresh it
    for a new attempt of an existing run (a resume keeps the record and its MLflow run)."""
    from hpc import records
    from hpc.credentials import ENV_FILE, write_env_file
    from hpc.jobspec import redact_uri
    from hpc.runtime.store import prepare_store

    spec = plan.spec
    (spec.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    for name, content in plan.files.items():
        records.write_atomic(spec.run_dir / name, content)
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
    records.create(
        records.RunRecord(
            name=spec.name,
            launcher=plan.launcher,
            run_dir=str(spec.run_dir),
            config_file=str(spec.config_file),
            tracking_uri=redact_uri(spec.tracking_uri),
            checkpoint_dir=str(spec.checkpoint_dir),
            job_id=job_id,
            state=state,
        )
    )


def record_resume_changes(spec: JobSpec) -> None:
    """Append the config changes a resume was allowed to make to job.json's history."""
    import time

    from hpc import records

    extra = records.load(spec.run_dir).get("extra") or {}
    entry = {
        "time": time.time(),
        "changes": spec.resume_changes,
        "config_hash": records.config_hash(spec.config["job"]),
    }
    history = [*extra.get("resume_changes", []), entry]
    records.update(spec.run_dir, extra={"resume_changes": history})


class Launcher(abc.ABC):
    name: str

    @abc.abstractmethod
    def plan(self, spec: JobSpec) -> Plan:
        """Everything that would run, as data. Must not touch the filesystem or network."""

    @abc.abstractmethod
    def submit(self, plan: Plan) -> JobHandle:
        """Write the plan's files into the run directory and start the job."""
