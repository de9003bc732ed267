"""GPU Performance Monitoring (NVML GPM, Hopper and later): SM activity between samples.

NVML's ``utilization.gpu`` is the fraction of time any kernel ran, so one tiny kernel
in a loop reads 100%. GPM's ``SM_UTIL`` is the share of SMs that were busy and
``SM_OCCUPANCY`` the share of warps active against the maximum, both over the interval
between two GPM samples. :class:`Gpm` keeps the previous sample per GPU and gives
``{"sm_active": %, "sm_occupancy": %}`` for each new one; on a GPU (or driver, or
nvidia-ml-py) without GPM it gives nothing, and the sampler records only NVML's
utilisation. Every call is guarded: GPM never stops sampling.
"""

from __future__ import annotations

import contextlib
from typing import Any

METRICS = {"sm_active": "NVML_GPM_METRIC_SM_UTIL", "sm_occupancy": "NVML_GPM_METRIC_SM_OCCUPANCY"}


class Gpm:
    def __init__(self, nv: Any, handles: list[tuple[int, Any]]):
        self.nv = nv
        self.prev: dict[int, Any] = {}
        self.supported: set[int] = set()
        needed = ("nvmlGpmQueryDeviceSupport", "nvmlGpmSampleAlloc", "nvmlGpmMetricsGet")
        if not all(hasattr(nv, name) for name in needed):
            return
        for index, handle in handles:
            with contextlib.suppress(Exception):
                if nv.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
                    self.supported.add(index)

    def sample(self, index: int, handle: Any) -> dict[str, float | None]:
        """The SM figures since the last call for this GPU ({} without GPM or at first)."""
        if index not in self.supported:
            return {}
        nv = self.nv
        try:
            cur = nv.nvmlGpmSampleGet(handle, nv.nvmlGpmSampleAlloc())
        except Exception:
            self.supported.discard(index)
            return {}
        prev, self.prev[index] = self.prev.get(index), cur
        if prev is None:
            return {}
        try:
            get = nv.c_nvmlGpmMetricsGet_t()
            get.version = nv.NVML_GPM_METRICS_GET_VERSION
            get.numMetrics = len(METRICS)
            get.sample1, get.sample2 = prev, cur
            for i, name in enumerate(METRICS.values()):
                get.metrics[i].metricId = getattr(nv, name)
            nv.nvmlGpmMetricsGet(get)
            out: dict[str, float | None] = {}
            for i, key in enumerate(METRICS):
                m = get.metrics[i]
                out[key] = round(float(m.value), 2) if m.nvmlReturn == 0 else None
            return out
        except Exception:
            return {}
        finally:
            with contextlib.suppress(Exception):
                nv.nvmlGpmSampleFree(prev)

    def close(self) -> None:
        for sample in self.prev.values():
            with contextlib.suppress(Exception):
                self.nv.nvmlGpmSampleFree(sample)
        self.prev.clear()
