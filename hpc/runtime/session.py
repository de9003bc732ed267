"""The training session: the one object a job script touches.

    with Session.from_env(cfg) as s:
        resumed = s.resume()               # newest checkpoint all ranks verify, or None
        for ...:
            ...
            s.log_metrics({"loss": loss}, step)
            if s.should_checkpoint(step):              # every_steps, or a stop signal
                s.save_checkpoint(step, state)
                if s.stop_requested:
                    break                               # the session exits with PREEMPTED

Epoch-end work (an evaluation, per-epoch metrics) goes before the checkpoint of
the epoch's last step, as in ``hpc.jobs.digits``: that checkpoint then covers it,
and a run resumed from it starts the next epoch with nothing pending. A crash
before that checkpoint rewinds the epoch-end metrics with the rest, so the
resumed run logs them again exactly once.

It hides which launcher started the job: it discovers ranks, initialises
torch.distributed (gloo on CPU, NCCL on GPU), opens (or resumes) the MLflow run
on rank 0 and records its id in job.json, turns stop signals into one
coordinated checkpoint, and closes everything on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from hpc.defaults import PREEMPTION_SIGNAL
from hpc.exitcodes import COMPLETED_IDLE, PREEMPTED
from hpc.files import write_atomic
from hpc.rundir import records
from hpc.runtime import failures
from hpc.runtime.checkpoint import CheckpointManager, LoadedCheckpoint
from hpc.runtime.checkpoint_async import AsyncCheckpointer
from hpc.runtime.checkpoint_dcp import DcpCheckpointManager, make_checkpoints
from hpc.runtime.environment import ClusterEnvironment, RankInfo
from hpc.runtime.heartbeat import Heartbeat
from hpc.runtime.idle_watch import IdleWatch
from hpc.runtime.idle_watch import tags as idle_tags
from hpc.runtime.node import NodeAccounting, place_rank, start_sidecar, summarize_run
from hpc.runtime.preemption import StopSignals
from hpc.runtime.rank_discovery import from_env
from hpc.runtime.sidecar import SidecarTracker, mlflow_tracker, warn_fallback
from hpc.runtime.stop_agreement import StopAgreement
from hpc.runtime.tracking import SpoolTracker, Tracker, flatten

log = logging.getLogger(__name__)
FINISHED_MARKER = records.FINISHED_MARKER
PREEMPTED_MARKER = "PREEMPTED"


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    path = path or os.environ.get("HPC_CONFIG_FILE")
    if not path:
        raise RuntimeError("no job config: pass one or set HPC_CONFIG_FILE")
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


class Session:
    def __init__(
        self, cfg: dict[str, Any] | DictConfig, env: ClusterEnvironment | None = None
    ) -> None:
        # A DictConfig (an entry point that asked for one) is read as the plain dict it holds.
        self.cfg: dict[str, Any] = (
            OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
            if isinstance(cfg, DictConfig)
            else cfg
        )
        cfg = self.cfg
        self.env = env or from_env()
        self.info: RankInfo = self.env.rank_info()
        run_dir = cfg.get("run_dir") or os.environ.get("HPC_RUN_DIR") or os.getcwd()
        self.run_dir = Path(run_dir)
        self.tracker: Tracker = Tracker()
        self.device: Any = None
        self.every_steps = int(cfg["checkpoint"].get("every_steps", 50))
        self.signals = StopSignals(
            str((cfg.get("preemption") or {}).get("signal", PREEMPTION_SIGNAL))
        )
        self.stop_requested = False
        # accounting.idle: the sampler's findings (hpc.runtime.idle_watch)
        idle_action = ((cfg.get("accounting") or {}).get("idle") or {}).get("action", "off")
        self.idle = IdleWatch(self.run_dir, idle_action != "off" and self.info.local_rank == 0)
        self.stop_agreement = StopAgreement(1)  # the real one once the process group is up
        self._wrapped: list[Any] = []  # DDP wrappers from wrap_model(), released on exit
        self.config_hash = records.config_hash(cfg.get("job", {}))
        self.checkpoints: CheckpointManager | DcpCheckpointManager = make_checkpoints(
            cfg["checkpoint"],
            self.run_dir / "checkpoints",
            rank=self.info.rank,
            world_size=self.info.world_size,
            barrier=self.barrier,
            all_reduce=self._all_reduce,
        )
        # checkpoint.async: saves stage to host memory and write in a background thread.
        # With format=dcp the DCP manager saves asynchronously itself (dcp.async_save).
        self._async: AsyncCheckpointer | None = (
            AsyncCheckpointer(self.checkpoints)
            if cfg["checkpoint"].get("async") and isinstance(self.checkpoints, CheckpointManager)
            else None
        )
        self._dcp_pending: int | None = None  # the step of an asynchronous DCP save in flight
        # Progress for the hang watchdog (hpc.runtime.watchdog): the step calls set it.
        self.heartbeat = Heartbeat(
            self.run_dir, self.rank, self.world_size, self.env.node_name(), cfg.get("fault") or {}
        )

    @classmethod
    def from_env(cls, cfg: dict[str, Any] | DictConfig | None = None) -> Session:
        return cls(cfg if cfg is not None else load_config())

    # -- ranks -------------------------------------------------------------------------
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

    def _distributed(self) -> bool:
        import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

        return dist.is_available() and dist.is_initialized() and self.world_size > 1

    def barrier(self) -> None:
        import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

        if self._distributed():
            dist.barrier()

    def _all_reduce(self, value: int, op: str) -> int:
        if not self._distributed():
            return value
        import torch  # noqa: PLC0415 (lazy: torch only in the job)
        import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

        tensor = torch.tensor([value], dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
        return int(tensor.item())

    def _comm_device(self) -> Any:
        import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

        return self.device if dist.get_backend() == "nccl" else "cpu"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Session:
        import torch  # noqa: PLC0415 (lazy: torch only in the job)
        import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

        self.signals.install()
        self.heartbeat.start()  # before the rendezvous: a rank stuck there is seen too
        # Bind CPUs and set NCCL variables before CUDA and NCCL initialise.
        _, placement = place_rank(self.cfg, self.info)
        self.accounting = NodeAccounting(self.cfg, self.info, self.run_dir, self.job_id())
        self.accounting.start()
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
        self.stop_agreement = StopAgreement(self.world_size)
        node = self.env.node_name()
        print(
            f"hpc-launch: rank {self.rank}/{self.world_size} local_rank {self.local_rank} "
            f"node_rank {self.info.node_rank} host {node} via {self.env.name}; {placement}",
            flush=True,
        )
        if self.is_main:
            self.tracker = self._open_tracker()
            sampled = self.accounting.enabled or self.accounting.on_host
            if sampled or self.info.local_world_size < self.world_size:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    records.update(self.run_dir, accounting_file=str(self.accounting.directory))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

        # The loop is over: the watchdog stops watching (the exit grace covers the rest).
        self.heartbeat.stop("exiting" if exc_type is None else "failed")
        # A save in flight finishes first, whatever ended the block; its failure fails
        # a run that would otherwise have finished or been checkpointed.
        save_error = self._close_async()
        if save_error is not None:
            if exc is None:
                exc_type, exc = type(save_error), save_error
            else:
                log.error("and the checkpoint in flight failed: %s", save_error)
        idle = exc_type is None and self.stop_requested and self.signals.received is None
        idle = idle and self.idle.stopped_idle()
        preempted = exc_type is None and self.stop_requested and not idle
        if exc is not None and not isinstance(exc, KeyboardInterrupt | SystemExit):
            failures.record(self.run_dir, self.rank, exc)  # who failed first, for the launcher
        self.accounting.stop()
        if self.is_main:
            self._record_accounting()
        if preempted:
            self.tracker.set_tags({"last_interruption": self.signals.name or "signal"})
            # The MLflow run goes on after the restart: no end status.
            self.tracker.finish(status=None, timeout_s=self._flush_timeout())
            if self.is_main:  # for the batch shell: srun's exit code may be a kill's
                write_atomic(self.run_dir / PREEMPTED_MARKER, f"{self.signals.name or 'signal'}\n")
        elif idle:
            self.tracker.set_tags({"end_reason": "idle", **idle_tags(self.idle.read())})
            self.tracker.finish("FINISHED", timeout_s=self._flush_timeout())
            if self.is_main:
                print("hpc-launch: idle (accounting.idle): ending COMPLETED_IDLE", flush=True)
        elif exc_type is None:
            self.tracker.finish("FINISHED", timeout_s=self._flush_timeout())
            if self.is_main:
                write_atomic(self.run_dir / FINISHED_MARKER, "finished\n")
        else:
            self.tracker.finish(
                "KILLED" if exc_type is KeyboardInterrupt else "FAILED",
                timeout_s=self._flush_timeout(),
            )
        if dist.is_available() and dist.is_initialized():
            if exc_type is None:
                self.stop_agreement.close()  # its last all-reduce, before the group goes
                dist.barrier()
            self._release_wrapped()
            dist.destroy_process_group()
        if exc_type is None:  # finished or checkpointed: a later stop signal changes nothing
            self.signals.ignore()
        else:
            self.signals.uninstall()
        if preempted:
            raise SystemExit(PREEMPTED)
        if idle:
            raise SystemExit(COMPLETED_IDLE)
        if save_error is not None and exc is save_error:
            raise save_error

    def _close_async(self) -> BaseException | None:
        """Wait for the background save, free its buffers; its error, if any."""
        try:
            if self._async is not None:
                self._async.close()
            self._wait_for_dcp()
        except Exception as exc:
            return exc
        return None

    # -- the model -------------------------------------------------------------------------
    def wrap_model(self, model: Any, **ddp_options: Any) -> Any:
        """``model`` in DistributedDataParallel (``model`` itself at world size 1).

        Wrap with this rather than constructing DDP yourself; it makes two promises
        hold for any model:

        * Bitwise resume at any world size. DDP re-buckets the gradients after its
          first iteration; a resumed process would start with the initial layout,
          and from 3 ranks on the all-reduce sums an element in an order that depends
          on its position in the bucket, so the resumed run drifts by an ulp. With
          ``find_unused_parameters=True`` DDP never re-buckets: every process, fresh
          or resumed, reduces with the same layout at every step. Cost: one autograd
          graph traversal and one tiny all-reduce (a flag per parameter) per iteration,
          and a one-time DDP warning about the flag. ``static_graph`` re-buckets, so
          it is refused.
        * Deterministic teardown: when the ``with`` block ends, the session releases
          the wrapper's reducer and then destroys the process group, instead of
          leaving it to whenever the interpreter frees the wrapper. Do not use the
          wrapper after the block.
        """
        if self.world_size <= 1:
            return model
        # lazy: torch only in the job
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        if ddp_options.get("static_graph") or ddp_options.get("find_unused_parameters") is False:
            raise ValueError(
                "wrap_model: static_graph / find_unused_parameters=False re-bucket "
                "gradients after the first step, which breaks bitwise resume"
            )
        ddp_options["find_unused_parameters"] = True
        if self.device is not None and self.device.type == "cuda":
            ddp_options.setdefault("device_ids", [self.local_rank])
        wrapped = DistributedDataParallel(model, **ddp_options)
        self._wrapped.append(wrapped)
        return wrapped

    def _release_wrapped(self) -> None:
        """Free the wrappers' reducers (they hold the process group) while the group lives."""
        for wrapped in self._wrapped:
            for name in ("reducer", "logger"):
                with contextlib.suppress(AttributeError):
                    delattr(wrapped, name)
            wrapped.process_group = None
        self._wrapped.clear()

    def _flush_timeout(self) -> float:
        return float((self.cfg.get("tracking") or {}).get("flush_timeout_s", 60.0))

    def _record_accounting(self) -> None:
        """The job's accounting summary (all nodes' files) into job.json and MLflow."""
        if not (self.cfg.get("accounting") or {}).get("enabled", True):
            return
        if self._distributed():  # give other nodes' samplers a moment to write their stop
            time.sleep(0.2)
        try:
            summary = summarize_run(self.accounting.directory)
        except Exception as exc:
            log.warning("accounting summary failed: %s", exc)
            return
        if summary is None:
            return
        with contextlib.suppress(FileNotFoundError, ValueError):
            records.update(self.run_dir, extra={"accounting": summary})
        self.tracker.set_tags({f"accounting.{k}": v for k, v in summary.items()})

    def seed(self, seed: int) -> None:
        import numpy as np  # noqa: PLC0415 (lazy: numpy only in the job)
        import torch  # noqa: PLC0415 (lazy: torch only in the job)

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # -- checkpoints -----------------------------------------------------------------------
    def should_checkpoint(self, step: int) -> bool:
        """True every ``checkpoint.every_steps``, or when any rank got a stop signal.

        All ranks must call this at the same step boundaries, and all of them get the
        same answer at each call, so they checkpoint together. The stop flags travel in
        an all-reduce started now and then and read some calls later
        (:class:`hpc.runtime.stop_agreement.StopAgreement`): no step waits on a
        collective, and a signal is acted on within about 0.1 s of steps (two calls
        where a step takes longer than 50 ms).
        """
        self.heartbeat.progress(step)
        if self.idle.polls:
            self._idle_poll(step)
        if self.stop_agreement.agreed(self.signals.received is not None or self.idle.stop):
            self.stop_requested = True
        return self.stop_requested or step % self.every_steps == 0

    def _stop_cause(self) -> str:
        if self.signals.name:
            return self.signals.name
        return "idle" if self.idle.stop else "signal"

    def _idle_poll(self, step: int) -> None:
        events = self.idle.poll()
        if events and self.is_main:
            self.tracker.set_tags(idle_tags(events))
            self.tracker.log_metrics({"idle_devices": float(len(events))}, step)

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        """Every rank saves its state; metrics up to ``step`` become committed.

        Returns the checkpoint's directory. With ``checkpoint.async`` the call blocks
        only while ``state`` is staged (copied to host memory: one copy of the state's
        tensor bytes per rank, reused by the next save); the write and the commit run
        in the background, so the directory may not be committed yet when this
        returns, and the metrics are committed after LATEST moved. A new save, a stop
        (``stop_requested``: this call then waits) and the session's exit wait for the
        save in flight; a failed background save raises at the next of these. See
        :meth:`wait_for_checkpoint`.
        """
        self.heartbeat.progress(step)
        meta = {"config_hash": self.config_hash}
        stopping = self.stop_requested
        if isinstance(self.checkpoints, DcpCheckpointManager) and self.checkpoints.asynchronous:
            self._wait_for_dcp()  # the previous one; its metrics commit once it is durable
            path = self.checkpoints.save(step, state, meta=meta)
            self._dcp_pending = step
            if stopping:
                self._wait_for_dcp()
            return path
        if self._async is None:
            path = self.checkpoints.save(step, state, meta=meta)
            if self.is_main:
                self._committed(step, path, stopping)
            return path

        def committed(done: int, final: Path) -> None:  # rank 0, the background thread
            self._committed(done, final, stopping)

        path = self._async.save(step, state, meta=meta, on_commit=committed)
        if stopping:  # the job exits next: the checkpoint must be committed first
            self.wait_for_checkpoint()
        return path

    def wait_for_checkpoint(self) -> None:
        """Wait for an asynchronous save in flight (nothing to do without one).

        Raises :class:`~hpc.runtime.checkpoint_async.AsyncCheckpointError` when it
        failed. On rank 0 the checkpoint is committed when this returns; on the other
        ranks their part of it is durable.
        """
        if self._async is not None:
            self._async.wait()
        self._wait_for_dcp()

    def _wait_for_dcp(self) -> None:
        """Wait for an asynchronous DCP save; rank 0 then commits the metrics it covers."""
        if self._dcp_pending is None or not isinstance(self.checkpoints, DcpCheckpointManager):
            return
        step, self._dcp_pending = self._dcp_pending, None
        path = self.checkpoints.wait()
        if self.is_main and path is not None:
            self._committed(step, path, self.stop_requested)

    def _committed(self, step: int, path: Path, stopping: bool) -> None:
        """Rank 0, after LATEST moved to ``path``: commit the metrics up to ``step``."""
        self.tracker.commit(step)
        if stopping:
            print(
                f"hpc-launch: stopping at step {step} ({self._stop_cause()}): "
                f"checkpoint {path.name} committed",
                flush=True,
            )

    def resume(
        self, map_location: str | None = None, *, state: dict[str, Any] | None = None
    ) -> LoadedCheckpoint | None:
        """Load the newest checkpoint every rank can verify; restore RNG states.

        The ranks agree on one step (all-reduce MIN of each rank's newest valid one).
        Rank 0 then drops metrics past that step which no checkpoint covers.

        ``state`` names the objects to load into, in place, under the keys they were saved
        with: ``s.resume(state={"model": model, "optimizer": opt})``.

        * ``checkpoint.format=dcp`` requires it (and ``save_checkpoint`` takes the same
          objects: ``{"model": model, "optimizer": opt, "step": ..., "rng": s.rng_state()}``).
          Model and optimizer state (FSDP2 / DTensor shards) are resharded into this run's
          world size. The returned ``state`` holds the saved extras (non-tensor values) and
          the template's objects. At the saved world size each rank gets its own extras
          and RNG back (bitwise resume). At another world size every rank gets rank 0's
          extras (so keep them global: step, epoch, a global data position) and no ``rng``:
          each rank is re-seeded from (``job.seed``, step, rank) instead, a fresh stream per
          rank that is the same on every restart at that size. An optimizer state that does
          not fit this run's optimizer fails with ``CheckpointError`` (one line).
        * torch format: optional; modules and optimizers in it get ``load_state_dict`` from
          the checkpoint's entry of the same key (the returned state holds the state dicts).
        """
        location = map_location or str(self.device)
        agreed: int | None = None
        loaded: LoadedCheckpoint | None = None
        if isinstance(self.checkpoints, DcpCheckpointManager):
            if state is None:
                raise ValueError(
                    "checkpoint.format=dcp: call resume(state={'model': model, 'optimizer': "
                    "optimizer}) to load the checkpoint in place into them"
                )
            loaded = self.checkpoints.load_latest(state)  # agrees on a step, then loads
        else:
            while True:  # every rank runs the same iterations: lo/hi are the same everywhere
                loaded = self.checkpoints.load_latest(location, at_most=agreed)
                mine = loaded.step if loaded else -1
                lo, hi = self._all_reduce(mine, "min"), self._all_reduce(mine, "max")
                if lo == hi:
                    break
                agreed = lo
                if lo < 0:  # some rank has no usable checkpoint at all: start afresh
                    loaded = None
                    break
            saved = loaded.state if loaded is not None else {}
            for key, target in (state or {}).items():
                if hasattr(target, "load_state_dict") and key in saved:
                    target.load_state_dict(saved[key])
        if loaded is not None and "rng" in loaded.state:
            self.set_rng_state(loaded.state["rng"])
        elif loaded is not None and _resharded(loaded, self.world_size):  # dcp, other size
            seed = int(self.cfg["job"].get("seed", 0))
            self.seed((seed * 1_000_003 + loaded.step * 65_537 + self.rank) % 2**32)
        step = loaded.step if loaded else 0
        if self.is_main and loaded is not None:
            self._check_config_hash(loaded)
        if self.is_main:
            dropped = self.tracker.rewind(step)
            if loaded is not None:
                print(
                    f"hpc-launch: resumed from {loaded.path.name} at step {step}"
                    f"{f' ({dropped} uncommitted metrics dropped)' if dropped else ''}"
                    f"{_resharded(loaded, self.world_size)}",
                    flush=True,
                )
        return loaded

    def _check_config_hash(self, loaded: LoadedCheckpoint) -> None:
        """Say so when a checkpoint was saved under another job config than this run's."""
        saved = loaded.manifest.get("config_hash")
        if saved in (None, self.config_hash):
            return
        extra = (_record_or_none(self.run_dir) or {}).get("extra") or {}
        accepted = (extra.get("resume_changes") or [{}])[-1].get("config_hash")
        why = "allowed at resume" if accepted == self.config_hash else "changed outside hpc-launch"
        log.warning(
            "checkpoint %s was saved under job config %s, this run's is %s (%s)",
            loaded.path.name,
            saved,
            self.config_hash,
            why,
        )

    # -- tracking --------------------------------------------------------------------------
    def job_id(self) -> str | None:
        return os.environ.get("HPC_JOB_ID") or None  # set by every launcher's job script

    def _open_tracker(self) -> Tracker:
        tracking = self.cfg["tracking"]
        uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.get("uri")
        if not tracking.get("enabled", True) or not uri:
            return Tracker()
        record = _record_or_none(self.run_dir) or {}
        extra = record.get("extra") or {}
        run_id = record.get("mlflow_run_id")
        sweep_dir = extra.get("sweep_dir")
        experiment = tracking["experiment"]

        name = f"{Path(sweep_dir).name}/{self.run_dir.name}" if sweep_dir else self.run_dir.name
        spec = {
            "uri": uri,
            "experiment": experiment,
            "spool_dir": str(self.run_dir / "tracking"),
            "run_id": run_id,
            "run_name": name,
            "sweep_dir": sweep_dir,
            "run_dir": str(self.run_dir),
        }
        tracker = self._spool_tracker(spec)
        if not run_id:
            tracker.log_params(flatten(self.cfg))
        tracker.set_tags(
            {
                "launcher": os.environ.get("HPC_LAUNCHER", self.env.name),
                "job_id": self.job_id() or "",
                "host": socket.gethostname(),
                "world_size": self.world_size,
                "run_dir": str(self.run_dir),
                "restart_count": extra.get("restart_count", 0),
                "last_interruption": extra.get("last_interruption") or "none",
                **resume_changes_tag(extra),
            }
        )
        return tracker

    def _spool_tracker(self, spec: dict[str, Any]) -> SpoolTracker:
        """The spool producer; the node's sidecar ships it, else a sender thread here."""
        sidecar = self.accounting.sidecar
        if sidecar is None or not sidecar.alive():
            sidecar = start_sidecar()
        if sidecar is not None:
            producer = SidecarTracker(sidecar, spec["spool_dir"], self.run_dir)  # spool first
            if sidecar.track(spec):
                return producer
            producer.spool.close()
            warn_fallback("metrics sender", "it did not take the run")
        return mlflow_tracker(spec, writer=True)  # mlflow is imported in the sender thread

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Record metrics (rank 0 only; other ranks' calls are no-ops).

        Values are floats or one-element torch tensors; a tensor is read only when the
        held steps are written (see :class:`~hpc.runtime.tracking.SpoolTracker`), so
        logging it costs no ``.item()`` and no device synchronisation.
        """
        self.heartbeat.progress(step)
        if self.is_main:
            self.tracker.log_metrics(metrics, step)

    # -- RNG state for checkpoints -----------------------------------------------------------
    def rng_state(self) -> dict[str, Any]:
        import numpy as np  # noqa: PLC0415 (lazy: numpy only in the job)
        import torch  # noqa: PLC0415 (lazy: torch only in the job)

        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        import numpy as np  # noqa: PLC0415 (lazy: numpy only in the job)
        import torch  # noqa: PLC0415 (lazy: torch only in the job)

        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def resume_changes_tag(extra: dict[str, Any]) -> dict[str, str]:
    """The MLflow tag for the config changes of the latest resume (job.json history)."""
    history = extra.get("resume_changes") or []
    if not history:
        return {}
    changes = history[-1].get("changes") or {}
    text = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in changes.items())
    return {"resume_changes": text[:5000]}


def _resharded(loaded: LoadedCheckpoint, world_size: int) -> str:
    saved = loaded.manifest.get("world_size", world_size)
    if loaded.manifest.get("format") != "dcp" or saved == world_size:
        return ""
    return f" (resharded from {saved} to {world_size} ranks)"


def _record_or_none(run_dir: Path) -> dict[str, Any] | None:
    try:
        return records.load(run_dir)
    except (FileNotFoundError, ValueError):
        return None
