"""The job spec: structured configs registered in Hydra's ConfigStore.

These dataclasses are the schema every composed config is checked against
(types, unknown keys); each backend brings the schema of its ``cluster`` node
(:mod:`hpc.backend`). Value rules that types cannot express (positive counts,
time limits, GPUs available) live in :mod:`hpc.spec.rules`; a job's own rules live with
its schema (:class:`JobConfig.check`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from hpc import registry
from hpc.defaults import (
    FIRST_STEP_TIMEOUT_S,
    HANG_REQUEUES,
    PREEMPTION_LEAD_S,
    PREEMPTION_SIGNAL,
    STALL_TIMEOUT_S,
)


@dataclass
class JobConfig:
    """Any job: what to run. Jobs with their own knobs extend this.

    A job's schema lives with the job: installed ones are named by an entry point
    (group ``hpc_launch.job_schemas``, a module's ``SCHEMAS``, stored as
    ``schema/job/<name>``); a user's subclass is found once its module is imported
    (``job.schema``). Its :meth:`check` holds the job's own value rules.
    """

    name: str = MISSING
    # "package.module:function", "path/to/script.py" or "-m package.module" (hpc.entrypoints)
    entrypoint: str = MISSING
    seed: int = 0
    args: list[str] = field(default_factory=list)  # a script's or -m module's sys.argv[1:]
    # An untyped (user's) job section may also hold `schema: my_project.schema`: a
    # module hpc-launch imports before composing (hpc.spec.primary.import_job_schema).

    @classmethod
    def check(cls, job: dict[str, Any]) -> None:
        """The job's own value rules on its composed section; raise ConfigError."""


@functools.cache  # the installed job schemas do not change within a process
def job_schemas() -> dict[str, type[JobConfig]]:
    """Every installed job schema: the ``SCHEMAS`` dict each entry point of group
    ``hpc_launch.job_schemas`` names (stored as ``schema/job/<name>``)."""
    found: dict[str, type[JobConfig]] = {}
    for entry in registry.job_schema_entries():
        found.update(entry.load())
    return found


def job_schema_for(job: dict[str, Any]) -> type[JobConfig]:
    """The most specific schema whose fields the composed ``job`` section all has: an
    installed one, or a user's ``JobConfig`` subclass (imported through ``job.schema``)."""
    best: type[JobConfig] = JobConfig
    for schema in [*job_schemas().values(), *_subclasses(JobConfig)]:
        names = {f.name for f in fields(schema)}
        if names <= job.keys() and len(names) > len(fields(best)):
            best = schema
    return best


def _subclasses(cls: type[JobConfig]) -> list[type[JobConfig]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


@dataclass
class ResourcesConfig:
    nodes: int = 1
    tasks_per_node: int = 2
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str | None = None  # Slurm style: 4G, 500M, 16000 (MB)
    time: str | None = "01:00:00"  # Slurm style: MM, HH:MM:SS, D-HH, D-HH:MM[:SS]
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None


@dataclass
class TrackingConfig:
    uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "hpc-launch"
    enabled: bool = True
    # How long a finished job waits for MLflow to take the last metrics; what is left
    # stays in <run_dir>/tracking and `hpc sync RUN_DIR` sends it later.
    flush_timeout_s: float = 60.0


class CheckpointFormat(Enum):
    torch = "torch"  # one torch.save file per rank (replicated or per-rank state)
    dcp = "dcp"  # torch.distributed.checkpoint: sharded, reshardable to another world size


class CheckpointConfig:
    """Checkpoints: where, how often, how many kept, in which format, and whether the
    step waits for the write (``async: true``: only for staging to host memory)."""

    dir: str | None = None  # default: <run_dir>/checkpoints
    every_steps: int = 50
    keep: int = 2
    format: CheckpointFormat = CheckpointFormat.torch
    # `async` is a Python keyword: the field is declared by name (no generated __init__).
    __annotations__["async"] = bool
    locals()["async"] = False

    def __init__(self, **values: Any) -> None:
        for item in fields(self):  # type: ignore[arg-type]
            setattr(self, item.name, values.pop(item.name, item.default))
        if values:
            raise TypeError(f"CheckpointConfig: unknown {sorted(values)}")

    def __repr__(self) -> str:
        values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))  # type: ignore[arg-type]
        return f"CheckpointConfig({values})"


CheckpointConfig = dataclass(init=False, repr=False, eq=False)(CheckpointConfig)  # type: ignore[misc]


@dataclass
class PreemptionConfig:
    """How a job learns that it must stop: a signal ``lead_s`` seconds before its end.

    SIGUSR2 by default: NCCL installs its own SIGUSR1 handler (NVIDIA/nccl#704).
    """

    signal: str = PREEMPTION_SIGNAL
    lead_s: int = PREEMPTION_LEAD_S
    requeue: bool = True
    # How a stopped job runs again on Slurm: ``requeue`` (scontrol requeue, the job keeps
    # its id) or ``resubmit`` (the job queues its own successor, afternotok, at its
    # start: for clusters where requeue is disabled or preemption cancels).
    mode: str = "requeue"
    # Stop requeueing when this many restarts in a row made no step progress.
    max_restarts_without_progress: int = 3


@dataclass
class PlacementConfig:
    """Each rank binds to its GPU's NUMA-local cores and nearest NICs (hpc.topology)."""

    enabled: bool = True
    strict_memory: bool = False  # bind memory to the NUMA node (default: first touch)
    link_layer: str | None = None  # keep NICs of this fabric only: InfiniBand, Ethernet
    topo_file: str | None = None  # an `nvidia-smi topo -m` file instead of discovery


@dataclass
class NcclConfig:
    """An NCCL profile (hpc.nccl.PROFILES) plus explicit variables; the user's env wins."""

    profile: str = "default"
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class IdleConfig:
    """The idle policy (hpc.accounting.idle): a GPU whose every sample in ``window_s`` is
    under ``below_util`` % (or that no process holds) is warned about (``warn``), or the
    job checkpoints and ends COMPLETED_IDLE (``stop``, exit code 77). ``off``: not judged."""

    window_s: float = 1800.0
    below_util: float = 5.0
    action: str = "off"


@dataclass
class AccountingConfig:
    """Per-node NVML/CPU sampling into <run_dir>/accounting/node<N>.jsonl."""

    enabled: bool = True
    interval_s: float = 10.0
    idle: IdleConfig = field(default_factory=IdleConfig)
    # A node_exporter textfile-collector directory: live per-job metrics (hpc_job_*.prom).
    prometheus_textfile: str | None = None


@dataclass
class FaultConfig:
    """The hang and stall watchdog (hpc.runtime.watchdog): when no rank's step moves for
    ``stall_timeout_s`` (``first_step_timeout_s`` until every rank reported its first
    step), or one rank is ``straggler_steps`` behind the others (0: off), every rank's
    stack is dumped into <run_dir>/hangs/ and the job ends FAILED_HANG (exit code 76); on
    Slurm it is requeued up to ``hang_requeues`` times.

    ``preflight``: before training, one task per node checks the run and checkpoint
    dirs, free space, GPUs, HCAs and the rendezvous (:mod:`hpc.runtime.preflight`),
    within ``preflight_timeout_s``; a failing node ends the job FAILED_PREFLIGHT (78).
    A node lost during the run (its ranks killed, its slurmd gone) is found by probing
    every node for at most ``node_probe_timeout_s``; the run is resubmitted without it
    up to ``node_resubmits`` times, else it ends NODE_LOST (79)."""

    watchdog: bool = True
    stall_timeout_s: float = STALL_TIMEOUT_S
    first_step_timeout_s: float = FIRST_STEP_TIMEOUT_S
    straggler_steps: int = 0
    hang_requeues: int = HANG_REQUEUES
    preflight: bool = True
    preflight_timeout_s: float = 60.0
    node_probe_timeout_s: float = 20.0
    node_resubmits: int = 2


@dataclass
class ContainerConfig:
    """Run the ranks in a container (hpc.spec.container; rendered by each launcher).

    ``runtime``: ``none`` (default), ``pyxis`` (srun --container-image), ``apptainer``
    (``apptainer exec`` in the srun step) or ``oci`` (srun --container=BUNDLE). On
    Kubernetes the pod is the container: ``image`` becomes the pod image.
    """

    runtime: str = "none"
    image: str | None = None  # a registry reference, a .sqsh/.sif file, or an OCI bundle dir
    mounts: list[str] = field(default_factory=list)  # "SRC:DST[:ro|rw]"
    workdir: str | None = None  # inside; default: the launch directory (mounted as is)
    env: list[str] = field(default_factory=list)  # host variables passed in by name
    writable: bool = False
    # The framework's runtime in the image: ``none`` (the image has it), ``pip``
    # (installed into the run dir from ``wheel`` at start) or ``host`` (mounted from here).
    install: str = "none"
    wheel: str | None = None  # install=pip: a wheel file or pip requirement
    python: str = "python3"  # the interpreter inside the image
    gpu: str = "nvidia"  # apptainer: --nv (nvidia), --rocm (rocm) or none
    # The accounting sampler on the host side of the container (images without NVML).
    host_sampler: bool = True


@dataclass
class LaunchOptions:
    """The framework's top-level keys (beside its sections)."""

    dry_run: bool = False
    wait: bool = False  # follow a submitted job until it ends (local runs always do)
    output_root: str = "outputs"
    run_dir: str | None = None  # default: <output_root>/<job.name>/<timestamp>
    resume: str | None = None  # a run directory to continue
    # Keys a resume may change (refused otherwise); see hpc.spec.rules.NON_CONFIG_KEYS.
    resume_allow_changes: list[str] = field(default_factory=list)


# The framework's sections: each composed from its group (``configs/<name>/``) or, for
# tracking and checkpoint, from its schema alone. Every other top-level key is the user's.
SECTION_SCHEMAS: dict[str, type] = {
    "resources": ResourcesConfig,
    "tracking": TrackingConfig,
    "checkpoint": CheckpointConfig,
    "preemption": PreemptionConfig,
    "placement": PlacementConfig,
    "nccl": NcclConfig,
    "accounting": AccountingConfig,
    "fault": FaultConfig,
    "container": ContainerConfig,
}
FRAMEWORK_KEYS = (
    "job",
    "resources",
    "cluster",
    *list(SECTION_SCHEMAS)[1:],
    *(f.name for f in fields(LaunchOptions)),
)


def framework_root() -> dict[str, Any]:
    """The root node every composition starts from: typed sections without a group of
    their own, and the top-level options (typed again in validation)."""
    return {
        "tracking": TrackingConfig(),
        "checkpoint": CheckpointConfig(),
        **{f.name: getattr(LaunchOptions(), f.name) for f in fields(LaunchOptions)},
    }


def register_configs(clusters: Iterable[str] | None = None) -> None:
    """Register the schema and the structured bases the YAML groups extend, with the
    cluster schemas of these backends (None: every installed one)."""
    registry.register_schemas(registry.available() if clusters is None else clusters)
    cs = ConfigStore.instance()
    if "base.yaml" in cs.repo.get("schema", {}).get("job", {}):  # once per process
        return
    # Schemas live in their own groups (schema/<group>/<name>) so they do not show
    # up as choices; the YAML files extend them with `- /schema/<group>/<name>@_here_`.
    for name, job_schema in job_schemas().items():
        cs.store(group="schema/job", name=name, node=job_schema)
    cs.store(group="schema/job", name="base", node=JobConfig)
    # schema/cluster/<name> comes from each backend (hpc.registry.register_schemas).
    for group, schema in SECTION_SCHEMAS.items():
        cs.store(group=f"schema/{group}", name="default", node=schema)
