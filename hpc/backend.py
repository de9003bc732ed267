"""The backend interface: what a launcher provides, and all the core knows of one.

``discover(spec) -> MachineFacts`` (what the plan needs to know of this machine, read
first), ``plan(spec, facts) -> Plan`` (pure), ``submit(plan) -> JobHandle``, re-attaching to a
submitted job from its run record, the value rules of its own config schema and
its sweep submission. Modelled on torchx's dry run → inspectable plan → schedule:
a plan holds everything that would run and can be printed (``dry_run=true``)
before anything is submitted. Backends are found through :mod:`hpc.registry`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hpc.states import ACTIVE, TERMINAL

if TYPE_CHECKING:
    from hpc.spec.jobspec import JobSpec
    from hpc.sweeps.plan import SweepPlan


class SubmitError(RuntimeError):
    """The backend refused or could not take the job; ``str()`` is its own message."""


class NotSupported(SubmitError):
    """The backend does not offer this operation (a sweep, cancel, logs)."""


@dataclass(frozen=True)
class MachineFacts:
    """What a plan may know of the submitting machine. Read before planning
    (:meth:`Launcher.discover`) and passed in, so ``plan()`` itself reads nothing."""

    gpu_count: int = 0  # GPUs on this machine (NVML); read only where the plan checks it
    is_root: bool = False  # hpc-launch runs as root (mpirun then needs --allow-run-as-root)


# The facts of a launcher that reads none: its plan depends on the spec alone.
NOTHING_DISCOVERED = MachineFacts()


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
    # One-line notes shown on stderr at submit and in a dry run (what was not checked).
    notes: list[str] = field(default_factory=list)

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

    def describe_cancel(self) -> str:
        """What ``cancel()`` did, in a few words (``hpc cancel`` prints it)."""
        return f"cancelled {self.job_id}"

    @abc.abstractmethod
    def status(self) -> str:
        """Slurm-style state (a :class:`hpc.states.JobState` value)."""

    @abc.abstractmethod
    def cancel(self) -> None: ...

    @abc.abstractmethod
    def logs(self, follow: bool = False) -> Iterator[str]:
        """Lines of the job's main log; with ``follow`` keep reading until it ends."""

    @abc.abstractmethod
    def wait(self) -> int:
        """Block until the job ends; return its exit code."""

    def done(self) -> bool:
        return self.status() in TERMINAL


# Runs one sweep task as a normal ``hpc-launch`` with these overrides; returns its exit code.
LaunchTask = Callable[[Sequence[str]], int]


class Launcher(abc.ABC):
    """One backend. Subclasses set ``name`` and ``schema`` and implement plan/submit."""

    name: ClassVar[str]
    # The dataclass of the ``cluster`` node; the registry stores it in Hydra's ConfigStore
    # as schema/cluster/<name>, which configs/cluster/<name>.yaml extends.
    schema: ClassVar[type]
    # Whether ``hpc-launch`` follows a submitted job until it ends without ``wait=true``.
    follows_by_default: ClassVar[bool] = False
    # The ``container.runtime`` values it runs besides ``none`` (hpc.spec.container);
    # none: ``container.image`` must stay unset too.
    container_runtimes: ClassVar[tuple[str, ...]] = ()

    def validate(self, cfg: dict[str, Any]) -> None:
        """This backend's value rules; raise ConfigError naming the key."""
        return None  # a backend with no rules of its own

    def discover(self, spec: JobSpec) -> MachineFacts:
        """Read what :meth:`plan` needs to know of this machine (called just before it)."""
        return NOTHING_DISCOVERED

    @abc.abstractmethod
    def plan(self, spec: JobSpec, facts: MachineFacts = NOTHING_DISCOVERED) -> Plan:
        """Everything that would run, as data: a function of ``spec`` and ``facts`` alone.

        Must not read the machine (that is :meth:`discover`), the filesystem or network."""

    @abc.abstractmethod
    def submit(self, plan: Plan) -> JobHandle:
        """Write the plan's files into the run directory and start the job."""

    def attach(self, record: dict[str, Any]) -> JobHandle:
        """Re-attach to a submitted job from its job.json (``hpc status/logs/cancel``).

        Raise LookupError with a one-line reason when the job cannot be reached."""
        raise LookupError(f"{record.get('run_dir')}: {self.name} cannot re-attach to its jobs")

    def refresh_states(self, runs: list[dict[str, Any]]) -> list[str]:
        """Set ``state`` (and ``reason``) of these runs of this backend from the backend.

        Returns one-line warnings (the backend could not be asked). One handle per
        active run by default; backends that can ask for many jobs at once (one
        ``squeue``) override it."""
        warnings = []
        for run in runs:
            if run.get("state") not in ACTIVE:
                continue
            try:
                run["state"] = self.attach(run).status()
            except LookupError as exc:
                warnings.append(f"{exc}; states may be stale")
        return warnings

    def submit_sweep(self, plan: SweepPlan, dry_run: bool, launch_task: LaunchTask) -> int:
        """Submit (or with ``dry_run`` print) a planned sweep; return the exit code."""
        raise self.no_sweeps()

    def supports_sweeps(self) -> bool:
        """Whether this backend submits sweeps (it overrides :meth:`submit_sweep`)."""
        return type(self).submit_sweep is not Launcher.submit_sweep

    def no_sweeps(self) -> NotSupported:
        return NotSupported(f"sweeps are not supported on {self.name}")
