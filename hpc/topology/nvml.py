"""Read the GPU topology through NVML (nvidia-ml-py), completed with sysfs.

NVML gives each GPU's NUMA-local CPUs (``nvmlDeviceGetCpuAffinityWithinScope`` with the
NODE scope), the PCIe relation of two GPUs (``nvmlDeviceGetTopologyCommonAncestor``) and
NVLinks. CPUs, hyperthreads, RDMA NICs and GPU-NIC links come from sysfs
(:mod:`hpc.topology.sysfs`), since NVML does not know NICs. ``pynvml`` is imported
lazily so that this module imports on machines without it.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from hpc.topology.model import Gpu, NoGpuError, Topology, TopologyError
from hpc.topology.sysfs import normalize_bus_id, read_sysfs

__all__ = ["read_nvml"]

# nvmlGpuTopologyLevel_t -> nvidia-smi link class. INTERNAL = two GPUs on one board.
_LEVELS = {0: "PIX", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bits(words: Any) -> frozenset[int]:
    """CPU/node ids set in an NVML bitmask (array of 64-bit words)."""
    out: set[int] = set()
    for w, word in enumerate(words):
        word = int(word)
        out.update(w * 64 + b for b in range(64) if word >> b & 1)
    return frozenset(out)


def read_nvml(sysfs_root: str | Path = "/", allowed_cpus: frozenset[int] | None = None) -> Topology:
    """Discover GPUs with NVML; raise :class:`NoGpuError` when there is no GPU/driver."""
    try:
        import pynvml  # noqa: PLC0415 (lazy: optional nvidia-ml-py)
    except ImportError as e:
        raise NoGpuError(f"no NVIDIA GPU/driver found: nvidia-ml-py is not installed ({e})") from e
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NoGpuError(f"no NVIDIA GPU/driver found: {e}") from e
    except OSError as e:  # libnvidia-ml.so present but unusable
        raise NoGpuError(f"no NVIDIA GPU/driver found: {e}") from e
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise NoGpuError("no NVIDIA GPU/driver found: NVML reports 0 devices")
        return _read(pynvml, count, sysfs_root, allowed_cpus)
    except pynvml.NVMLError as e:
        raise TopologyError(f"NVML query failed: {e}") from e
    finally:
        pynvml.nvmlShutdown()


def _read(
    nv: Any, count: int, sysfs_root: str | Path, allowed_cpus: frozenset[int] | None
) -> Topology:
    handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    bus_ids = [normalize_bus_id(_text(nv.nvmlDeviceGetPciInfo(h).busId)) for h in handles]
    topo = read_sysfs(sysfs_root, allowed_cpus, gpu_bus_ids=bus_ids)
    topo.source = "nvml"
    cpu_words = max(1, ((os.cpu_count() or 1) + 63) // 64, (max(topo.cpus, default=0) + 64) // 64)
    gpus = []
    for i, h in enumerate(handles):
        base = topo.gpus[i]
        try:
            affinity = _bits(
                nv.nvmlDeviceGetCpuAffinityWithinScope(h, cpu_words, nv.NVML_AFFINITY_SCOPE_NODE)
            )
        except nv.NVMLError:
            affinity = frozenset()
        try:
            nodes = _bits(nv.nvmlDeviceGetMemoryAffinity(h, 4, nv.NVML_AFFINITY_SCOPE_NODE))
        except nv.NVMLError:
            nodes = frozenset()
        numa = next(iter(nodes)) if len(nodes) == 1 else base.numa_node
        try:
            name = _text(nv.nvmlDeviceGetName(h))
        except nv.NVMLError:
            name = None
        gpus.append(Gpu(i, bus_ids[i], numa, affinity or base.cpu_affinity, name))
    topo.gpus = gpus
    for i, a in enumerate(handles):
        for j, b in enumerate(handles):
            if i == j:
                topo.gpu_links[(i, j)] = "X"
                continue
            try:
                level = nv.nvmlDeviceGetTopologyCommonAncestor(a, b)
                topo.gpu_links[(i, j)] = _LEVELS.get(level, "SYS")
            except nv.NVMLError:
                pass
    _add_nvlinks(nv, handles, bus_ids, topo)
    return topo


def _add_nvlinks(nv: Any, handles: list[Any], bus_ids: list[str], topo: Topology) -> None:
    """Replace PCIe link classes by ``NV#`` where GPUs share NVLinks (direct or NVSwitch)."""
    index = {b: i for i, b in enumerate(bus_ids)}
    direct: Counter[tuple[int, int]] = Counter()
    to_switch: Counter[int] = Counter()
    for i, h in enumerate(handles):
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            try:
                if nv.nvmlDeviceGetNvLinkState(h, link) != nv.NVML_FEATURE_ENABLED:
                    continue
                remote = normalize_bus_id(_text(nv.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId))
            except nv.NVMLError:
                continue
            if remote in index:
                direct[(i, index[remote])] += 1
                continue
            try:
                kind = nv.nvmlDeviceGetNvLinkRemoteDeviceType(h, link)
            except (nv.NVMLError, AttributeError):
                kind = nv.NVML_NVLINK_DEVICE_TYPE_SWITCH
            if kind == nv.NVML_NVLINK_DEVICE_TYPE_SWITCH:
                to_switch[i] += 1
    for i in range(len(handles)):
        for j in range(len(handles)):
            if i == j:
                continue
            n = direct[(i, j)] or min(to_switch[i], to_switch[j])
            if n:
                topo.gpu_links[(i, j)] = f"NV{n}"
