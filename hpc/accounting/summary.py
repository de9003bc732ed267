"""Reading back an accounting JSONL file written by :mod:`hpc.accounting.sampler`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc.accounting.idle import IdlePolicy, readings

IDLE_BELOW = IdlePolicy().below_util  # what "idle" means in the summary (%, or no process)


@dataclass
class _Segment:
    """One start of the sampler (a header and the records after it)."""

    gpus: int
    mode: str
    t0: float
    t_last: float
    samples: int = 0
    cpu_s: float = 0.0
    util_sum: float = 0.0
    util_n: int = 0
    peak_mem: int | None = None
    peak_rss: int | None = None
    energy_first: dict[int, int] | None = None
    energy_last: dict[int, int] | None = None
    power_j: dict[int, float] | None = None
    power_prev: dict[int, tuple[float, float]] | None = None
    idle_s: float = 0.0  # GPU-seconds between samples that read idle
    sample_prev: dict[str, float] | None = None

    def energy_j(self) -> float | None:
        """GPU energy of this segment: counter delta, else integrated power; None if unknown."""
        if self.gpus == 0 or self.mode != "nvml":
            return None
        first, last = self.energy_first or {}, self.energy_last or {}
        power = self.power_j or {}
        total = 0.0
        for index in set(first) | set(power) or {-1}:
            if index in first and index in last and last[index] >= first[index]:
                total += (last[index] - first[index]) / 1000.0
            elif index in power:
                total += power[index]
            else:
                return None
        return total


def summarize(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarise one accounting JSONL file.

    Returns ``gpus`` (most GPUs of any start), ``gpu_hours``, ``gpu_util_mean`` (None
    without GPU samples), ``peak_gpu_memory_bytes`` and ``peak_rss_bytes`` (None if never
    seen), ``energy_kwh`` (None if unknown), ``wall_s``, ``cpu_hours``, ``samples``,
    ``restarts`` (number of header records, i.e. starts), ``idle_gpu_hours`` (GPU time
    between samples under :data:`IDLE_BELOW` % or with no process on the GPU; None
    without GPU samples), ``mode``, ``reason``,
    ``job_id``, ``first_t``/``last_t`` (epoch seconds) and ``bad_lines`` (torn lines
    left by a killed writer). A line that is not JSON raises ``ValueError`` naming the
    file and line, unless it is the last line of a start (a torn write).
    """
    path = Path(path)
    segments: list[_Segment] = []
    last_header: dict[str, Any] = {}
    pending_bad: tuple[int, str] | None = None
    bad_lines = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if pending_bad is not None:
                    break  # two bad lines in a row: report the first below
                pending_bad = (lineno, str(exc))
                continue
            kind = rec.get("type")
            if pending_bad is not None and kind != "header":
                break
            if pending_bad is not None:
                bad_lines += 1
                pending_bad = None
            if kind == "header":
                last_header = rec
                t = float(rec.get("t", 0.0))
                segments.append(_Segment(int(rec.get("gpus") or 0), rec.get("mode", ""), t, t))
            elif not segments:
                raise ValueError(f"{path}:{lineno}: {kind!r} record before any header record")
            else:
                _add_record(segments[-1], rec, path, lineno)
        else:
            if pending_bad is not None:  # torn final line
                bad_lines += 1
                pending_bad = None
    if pending_bad is not None:
        raise ValueError(f"{path}:{pending_bad[0]}: not a JSON record ({pending_bad[1]})")
    return _summary(segments, last_header, bad_lines)


def _add_record(seg: _Segment, rec: dict[str, Any], path: Path, lineno: int) -> None:
    try:
        t = float(rec["t"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}:{lineno}: record without a numeric 't'") from None
    seg.t_last = max(seg.t_last, t)
    if rec.get("type") != "sample":
        return
    seg.samples += 1
    seg.cpu_s += float(rec.get("cpu_s") or 0.0)
    if rec.get("rss") is not None:
        seg.peak_rss = max(seg.peak_rss or 0, int(rec["rss"]))
    if seg.gpus and rec.get("gpus"):
        seg.sample_prev = seg.sample_prev or {}
        for device, value, _, no_proc in readings(rec):
            prev = seg.sample_prev.get(device)
            idle = no_proc or (value is not None and value < IDLE_BELOW)
            if prev is not None and t > prev and idle:
                seg.idle_s += t - prev
            seg.sample_prev[device] = t
    for gpu in rec.get("gpus") or []:
        index = int(gpu.get("index", 0))
        if gpu.get("util") is not None:
            seg.util_sum += float(gpu["util"])
            seg.util_n += 1
        if gpu.get("mem") is not None:
            seg.peak_mem = max(seg.peak_mem or 0, int(gpu["mem"]))
        if gpu.get("energy_mj") is not None:
            seg.energy_first = seg.energy_first or {}
            seg.energy_last = seg.energy_last or {}
            seg.energy_first.setdefault(index, int(gpu["energy_mj"]))
            seg.energy_last[index] = int(gpu["energy_mj"])
        if gpu.get("power_w") is not None:
            seg.power_j = seg.power_j or {}
            seg.power_prev = seg.power_prev or {}
            watts = float(gpu["power_w"])
            if index in seg.power_prev:
                t_prev, w_prev = seg.power_prev[index]
                seg.power_j[index] = (
                    seg.power_j.get(index, 0.0) + (t - t_prev) * (watts + w_prev) / 2
                )
            else:
                seg.power_j.setdefault(index, 0.0)
            seg.power_prev[index] = (t, watts)


def _summary(segments: list[_Segment], header: dict[str, Any], bad: int) -> dict[str, Any]:
    util_n = sum(s.util_n for s in segments)
    energies = [s.energy_j() for s in segments if s.gpus > 0]
    known = bool(energies) and all(e is not None for e in energies)
    peaks_mem = [s.peak_mem for s in segments if s.peak_mem is not None]
    peaks_rss = [s.peak_rss for s in segments if s.peak_rss is not None]
    gpu_segments = [s for s in segments if s.gpus > 0 and s.mode == "nvml"]
    return {
        "gpus": max((s.gpus for s in segments), default=0),
        "gpu_hours": sum(s.gpus * (s.t_last - s.t0) for s in segments) / 3600.0,
        "gpu_util_mean": (sum(s.util_sum for s in segments) / util_n) if util_n else None,
        "peak_gpu_memory_bytes": max(peaks_mem) if peaks_mem else None,
        "peak_rss_bytes": max(peaks_rss) if peaks_rss else None,
        "energy_kwh": sum(e or 0.0 for e in energies) / 3.6e6 if known else None,
        "idle_gpu_hours": sum(s.idle_s for s in gpu_segments) / 3600.0 if gpu_segments else None,
        "wall_s": sum(s.t_last - s.t0 for s in segments),
        "cpu_hours": sum(s.cpu_s for s in segments) / 3600.0,
        "samples": sum(s.samples for s in segments),
        "restarts": len(segments),
        "mode": header.get("mode"),
        "reason": header.get("reason"),
        "job_id": header.get("job_id"),
        "first_t": segments[0].t0 if segments else None,
        "last_t": max((s.t_last for s in segments), default=None),
        "bad_lines": bad,
    }
