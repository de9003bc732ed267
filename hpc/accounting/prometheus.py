"""Live job metrics for node_exporter's textfile collector (``accounting.prometheus_textfile``).

After every sample the node's sampler rewrites ``<DIR>/hpc_job_<job>_node<N>.prom``
(atomically, :func:`hpc.files.write_atomic` without fsync: the collector never reads a
torn file) with the sample's GPU and CPU figures and each local rank's step from its
heartbeat (``<run_dir>/heartbeat/rank<N>.json``). Every series carries ``job_id``,
``user``, ``account``, ``job_name`` and ``node``; GPU series also ``gpu``. The stop
record removes the file, so a finished job's series end with it (Prometheus marks them
stale). Run node_exporter with ``--collector.textfile.directory=DIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from hpc.files import write_atomic

PREFIX = "hpc_job_"
# (metric, help, type, sample key) for GPU series
GPU_SERIES = (
    ("gpu_utilization_percent", "NVML utilization.gpu: time any kernel ran", "gauge", "util"),
    ("gpu_sm_active_percent", "GPM SM activity (Hopper+): share of SMs busy", "gauge", "sm_active"),
    ("gpu_memory_used_bytes", "GPU memory used", "gauge", "mem"),
    ("gpu_power_watts", "GPU power draw", "gauge", "power_w"),
    ("gpu_energy_joules_total", "GPU energy since the driver loaded", "counter", "energy_mj"),
    ("gpu_processes", "compute processes on the GPU", "gauge", "procs"),
)


def _labels(labels: dict[str, str], **more: str) -> str:
    items = {**labels, **more}
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in items.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def file_name(job_id: str | None, node: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in (job_id or "local"))
    return f"{PREFIX}{safe}_{node}.prom"


def render(record: dict[str, Any], labels: dict[str, str], steps: dict[int, int]) -> str:
    """The textfile for one sample record (and the ranks' steps)."""
    out: list[str] = []

    def family(name: str, help_text: str, kind: str, rows: list[tuple[str, float]]) -> None:
        if not rows:
            return
        out.append(f"# HELP {PREFIX}{name} {help_text}")
        out.append(f"# TYPE {PREFIX}{name} {kind}")
        out.extend(f"{PREFIX}{name}{lab} {_num(v)}" for lab, v in rows)

    gpus = record.get("gpus") or []
    for name, help_text, kind, key in GPU_SERIES:
        rows = []
        for gpu in gpus:
            value = gpu.get(key)
            if value is None:
                continue
            if key == "energy_mj":
                value = value / 1000.0
            rows.append((_labels(labels, gpu=str(gpu.get("index", 0))), float(value)))
        family(name, help_text, kind, rows)
    lab = _labels(labels)
    if record.get("cpu_percent") is not None:
        family("cpu_percent", "job processes' CPU, percent of one core", "gauge",
               [(lab, float(record["cpu_percent"]))])  # fmt: skip
    if record.get("rss") is not None:
        rss = [(lab, float(record["rss"]))]
        family("rss_bytes", "job processes' resident memory", "gauge", rss)
    family(
        "step",
        "latest training step of each local rank (heartbeat)",
        "gauge",
        [(_labels(labels, rank=str(r)), float(s)) for r, s in sorted(steps.items())],
    )
    family("sample_timestamp_seconds", "time of the sample", "gauge", [(lab, float(record["t"]))])
    return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return repr(float(v)) if v != int(v) else str(int(v))


def heartbeat_steps(run_dir: Path, node: int | None) -> dict[int, int]:
    """Each rank's step from its heartbeat file (this node's ranks where ``node`` given)."""
    steps: dict[int, int] = {}
    for path in sorted((run_dir / "heartbeat").glob("rank*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            beat = json.loads(path.read_text(encoding="utf-8"))
            if node is not None and beat.get("node_rank", node) != node:
                continue
            if beat.get("step") is not None:
                steps[int(beat["rank"])] = int(beat["step"])
    return steps


class TextfileWriter:
    def __init__(self, directory: Path, job_id: str | None, node: int, labels: dict[str, str]):
        self.path = Path(directory) / file_name(job_id, f"node{node}")
        self.node = node
        self.labels = {**labels, "node": str(node)}

    def write(self, record: dict[str, Any], run_dir: Path | None) -> None:
        steps = heartbeat_steps(run_dir, None) if run_dir is not None else {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, render(record, self.labels, steps), durable=False)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def prometheus_labels(cfg: dict[str, Any], job_id: str | None) -> dict[str, str]:
    """The job's labels on its Prometheus series: job id, user, account, job name."""
    res = cfg.get("resources") or {}
    return {
        "job_id": job_id or os.environ.get("HPC_JOB_ID") or "local",
        "user": os.environ.get("SLURM_JOB_USER") or os.environ.get("USER") or "",
        "account": os.environ.get("SLURM_JOB_ACCOUNT") or str(res.get("account") or ""),
        "job_name": str((cfg.get("job") or {}).get("name") or ""),
    }
