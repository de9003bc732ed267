"""Splitting allocations over the UTC days they ran in (``--by day`` and the HTML timeline)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def split_days(data: dict[str, np.ndarray]) -> tuple[pa.Array, dict[str, np.ndarray]]:
    """One piece per allocation and UTC day it ran in; amounts split by time."""
    lo, hi = data["lo"], data["hi"]
    placed = ~np.isnan(lo)
    day0 = np.where(placed, np.floor(np.nan_to_num(lo) / 86400), 0).astype(np.int64)
    last = np.where(placed, np.ceil(np.nan_to_num(hi) / 86400) - 1, 0).astype(np.int64)
    ndays = np.maximum(1, last - day0 + 1)
    idx: np.ndarray = np.repeat(np.arange(len(lo)), ndays)
    offset = np.arange(len(idx)) - np.repeat(np.cumsum(ndays) - ndays, ndays)
    day = day0[idx] + offset
    dur = (hi - lo)[idx]
    seg = np.minimum(hi[idx], (day + 1) * 86400.0) - np.maximum(lo[idx], day * 86400.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(dur > 0, seg / dur, 1.0)
    frac = np.where(placed[idx], frac, 1.0)
    out = {
        k: v[idx] * frac if k in ("gpu_hours", "cpu_hours", "cost") else v[idx]
        for k, v in data.items()
    }
    for k in ("energy", "idle", "agh"):
        if k in data:
            out[k] = data[k][idx] * frac
    day = np.where(placed[idx], day, np.iinfo(np.int64).min)
    uniq, inverse = np.unique(day, return_inverse=True)
    names = [
        "(unknown day)" if d == np.iinfo(np.int64).min else str(np.datetime64(int(d), "D"))
        for d in uniq.tolist()
    ]
    labels = pc.take(pa.array(names, pa.string()), pa.array(inverse.astype(np.int64)))
    return labels, out


def timeline(keys_col: pa.ChunkedArray, data: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    if not len(data["cost"]):
        return {}
    keys = keys_col.to_numpy(zero_copy_only=False)
    days, split = split_days(data)
    idx: np.ndarray = np.repeat(np.arange(len(keys)), _piece_counts(data))
    table = pa.table({"day": days, "series": keys[idx], "gpu_hours": split["gpu_hours"]})
    agg = (
        table.group_by(["day", "series"], use_threads=False)
        .aggregate([("gpu_hours", "sum")])
        .to_pydict()
    )
    out: dict[str, dict[str, float]] = {}
    for d, k, v in zip(agg["day"], agg["series"], agg["gpu_hours_sum"], strict=True):
        out.setdefault(d, {})[k] = v
    return dict(sorted(out.items()))


def _piece_counts(data: dict[str, np.ndarray]) -> np.ndarray:
    lo, hi = data["lo"], data["hi"]
    placed = ~np.isnan(lo)
    day0 = np.where(placed, np.floor(np.nan_to_num(lo) / 86400), 0).astype(np.int64)
    last = np.where(placed, np.ceil(np.nan_to_num(hi) / 86400) - 1, 0).astype(np.int64)
    return np.maximum(1, last - day0 + 1)
