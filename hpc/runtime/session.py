"""The training session: the one object a job script touches.

    with Session.from_env(cfg) as s:
        model = s.wrap(model)
        ...
        s.log_metrics({"loss": loss}, step)
        s.checkpoints.save(step, state)

It hides which launcher started the job: it discovers ranks, initialises
torch.distributed (gloo on CPU, NCCL on GPU), opens (or resumes) the MLflow run
on rank 0, records its id in job.json, and closes everything on exit.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from hpc import records
from hpc.runtime.checkpoint import CheckpointManager
from hpc.runtime.environment import ClusterEnvironment, RankInfo, from_env
from hpc.runtime.tracking import MlflowTracker, Tracker, flatten, sweep_parent_run

log = logging.getLogger(__name__)


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    path = path or os.environ.get("HPC_CONFIG_FILE")
    if not path:
        raise RuntimeError("no job config: pass one or set HPC_CONFIG_FILE")
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


class Session:
    def __init__(self, cfg: dict[str, Any], env: ClusterEnvironment | None = None) -> None:
        self.cfg = cfg
        self.env = env or from_env()
        self.info: RankInfo = self.env.rank_info()
        run_dir = cfg.get("run_dir") or os.environ.get("HPC_RUN_DIR") or os.getcwd()
        self.run_dir = Path(run_dir)
        self.tracker: Tracker = Tracker()
        self.device: Any = None
        self.checkpoints = CheckpointManager(
            cfg["checkpoint"].get("dir") or self.run_dir / "checkpoints",
            keep=int(cfg["checkpoint"].get("keep", 2)),
            rank=self.info.rank,
            world_size=self.info.world_size,
            barrier=self.barrier,
        )

    @classmethod
    def from_env(cls, cfg: dict[str, Any] | None = None) -> Session:
        return cls(cfg if cfg is not None else load_config())

    # -- ranks -------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def local_rank(self) -> int:
        return self.info.local_rank

    @property
    def is_main(self) -> bool:
        return self.info.rank == 0

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and self.world_size > 1:
            dist.barrier()

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> Session:
        import torch
        import torch.distributed as dist

        use_gpu = torch.cuda.is_available() and int(self.cfg["resources"]["gpus_per_node"]) > 0
        if use_gpu:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.seed(int(self.cfg["job"].get("seed", 0)))
        if self.world_size > 1:
            dist.init_process_group(
                backend="nccl" if use_gpu else "gloo",
                init_method=f"tcp://{self.info.master_addr}:{self.info.master_port}",
                rank=self.rank,
                world_size=self.world_size,
            )
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        print(
            f"hpc-launch: rank {self.rank}/{self.world_size} local_rank {self.local_rank} "
            f"node_rank {self.info.node_rank} host {node} via {self.env.name}",
            flush=True,
        )
        if self.is_main:
            self.tracker = self._open_tracker()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import torch.distributed as dist

        status = "FINISHED" if exc_type is None else "FAILED"
        if exc_type is KeyboardInterrupt:
            status = "KILLED"
        self.tracker.finish(status)
        if dist.is_available() and dist.is_initialized():
            if exc_type is None:
                dist.barrier()
            dist.destroy_process_group()

    def seed(self, seed: int) -> None:
        import numpy as np
        import torch

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # -- tracking --------------------------------------------------------------------
    def job_id(self) -> str | None:
        return os.environ.get("HPC_JOB_ID") or os.environ.get("SLURM_JOB_ID")

    def _open_tracker(self) -> Tracker:
        tracking = self.cfg["tracking"]
        uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.get("uri")
        if not tracking.get("enabled", True) or not uri:
            return Tracker()
        record = _record_or_none(self.run_dir)
        run_id = record.get("mlflow_run_id") if record else None
        sweep_dir = ((record or {}).get("extra") or {}).get("sweep_dir")
        try:
            parent = None
            if sweep_dir and not run_id:
                parent = sweep_parent_run(
                    uri, tracking["experiment"], sweep_dir, Path(sweep_dir).name
                )
            tracker = MlflowTracker(
                uri,
                tracking["experiment"],
                run_id=run_id,
                run_name=f"{Path(sweep_dir).name}/{self.run_dir.name}"
                if sweep_dir
                else self.run_dir.name,
                parent_run_id=parent,
            )
        except Exception as exc:  # tracking never stops training
            log.warning("MLflow unavailable at %s (%s): training continues untracked", uri, exc)
            return Tracker()
        if record is not None:
            records.update(self.run_dir, mlflow_run_id=tracker.run_id)
        if not run_id:
            tracker.log_params(flatten(self.cfg))
        tracker.set_tags(
            {
                "launcher": os.environ.get("HPC_LAUNCHER", self.env.name),
                "job_id": self.job_id() or "",
                "host": socket.gethostname(),
                "world_size": self.world_size,
                "run_dir": str(self.run_dir),
            }
        )
        return tracker

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics (rank 0 only; other ranks' calls are no-ops)."""
        if self.is_main:
            self.tracker.log_metrics(metrics, step)

    # -- RNG state for checkpoints ------------------------------------------------------
    def rng_state(self) -> dict[str, Any]:
        import numpy as np
        import torch

        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        import numpy as np
        import torch

        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _record_or_none(run_dir: Path) -> dict[str, Any] | None:
    try:
        return records.load(run_dir)
    except (FileNotFoundError, ValueError):
        return None
