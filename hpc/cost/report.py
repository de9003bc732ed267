"""Aggregate allocations into a cost report: window clipping, pricing, grouping, joins.

Per allocation (one row of an :class:`~hpc.cost.model.AllocationSet`):

* hours = max(0, min(end, window_end) - max(start, window_start)) / 3600; a RUNNING (or
  suspended, completing) allocation ends at the window end, or now, and is provisional;
  a finished one without End ends at Start + Elapsed.
* Without Start (and no window given) Elapsed is used; with a window it cannot be placed.
* PENDING allocations and pending array ranges (``123_[1-3]``) cost nothing: skipped and
  counted, like everything else left out, per reason.
* gpu_hours = GPUs x hours, cpu_hours = CPUs x hours; cost from the price table.
* gpu_util_mean and energy come from the framework's accounting records, joined by job id
  (JobID, or JobIDRaw: an array task's SLURM_JOB_ID); a group's gpu_util_mean is the
  GPU-hour-weighted mean over its jobs that have such records (null when none has).
* ``jobs`` counts allocations that ran: array tasks, het components and requeued runs each
  once, steps never; with ``day`` a job is counted on each day it ran (the total once).

``group_by=day`` splits each allocation's hours over the UTC days it ran in.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hpc.cost.days import split_days, timeline
from hpc.cost.model import PENDING_STATES, RUNNING_STATES, AllocationSet
from hpc.cost.prices import PriceTable
from hpc.cost.report_rows import GROUPS, NONE_KEY, TOP_JOBS, Report, Row, efficiency, iso_z

if TYPE_CHECKING:
    from hpc.cost.run_usage import AccountingSet

__all__ = ["GROUPS", "NONE_KEY", "TOP_JOBS", "Report", "Row", "build_report", "efficiency"]


def _epoch(col: pa.ChunkedArray) -> np.ndarray:
    """Timestamps as float seconds, NaN for null."""
    ints = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
    return (
        ints.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        if len(ints)
        else (np.zeros(0))
    )


def _num(col: pa.ChunkedArray, fill: float = np.nan) -> np.ndarray:
    arr = pc.cast(col, pa.float64())
    return pc.fill_null(arr, fill).to_numpy() if len(arr) else np.zeros(0)


def _text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(pc.cast(col, pa.string()), NONE_KEY)


def _in(col: pa.ChunkedArray, values: frozenset[str]) -> np.ndarray:
    if not values or not len(col):
        return np.zeros(len(col), dtype=bool)
    mask = pc.is_in(pc.fill_null(col, ""), value_set=pa.array(sorted(values)))
    return mask.to_numpy(zero_copy_only=False)


def build_report(
    allocs: AllocationSet,
    prices: PriceTable | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    group_by: str = "account",
    accounting: AccountingSet | None = None,
    now: datetime | None = None,
    details: bool = False,
) -> Report:
    """Price and aggregate ``allocs`` over the window [start, end).

    ``details`` also computes what the HTML charts need (timeline, top jobs, utilisation).
    """
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    prices = prices or PriceTable()
    now = now or datetime.now(UTC)
    t = allocs.table
    skipped = Counter(allocs.skipped)
    notes = list(allocs.notes)
    n = t.num_rows
    ws = start.timestamp() if start else -np.inf
    we = end.timestamp() if end else np.inf
    clip_at = min(we, now.timestamp())

    s, e = _epoch(t["start"]), _epoch(t["end"])
    elapsed = _num(t["elapsed_s"])
    state = t["state"]
    running = _in(state, RUNNING_STATES)
    ranged = (
        pc.match_substring(t["job_id"], "[").to_numpy(zero_copy_only=False)
        if n
        else (np.zeros(0, dtype=bool))
    )
    pending = _in(state, PENDING_STATES) & ~ranged
    live = ~(ranged | pending)
    skipped["pending array range (no task started)"] += int(ranged.sum())
    skipped["PENDING (costs nothing)"] += int(pending.sum())

    e = np.where(running, clip_at, e)
    fill_end = live & ~running & np.isnan(e) & ~np.isnan(s) & ~np.isnan(elapsed)
    e = np.where(fill_end, s + elapsed, e)
    unbounded = start is None and end is None
    # No Start (e.g. not in the input) but a positive Elapsed: usable without a window only.
    by_elapsed = live & np.isnan(s) & (np.nan_to_num(elapsed) > 0) & unbounded
    no_start = live & np.isnan(s) & ~by_elapsed
    no_end = live & ~np.isnan(s) & np.isnan(e)
    skipped["no Start time (never started, or not in the input)"] += int(no_start.sum())
    skipped["no End time and no Elapsed"] += int(no_end.sum())
    timed = live & ~no_start & ~no_end & ~by_elapsed
    with np.errstate(invalid="ignore"):
        inside = timed & (s < we) & ((e > ws) | ((e == s) & (s >= ws)))
        lo, hi = np.maximum(s, ws), np.minimum(e, we)
        hours = np.where(inside, np.maximum(0.0, hi - lo) / 3600.0, 0.0)
    skipped["outside the report window"] += int((timed & ~inside).sum())
    hours = np.where(by_elapsed, elapsed / 3600.0, hours)
    used = inside | by_elapsed
    provisional = used & running
    if provisional.any():
        at = "the window end" if we <= now.timestamp() else f"now ({iso_z(now)})"
        notes.append(
            f"{int(provisional.sum())} running allocation(s) counted up to {at}: provisional"
        )

    gpus = _num(t["gpus"], 0.0)
    gpu_hours = gpus * hours
    cpu_hours = _num(t["ncpus"], 0.0) * hours
    cost = _price(t, prices, hours, gpu_hours, cpu_hours, used, notes, skipped)
    util, energy, idle, agh = _join(t, accounting, notes)

    keep = np.flatnonzero(used)
    data = {
        "gpu_hours": gpu_hours[keep],
        "cpu_hours": cpu_hours[keep],
        "cost": cost[keep],
        "util": util[keep],
        "energy": energy[keep],
        "idle": idle[keep],
        "agh": agh[keep],
        "prov": provisional[keep].astype(np.int64),
        "lo": np.where(by_elapsed, np.nan, np.maximum(s, ws))[keep],
        "hi": np.where(by_elapsed, np.nan, np.minimum(e, we))[keep],
    }
    key_col = "job_id" if group_by == "job" else group_by
    rows = _group(_text(t[key_col]).take(keep) if group_by != "day" else None, data, group_by)
    total = Row(
        "total",
        len(keep),
        float(data["gpu_hours"].sum()),
        float(data["cpu_hours"].sum()),
        float(data["cost"].sum()),
        _wmean(data["util"], data["gpu_hours"]),
        _nansum_or_none(data["energy"]),
        int(data["prov"].sum()),
        _nansum_or_none(data["idle"]),
        efficiency(_nansum_or_none(data["idle"]), _nansum_or_none(data["agh"])),
    )
    report = Report(
        window_start=start,
        window_end=end,
        group_by=group_by,
        rows=rows,
        total=total,
        currency=prices.currency,
        now=now,
        skipped=+skipped,
        notes=notes,
        sources=list(allocs.sources),
    )
    if details:  # for the HTML charts
        series = group_by if group_by in ("user", "account", "partition") else "account"
        report.timeline_series = series
        report.timeline = timeline(_text(t[series]).take(keep), data)
        report.top_jobs = _top_jobs(t, keep, data)
        report.util_values = data["util"][~np.isnan(data["util"])].tolist()
    return report


def _price(
    t: pa.Table,
    prices: PriceTable,
    hours: np.ndarray,
    gpu_hours: np.ndarray,
    cpu_hours: np.ndarray,
    used: np.ndarray,
    notes: list[str],
    skipped: Counter[str],
) -> np.ndarray:
    n = t.num_rows
    rate = np.zeros(n)
    if n and (
        prices.gpu_default is not None
        or prices.gpu_by_type
        or prices.gpu_by_partition
        or prices.gpu_rules
    ):
        part = pc.dictionary_encode(pc.fill_null(t["partition"], "")).combine_chunks()
        gtype = pc.dictionary_encode(pc.fill_null(t["gpu_type"], "")).combine_chunks()
        pi = part.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        ti = gtype.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        combos, inverse = np.unique(pi * (len(gtype.dictionary) + 1) + ti, return_inverse=True)
        table = np.zeros(len(combos))
        unpriced: np.ndarray = np.zeros(len(combos), dtype=bool)
        for k, code in enumerate(combos):
            p = part.dictionary[int(code) // (len(gtype.dictionary) + 1)].as_py() or None
            g = gtype.dictionary[int(code) % (len(gtype.dictionary) + 1)].as_py() or None
            r = prices.gpu_rate(p, g)
            unpriced[k] = r is None
            table[k] = r or 0.0
        rate = table[inverse]
        missing = used & unpriced[inverse] & (gpu_hours > 0)
        if missing.any():
            notes.append(
                f"{gpu_hours[missing].sum():.2f} GPU-hours in {int(missing.sum())} "
                "allocation(s) match no GPU rate: priced at 0"
            )
    cost = gpu_hours * rate + cpu_hours * prices.cpu_hour
    if prices.billing_rate is not None:
        billing = _num(t["billing"])
        has = ~np.isnan(billing)
        cost = np.where(has, np.nan_to_num(billing) * hours * prices.billing_rate, cost)
        lacking = used & ~has
        if lacking.any():
            notes.append(
                f"{int(lacking.sum())} allocation(s) without billing TRES: "
                "priced by the GPU/CPU rates"
            )
    refund = _in(t["state"], prices.refund_states) & used
    if refund.any():
        notes.append(
            f"{int(refund.sum())} run(s) in {', '.join(sorted(prices.refund_states))} "
            f"refunded ({cost[refund].sum():.2f} {prices.currency})".rstrip()
        )
        cost = np.where(refund, 0.0, cost)
    return cost


def _join(
    t: pa.Table, accounting: AccountingSet | None, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = t.num_rows
    util, energy = np.full(n, np.nan), np.full(n, np.nan)
    if not accounting or not accounting.runs or not n:
        return util, energy, np.full(n, np.nan), np.full(n, np.nan)
    keys = sorted(accounting.runs)
    idx = pc.coalesce(
        pc.index_in(t["job_id"], value_set=pa.array(keys)),
        pc.index_in(t["job_id_raw"], value_set=pa.array(keys)),
    )
    idx_np = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False)
    vals_u = np.array([_nan(accounting.runs[k].summary["gpu_util_mean"]) for k in keys] + [np.nan])
    vals_e = np.array([_nan(accounting.runs[k].summary["energy_kwh"]) for k in keys] + [np.nan])
    idle_k = [_nan(accounting.runs[k].summary.get("idle_gpu_hours")) for k in keys]
    vals_i = np.array([*idle_k, np.nan])
    vals_a = np.array(
        [
            np.nan if np.isnan(i) else _nan(accounting.runs[k].summary.get("gpu_hours"))
            for k, i in zip(keys, idle_k, strict=True)
        ]
        + [np.nan]
    )
    util, energy = vals_u[idx_np], vals_e[idx_np]
    matched = len(set(idx_np[idx_np >= 0].tolist()))
    notes.append(f"accounting records joined for {matched} of {len(keys)} job(s)")
    return util, energy, vals_i[idx_np], vals_a[idx_np]


def _nan(v: float | None) -> float:
    return np.nan if v is None else float(v)


def _wmean(values: np.ndarray, weights: np.ndarray) -> float | None:
    known = ~np.isnan(values)
    if not known.any():
        return None
    w = weights[known]
    if w.sum() > 0:
        return float((values[known] * w).sum() / w.sum())
    return float(values[known].mean())


def _nansum_or_none(values: np.ndarray) -> float | None:
    known = ~np.isnan(values)
    return float(values[known].sum()) if known.any() else None


def _group(keys: pa.ChunkedArray | None, data: dict[str, np.ndarray], group_by: str) -> list[Row]:
    if keys is None:
        keys, data = split_days(data)
    w_util = np.where(np.isnan(data["util"]), 0.0, data["util"] * data["gpu_hours"])
    w_has = np.where(np.isnan(data["util"]), 0.0, data["gpu_hours"])
    table = pa.table(
        {
            "key": keys,
            "one": np.ones(len(data["cost"]), dtype=np.int64),
            "gpu_hours": data["gpu_hours"],
            "cpu_hours": data["cpu_hours"],
            "cost": data["cost"],
            "w_util": w_util,
            "w_has": w_has,
            "n_util": (~np.isnan(data["util"])).astype(np.int64),
            "s_util": np.nan_to_num(data["util"]),
            "energy": pa.array(data["energy"], from_pandas=True),
            "idle": pa.array(data["idle"], from_pandas=True),
            "agh": pa.array(data["agh"], from_pandas=True),
            "prov": data["prov"],
        }
    )
    agg = (
        table.group_by("key", use_threads=False)
        .aggregate(
            [
                (c, "sum")
                for c in (
                    "one",
                    "gpu_hours",
                    "cpu_hours",
                    "cost",
                    "w_util",
                    "w_has",
                    "n_util",
                    "s_util",
                    "energy",
                    "idle",
                    "agh",
                    "prov",
                )
            ]
        )
        .to_pydict()
    )
    rows = []
    for i, key in enumerate(agg["key"]):
        util = None
        if agg["n_util_sum"][i]:
            util = (
                agg["w_util_sum"][i] / agg["w_has_sum"][i]
                if agg["w_has_sum"][i] > 0
                else agg["s_util_sum"][i] / agg["n_util_sum"][i]
            )
        rows.append(
            Row(
                key,
                agg["one_sum"][i],
                agg["gpu_hours_sum"][i],
                agg["cpu_hours_sum"][i],
                agg["cost_sum"][i],
                util,
                agg["energy_sum"][i],
                agg["prov_sum"][i],
                agg["idle_sum"][i],
                efficiency(agg["idle_sum"][i], agg["agh_sum"][i]),
            )
        )
    if group_by == "day":
        rows.sort(key=lambda r: r.key)
    else:
        rows.sort(key=lambda r: (-r.cost, -r.gpu_hours, -r.cpu_hours, r.key))
    return rows


def _top_jobs(t: pa.Table, keep: np.ndarray, data: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    if not len(data["cost"]):
        return []
    order = np.lexsort((-data["gpu_hours"], -data["cost"]))[:TOP_JOBS]
    picked = (
        t.take(pa.array(keep[order]))
        .select(["job_id", "user", "account", "partition", "state", "gpus", "gpu_type"])
        .to_pylist()
    )
    for row, i in zip(picked, order, strict=True):
        row.update(
            gpu_hours=float(data["gpu_hours"][i]),
            cost=float(data["cost"][i]),
            gpu_util_mean=None if np.isnan(data["util"][i]) else float(data["util"][i]),
            provisional=bool(data["prov"][i]),
        )
    return picked
