"""Per-job efficiency from the sampler's own files (``hpc jobstats RUN_OR_JOB``).

Reads ``<run_dir>/accounting/node<N>.jsonl`` and reports, per node and per GPU:

* utilisation over time, in windows of ``window_s`` (mean and minimum per window, and
  whether the whole window was idle), not only the job's average;
* which figure it is: ``util`` is NVML's utilization.gpu (the share of time any kernel
  ran: one small kernel in a loop reads 100%); ``sm_active`` is GPM's SM activity (the
  share of SMs busy; Hopper and later, where the sampler could read it);
* the memory high-water mark, mean and peak power, energy (the driver's energy counter,
  else power integrated over the samples);
* GPU-hours allocated (the sampler's span) and allocated but idle: the time between
  samples whose reading was under ``below_util`` %, or when no process held the GPU;
* per node: CPU-hours, CPU efficiency (CPU time over wall x the node's allocated CPUs,
  from the run's ``resources``) and peak RSS. A node without GPUs shows its CPU use
  (percent of one core) over time in the same windows.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpc.accounting.idle import IdlePolicy, readings, scan_file

MAX_WINDOWS = 24
NICE_WINDOWS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 86400)


@dataclass
class Window:
    start_t: float
    samples: int
    mean: float | None
    min: float | None
    idle: bool  # every sample in it idle


@dataclass
class DeviceStats:
    device: str  # gpu<index> or cpu
    metric: str  # util, sm_active (GPM) or cpu_percent
    samples: int = 0
    mean: float | None = None
    nvml_util_mean: float | None = None  # NVML util beside GPM's figure
    memory_peak_bytes: int | None = None
    power_mean_w: float | None = None
    power_max_w: float | None = None
    energy_kwh: float | None = None
    allocated_hours: float = 0.0
    idle_hours: float = 0.0
    windows: list[Window] = field(default_factory=list)


@dataclass
class NodeStats:
    node: str
    host: str | None
    mode: str | None
    wall_s: float
    cpu_hours: float
    cpus: int | None
    cpu_efficiency: float | None
    peak_rss_bytes: int | None
    devices: list[DeviceStats]
    idle_events: int
    interval_s: float


@dataclass
class JobStats:
    run_dir: str
    job_id: str | None
    window_s: float
    below_util: float
    nodes: list[NodeStats]

    @property
    def gpu_hours(self) -> float:
        return sum(d.allocated_hours for n in self.nodes for d in n.devices if _gpu(d))

    @property
    def idle_gpu_hours(self) -> float:
        return sum(d.idle_hours for n in self.nodes for d in n.devices if _gpu(d))

    @property
    def efficiency(self) -> float | None:
        """Busy share of the allocated GPU-hours (CPU nodes: of the CPU time)."""
        gh = self.gpu_hours
        if gh > 0:
            return 1.0 - self.idle_gpu_hours / gh
        effs = [n.cpu_efficiency for n in self.nodes if n.cpu_efficiency is not None]
        return sum(effs) / len(effs) if effs else None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(
            gpu_hours=self.gpu_hours,
            idle_gpu_hours=self.idle_gpu_hours,
            efficiency=self.efficiency,
        )
        return doc


def _gpu(d: DeviceStats) -> bool:
    return d.device.startswith("gpu")


def pick_window(span_s: float, interval_s: float) -> float:
    """A round window giving at most MAX_WINDOWS windows, at least one sample interval."""
    want = max(interval_s, span_s / MAX_WINDOWS)
    return float(next((w for w in NICE_WINDOWS if w >= want), math.ceil(want)))


@dataclass
class _Series:
    metric: str
    points: list[tuple[float, float | None, bool, int]] = field(
        default_factory=list
    )  # t v idle seg
    util: list[float] = field(default_factory=list)
    mem: list[int] = field(default_factory=list)
    power: list[tuple[float, float]] = field(default_factory=list)
    energy: list[tuple[int, int]] = field(default_factory=list)  # (segment, mJ)
    spans: dict[int, tuple[float, float]] = field(default_factory=dict)  # segment -> t0, t1


def node_stats(
    path: Path, policy: IdlePolicy, window_s: float | None, cpus: int | None
) -> NodeStats:
    series: dict[str, _Series] = {}
    seg, header = -1, {}
    seg_t: dict[int, tuple[float, float]] = {}
    cpu_s, peak_rss, interval = 0.0, None, 10.0
    last_t: dict[str, float] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or "t" not in rec:
                continue
            t = float(rec["t"])
            if rec.get("type") == "header":
                seg, header = seg + 1, rec
                interval = float(rec.get("interval_s") or interval)
                seg_t[seg] = (t, t)
                last_t.clear()
                continue
            if seg < 0:
                continue
            seg_t[seg] = (seg_t[seg][0], max(seg_t[seg][1], t))
            if rec.get("type") != "sample":
                continue
            cpu_s += float(rec.get("cpu_s") or 0.0)
            if rec.get("rss") is not None:
                peak_rss = max(peak_rss or 0, int(rec["rss"]))
            gpus = {f"gpu{int(g.get('index', 0))}": g for g in rec.get("gpus") or []}
            for device, value, metric, no_proc in readings(rec):
                s = series.setdefault(device, _Series(metric))
                idle = no_proc or (value is not None and value < policy.below_util)
                s.points.append((t, value, idle, seg))
                g = gpus.get(device)
                if g is not None:
                    if g.get("util") is not None:
                        s.util.append(float(g["util"]))
                    if g.get("mem") is not None:
                        s.mem.append(int(g["mem"]))
                    if g.get("power_w") is not None:
                        s.power.append((t, float(g["power_w"])))
                    if g.get("energy_mj") is not None:
                        s.energy.append((seg, int(g["energy_mj"])))
                t0 = s.spans.get(seg, (seg_t[seg][0], t))[0]
                s.spans[seg] = (t0, t)
                last_t[device] = t
    span = sum(b - a for a, b in seg_t.values())
    first = min((a for a, _ in seg_t.values()), default=0.0)
    w = window_s or pick_window(span, interval)
    devices = [_device(name, s, w, first, seg_t) for name, s in sorted(series.items())]
    eff = cpu_s / (span * cpus) if cpus and span > 0 else None
    idle_events = len(scan_file(path, IdlePolicy(w, policy.below_util, "warn")))
    return NodeStats(
        node=path.stem,
        host=header.get("host"),
        mode=header.get("mode"),
        wall_s=span,
        cpu_hours=cpu_s / 3600.0,
        cpus=cpus,
        cpu_efficiency=eff,
        peak_rss_bytes=peak_rss,
        devices=devices,
        idle_events=idle_events,
        interval_s=interval,
    )


def _device(
    name: str, s: _Series, window_s: float, first: float, seg_t: dict[int, tuple[float, float]]
) -> DeviceStats:
    d = DeviceStats(device=name, metric=s.metric, samples=len(s.points))
    values = [p[1] for p in s.points if p[1] is not None]
    d.mean = sum(values) / len(values) if values else None
    if s.metric == "sm_active" and s.util:
        d.nvml_util_mean = sum(s.util) / len(s.util)
    d.memory_peak_bytes = max(s.mem) if s.mem else None
    if s.power:
        d.power_mean_w = sum(p for _, p in s.power) / len(s.power)
        d.power_max_w = max(p for _, p in s.power)
    d.energy_kwh = _energy_kwh(s)
    if name.startswith("gpu"):  # the GPU is allocated for the sampler's whole span
        d.allocated_hours = sum(b - a for a, b in seg_t.values()) / 3600.0
    prev: tuple[float, int] | None = None  # the previous sample's time and start
    for t, _, idle, seg in s.points:
        if prev is not None and prev[1] == seg and idle and t > prev[0]:
            d.idle_hours += (t - prev[0]) / 3600.0
        prev = (t, seg)
    buckets: dict[int, list[tuple[float | None, bool]]] = {}
    for t, v, idle, _ in s.points:
        buckets.setdefault(int((t - first) // window_s), []).append((v, idle))
    for k in sorted(buckets):
        got = [v for v, _ in buckets[k] if v is not None]
        d.windows.append(
            Window(
                start_t=first + k * window_s,
                samples=len(buckets[k]),
                mean=sum(got) / len(got) if got else None,
                min=min(got) if got else None,
                idle=all(i for _, i in buckets[k]),
            )
        )
    return d


def _energy_kwh(s: _Series) -> float | None:
    if s.energy:
        by_seg: dict[int, list[int]] = {}
        for seg, mj in s.energy:
            by_seg.setdefault(seg, []).append(mj)
        return sum(max(0, v[-1] - v[0]) for v in by_seg.values()) / 1000.0 / 3.6e6
    if len(s.power) > 1:
        joules = sum(
            (t1 - t0) * (p0 + p1) / 2
            for (t0, p0), (t1, p1) in zip(s.power, s.power[1:], strict=False)
        )
        return joules / 3.6e6
    return None


def job_stats(
    run_dir: Path,
    window_s: float | None = None,
    below_util: float | None = None,
    cfg: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> JobStats:
    """The run's stats from its accounting files (``ValueError`` if there are none)."""
    files = sorted((run_dir / "accounting").glob("node*.jsonl"))
    if not files:
        raise ValueError(f"{run_dir}: no accounting samples (accounting/node*.jsonl)")
    cfg = cfg or {}
    acct = cfg.get("accounting") or {}
    policy = IdlePolicy.from_config(acct.get("idle"))
    if below_util is not None:
        policy = IdlePolicy(policy.window_s, below_util, policy.action)
    res = cfg.get("resources") or {}
    cpus = None
    if res.get("cpus_per_task") and res.get("tasks_per_node"):
        cpus = int(res["cpus_per_task"]) * int(res["tasks_per_node"])
    nodes = [node_stats(p, policy, window_s, cpus) for p in files]
    w = window_s or max(pick_window(n.wall_s, n.interval_s) for n in nodes)
    if window_s is None and len(nodes) > 1:  # one window for all nodes
        nodes = [node_stats(p, policy, w, cpus) for p in files]
    return JobStats(str(run_dir), job_id, w, policy.below_util, nodes)
