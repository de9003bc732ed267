"""Topology-aware placement: discover GPUs/NICs/CPUs and plan where local ranks run.

Sources (same :class:`Topology` model): NVML (:func:`read_nvml`), Linux sysfs
(:func:`read_sysfs`) and saved ``nvidia-smi topo -m`` text (:func:`read_nvsmi`);
:func:`discover` tries NVML then sysfs. :func:`plan_node` applies the placement rule and
:func:`apply_placement` pins the calling rank. The CLI lives in :mod:`hpc.topology.cli`.
"""

from hpc.topology.apply import apply_placement
from hpc.topology.discover import discover
from hpc.topology.model import (
    Gpu,
    Nic,
    NoGpuError,
    Topology,
    TopologyError,
    TopologyParseError,
    format_cpulist,
    parse_cpulist,
)
from hpc.topology.nvml import read_nvml
from hpc.topology.nvsmi import parse_nvsmi, read_nvsmi
from hpc.topology.placement import PlacementError, RankPlacement, compute_hcas, plan_node
from hpc.topology.sysfs import read_sysfs

__all__ = [
    "Gpu",
    "Nic",
    "NoGpuError",
    "PlacementError",
    "RankPlacement",
    "Topology",
    "TopologyError",
    "TopologyParseError",
    "apply_placement",
    "compute_hcas",
    "discover",
    "format_cpulist",
    "parse_cpulist",
    "parse_nvsmi",
    "plan_node",
    "read_nvml",
    "read_nvsmi",
    "read_sysfs",
]
