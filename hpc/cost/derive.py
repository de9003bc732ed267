"""Vectorised reduction of sacct text rows to allocation columns (pyarrow compute).

* JobID ``123`` / ``123_4`` (array task) / ``123_[1-3]`` (pending range) / ``123+0``
  (het component) is an allocation; anything with ``.`` is a step of the part before it
  (steps are folded in :mod:`hpc.cost.fold`).
* GPUs come from AllocTRES: the generic ``gres/gpu=N``; typed ``gres/gpu:T=N`` entries
  only when no generic one is there (summed); ``gres/gpumem``/``gres/gpuutil`` are usage,
  never counted. Old output: AllocGRES ``gpu:N`` / ``gpu:T:N`` when AllocTRES names no GPU.
* Times: ``YYYY-MM-DDTHH:MM:SS`` (UTC); ``Unknown``, ``None`` and empty mean none.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hpc.cost.model import SCHEMA, CostInputError

JOBID_RE = r"^\d+(?:_(?:\d+|\[[^\]]*\]))?(?:\+\d+)?(?:\.[A-Za-z0-9_+-]+)?$"
ALLOC_ID_RE = r"^(?P<job>\d+)(?:_(?P<task>\d+|\[[^\]]*\]))?(?:\+(?P<het>\d+))?$"
TIME_FMT = "%Y-%m-%dT%H:%M:%S"
NO_TIME = ("", "Unknown", "None")
# No TRES name ends in "gres/gpu" or "billing", so these need no anchor (and run faster).
GPU_GENERIC = r"gres/gpu=(?P<n>\d+)"
GPU_TYPED = r"gres/gpu:(?P<t>[^=,]+)=(?P<n>\d+)"
GRES_GPU = r"(?:^|,)gpu(?::(?P<t>[^:,(]+))?:(?P<n>\d+)(?:\(|,|$)"
BILLING = r"billing=(?P<n>\d+(?:\.\d+)?)"
TRES_CPU = r"(?:^|,)cpu=(?P<n>\d+)(?:,|$)"
TRES_NODE = r"(?:^|,)node=(?P<n>\d+)(?:,|$)"
ELAPSED = r"^(?:(?P<d>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+)(?:\.\d+)?$"
TS = pa.timestamp("s", tz="UTC")


class Rows:
    """A batch (or part of one) with its line numbers and column lookup."""

    def __init__(
        self, batch: pa.RecordBatch, lines: pa.Array, cols: dict[str, str | None], source: str
    ):
        self.batch, self.lines, self.cols, self.source = batch, lines, cols, source

    def get(self, ours: str) -> pa.Array | None:
        name = self.cols.get(ours)
        return None if name is None else self.batch.column(name)

    def fail(self, mask: pa.Array, message: Callable[[int], str]) -> None:
        """Raise for the first row where ``mask`` is true."""
        idx = pc.index(mask, True).as_py()
        if idx is not None and idx >= 0:
            raise CostInputError(self.source, message(idx), self.lines[idx].as_py())


def _nullify(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _int(rows: Rows, ours: str) -> pa.Array | None:
    raw = rows.get(ours)
    if raw is None:
        return None
    arr = _nullify(raw)
    ok = pc.utf8_is_digit(arr)
    rows.fail(pc.invert(ok), lambda i: f"{rows.cols[ours]}: not a number: {raw[i].as_py()!r}")
    refuse_huge_numbers(rows, ours)
    return pc.cast(arr, pa.int64())


def refuse_huge_numbers(rows: Rows, ours: str) -> None:
    """A number of 19 or more digits (past int64) is no count Slurm writes: name the row."""
    raw = rows.get(ours)
    if raw is not None:
        huge = pc.match_substring_regex(raw, r"\d{19,}")
        rows.fail(huge, lambda i: f"{rows.cols[ours]}: number too large: {raw[i].as_py()!r}")


def parse_time(rows: Rows, ours: str) -> pa.Array:
    raw = rows.get(ours)
    if raw is None:
        return pa.nulls(rows.batch.num_rows, TS)
    no_time = pa.array(NO_TIME, pa.string())
    text = pc.if_else(pc.is_in(raw, value_set=no_time), pa.scalar(None, pa.string()), raw)
    try:  # the ISO-8601 cast is faster than strptime; strptime finds the culprit
        return pc.cast(pc.cast(text, pa.timestamp("s")), TS)
    except pa.ArrowInvalid:
        parsed = pc.strptime(text, format=TIME_FMT, unit="s", error_is_null=True)
        bad = pc.and_(pc.is_null(parsed), pc.is_valid(text))
        rows.fail(bad, lambda i: f"{rows.cols[ours]}: not a time: {raw[i].as_py()!r}")
        return pc.cast(parsed, TS)


def _extract_int(arr: pa.Array, pattern: str, group: str = "n") -> pa.Array:
    return pc.cast(_nullify(pc.extract_regex(arr, pattern).field(group)), pa.int64())


def _elapsed(rows: Rows, start: pa.Array, end: pa.Array) -> pa.Array:
    """Elapsed seconds: End - Start where both are known, else parsed from Elapsed."""
    from_times = pc.cast(pc.subtract(end, start), pa.int64())
    refuse_huge_numbers(rows, "elapsed")
    raw = rows.get("elapsed")
    missing = pc.or_(pc.is_null(start), pc.is_null(end))
    if raw is None or not pc.any(missing).as_py():
        return from_times
    parts = pc.extract_regex(raw.filter(missing), ELAPSED)
    total = None
    for name, mult in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        field = parts.field(name)
        v = pc.multiply(pc.cast(pc.if_else(pc.equal(field, ""), "0", field), pa.int64()), mult)
        total = v if total is None else pc.add(total, v)
    return pc.replace_with_mask(from_times, missing, total)


def resources(rows: Rows) -> dict[str, pa.Array]:
    """ncpus, gpus (null when the row has no TRES/GRES at all), gpu_type, billing, nodes."""
    n = rows.batch.num_rows
    tres = rows.get("alloctres")
    gres = rows.get("allocgres")
    gpus = pa.nulls(n, pa.int64())  # null: no GPU entry seen (yet)
    gtype = pa.nulls(n, pa.string())
    billing = pa.nulls(n, pa.float64())
    has_info = pa.array(np.zeros(n, dtype=bool))  # the row has TRES or GRES text at all
    refuse_huge_numbers(rows, "alloctres")
    refuse_huge_numbers(rows, "allocgres")
    if tres is not None:
        billing = pc.cast(_nullify(pc.extract_regex(tres, BILLING).field("n")), pa.float64())
        has_gpu = pc.match_substring(tres, "gres/gpu")
        if pc.any(has_gpu).as_py():  # the GPU patterns run on the rows that have GPUs only
            sub = pc.filter(tres, has_gpu)
            generic = _extract_int(sub, GPU_GENERIC)
            typed = pc.extract_regex(sub, GPU_TYPED)
            sub_n = pc.coalesce(generic, pc.cast(_nullify(typed.field("n")), pa.int64()))
            gpus = pc.replace_with_mask(gpus, has_gpu, sub_n)
            gtype = pc.replace_with_mask(gtype, has_gpu, _nullify(typed.field("t")))
            multi = pc.greater(pc.count_substring(sub, "gres/gpu:"), 1)
            if pc.any(multi).as_py():  # several GPU types in one allocation: rare, by hand
                multi = pc.replace_with_mask(pc.equal(has_gpu, False), has_gpu, multi)
                gpus, gtype = _multi_typed(tres, multi, gpus, gtype)
        has_info = pc.not_equal(tres, "")
    if gres is not None:  # pre-20.11 AllocGRES, used when AllocTRES names no GPU
        g = pc.extract_regex(gres, GRES_GPU)
        gpus = pc.coalesce(gpus, pc.cast(_nullify(g.field("n")), pa.int64()))
        gtype = pc.coalesce(_nullify(gtype), _nullify(g.field("t")))
        has_info = pc.or_(has_info, pc.not_equal(gres, ""))
    gpus = pc.coalesce(gpus, pc.if_else(has_info, 0, None))
    ncpus = _int(rows, "ncpus")
    if ncpus is None:
        ncpus = pa.nulls(n, pa.int64())
    nodes = _int(rows, "nnodes")
    if tres is not None:
        if ncpus.null_count:
            ncpus = pc.coalesce(ncpus, _extract_int(tres, TRES_CPU))
        if nodes is None or nodes.null_count:
            from_tres = _extract_int(tres, TRES_NODE)
            nodes = from_tres if nodes is None else pc.coalesce(nodes, from_tres)
    if nodes is None:
        nodes = pa.nulls(n, pa.int64())
    return {
        "ncpus": ncpus,
        "gpus": gpus,
        "gpu_type": _nullify(gtype),
        "billing": billing,
        "nodes": nodes,
    }


def _multi_typed(
    tres: pa.Array, multi: pa.Array, gpus: pa.Array, gtype: pa.Array
) -> tuple[pa.Array, pa.Array]:
    pat = re.compile(GPU_TYPED)
    generic = re.compile(GPU_GENERIC)
    g_list, t_list = gpus.to_pylist(), gtype.to_pylist()
    for i in np.flatnonzero(multi.to_numpy(zero_copy_only=False)):
        text = tres[int(i)].as_py()
        found = [(m.group("t"), int(m.group("n"))) for m in pat.finditer(text)]
        gen = generic.search(text)
        g_list[i] = int(gen.group("n")) if gen else sum(c for _, c in found)
        t_list[i] = "+".join(sorted({t for t, _ in found}))
    return pa.array(g_list, pa.int64()), pa.array(t_list, pa.string())


def _split_ids(jobid: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Job number, array task text and het offset text ("" when absent) of allocation ids."""
    special = pc.or_(pc.match_substring(jobid, "_"), pc.match_substring(jobid, "+"))
    empty = pa.array(np.full(len(jobid), "", dtype=object), pa.string())
    if not pc.any(special).as_py():
        return pc.cast(jobid, pa.int64()), empty, empty
    ids = pc.extract_regex(pc.filter(jobid, special), ALLOC_ID_RE)
    job = pc.replace_with_mask(
        pc.cast(pc.if_else(special, "0", jobid), pa.int64()),
        special,
        pc.cast(ids.field("job"), pa.int64()),
    )
    task = pc.replace_with_mask(empty, special, ids.field("task"))
    het = pc.replace_with_mask(empty, special, ids.field("het"))
    return job, task, het


def allocation_table(rows: Rows) -> pa.Table:
    jobid = rows.get("jobid")
    n = rows.batch.num_rows
    job, task, het = _split_ids(jobid)
    has_task = pc.not_equal(task, "")
    has_het = pc.not_equal(het, "")
    state_raw = rows.get("state")
    state = (  # "CANCELLED by 123" -> "CANCELLED"
        pa.nulls(n, pa.string())
        if state_raw is None
        else _nullify(pc.list_element(pc.split_pattern(state_raw, " ", max_splits=1), 0))
    )
    res = resources(rows)
    start, end = parse_time(rows, "start"), parse_time(rows, "end")
    tres, gres = rows.get("alloctres"), rows.get("allocgres")
    lack_res = pa.array(np.ones(n, dtype=bool))
    for col in (tres, gres):
        if col is not None:
            lack_res = pc.and_(lack_res, pc.equal(col, ""))

    def text(ours: str) -> pa.Array:
        col = rows.get(ours)
        return pa.nulls(n, pa.string()) if col is None else _nullify(col)

    cols = {
        "job_id": jobid,
        "job_id_raw": text("jobidraw"),
        "array_job_id": pc.if_else(has_task, job, None),
        "array_task_id": pc.cast(
            _nullify(pc.if_else(pc.match_substring_regex(task, r"^\d+$"), task, "")), pa.int64()
        ),
        "het_job_id": pc.if_else(has_het, job, None),
        "het_offset": pc.cast(_nullify(het), pa.int64()),
        "user": text("user"),
        "account": text("account"),
        "partition": text("partition"),
        "state": state,
        "submit": parse_time(rows, "submit"),
        "start": start,
        "end": end,
        "elapsed_s": _elapsed(rows, start, end),
        **res,
        "line": rows.lines,
        "file": pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, dtype=np.int32)), pa.array([rows.source])
        ),
        "_lack_res": lack_res,
    }
    return pa.table({name: cols[name] for name in [*SCHEMA.names, "_lack_res"]}).cast(
        pa.schema([*SCHEMA, pa.field("_lack_res", pa.bool_())])
    )
