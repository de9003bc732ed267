"""Join the framework's own run records (``job.json`` + accounting JSONL) to allocations.

``--accounting DIR`` names run directories (holding ``job.json``) or folders above them
(searched three levels down). ``job.json`` keys used: ``job_id``, ``accounting_file``
(relative to the run directory; a file, a folder of ``*.jsonl`` — one per node — or
absent, meaning ``accounting*.jsonl`` in the run directory), ``mlflow_run_id``, ``state``,
``name`` and, when present, ``user``/``account``/``partition`` (top level or ``extra``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc.accounting.summary import summarize
from hpc.cost.common import CostInputError

if TYPE_CHECKING:
    from hpc.cost.model import AllocationSet

RECORD = "job.json"
MAX_DEPTH = 3


@dataclass
class RunAccounting:
    """What the sampler measured for one job (all its run directories and nodes)."""

    job_id: str
    summary: dict[str, Any]
    run_dirs: list[str] = field(default_factory=list)
    mlflow_run_ids: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class AccountingSet:
    runs: dict[str, RunAccounting] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)


def find_run_dirs(path: Path) -> list[Path]:
    if (path / RECORD).is_file():
        return [path]
    if not path.is_dir():
        raise CostInputError(str(path), "--accounting: no such directory")
    found: list[Path] = []
    base_depth = len(path.parts)
    for root, dirs, files in os.walk(path):
        if RECORD in files:
            found.append(Path(root))
            dirs[:] = []
        elif len(Path(root).parts) - base_depth >= MAX_DEPTH:
            dirs[:] = []
        dirs.sort()
    return found


def _load_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CostInputError(str(path), f"not valid JSON: {exc.msg}", exc.lineno) from None
    if not isinstance(data, dict):
        raise CostInputError(str(path), "expected a JSON object", 1)
    return data


def _accounting_files(run_dir: Path, record: dict[str, Any]) -> list[Path]:
    named = record.get("accounting_file")
    if named:
        p = Path(named)
        p = p if p.is_absolute() else run_dir / p
        if p.is_dir():
            return sorted(p.glob("*.jsonl"))
        if p.is_file():
            return [p]
        # the run may have moved: try the same name inside the run directory
        local = run_dir / p.name
        return [local] if local.is_file() else []
    return sorted(run_dir.glob("accounting*.jsonl"))


def combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for several nodes (or run directories) of the same job."""
    if len(summaries) == 1:
        return dict(summaries[0])
    gh = sum(s["gpu_hours"] for s in summaries)
    utils = [
        (s["gpu_util_mean"], s["gpu_hours"]) for s in summaries if s["gpu_util_mean"] is not None
    ]
    weight = sum(w for _, w in utils)
    if not utils:
        util = None
    elif weight:
        util = sum(u * w for u, w in utils) / weight
    else:
        util = sum(u for u, _ in utils) / len(utils)
    energies = [s["energy_kwh"] for s in summaries if s["gpus"]]
    firsts = [s["first_t"] for s in summaries if s["first_t"] is not None]
    lasts = [s["last_t"] for s in summaries if s["last_t"] is not None]
    return {
        **summaries[-1],
        "gpus": sum(s["gpus"] for s in summaries),
        "gpu_hours": gh,
        "gpu_util_mean": util,
        "peak_gpu_memory_bytes": max(
            (s["peak_gpu_memory_bytes"] for s in summaries if s["peak_gpu_memory_bytes"]),
            default=None,
        ),
        "energy_kwh": sum(energies) if energies and None not in energies else None,
        "idle_gpu_hours": _sum_known([s.get("idle_gpu_hours") for s in summaries]),
        "wall_s": max(s["wall_s"] for s in summaries),
        "cpu_hours": sum(s["cpu_hours"] for s in summaries),
        "samples": sum(s["samples"] for s in summaries),
        "restarts": max(s["restarts"] for s in summaries),
        "first_t": min(firsts) if firsts else None,
        "last_t": max(lasts) if lasts else None,
    }


def load_accounting(paths: list[str | Path]) -> AccountingSet:
    """Summaries of every run under ``paths``, keyed by job id."""
    out = AccountingSet()
    per_job: dict[str, list[tuple[Path, dict[str, Any], list[dict[str, Any]]]]] = {}
    for p in paths:
        for run_dir in find_run_dirs(Path(p)):
            record = _load_record(run_dir)
            job_id = record.get("job_id")
            if not job_id:
                out.skipped["run directory without job_id (never submitted?)"] += 1
                continue
            files = _accounting_files(run_dir, record)
            if not files:
                out.skipped["run directory without an accounting file"] += 1
                continue
            summaries = []
            for f in files:
                try:
                    summaries.append(summarize(f))
                except ValueError as exc:
                    raise CostInputError(str(f), str(exc).removeprefix(f"{f}:")) from None
            per_job.setdefault(str(job_id), []).append((run_dir, record, summaries))
    for job_id, runs in per_job.items():
        summary = combine([s for _, _, ss in runs for s in ss])
        out.runs[job_id] = RunAccounting(
            job_id=job_id,
            summary=summary,
            run_dirs=[str(d) for d, _, _ in runs],
            mlflow_run_ids=[r["mlflow_run_id"] for _, r, _ in runs if r.get("mlflow_run_id")],
            record=runs[-1][1],
        )
    return out


def _field(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key) or (record.get("extra") or {}).get(key)
    return str(value) if value else None


def as_allocations(acc: AccountingSet) -> AllocationSet:
    """Allocation records from run records alone (no sacct): local and Kubernetes runs."""
    from hpc.cost.model import AllocationSet  # noqa: PLC0415 (lazy: pyarrow)

    rows = []
    for i, (job_id, run) in enumerate(sorted(acc.runs.items()), 1):
        s, rec = run.summary, run.record
        start = None if s["first_t"] is None else datetime.fromtimestamp(s["first_t"], UTC)
        end = None if s["last_t"] is None else datetime.fromtimestamp(s["last_t"], UTC)
        state = rec.get("state")
        rows.append(
            {
                "job_id": job_id,
                "job_id_raw": job_id,
                "array_job_id": None,
                "array_task_id": None,
                "het_job_id": None,
                "het_offset": None,
                "user": _field(rec, "user"),
                "account": _field(rec, "account"),
                "partition": _field(rec, "partition") or rec.get("launcher"),
                "state": "COMPLETED" if state in (None, "PENDING") and end else state,
                "submit": start,
                "start": start,
                "end": end,
                "elapsed_s": int(s["wall_s"]),
                "ncpus": None,
                "gpus": int(s["gpus"]),
                "gpu_type": None,
                "billing": None,
                "nodes": None,
                "line": i,
                "file": str(Path(run.run_dirs[-1]) / RECORD),
            }
        )
    notes = ["allocations taken from run records (no sacct input): CPU-hours not known"]
    return AllocationSet.from_records(rows, sources=["--accounting"], notes=notes)


def _sum_known(values: list[Any]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return sum(known) if known else None
