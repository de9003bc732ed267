"""Per-job resource accounting: a node-local sampler (NVML + psutil) writing JSONL.

Light to import: the names below load their modules on first use (the cost report
reads summaries without importing psutil), and nvidia-ml-py is loaded only when a
sampler starts.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Sampler": "hpc.accounting.sampler",
    "SamplerConfig": "hpc.accounting.sampler",
    "summarize": "hpc.accounting.summary",
}
__all__ = ["Sampler", "SamplerConfig", "summarize"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'hpc.accounting' has no attribute {name!r}")
