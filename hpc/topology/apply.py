"""Apply a :class:`RankPlacement` inside the rank's own process.

Device selection stays with the runtime (``torch.cuda.set_device``); this only pins CPUs
and returns environment variables for the rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from hpc.topology.model import format_cpulist
from hpc.topology.placement import RankPlacement

__all__ = ["apply_placement"]

log = logging.getLogger(__name__)


def apply_placement(p: RankPlacement, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Pin this process to ``p.cpus`` and return the env to set for the rank.

    CPUs outside the current affinity are ignored; if none is left the affinity is not
    changed and a warning is logged. Returned variables: ``HPC_PLACEMENT_CPUS`` (the CPUs
    actually bound, cpulist form), ``HPC_PLACEMENT_GPU`` and ``HPC_PLACEMENT_NUMA_NODE``
    when known, ``HPC_PLACEMENT_MEMBIND`` (the NUMA node) only with strict memory binding,
    ``HPC_PLACEMENT_DATALOADER_WORKERS``, ``OMP_NUM_THREADS`` (physical cores bound, at
    least 1), and, unless ``environ`` (default ``os.environ``) already sets them,
    ``NCCL_IB_HCA`` (``=``-exact list of the rank's nearest NICs) and
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (so CUDA numbers GPUs like NVML and ``nvidia-smi``,
    which the plan's GPU indices follow; CUDA's default order is fastest-first).
    """
    environ = os.environ if environ is None else environ
    current = os.sched_getaffinity(0)
    cpus = sorted(c for c in p.cpus if c in current)
    if cpus:
        os.sched_setaffinity(0, cpus)
    elif p.cpus:
        log.warning(
            "rank %d: planned CPUs %s are outside this process's allowed CPUs %s; "
            "CPU affinity left unchanged",
            p.local_rank,
            format_cpulist(p.cpus),
            format_cpulist(current),
        )
    else:
        log.warning("rank %d: no CPUs planned; CPU affinity left unchanged", p.local_rank)
    bound = cpus or sorted(current)
    cores = min(p.num_cores, len(cpus)) if cpus and p.num_cores else len(bound)
    env = {
        "HPC_PLACEMENT_CPUS": format_cpulist(bound),
        "HPC_PLACEMENT_DATALOADER_WORKERS": str(p.dataloader_workers),
        "OMP_NUM_THREADS": str(max(1, cores)),
    }
    if p.gpu is not None:
        env["HPC_PLACEMENT_GPU"] = str(p.gpu)
    if p.numa_node is not None:
        env["HPC_PLACEMENT_NUMA_NODE"] = str(p.numa_node)
        if p.strict_memory:
            env["HPC_PLACEMENT_MEMBIND"] = str(p.numa_node)
    if p.gpu is not None and "CUDA_DEVICE_ORDER" not in environ:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    nearest = p.nearest_nics
    if nearest and "NCCL_IB_HCA" not in environ:
        env["NCCL_IB_HCA"] = "=" + ",".join(nearest)
    return env
