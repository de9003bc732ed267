"""Vectorised reduction of sacct text rows to allocation records (pyarrow compute).

Rules (see also :mod:`hpc.cost.sacct`):

* JobID ``123`` / ``123_4`` (array task) / ``123_[1-3]`` (pending range) / ``123+0``
  (het component) is an allocation; anything with ``.`` is a step of the part before it.
* GPUs come from AllocTRES: the generic ``gres/gpu=N``; typed ``gres/gpu:T=N`` entries
  only when no generic one is there (summed); ``gres/gpumem``/``gres/gpuutil`` are usage,
  never counted. Old output: AllocGRES ``gpu:N`` / ``gpu:T:N``.
* Steps only fill what their allocation row lacks (no TRES/GRES, no CPU count, no start,
  no end on a finished job); a step whose allocation row is absent is skipped and counted.
* Rows with the same JobID and Submit are one run (``sacct -D`` lists each requeued run
  with its own Submit): later copies are skipped and counted.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hpc.cost.model import PENDING_STATES, RUNNING_STATES, SCHEMA, CostInputError

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


class _Rows:
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


def _int(rows: _Rows, ours: str) -> pa.Array | None:
    raw = rows.get(ours)
    if raw is None:
        return None
    arr = _nullify(raw)
    ok = pc.utf8_is_digit(arr)
    rows.fail(pc.invert(ok), lambda i: f"{rows.cols[ours]}: not a number: {raw[i].as_py()!r}")
    return pc.cast(arr, pa.int64())


def _time(rows: _Rows, ours: str) -> pa.Array:
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


def _elapsed(rows: _Rows, start: pa.Array, end: pa.Array) -> pa.Array:
    """Elapsed seconds: End - Start where both are known, else parsed from Elapsed."""
    from_times = pc.cast(pc.subtract(end, start), pa.int64())
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


def _resources(rows: _Rows) -> dict[str, pa.Array]:
    """ncpus, gpus (null when the row has no TRES/GRES at all), gpu_type, billing, nodes."""
    n = rows.batch.num_rows
    tres = rows.get("alloctres")
    gres = rows.get("allocgres")
    gpus = pa.nulls(n, pa.int64())  # null: no GPU entry seen (yet)
    gtype = pa.nulls(n, pa.string())
    billing = pa.nulls(n, pa.float64())
    has_info = pa.array(np.zeros(n, dtype=bool))  # the row has TRES or GRES text at all
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
    import re

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


@dataclass
class Piece:
    """What one batch contributes (see :meth:`Accumulator.piece`)."""

    part: pa.Table | None = None
    away: pa.Array | None = None
    wanted: set[str] = field(default_factory=set)
    skipped: Counter[str] = field(default_factory=Counter)


class Accumulator:
    """Collects allocation rows batch by batch, then folds steps and duplicates."""

    def __init__(self, source: str, cols: dict[str, str | None], header_first: str):
        self.source, self.cols, self.header_first = source, cols, header_first.lower()
        self.parts: list[pa.Table] = []
        self.away: list[pa.Array] = []  # step bases whose allocation was not in their batch
        self.wanted: set[str] = set()  # lacking allocations that have steps
        self.skipped: Counter[str] = Counter()

    def add(self, batch: pa.RecordBatch, first_line: int) -> None:
        self.merge(self.piece(batch, first_line))

    def merge(self, piece: Piece, line_offset: int = 0) -> None:
        """Take in a piece; ``line_offset`` is added to its line numbers."""
        if piece.part is not None:
            part = piece.part
            if line_offset:
                i = part.schema.get_field_index("line")
                part = part.set_column(i, "line", pc.add(part["line"], line_offset))
            self.parts.append(part)
        if piece.away is not None:
            self.away.append(piece.away)
        self.wanted.update(piece.wanted)
        self.skipped.update(piece.skipped)

    def piece(self, batch: pa.RecordBatch, first_line: int) -> Piece:
        """Reduce one batch (no shared state is touched: safe in worker threads)."""
        out = Piece()
        n = batch.num_rows
        if n == 0:
            return out
        lines = pa.array(np.arange(first_line, first_line + n, dtype=np.int64))
        rows = _Rows(batch, lines, self.cols, self.source)
        jobid = rows.get("jobid")
        valid = pc.match_substring_regex(jobid, JOBID_RE)
        if not pc.all(valid).as_py():
            valid = self._odd_rows(batch, lines, jobid, valid, out.skipped)
        is_step = pc.match_substring(jobid, ".")
        keep = pc.and_(valid, pc.invert(is_step))
        if pc.any(keep).as_py():
            sub = _Rows(batch.filter(keep), lines.filter(keep), self.cols, self.source)
            out.part = allocation_table(sub)
        steps = pc.filter(jobid, pc.and_(valid, is_step))
        if not len(steps):
            return out
        # Steps normally follow their allocation row: match them within the batch, and
        # keep only the others (few) for a check against every allocation at the end.
        bases = pc.list_element(pc.split_pattern(steps, ".", max_splits=1), 0)
        ids = out.part["job_id"] if out.part is not None else pa.nulls(0, pa.string())
        here = pc.is_in(bases, value_set=ids)
        if not pc.all(here).as_py():
            out.away = pc.filter(bases, pc.invert(here))
        if out.part is not None:
            lack_ids = pc.filter(ids, lacking(out.part))
            if len(lack_ids):
                hit = pc.is_in(lack_ids, value_set=bases)
                out.wanted.update(pc.filter(lack_ids, hit).to_pylist())
        return out

    def _odd_rows(
        self,
        batch: pa.RecordBatch,
        lines: pa.Array,
        jobid: pa.Array,
        valid: pa.Array,
        skipped: Counter[str],
    ) -> pa.Array:
        """Blank lines and repeated header lines are skipped (counted); others are errors."""
        keep = valid.to_pylist()
        for i in np.flatnonzero(~valid.to_numpy(zero_copy_only=False)):
            i = int(i)
            text = jobid[i].as_py()
            values = [batch.column(c)[i].as_py() for c in range(batch.num_columns)]
            if text == "" and not any(values):
                skipped["blank line"] += 1
            elif text.lower() == self.header_first:
                skipped["repeated header line"] += 1
            else:
                why = "empty JobID" if text == "" else f"not a Slurm job id: {text!r}"
                raise CostInputError(self.source, why, lines[i].as_py())
        return pa.array(keep, pa.bool_())

    def finish(self, steps_again: Callable[[set[str]], list[dict[str, Any]]]) -> pa.Table:
        table = pa.concat_tables(self.parts) if self.parts else _empty_internal()
        if self.away:
            away = pa.chunked_array(self.away, pa.string())
            found = pc.filter(table["job_id"], pc.is_in(table["job_id"], value_set=pc.unique(away)))
            orphan = pc.sum(pc.invert(pc.is_in(away, value_set=found))).as_py()
            if orphan:
                self.skipped["step without its allocation row"] += orphan
            if len(found):
                lack_found = pc.and_(lacking(table), pc.is_in(table["job_id"], value_set=found))
                self.wanted.update(pc.filter(table["job_id"], lack_found).to_pylist())
        table = self._dedupe(table)
        if self.wanted:
            lack = pc.and_(
                lacking(table), pc.is_in(table["job_id"], value_set=pa.array(sorted(self.wanted)))
            )
            table = fill_from_steps(table, lack, steps_again(self.wanted))
        table = table.drop_columns(["_lack_res"])
        return table.set_column(
            table.schema.get_field_index("gpus"), "gpus", pc.fill_null(table["gpus"], 0)
        )

    def _dedupe(self, table: pa.Table) -> pa.Table:
        key = table["job_id"]
        if table["job_id_raw"].null_count == 0 and table.num_rows:
            with contextlib.suppress(pa.ArrowInvalid):  # integers: a numpy sort will do
                ints = np.sort(pc.cast(table["job_id_raw"], pa.int64()).to_numpy())
                if not (ints[1:] == ints[:-1]).any():
                    return table
                key = pc.cast(table["job_id_raw"], pa.int64())
        counts = pc.value_counts(key)
        dup_keys = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        if not len(dup_keys):
            return table
        mask = pc.is_in(key, value_set=dup_keys)
        cand = table.select(["job_id", "submit", "line"]).filter(mask)
        runs = cand.group_by(["job_id", "submit"], use_threads=False).aggregate([("line", "min")])
        if runs.num_rows == cand.num_rows:
            return table
        drop = pc.filter(cand["line"], pc.invert(pc.is_in(cand["line"], runs["line_min"])))
        self.skipped["duplicate row (same JobID and Submit)"] += len(drop)
        return table.filter(pc.invert(pc.is_in(table["line"], value_set=drop)))


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


def allocation_table(rows: _Rows) -> pa.Table:
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
    res = _resources(rows)
    start, end = _time(rows, "start"), _time(rows, "end")
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
        "submit": _time(rows, "submit"),
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


def _empty_internal() -> pa.Table:
    return pa.schema([*SCHEMA, pa.field("_lack_res", pa.bool_())]).empty_table()


def lacking(table: pa.Table) -> pa.Array:
    """Rows that a step may complete: no TRES/GRES, no CPUs, no start, or no end."""
    state = pc.fill_null(table["state"], "")
    pending = pc.is_in(state, value_set=pa.array(sorted(PENDING_STATES)))
    running = pc.is_in(state, value_set=pa.array(sorted(RUNNING_STATES)))
    started = pc.invert(pending)
    return pc.or_(
        pc.and_(started, pc.or_(table["_lack_res"], pc.is_null(table["ncpus"]))),
        pc.and_(
            started,
            pc.or_(
                pc.is_null(table["start"]),
                pc.and_(pc.is_null(table["end"]), pc.invert(running)),
            ),
        ),
    )


def step_rows(
    batch: pa.RecordBatch,
    cols: dict[str, str | None],
    wanted: set[str],
    first_line: int,
    source: str,
) -> list[dict[str, Any]]:
    """Resource and time fields of the step rows whose allocation is in ``wanted``."""
    n = batch.num_rows
    lines = pa.array(np.arange(first_line, first_line + n, dtype=np.int64))
    jobid = batch.column(cols["jobid"])
    base = pc.list_element(pc.split_pattern(jobid, ".", max_splits=1), 0)
    mask = pc.and_(pc.match_substring(jobid, "."), pc.is_in(base, pa.array(sorted(wanted))))
    if not pc.any(mask).as_py():
        return []
    rows = _Rows(batch.filter(mask), lines.filter(mask), cols, source)
    res = _resources(rows)
    table = pa.table(
        {"base": base.filter(mask), "start": _time(rows, "start"), "end": _time(rows, "end"), **res}
    )
    return table.to_pylist()


def fill_from_steps(table: pa.Table, lack: pa.Array, steps: list[dict[str, Any]]) -> pa.Table:
    """Complete lacking allocation rows from their steps (in Python: they are few)."""
    by_base: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in steps:
        by_base[s["base"]].append(s)
    rows = table.filter(lack).to_pylist()
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        runs[r["job_id"]].append(r)
    for job_id, mine in runs.items():
        filled: dict[int, set[str]] = defaultdict(set)
        for step in by_base.get(job_id, []):
            run = _pick_run(mine, step["start"])
            _fill(run, step, filled[id(run)])
    filled_table = pa.Table.from_pylist(rows, schema=table.schema)
    out = pa.concat_tables([table.filter(pc.invert(lack)), filled_table])
    return out.take(pc.sort_indices(out["line"]))


def _pick_run(runs: list[dict[str, Any]], t: datetime | None) -> dict[str, Any]:
    """The requeued run a step belongs to: the one running at the step's start."""
    if len(runs) == 1 or t is None:
        return runs[-1]
    for r in runs:
        if r["start"] is not None and r["start"] <= t and (r["end"] is None or t <= r["end"]):
            return r
    return runs[-1]


def _fill(run: dict[str, Any], step: dict[str, Any], filled: set[str]) -> None:
    """Take from ``step`` only what ``run`` lacks (``filled``: fields taken so far)."""

    def take(key: str, value: Any, combine: Callable[[Any, Any], Any]) -> None:
        if value is None:
            return
        if run[key] is None:
            run[key] = value
            filled.add(key)
        elif key in filled:
            run[key] = combine(run[key], value)

    if run["_lack_res"]:
        take("gpus", step["gpus"], max)
        take("gpu_type", step["gpu_type"], lambda a, b: a)
        take("billing", step["billing"], max)
    take("ncpus", step["ncpus"], max)
    take("start", step["start"], min)
    if (run["state"] or "") not in RUNNING_STATES:
        take("end", step["end"], max)
