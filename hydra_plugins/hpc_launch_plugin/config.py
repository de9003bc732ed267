"""The plugin's configs, registered in Hydra's ConfigStore (group ``hydra/launcher``).

Every key maps onto an hpc-launch override of the job each sweep point becomes
(:func:`hydra_plugins.hpc_launch_plugin.launcher.framework_overrides`); ``None``
keeps hpc-launch's default:

* resources: ``nodes``, ``tasks_per_node``, ``gpus_per_node``, ``cpus_per_task``,
  ``mem``, ``time``, ``partition``, ``account``, ``qos``, ``constraint`` ->
  ``resources.<key>``;
* Slurm: ``python``, ``setup``, ``sbatch_args``, ``array_parallelism``,
  ``submit_retries`` -> ``cluster.<key>``;
* preemption: ``signal``, ``lead_s``, ``requeue`` -> ``preemption.<key>``;
* sections, as mappings: ``tracking``, ``nccl``, ``placement``, ``accounting``,
  ``checkpoint``, ``preemption``, ``fault``, ``container`` -> ``<section>.<key>=<value>``
  (nested keys too:
  ``nccl: {env: {NCCL_DEBUG: INFO}}``; on the command line a key of these mappings is
  new to Hydra: ``++hydra.launcher.nccl.profile=infiniband``);
* ``overrides``: any further hpc-launch override as written on its command line
  (``nccl=infiniband``, a cluster profile).

Tracking is off unless configured: a ``tracking`` mapping here (e.g. ``{uri: ...}``)
or ``MLFLOW_TRACKING_URI`` in the environment. Each point then gets an MLflow child
run under the sweep's parent run.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class HpcLocalLauncherConf:
    """``hydra/launcher=hpc_local``: the points run one after another on this machine."""

    _target_: str = "hydra_plugins.hpc_launch_plugin.launcher.HpcLocalLauncher"
    # Block until every point has ended and return its JobReturn (the task function's
    # value); false: return at once with the points queued (local: running in turn).
    wait: bool = False
    dry_run: bool = False  # print what would be submitted; run nothing
    job_name: Any = None  # default: the app's hydra.job.name
    tasks_per_node: int = 1  # ranks per point (each runs the task function)
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    tracking: dict[str, Any] = field(default_factory=dict)
    nccl: dict[str, Any] = field(default_factory=dict)
    placement: dict[str, Any] = field(default_factory=dict)
    accounting: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    preemption: dict[str, Any] = field(default_factory=dict)
    fault: dict[str, Any] = field(default_factory=dict)  # the hang watchdog's settings
    # The points' ranks in a container, as hpc-launch's container section (hpc_slurm):
    # {runtime: pyxis, image: nvcr.io/nvidia/pytorch:24.05-py3, mounts: [/data:/data]}
    container: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    poll_s: float = 2.0  # wait=true: seconds between state queries
    wait_timeout_s: Any = None  # hpc_slurm, wait=true: stop waiting (the jobs go on)


@dataclass
class HpcSlurmLauncherConf(HpcLocalLauncherConf):
    """``hydra/launcher=hpc_slurm``: one Slurm job array, one hpc-launch job per point."""

    _target_: str = "hydra_plugins.hpc_launch_plugin.launcher.HpcSlurmLauncher"
    nodes: int = 1
    mem: Any = None  # e.g. 16G
    time: Any = None  # HH:MM:SS or D-HH:MM (default: hpc-launch's, 01:00:00)
    partition: Any = None
    account: Any = None
    qos: Any = None
    constraint: Any = None
    python: Any = None  # interpreter on the nodes (default: the one running the app)
    array_parallelism: Any = None  # at most this many points at once (--array=...%N)
    submit_retries: Any = None
    setup: list[str] = field(default_factory=list)  # shell lines before the step
    sbatch_args: list[str] = field(default_factory=list)  # extra options, e.g. --exclusive
    # Slurm sends `signal` to the batch shell `lead_s` seconds before the time limit;
    # the point is interrupted, exits with the preempted code and is requeued (its task
    # function runs again from the start). None: hpc-launch's defaults (USR2, 120 s).
    signal: Any = None
    lead_s: Any = None
    requeue: Any = None


ConfigStore.instance().store(
    group="hydra/launcher", name="hpc_slurm", node=HpcSlurmLauncherConf, provider="hpc_launch"
)
ConfigStore.instance().store(
    group="hydra/launcher", name="hpc_local", node=HpcLocalLauncherConf, provider="hpc_launch"
)
