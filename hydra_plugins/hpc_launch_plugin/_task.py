"""One Hydra sweep point inside its hpc-launch job (named ``_task``: Hydra's plugin scan
skips it).

``job.entrypoint=hydra_plugins.hpc_launch_plugin._task:run``: ``hpc.run`` calls
:func:`run` with the composed config on every rank. It opens the
:class:`hpc.runtime.session.Session` (placement, NCCL variables, the accounting
sampler, the MLflow child run, stop signals; torch.distributed when the point has
several ranks), loads the launcher's payload (cloudpickle: the task function, the
HydraContext, each point's sweep config and Hydra's singletons, custom OmegaConf
resolvers included), and runs the task function through Hydra's ``run_job``, as
Hydra's own launchers do. Rank 0 writes the ``JobReturn`` to
``<run dir>/hydra-return.pkl``; the launcher reads it.

A stop signal (the preemption signal, SIGTERM) interrupts the task function: the
job exits with the preempted code, the batch script requeues it, and the function
runs again from its start (as hydra-submitit-launcher does). A function that raised
is returned as FAILED (with its exception) and fails the job.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

PAYLOAD_FILE = "hydra-payload.pkl"
PATHS_FILE = "hydra-payload.json"  # sys.path and cwd of the app, read before unpickling
RETURN_FILE = "hydra-return.pkl"


class Interrupted(BaseException):  # not an error: the point is requeued
    """Raised in the task function when a stop signal arrives (not an ``Exception``:
    Hydra's run_job must not turn it into a FAILED return)."""


def point_of(cfg: dict[str, Any]) -> tuple[Path, int]:
    """The payload file and the point's Hydra job number, from the job section."""
    job = cfg["job"]
    return Path(job["hydra_payload"]), int(job["hydra_index"])


def load_payload(path: Path) -> dict[str, Any]:
    import cloudpickle  # noqa: PLC0415 (lazy: only in the job)

    meta = json.loads((path.parent / PATHS_FILE).read_text(encoding="utf-8"))
    for entry in reversed(meta["sys_path"]):  # the app's own modules, by reference
        if entry not in sys.path:
            sys.path.insert(0, entry)
    with open(path, "rb") as fh:
        payload: dict[str, Any] = cloudpickle.load(fh)
    return payload


def job_id() -> str:
    """The Slurm array task (``ARRAY_TASK``), else the launcher's job id."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("HPC_JOB_ID") or os.environ.get("SLURM_JOB_ID") or "local"


def run_point(payload: dict[str, Any], num: int, rank: int) -> Any:
    """Hydra's ``run_job`` for point ``num``: returns its JobReturn."""
    # lazy, all: Hydra's job side, only in the job
    from hydra.core.singleton import Singleton  # noqa: PLC0415
    from hydra.core.utils import run_job, setup_globals  # noqa: PLC0415
    from omegaconf import open_dict  # noqa: PLC0415

    Singleton.set_state(payload["singleton_state"])
    setup_globals()
    sweep_config = payload["sweep_configs"][num]
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = job_id()
        sweep_config.hydra.job.num = num
        if rank != 0:  # one copy of .hydra/ per point
            sweep_config.hydra.output_subdir = None
    os.chdir(str(sweep_config.hydra.runtime.cwd))
    return run_job(
        hydra_context=payload["hydra_context"],
        task_function=payload["task_function"],
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def write_return(path: Path, ret: Any) -> None:
    # lazy, all: only in the job
    from hydra.core.utils import JobStatus  # noqa: PLC0415

    from hpc.files import write_atomic  # noqa: PLC0415
    from hydra_plugins.hpc_launch_plugin._pickle import dumps  # noqa: PLC0415

    try:
        data = dumps(ret)
    except Exception as exc:  # an unpicklable value or exception: say what it was
        value = ret._return_value
        ret.return_value = RuntimeError(f"return value {value!r} cannot be pickled: {exc}")
        ret.status = JobStatus.FAILED
        data = dumps(ret)
    write_atomic(path, data, mode=0o600)


def run(cfg: dict[str, Any]) -> int:
    """The job's entry point (every rank)."""
    from hpc.runtime.session import Session  # noqa: PLC0415 (lazy: torch only in the job)

    path, num = point_of(cfg)
    payload = load_payload(path)
    with Session(cfg) as session:
        if session.is_main:  # the MLflow child run says which point it is
            task = payload["sweep_configs"][num].hydra.overrides.task
            session.tracker.set_tags(
                {"hydra.job.num": str(num), "hydra.overrides": " ".join(map(str, task))}
            )

        def interrupt(signum: int, frame: FrameType | None) -> None:
            session.signals.received = session.signals.received or signum
            raise Interrupted(signum)

        stops = {session.signals.preemption, signal.SIGTERM, signal.SIGINT}
        previous = {s: signal.signal(s, interrupt) for s in stops}
        try:
            if session.signals.received:  # a stop signal before the session existed
                raise Interrupted(session.signals.received)
            ret = run_point(payload, num, session.rank)
        except Interrupted:
            session.stop_requested = True  # the session exits PREEMPTED: requeue
            print(
                f"hpc-launch: hydra point {num} interrupted ({session.signals.name}); "
                "its task function runs again after the requeue",
                flush=True,
            )
            return 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if session.is_main:
            write_return(Path(cfg["run_dir"]) / RETURN_FILE, ret)
        if ret.status.name == "FAILED":  # the job fails too (its exception in the log)
            raise ret._return_value
    return 0


def local_sweep(plan_file: Path) -> int:
    """``python -m hydra_plugins.hpc_launch_plugin._task PLAN``: a planned sweep on the
    local backend, its points in turn (``hpc_local`` without ``wait``, in the background)."""
    import cloudpickle  # noqa: PLC0415 (lazy: only here)

    from hpc.registry import get_launcher  # noqa: PLC0415 (lazy: only here)
    from hydra_plugins.hpc_launch_plugin.launcher import launch_task  # noqa: PLC0415 (cycle)

    with open(plan_file, "rb") as fh:
        plan = cloudpickle.load(fh)
    return get_launcher("local").submit_sweep(plan, False, launch_task)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m hydra_plugins.hpc_launch_plugin._task PLAN_FILE", file=sys.stderr)
        sys.exit(2)
    sys.exit(local_sweep(Path(sys.argv[1])))
