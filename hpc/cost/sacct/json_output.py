"""Reader for ``sacct --json`` (Slurm 21.08 through 24.x).

Shapes handled:

* 21.08/22.05 (openapi dbv0.0.37/38): plain numbers, ``state.current`` a string.
* 23.02 (data_parser v0.0.39): numbers wrapped as ``{"set", "infinite", "number"}``.
* 23.11+ (v0.0.40+): also ``state.current`` (and ``exit_code.status``) are lists.

A time of 0 (or an unset wrapper) means "none" (a running job has ``end: 0``).
``line`` in the records is the 1-based index of the job in the ``jobs`` array.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hpc.cost.model import PENDING_STATES, RUNNING_STATES, AllocationSet, CostInputError


def _int_or_none(value: Any) -> int | None:
    number = num(value)
    return None if number is None else int(number)


def num(value: Any) -> float | int | None:
    """A number, or the number inside a 23.02+ ``{set, infinite, number}`` wrapper."""
    if isinstance(value, dict) and "number" in value:
        if not value.get("set", True) or value.get("infinite", False):
            return None
        value = value["number"]
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _time(value: Any) -> datetime | None:
    t = num(value)
    return None if not t or t <= 0 else datetime.fromtimestamp(int(t), UTC)


def _state(value: Any) -> str | None:
    current = value.get("current") if isinstance(value, dict) else value
    if isinstance(current, list):
        current = current[0] if current else None
    if not isinstance(current, str) or not current:
        return None
    return current.split()[0]


def _tres(entries: Any) -> dict[str, Any]:
    """gpus (None if no allocated TRES at all), gpu_type, ncpus, billing, nodes."""
    out: dict[str, Any] = {
        "gpus": None,
        "gpu_type": None,
        "ncpus": None,
        "billing": None,
        "nodes": None,
    }
    if not isinstance(entries, list) or not entries:
        return out
    generic: int | None = None
    typed: dict[str, int] = {}
    for e in entries:
        if not isinstance(e, dict):
            continue
        kind, name, count = e.get("type"), e.get("name") or "", num(e.get("count"))
        if count is None or count < 0:
            continue
        if kind == "gres" and name == "gpu":
            generic = int(count)
        elif kind == "gres" and name.startswith("gpu:"):
            typed[name[4:]] = typed.get(name[4:], 0) + int(count)
        elif kind == "cpu":
            out["ncpus"] = int(count)
        elif kind == "billing":
            out["billing"] = float(count)
        elif kind == "node":
            out["nodes"] = int(count)
    out["gpus"] = generic if generic is not None else sum(typed.values())
    out["gpu_type"] = "+".join(sorted(typed)) or None
    return out


def _job_ids(job: dict[str, Any]) -> dict[str, Any]:
    raw = int(job["job_id"])
    array = job.get("array") or {}
    het = job.get("het") or {}
    a_job, a_task = num(array.get("job_id")), num(array.get("task_id"))
    task_text = array.get("task") or ""
    h_job, h_off = num(het.get("job_id")), num(het.get("job_offset"))
    ids: dict[str, Any] = {
        "job_id": str(raw),
        "job_id_raw": str(raw),
        "array_job_id": None,
        "array_task_id": None,
        "het_job_id": None,
        "het_offset": None,
    }
    if a_job and a_task is not None:
        ids.update(
            job_id=f"{int(a_job)}_{int(a_task)}", array_job_id=int(a_job), array_task_id=int(a_task)
        )
    elif a_job and isinstance(task_text, str) and task_text:
        ids.update(job_id=f"{int(a_job)}_[{task_text}]", array_job_id=int(a_job))
    if h_job and h_off is not None:
        ids.update(
            job_id=f"{int(h_job)}+{int(h_off)}", het_job_id=int(h_job), het_offset=int(h_off)
        )
    return ids


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for s in job.get("steps") or []:
        if not isinstance(s, dict):
            continue
        t = s.get("time") or {}
        res = _tres((s.get("tres") or {}).get("allocated"))
        out.append({"start": _time(t.get("start")), "end": _time(t.get("end")), **res})
    return out


def read_json(data: Path | bytes, source: str) -> AllocationSet:
    """Read one ``sacct --json`` document."""
    try:
        doc = json.loads(data if isinstance(data, bytes) else Path(data).read_bytes())
    except json.JSONDecodeError as exc:
        raise CostInputError(source, f"not valid JSON: {exc.msg}", exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise CostInputError(source, f"not UTF-8 at byte {exc.start}") from None
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, list):
        raise CostInputError(source, "no 'jobs' list: not sacct --json output")
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    seen: set[tuple[str, Any]] = set()
    for index, job in enumerate(jobs, 1):
        where = f"jobs[{index - 1}]"
        if not isinstance(job, dict) or num(job.get("job_id")) is None:
            raise CostInputError(source, f"{where}: no numeric job_id", index)
        try:
            row = _row(job, index, source)
        except (TypeError, ValueError, AttributeError) as exc:
            raise CostInputError(
                source, f"{where} (job {job.get('job_id')}): {exc}", index
            ) from None
        key = (row["job_id"], row["submit"])
        if key in seen:
            skipped["duplicate row (same JobID and Submit)"] += 1
            continue
        seen.add(key)
        rows.append(row)
    notes = [f"{source}: sacct reported error: {e}" for e in doc.get("errors") or []]
    return AllocationSet.from_records(rows, skipped=skipped, sources=[source], notes=notes)


def _row(job: dict[str, Any], index: int, source: str) -> dict[str, Any]:
    t = job.get("time") or {}
    res = _tres((job.get("tres") or {}).get("allocated"))
    state = _state(job.get("state"))
    required = job.get("required") or {}
    row: dict[str, Any] = {
        **_job_ids(job),
        "user": job.get("user") or None,
        "account": job.get("account") or None,
        "partition": job.get("partition") or None,
        "state": state,
        "submit": _time(t.get("submission")),
        "start": _time(t.get("start")),
        "end": _time(t.get("end")),
        "elapsed_s": _int_or_none(t.get("elapsed")),
        **res,
        "line": index,
        "file": source,
    }
    if row["ncpus"] is None:
        row["ncpus"] = _int_or_none(required.get("CPUs"))
    if row["nodes"] is None:
        row["nodes"] = _int_or_none(job.get("allocation_nodes"))
    if state not in PENDING_STATES:
        _fill_from_steps(row, res["gpus"] is None, _steps(job))
    row["gpus"] = row["gpus"] or 0
    return row


def _fill_from_steps(row: dict[str, Any], lack_res: bool, steps: list[dict[str, Any]]) -> None:
    for key, combine in (("gpus", max), ("billing", max), ("ncpus", max)):
        if key != "ncpus" and not lack_res:
            continue
        values = [s[key] for s in steps if s[key] is not None]
        if row[key] is None and values:
            row[key] = combine(values)
    if row["gpu_type"] is None and lack_res:
        row["gpu_type"] = next((s["gpu_type"] for s in steps if s["gpu_type"]), None)
    starts = [s["start"] for s in steps if s["start"] is not None]
    ends = [s["end"] for s in steps if s["end"] is not None]
    if row["start"] is None and starts:
        row["start"] = min(starts)
    if row["end"] is None and ends and (row["state"] or "") not in RUNNING_STATES:
        row["end"] = max(ends)
