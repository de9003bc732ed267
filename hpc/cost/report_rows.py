"""A cost report's rows and totals (no pyarrow, no numpy: the store's report path and the
renderers use these; :mod:`hpc.cost.report` computes them from a table)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GROUPS = ("user", "account", "partition", "day", "job")
NONE_KEY = "(none)"
TOP_JOBS = 25


@dataclass
class Row:
    key: str
    jobs: int
    gpu_hours: float
    cpu_hours: float
    cost: float
    gpu_util_mean: float | None = None
    energy_kwh: float | None = None
    provisional_jobs: int = 0
    # From the joined accounting records (hpc.accounting.summary): GPU-hours the sampler
    # saw idle, and 1 - idle / the GPU-hours it sampled, over the jobs that have both.
    idle_gpu_hours: float | None = None
    efficiency: float | None = None


@dataclass
class Report:
    window_start: datetime | None
    window_end: datetime | None
    group_by: str
    rows: list[Row]
    total: Row
    currency: str = ""
    now: datetime | None = None
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    timeline: dict[str, dict[str, float]] = field(default_factory=dict)  # day -> series -> GPU-h
    timeline_series: str = "account"
    top_jobs: list[dict[str, Any]] = field(default_factory=list)
    util_values: list[float] = field(default_factory=list)  # per job, from accounting


def iso_z(t: datetime) -> str:
    """``t`` in UTC as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def efficiency(idle: float | None, sampled: float | None) -> float | None:
    """1 - idle / sampled GPU-hours (None when unknown or nothing sampled)."""
    if idle is None or not sampled:
        return None
    return max(0.0, 1.0 - idle / sampled)
