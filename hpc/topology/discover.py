"""Discover this machine's topology: NVML first, then sysfs, then CPU-only."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hpc.topology.model import Topology, TopologyError
from hpc.topology.nvml import read_nvml
from hpc.topology.sysfs import read_sysfs

__all__ = ["discover"]

log = logging.getLogger(__name__)


def nvidia_driver_loaded() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def discover(sysfs_root: str | Path = "/", allowed_cpus: frozenset[int] | None = None) -> Topology:
    """Topology of this machine.

    Tries NVML (GPUs, NVLink, NUMA-local CPUs) and falls back to sysfs. Without GPUs the
    result has no GPUs, CPUs from sysfs / ``os.sched_getaffinity`` and a note saying so in
    ``notes[0]``.
    """
    if nvidia_driver_loaded():
        try:
            return read_nvml(sysfs_root, allowed_cpus)
        except TopologyError as e:
            reason = str(e)
    else:  # skip loading libnvidia-ml (~20 ms) where no driver can answer
        reason = "no NVIDIA GPU/driver found: no driver loaded (no /proc/driver/nvidia)"
    log.info("NVML unavailable: %s; reading sysfs", reason)
    topo = read_sysfs(sysfs_root, allowed_cpus)
    if topo.gpus:
        topo.notes.insert(0, f"NVML unavailable ({reason}); GPUs from sysfs, no NVLink info")
    else:
        topo.notes.insert(0, f"no GPUs ({reason}); CPU-only topology")
    return topo
