"""Per-rank node setup: topology-aware placement, NCCL environment, accounting sampler.

Called by the session before torch.distributed starts: each rank discovers the
node's topology (NVML, else sysfs; CPU-only without GPUs), takes its own slice
of the node plan (its GPU, the CPUs and NUMA node near it, its nearest NICs),
binds itself there, and sets the NCCL profile's variables. Local rank 0 runs
the node's accounting sampler, in the node's sidecar process
(:mod:`hpc.runtime.sidecar`), else (no sidecar) on a thread of its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hpc.accounting import summarize
from hpc.accounting.host import ON_HOST_ENV
from hpc.accounting.prometheus import prometheus_labels
from hpc.accounting.sampler import Sampler, SamplerConfig
from hpc.nccl import nccl_env
from hpc.runtime.environment import RankInfo
from hpc.runtime.sidecar import Sidecar, warn_fallback
from hpc.topology.apply import apply_placement
from hpc.topology.discover import discover
from hpc.topology.model import format_cpulist
from hpc.topology.nvsmi import read_nvsmi
from hpc.topology.placement import compute_hcas, plan_node

log = logging.getLogger(__name__)


# Once per process: hpc.run places a script before it runs, and a Session the script
# opens later must not bind again (the second discovery would see the narrowed affinity).
_placed: list[tuple[dict[str, str], str]] = []
# Samplers running in this process, by file: a Session adopts the one hpc.run started.
_samplers: dict[Path, NodeAccounting] = {}
# The CPUs this process had before placement bound it, and those no local rank is bound to.
_node_cpus: list[tuple[list[int], list[int]]] = []
SIDECAR_NICE = 10


def place_rank(cfg: dict[str, Any], info: RankInfo) -> tuple[dict[str, str], str]:
    """Bind this process; set and return the environment it added; one line for the log.

    A second call in the same process returns the first one's result and changes nothing.
    """
    if _placed:
        return _placed[0]
    placement = cfg.get("placement") or {}
    nccl = cfg.get("nccl") or {}
    added: dict[str, str] = {}
    line = "placement off"
    topology = None
    if placement.get("enabled", True):
        topology = read_nvsmi(placement["topo_file"]) if placement.get("topo_file") else discover()
        plan = plan_node(
            topology,
            info.local_world_size,
            link_layer=placement.get("link_layer"),
            strict_memory=bool(placement.get("strict_memory", False)),
        )
        mine = plan[info.local_rank]
        before = sorted(os.sched_getaffinity(0))
        taken = {cpu for rank_plan in plan for cpu in rank_plan.cpus}
        _node_cpus.append((before, [cpu for cpu in before if cpu not in taken]))
        added.update(apply_placement(mine))
        bound = sorted(os.sched_getaffinity(0))
        line = (
            f"gpu {mine.gpu if mine.gpu is not None else '-'} cpus {_ranges(bound)} "
            f"numa {mine.numa_node if mine.numa_node is not None else '-'} "
            f"nics {','.join(mine.nics) or '-'}"
        )
    hcas = compute_hcas(topology, placement.get("link_layer")) if topology is not None else []
    overrides = {str(k): str(v) for k, v in (nccl.get("env") or {}).items()}
    env_now = {**os.environ, **added}
    added.update(nccl_env(str(nccl.get("profile", "default")), hcas, overrides, env_now))
    for key, value in added.items():
        os.environ.setdefault(key, value)  # what the user set explicitly stays
    _placed.append((added, line))
    return added, line


def sidecar_cpus() -> tuple[list[int], int]:
    """Where the node's sidecar runs: (CPUs, nice increment).

    The CPUs placement left to no local rank, at normal priority, when there are
    such; else all the job's CPUs (this process's before placement bound it) at
    ``nice`` :data:`SIDECAR_NICE`, so it runs when a rank's core waits.
    """
    if _node_cpus:
        before, free = _node_cpus[0]
        return (free, 0) if free else (before, SIDECAR_NICE)
    return sorted(os.sched_getaffinity(0)), SIDECAR_NICE


def start_sidecar(sampler: dict[str, Any] | None = None) -> Sidecar | None:
    """This node's sidecar, started from this rank (None, warned once, if it cannot be)."""
    cpus, nice = sidecar_cpus()
    side, why = Sidecar.start(cpus, nice, sampler)
    if side is None:
        warn_fallback("metrics sender" if sampler is None else "accounting sampler", why)
    return side


def _ranges(cpus: list[int]) -> str:
    return format_cpulist(cpus) or "-"


class NodeAccounting:
    """The node's accounting sampler (local rank 0 only); a no-op elsewhere.

    It runs in the node's sidecar (``sidecar``, which rank 0's tracker may share),
    else on a thread here (``sampler``).
    """

    def __init__(self, cfg: dict[str, Any], info: RankInfo, run_dir: Path, job_id: str | None):
        acct = cfg.get("accounting") or {}
        # In a container the host side may sample instead (hpc.accounting.host).
        self.on_host = os.environ.get(ON_HOST_ENV) == "1"
        self.enabled = bool(acct.get("enabled", True)) and info.local_rank == 0
        self.enabled = self.enabled and not self.on_host
        self.directory = run_dir / "accounting"
        self.path = self.directory / f"node{info.node_rank}.jsonl"
        self.interval_s = float(acct.get("interval_s", 10.0))
        self.job_id = job_id
        self.idle = dict(acct.get("idle") or {})
        self.prometheus_dir = acct.get("prometheus_textfile")
        self.labels = prometheus_labels(cfg, job_id)
        self.sampler: Any = None
        self.sidecar: Sidecar | None = None

    def start(self) -> None:
        if not self.enabled:
            return
        running = _samplers.get(self.path)
        if running is not None and (running.sampler or running.sidecar):  # adopt (stop is ours)
            self.sampler, running.sampler = running.sampler, None
            self.sidecar, running.sidecar = running.sidecar, None
            _samplers[self.path] = self
            return
        _samplers[self.path] = self
        self.directory.mkdir(parents=True, exist_ok=True)
        config = SamplerConfig(
            path=self.path,
            interval_s=self.interval_s,
            root_pid=os.getppid(),
            job_id=self.job_id,
            idle=self.idle or None,
            prometheus_dir=str(self.prometheus_dir) if self.prometheus_dir else None,
            labels=self.labels,
        )
        spec = {
            "path": str(config.path),
            "interval_s": config.interval_s,
            "root_pid": config.root_pid,
            "job_id": config.job_id,
            "idle": config.idle,
            "prometheus_dir": config.prometheus_dir,
            "labels": config.labels,
        }
        self.sidecar = start_sidecar(spec)
        if self.sidecar is not None:
            return
        try:
            self.sampler = Sampler(config).start()
        except Exception as exc:  # accounting never stops training
            log.warning("accounting sampler not started: %s", exc)

    def stop(self) -> None:
        if self.sidecar is not None:
            self.sidecar.stop_sampler()  # the sidecar may go on shipping metrics
        if self.sampler is not None:
            try:
                self.sampler.stop()
            except Exception as exc:
                log.warning("accounting sampler did not stop cleanly: %s", exc)
            self.sampler = None


def summarize_run(directory: Path) -> dict[str, Any] | None:
    """The job's accounting over all nodes' files (sums; peaks as maxima)."""
    files = sorted(directory.glob("node*.jsonl"))
    if not files:
        return None
    parts = [summarize(path) for path in files]
    total: dict[str, Any] = {"nodes": len(parts)}
    for key in ("gpus", "gpu_hours", "cpu_hours", "samples", "energy_kwh", "idle_gpu_hours"):
        values = [p.get(key) for p in parts]
        total[key] = None if any(v is None for v in values) else sum(values)
    for key in ("peak_gpu_memory_bytes", "peak_rss_bytes", "wall_s", "restarts"):
        present = [p[key] for p in parts if p.get(key) is not None]
        total[key] = max(present) if present else None
    utils = [(p.get("gpu_util_mean"), p.get("gpu_hours") or 0) for p in parts]
    weighted = [(u, w) for u, w in utils if u is not None and w]
    total["gpu_util_mean"] = (
        sum(u * w for u, w in weighted) / sum(w for _, w in weighted) if weighted else None
    )
    total["mode"] = ",".join(sorted({str(p.get("mode")) for p in parts}))
    return total
