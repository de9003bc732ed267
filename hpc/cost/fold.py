"""Folding allocation rows: steps into their allocation, duplicates out, lacks filled.

Rules: steps only fill what their allocation row lacks (no TRES/GRES, no CPU count, no
start, no end on a finished job); a step whose allocation row is absent is skipped and
counted; rows with the same JobID and Submit are one run (``sacct -D`` lists each requeued
run with its own Submit), later copies are skipped and counted.
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

from hpc.cost.derive import (
    JOBID_RE,
    Rows,
    allocation_table,
    parse_time,
    resources,
)
from hpc.cost.model import PENDING_STATES, RUNNING_STATES, SCHEMA, CostInputError


@dataclass
class Piece:
    """What one batch contributes (see :meth:`Accumulator.piece`)."""

    part: pa.Table | None = None
    away: pa.Array | None = None
    wanted: set[str] = field(default_factory=set)
    skipped: Counter[str] = field(default_factory=Counter)


class Accumulator:
    """Collects allocation rows batch by batch, then folds steps and duplicates."""

    def __init__(
        self,
        source: str,
        cols: dict[str, str | None],
        header_first: str,
        sink: Callable[[pa.Table], None] | None = None,
    ):
        self.source, self.cols, self.header_first = source, cols, header_first.lower()
        self.sink = sink  # takes each batch's allocation rows instead of self.parts
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
            if self.sink is not None:
                self.sink(part)
            else:
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
        rows = Rows(batch, lines, self.cols, self.source)
        jobid = rows.get("jobid")
        valid = pc.match_substring_regex(jobid, JOBID_RE)
        if not pc.all(valid).as_py():
            valid = self._odd_rows(batch, lines, jobid, valid, out.skipped)
        is_step = pc.match_substring(jobid, ".")
        keep = pc.and_(valid, pc.invert(is_step))
        if pc.any(keep).as_py():
            sub = Rows(batch.filter(keep), lines.filter(keep), self.cols, self.source)
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
        for found in np.flatnonzero(~valid.to_numpy(zero_copy_only=False)):
            i = int(found)
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
    rows = Rows(batch.filter(mask), lines.filter(mask), cols, source)
    res = resources(rows)
    table = pa.table(
        {
            "base": base.filter(mask),
            "start": parse_time(rows, "start"),
            "end": parse_time(rows, "end"),
            **res,
        }
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
