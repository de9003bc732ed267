"""The accounting store: allocations and the framework's run records in one DuckDB file.

Tables (times are epoch seconds, UTC):

* ``allocations``: one row per allocation in :data:`hpc.cost.model.SCHEMA`'s columns plus
  ``cluster``; the key is (cluster, job_id, submit): steps are folded into their
  allocation at ingest (as the file readers do) and Submit tells requeued runs apart
  (``sacct -D``). A newer row with the same key replaces the stored one (RUNNING ->
  COMPLETED); an identical one changes nothing.
* ``runs``: the framework's per-job accounting records (``job.json`` + JSONL summary),
  keyed by (cluster, job_id).
* ``ingests``: one line per ingest (when, source, rows new/updated/unchanged).

Path: ``--store PATH``, else ``HPC_COST_STORE``, else ``$HPC_STATE_DIR/cost.duckdb``.
DuckDB runs with a memory limit (``HPC_COST_STORE_MEMORY``, default 96MB) and spills to
disk beyond it, so ingest and reads stay flat in memory however large the store grows.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc.cost.common import PENDING_STATES, RUNNING_STATES, CostInputError
from hpc.cost.run_usage import AccountingSet, RunAccounting
from hpc.rundir.records import state_dir

if TYPE_CHECKING:
    import pyarrow as pa

    from hpc.cost.model import AllocationSet

# pyarrow (0.2 s to import, with numpy) only where rows move as Arrow tables: ingest and
# load. A report over the store (hpc.cost.store_report) needs none.

STORE_FILE = "cost.duckdb"
BUCKET_ROWS = 500_000  # staged rows upserted at a time
TIME_COLS = ("submit", "start", "end")
_SQL_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER", "double": "DOUBLE"}


def default_path() -> Path:
    env = os.environ.get("HPC_COST_STORE")
    return Path(env) if env else state_dir() / STORE_FILE


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_type(field: pa.Field) -> str:
    import pyarrow as pa  # noqa: PLC0415

    if pa.types.is_timestamp(field.type):
        return "BIGINT"
    if pa.types.is_dictionary(field.type):
        return "VARCHAR"
    return _SQL_TYPES[str(field.type)]


@cache
def schema_names() -> tuple[str, ...]:
    from hpc.cost.model import SCHEMA  # noqa: PLC0415 (lazy: pyarrow)

    return tuple(SCHEMA.names)


@cache
def columns_sql() -> str:
    """The allocation columns as SQL (``"job_id" VARCHAR, ...``)."""
    from hpc.cost.model import SCHEMA  # noqa: PLC0415 (lazy: pyarrow)

    return ", ".join(f"{q(f.name)} {_sql_type(f)}" for f in SCHEMA)


def value_cols() -> tuple[str, ...]:
    """What an update may change; a row equal in all of these is "unchanged"."""
    return tuple(n for n in schema_names() if n not in ("job_id", "submit", "line", "file"))


@dataclass
class Counts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0


def _to_arrow(con: Any, sql: str, params: Any = None) -> pa.Table:
    rel = con.sql(sql, params=params or None)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()


class Store:
    """An open store (one writer at a time: DuckDB locks the file)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, read_only: bool = False):
        import duckdb  # noqa: PLC0415 (lazy: 0.15 s to import; only the store needs it)

        self.path = Path(path) if path else default_path()
        if read_only and not self.path.exists():
            raise CostInputError(str(self.path), "no accounting store here (run hpc cost ingest)")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | bool | int | float | list[str]] = {
            "memory_limit": os.environ.get("HPC_COST_STORE_MEMORY", "96MB"),
            "threads": str(max(1, min(4, len(os.sched_getaffinity(0))))),
            "preserve_insertion_order": "false",
            "temp_directory": str(self.path) + ".tmp",
        }
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only, config=config)
        except duckdb.Error as exc:
            why = str(exc).splitlines()[0]
            raise CostInputError(str(self.path), f"cannot open the store: {why}") from None
        if not read_only:
            self._create()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        self.con.execute(
            f"CREATE TABLE IF NOT EXISTS allocations (cluster VARCHAR, {columns_sql()}, "
            "ranged BOOLEAN)"
        )
        if not self.has_ranged():  # a store from before the column: fill it once
            self.con.execute("ALTER TABLE allocations ADD COLUMN ranged BOOLEAN")
            self.con.execute("UPDATE allocations SET ranged = contains(job_id, '[')")
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS runs (cluster VARCHAR, job_id VARCHAR, "
            "summary VARCHAR, run_dirs VARCHAR, mlflow_run_ids VARCHAR, record VARCHAR)"
        )
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS ingests (ingested_at DOUBLE, cluster VARCHAR, "
            "source VARCHAR, rows_new BIGINT, rows_updated BIGINT, rows_unchanged BIGINT)"
        )

    # --- writing ---------------------------------------------------------------------------
    def begin_stage(self) -> None:
        self.con.execute("DROP TABLE IF EXISTS stage")
        self.con.execute(f"CREATE TEMP TABLE stage ({columns_sql()}, _lack_res BOOLEAN)")

    def stage(self, part: pa.Table) -> None:
        """Add one batch of allocation rows (SCHEMA, with or without ``_lack_res``)."""
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.compute as pc  # noqa: PLC0415

        cols = {}
        for name in part.column_names:
            col = part[name]
            if name in TIME_COLS:
                col = pc.cast(col, pa.int64())
            elif name == "file":
                col = pc.cast(col, pa.string())
            cols[name] = col
        if "_lack_res" not in cols:
            cols["_lack_res"] = pa.nulls(part.num_rows, pa.bool_())
        names = ", ".join(q(n) for n in [*schema_names(), "_lack_res"])
        with self._registered("_batch", pa.table(cols)):
            self.con.execute(f"INSERT INTO stage ({names}) SELECT {names} FROM _batch")

    @contextmanager
    def _registered(self, name: str, table: pa.Table) -> Iterator[None]:
        self.con.register(name, table)
        try:
            yield
        finally:
            self.con.unregister(name)

    def staged(self, where: str, params: list[Any] | None = None) -> pa.Table:
        """Staged rows matching ``where``, in SCHEMA types (plus ``_lack_res``)."""
        table = _to_arrow(self.con, f"SELECT * FROM stage WHERE {where}", params)
        return _typed(table, with_lack=True)

    def staged_ids(self, ids: list[str]) -> pa.Table:
        import pyarrow as pa  # noqa: PLC0415

        with self._registered("_ids", pa.table({"id": pa.array(ids, pa.string())})):
            return self.staged("job_id IN (SELECT id FROM _ids)")

    def replace_staged(self, lines: pa.ChunkedArray, rows: pa.Table) -> None:
        """Swap the staged rows at ``lines`` for ``rows`` (filled from their steps)."""
        import pyarrow as pa  # noqa: PLC0415

        with self._registered("_gone", pa.table({"line": lines})):
            self.con.execute("DELETE FROM stage WHERE line IN (SELECT line FROM _gone)")
        self.stage(rows)

    def dedupe_stage(self) -> int:
        """Rows with the same JobID and Submit as an earlier line are one run: drop them."""
        return _count(
            self.con.execute(
                "DELETE FROM stage WHERE line IN (SELECT line FROM (SELECT line, row_number() "
                "OVER (PARTITION BY job_id, job_id_raw, submit ORDER BY line) AS n FROM stage) "
                "WHERE n > 1)"
            )
        )

    def commit_stage(self, cluster: str, source: str) -> Counts:
        """Upsert the staged rows into ``allocations`` (key: cluster, job_id, submit).

        Done in buckets of job ids (about BUCKET_ROWS staged rows each, one transaction
        each) so that the joins stay within DuckDB's memory limit however large the
        input; a bucket is all or nothing, and an interrupted ingest is finished by
        running it again.
        """
        con = self.con
        con.execute("UPDATE stage SET gpus = 0 WHERE gpus IS NULL")
        staged = _count(con.execute("SELECT count(*) FROM stage"))
        buckets = max(1, -(-staged // BUCKET_ROWS))
        names = ", ".join(q(n) for n in schema_names())
        same = " AND ".join(f"a.{q(c)} IS NOT DISTINCT FROM s.{q(c)}" for c in value_cols())
        counts = Counts()
        for b in range(buckets):
            in_b = f"hash(s.job_id) % {buckets} = {b}"
            a_b = f"hash(a.job_id) % {buckets} = {b}"
            key = (
                f"a.cluster = $c AND {a_b} AND {in_b} AND a.job_id = s.job_id "
                "AND a.submit IS NOT DISTINCT FROM s.submit"
            )
            con.execute("BEGIN")
            try:
                counts.unchanged += _count(
                    con.execute(
                        f"DELETE FROM stage s USING allocations a WHERE {key} AND {same}",
                        {"c": cluster},
                    )
                )
                updated = _count(
                    con.execute(
                        f"DELETE FROM allocations a USING stage s WHERE {key}", {"c": cluster}
                    )
                )
                total = _count(
                    con.execute(
                        f"INSERT INTO allocations (cluster, {names}, ranged) SELECT $c, "
                        f"{names}, contains(job_id, '[') FROM stage s WHERE {in_b}",
                        {"c": cluster},
                    )
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            counts.updated += updated
            counts.new += total - updated
        con.execute(
            "INSERT INTO ingests VALUES (?, ?, ?, ?, ?, ?)",
            [time.time(), cluster, source, counts.new, counts.updated, counts.unchanged],
        )
        con.execute("DROP TABLE stage")
        return counts

    def has_ranged(self) -> bool:
        """Whether ``allocations`` has the ``ranged`` column (a pending array range: the
        JobID holds ``[``), filled at ingest so that a report need not read every JobID."""
        found = self.con.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'allocations' AND column_name = 'ranged'"
        ).fetchall()
        return bool(found and found[0][0])

    def put_runs(self, cluster: str, accounting: AccountingSet) -> Counts:
        counts = Counts()
        for job_id, run in sorted(accounting.runs.items()):
            values = [
                json.dumps(run.summary, sort_keys=True),
                json.dumps(run.run_dirs),
                json.dumps(run.mlflow_run_ids),
                json.dumps(run.record, sort_keys=True, default=str),
            ]
            found = self.con.execute(
                "SELECT summary, run_dirs, mlflow_run_ids, record FROM runs "
                "WHERE cluster = ? AND job_id = ?",
                [cluster, job_id],
            ).fetchall()
            old = found[0] if found else None
            if old is not None and list(old) == values:
                counts.unchanged += 1
                continue
            if old is None:
                counts.new += 1
            else:
                counts.updated += 1
                self.con.execute(
                    "DELETE FROM runs WHERE cluster = ? AND job_id = ?", [cluster, job_id]
                )
            self.con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)", [cluster, job_id, *values]
            )
        return counts

    # --- reading ---------------------------------------------------------------------------
    def load(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        cluster: str | None = None,
        prune: bool = True,
    ) -> AllocationSet:
        """The stored allocations that may fall in [start, end) (all without a window).

        With ``prune``, rows that surely lie outside the window are counted, not loaded,
        under the reason :func:`hpc.cost.report.build_report` gives them ("outside the
        report window").
        """
        where, params = ["TRUE"], {}
        if cluster is not None:
            where.append("cluster = $cluster")
            params["cluster"] = cluster
        outside = _outside_sql(start, end, params) if prune else ""
        base = " AND ".join(where)
        skipped: Counter[str] = Counter()
        if outside:
            n = _count(
                self.con.execute(
                    f"SELECT count(*) FROM allocations WHERE {base} AND ({outside})", params
                )
            )
            if n:
                skipped["outside the report window"] += n
            base += f" AND NOT ({outside})"
        from hpc.cost.model import AllocationSet  # noqa: PLC0415 (lazy: pyarrow)

        names = ", ".join(q(n) for n in schema_names())
        table = _to_arrow(self.con, f"SELECT {names} FROM allocations WHERE {base}", params)
        return AllocationSet(_typed(table), skipped, [f"store {self.path}"])

    def load_runs(self, cluster: str | None = None) -> AccountingSet:
        sql = "SELECT job_id, summary, run_dirs, mlflow_run_ids, record FROM runs"
        rows = (
            self.con.execute(sql + " WHERE cluster = ?", [cluster]).fetchall()
            if cluster is not None
            else self.con.execute(sql).fetchall()
        )
        out = AccountingSet()
        for job_id, summary, run_dirs, mlflow, record in rows:
            out.runs[job_id] = RunAccounting(
                job_id, json.loads(summary), json.loads(run_dirs), json.loads(mlflow),
                json.loads(record),
            )  # fmt: skip
        return out

    def count(self, cluster: str | None = None) -> int:
        sql = "SELECT count(*) FROM allocations"
        return _count(
            self.con.execute(sql + " WHERE cluster = ?", [cluster])
            if cluster is not None
            else self.con.execute(sql)
        )


def _count(result: Any) -> int:
    """The one number a DML statement or count(*) returns (the result read to its end)."""
    rows = result.fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def _typed(table: pa.Table, with_lack: bool = False) -> pa.Table:
    """Stored columns -> SCHEMA types (epoch seconds back to timestamps)."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    from hpc.cost.model import SCHEMA  # noqa: PLC0415

    cols = []
    for f in SCHEMA:
        col = table[f.name]
        if pa.types.is_timestamp(f.type):
            col = pc.cast(pc.cast(col, pa.int64()), f.type)
        elif pa.types.is_dictionary(f.type):
            col = pc.dictionary_encode(pc.cast(col, pa.string()))
            col = pc.cast(col, f.type)
        else:
            col = pc.cast(col, f.type)
        cols.append(col)
    schema = SCHEMA
    if with_lack:
        cols.append(pc.fill_null(pc.cast(table["_lack_res"], pa.bool_()), False))
        schema = schema.append(pa.field("_lack_res", pa.bool_()))
    return pa.Table.from_arrays(cols, schema=schema)


def _outside_sql(start: datetime | None, end: datetime | None, params: dict[str, Any]) -> str:
    """Rows that build_report would skip as outside the window (and only those)."""
    if start is None and end is None:
        return ""
    running = ", ".join(f"'{s}'" for s in sorted(RUNNING_STATES))
    pending = ", ".join(f"'{s}'" for s in sorted(PENDING_STATES))
    live = f"start IS NOT NULL AND coalesce(state, '') NOT IN ({pending}) AND job_id NOT LIKE '%[%'"
    parts = []
    if end is not None:  # began at or after the window end, and has an end of some kind
        params["we"] = int(end.timestamp())
        parts.append(
            f"(start >= $we AND (\"end\" IS NOT NULL OR coalesce(state, '') IN ({running}) "
            "OR elapsed_s IS NOT NULL))"
        )
    if start is not None:  # finished before the window start
        params["ws"] = int(start.timestamp())
        parts.append(f"(\"end\" < $ws AND coalesce(state, '') NOT IN ({running}))")
    return f"{live} AND ({' OR '.join(parts)})"
