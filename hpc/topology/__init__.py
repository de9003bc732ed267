"""Topology-aware placement: discover GPUs/NICs/CPUs and plan where local ranks run.

Sources (same :class:`Topology` model): NVML (:func:`read_nvml`), Linux sysfs
(:func:`read_sysfs`) and saved ``nvidia-smi topo -m`` text (:func:`read_nvsmi`);
:func:`discover` tries NVML then sysfs. :func:`plan_node` applies the placement rule and
:func:`apply_placement` pins the calling rank. The CLI lives in :mod:`hpc.topology.cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use (PEP 562): the CLI's dry run needs only a few of them.
_WHERE = {
    "apply_placement": "apply",
    "discover": "discover",
    "Gpu": "model",
    "Nic": "model",
    "NoGpuError": "model",
    "Topology": "model",
    "TopologyError": "model",
    "TopologyParseError": "model",
    "format_cpulist": "model",
    "parse_cpulist": "model",
    "read_nvml": "nvml",
    "parse_nvsmi": "nvsmi",
    "read_nvsmi": "nvsmi",
    "PlacementError": "placement",
    "RankPlacement": "placement",
    "compute_hcas": "placement",
    "plan_node": "placement",
    "read_sysfs": "sysfs",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hpc.topology' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hpc.topology.{_WHERE[name]}"), name)
    globals()[name] = value  # also replaces a submodule bound under the same name
    return value


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
