"""The plugin's configs, registered in Hydra's ConfigStore (group ``hydra/launcher``)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class HpcLocalLauncherConf:
    """``hydra/launcher=hpc_local``: the tasks run one after another on this machine."""

    _target_: str = "hydra_plugins.hpc_launch_plugin.launcher.HpcLocalLauncher"
    wait: bool = False  # block until every task has finished
    python: Any = None  # interpreter for the tasks (default: the one running the app)
    array_parallelism: Any = None  # local: tasks at once (default 1)


@dataclass
class HpcSlurmLauncherConf(HpcLocalLauncherConf):
    """``hydra/launcher=hpc_slurm``: one Slurm job array, one task per sweep point."""

    _target_: str = "hydra_plugins.hpc_launch_plugin.launcher.HpcSlurmLauncher"
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem: Any = None  # e.g. 16G
    time: Any = None  # HH:MM:SS or D-HH:MM
    partition: Any = None
    account: Any = None
    qos: Any = None
    constraint: Any = None
    array_parallelism: Any = None  # at most this many tasks at once (--array=...%N)
    job_name: Any = None  # default: the app's hydra.job.name
    submit_retries: int = 5
    setup: list[str] = field(default_factory=list)  # shell lines before the task
    sbatch_args: list[str] = field(default_factory=list)  # extra options, e.g. --exclusive
    # Preemption: Slurm sends `signal` to the batch shell `lead_s` seconds before the time
    # limit; the shell passes it to the task, and a task that exits 75 is requeued.
    # Defaults (None): hpc.launchers.slurm.render.SIGNAL / LEAD_S.
    signal: Any = None
    lead_s: Any = None
    requeue: bool = True


ConfigStore.instance().store(
    group="hydra/launcher", name="hpc_slurm", node=HpcSlurmLauncherConf, provider="hpc_launch"
)
ConfigStore.instance().store(
    group="hydra/launcher", name="hpc_local", node=HpcLocalLauncherConf, provider="hpc_launch"
)
