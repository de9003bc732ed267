"""Allocation records: the common output of every sacct reader.

Readers produce an :class:`AllocationSet`: a columnar table (pyarrow) with one row per
allocation (job, array task, heterogeneous component, requeued run) plus the counts of
rows they skipped, per reason. :meth:`AllocationSet.records` turns rows into
:class:`Allocation` dataclasses for code that wants objects.

Times are UTC (sacct prints local time: run it with ``TZ=UTC``, as ``--live`` does).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import datetime

import pyarrow as pa

from hpc.cost.common import PENDING_STATES, RUNNING_STATES, CostInputError

SacctError = CostInputError
__all__ = [
    "PENDING_STATES",
    "RUNNING_STATES",
    "SCHEMA",
    "Allocation",
    "AllocationSet",
    "CostInputError",
    "SacctError",
]


@dataclass(frozen=True)
class Allocation:
    """One allocation: a job, an array task, a het-job component or one requeued run."""

    job_id: str  # as sacct shows it: "123", "123_4", "123+0", "123_[1-3]"
    job_id_raw: str | None
    array_job_id: int | None
    array_task_id: int | None
    het_job_id: int | None
    het_offset: int | None
    user: str | None
    account: str | None
    partition: str | None
    state: str | None  # base state: "CANCELLED by 42" -> "CANCELLED"
    submit: datetime | None
    start: datetime | None
    end: datetime | None
    elapsed_s: int | None
    ncpus: int | None
    gpus: int  # allocated GPUs (AllocTRES gres/gpu, else AllocGRES gpu), 0 if none
    gpu_type: str | None
    billing: float | None
    nodes: int | None
    line: int | None  # line (text) or job index (JSON) in `file`
    file: str


SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),
        ("job_id_raw", pa.string()),
        ("array_job_id", pa.int64()),
        ("array_task_id", pa.int32()),
        ("het_job_id", pa.int64()),
        ("het_offset", pa.int32()),
        ("user", pa.string()),
        ("account", pa.string()),
        ("partition", pa.string()),
        ("state", pa.string()),
        ("submit", pa.timestamp("s", tz="UTC")),
        ("start", pa.timestamp("s", tz="UTC")),
        ("end", pa.timestamp("s", tz="UTC")),
        ("elapsed_s", pa.int64()),
        ("ncpus", pa.int32()),
        ("gpus", pa.int32()),
        ("gpu_type", pa.string()),
        ("billing", pa.float64()),
        ("nodes", pa.int32()),
        ("line", pa.int64()),
        ("file", pa.dictionary(pa.int32(), pa.string())),
    ]
)
assert [f.name for f in fields(Allocation)] == SCHEMA.names


@dataclass
class AllocationSet:
    """Allocations read from one or more sources, and what was skipped and why."""

    table: pa.Table
    skipped: Counter[str] = field(default_factory=Counter)
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.table.num_rows

    def records(self) -> list[Allocation]:
        return [Allocation(**row) for row in self.table.to_pylist()]

    @staticmethod
    def empty() -> AllocationSet:
        return AllocationSet(SCHEMA.empty_table())

    @staticmethod
    def from_records(rows: list[dict[str, object]], **kw: object) -> AllocationSet:
        return AllocationSet(pa.Table.from_pylist(rows, schema=SCHEMA), **kw)  # type: ignore[arg-type]

    @staticmethod
    def concat(sets: list[AllocationSet]) -> AllocationSet:
        if not sets:
            return AllocationSet.empty()
        out = AllocationSet(pa.concat_tables([s.table for s in sets]))
        for s in sets:
            out.skipped.update(s.skipped)
            out.sources.extend(s.sources)
            out.notes.extend(s.notes)
        return out
