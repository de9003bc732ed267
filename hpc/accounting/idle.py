"""The idle policy: a GPU whose every sample in a window is under a threshold.

``accounting.idle: {window_s, below_util, action: warn|stop}`` (``action: off`` by
default). The sampler feeds each sample record to an :class:`IdleDetector`; the policy
is judged per GPU, on its own samples, never on a job average: one busy GPU does not
hide an idle one. A sample is idle when the GPU's utilisation (NVML ``utilization.gpu``,
or GPM SM activity where the sampler recorded it) is under ``below_util`` percent, or
when no process holds the GPU (``procs: 0``: an allocation nobody uses). A sample
without a reading ends the idle stretch (missing data never stops a job). A node
without GPUs is judged on the job's CPU use (``cpu_percent``, percent of one core) as
one device ``cpu``, so the policy also covers CPU nodes.

An :class:`IdleEvent` is raised once per ``window_s`` of an unbroken idle stretch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ACTIONS = ("off", "warn", "stop")


@dataclass(frozen=True)
class IdlePolicy:
    window_s: float = 1800.0
    below_util: float = 5.0
    action: str = "off"

    @classmethod
    def from_config(cls, doc: dict[str, Any] | None) -> IdlePolicy:
        doc = doc or {}
        return cls(
            window_s=float(doc.get("window_s", 1800.0)),
            below_util=float(doc.get("below_util", 5.0)),
            action=str(doc.get("action", "off")),
        )

    @property
    def active(self) -> bool:
        return self.action in ("warn", "stop")


@dataclass
class IdleEvent:
    """One device idle for a whole window."""

    device: str  # "gpu<index>" or "cpu"
    start_t: float
    end_t: float
    samples: int
    max_util: float | None  # the highest reading in the window (None: no process only)
    metric: str  # which reading: "util" (NVML), "sm_active" (GPM), "cpu_percent"
    reason: str
    action: str

    def line(self) -> str:
        return (
            f"idle {self.device}: {self.reason} for {self.end_t - self.start_t:.0f}s "
            f"({self.samples} samples; action {self.action})"
        )


@dataclass
class _Stretch:
    start_t: float
    last_t: float
    samples: int = 0
    max_util: float | None = None
    no_process: bool = True
    fired_at: float | None = None


@dataclass
class IdleDetector:
    policy: IdlePolicy
    _stretch: dict[str, _Stretch] = field(default_factory=dict)

    def reset(self) -> None:
        self._stretch.clear()

    def feed(self, record: dict[str, Any]) -> list[IdleEvent]:
        """Take one JSONL record; the events it completes (a header resets)."""
        kind = record.get("type")
        if kind == "header":
            self.reset()
            return []
        if kind != "sample":
            return []
        t = float(record["t"])
        events = []
        for device, reading, metric, no_proc in readings(record):
            event = self._feed_device(device, t, reading, metric, no_proc)
            if event is not None:
                events.append(event)
        return events

    def _feed_device(
        self, device: str, t: float, util: float | None, metric: str, no_proc: bool
    ) -> IdleEvent | None:
        p = self.policy
        idle = no_proc or (util is not None and util < p.below_util)
        if not idle:
            self._stretch.pop(device, None)
            return None
        s = self._stretch.get(device)
        if s is None:
            s = self._stretch[device] = _Stretch(start_t=t, last_t=t)
        s.samples += 1
        s.last_t = t
        s.no_process = s.no_process and no_proc
        if util is not None:
            s.max_util = util if s.max_util is None else max(s.max_util, util)
        since = s.start_t if s.fired_at is None else s.fired_at
        if s.samples < 2 or t - since < p.window_s:
            return None
        s.fired_at = t
        if s.no_process:
            reason = "no process on the GPU"
        else:
            reason = f"{metric} under {p.below_util:g}% (max {s.max_util:g}%)"
        return IdleEvent(device, s.start_t, t, s.samples, s.max_util, metric, reason, p.action)


def readings(record: dict[str, Any]) -> Iterator[tuple[str, float | None, str, bool]]:
    """(device, reading, metric, no process) for each device of a sample record."""
    gpus = record.get("gpus") or []
    if not gpus:
        cpu = record.get("cpu_percent")
        if cpu is not None:
            yield "cpu", float(cpu), "cpu_percent", False
        return
    for gpu in gpus:
        metric = "sm_active" if gpu.get("sm_active") is not None else "util"
        value = gpu.get(metric)
        yield (
            f"gpu{int(gpu.get('index', 0))}",
            None if value is None else float(value),
            metric,
            gpu.get("procs") == 0,
        )


def scan(lines: Iterable[str], policy: IdlePolicy) -> list[IdleEvent]:
    """Every idle event of a JSONL sample stream (torn or foreign lines skipped)."""
    detector = IdleDetector(policy)
    events: list[IdleEvent] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events.extend(detector.feed(record))
    return events


def scan_file(path: Path, policy: IdlePolicy) -> list[IdleEvent]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return scan(fh, policy)


def event_record(event: IdleEvent) -> dict[str, Any]:
    """The ``idle`` record the sampler appends to its JSONL file."""
    return {"type": "idle", "t": event.end_t, **asdict(event)}
