"""A script or ``-m`` module run by ``hpc.run``: what it gets without touching the Session.

Before the program's first line runs, on every launcher (local, srun, mpirun, an MPIJob):

- torchrun's variables, from the rank environment the launcher set up
  (:mod:`hpc.runtime.rank_discovery`): RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
  GROUP_RANK, MASTER_ADDR, MASTER_PORT, so ``init_process_group(init_method="env://")``
  works unchanged;
- placement (CPU affinity, CUDA_VISIBLE_DEVICES order, OMP_NUM_THREADS) and the NCCL
  profile's variables (:func:`hpc.runtime.node.place_rank`);
- the node's accounting sampler (local rank 0), stopped and summarised into job.json after;
- HPC_PREEMPTION_SIGNAL (``SIGUSR2``) and HPC_CHECKPOINT_DIR, for a program that
  handles the stop signal and checkpoints itself; the signal contract is
  :func:`hpc.runtime.preemption.program_starts`.

A program that exits with :data:`hpc.exitcodes.PREEMPTED` after its own checkpoint is
requeued (Slurm) or restarted (local) like a Session job. A Session the program opens
reuses the rank environment, placement and sampler set up here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from types import TracebackType
from typing import Any

from hpc.defaults import PREEMPTION_SIGNAL
from hpc.exitcodes import PREEMPTED
from hpc.files import write_atomic
from hpc.rundir import records
from hpc.runtime import failures, rank_discovery
from hpc.runtime.environment import RankInfo
from hpc.runtime.node import NodeAccounting, place_rank, summarize_run
from hpc.runtime.preemption import program_starts, signal_number

log = logging.getLogger(__name__)
PREEMPTED_MARKER = "PREEMPTED"  # as the Session leaves it, for the Slurm batch shell


def torchrun_env(info: RankInfo) -> dict[str, str]:
    """torchrun's worker variables for ``info``."""
    return {
        "RANK": str(info.rank),
        "WORLD_SIZE": str(info.world_size),
        "LOCAL_RANK": str(info.local_rank),
        "LOCAL_WORLD_SIZE": str(info.local_world_size),
        "GROUP_RANK": str(info.node_rank),
        "MASTER_ADDR": info.master_addr,
        "MASTER_PORT": str(info.master_port),
    }


class ProgramRun:
    """``with ProgramRun(cfg, label) as run:`` around a program; see the module docstring."""

    def __init__(self, cfg: dict[str, Any], label: str) -> None:
        self.cfg = cfg
        self.label = label
        self.run_dir = Path(cfg.get("run_dir") or os.environ.get("HPC_RUN_DIR") or os.getcwd())
        self.stopped_before_start: int | None = None
        self.accounting: NodeAccounting | None = None

    def __enter__(self) -> ProgramRun:
        env = rank_discovery.from_env()
        self.info = env.rank_info()  # under mpirun: the collective rendezvous, once
        rank_discovery.select(env)
        os.environ.update(torchrun_env(self.info))
        signal_name = str((self.cfg.get("preemption") or {}).get("signal", PREEMPTION_SIGNAL))
        os.environ["HPC_PREEMPTION_SIGNAL"] = _signal_name(signal_name)
        ckpt = (self.cfg.get("checkpoint") or {}).get("dir") or self.run_dir / "checkpoints"
        os.environ["HPC_CHECKPOINT_DIR"] = str(ckpt)
        _, placement = place_rank(self.cfg, self.info)
        job_id = os.environ.get("HPC_JOB_ID") or None
        self.accounting = NodeAccounting(self.cfg, self.info, self.run_dir, job_id)
        self.accounting.start()
        if self.info.rank == 0 and (
            self.accounting.enabled or self.info.local_world_size < self.info.world_size
        ):
            with contextlib.suppress(FileNotFoundError, ValueError):
                records.update(self.run_dir, accounting_file=str(self.accounting.directory))
        print(
            f"hpc-launch: {self.label}: rank {self.info.rank}/{self.info.world_size} "
            f"local_rank {self.info.local_rank} node_rank {self.info.node_rank} "
            f"host {env.node_name()} via {env.name}; {placement}",
            flush=True,
        )
        self.stopped_before_start = program_starts()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        code = exc.code if isinstance(exc, SystemExit) else None
        if exc is not None and not isinstance(exc, KeyboardInterrupt | SystemExit):
            failures.record(self.run_dir, self.info.rank, exc)
        preempted = code == PREEMPTED or (exc is None and self.stopped_before_start)
        if preempted and self.info.rank == 0:  # srun may report another rank's kill instead
            with contextlib.suppress(OSError):
                write_atomic(self.run_dir / PREEMPTED_MARKER, "program\n")
        if self.accounting is not None:
            self.accounting.stop()
            if self.info.rank == 0 and self.accounting.enabled:
                self._record_accounting()

    def _record_accounting(self) -> None:
        try:
            summary = summarize_run(self.accounting.directory) if self.accounting else None
        except Exception as exc:
            log.warning("accounting summary failed: %s", exc)
            return
        if summary is not None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                records.update(self.run_dir, extra={"accounting": summary})


def _signal_name(name: str) -> str:
    return signal.Signals(signal_number(name)).name
