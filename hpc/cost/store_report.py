"""``hpc cost report --store``: the report's arithmetic done inside DuckDB.

The same rules as :func:`hpc.cost.report.build_report` (window clipping, running jobs up
to the window end or now, PENDING and pending array ranges skipped, Elapsed without a
window, GPU rates by partition/type, billing mode, refunds, the accounting join), written
as one SQL query over the stored allocations, so that memory does not grow with the store
and only the groups come back to Python. Used for ``--by user|account|partition|job``
outside HTML; ``--by day`` and ``--format html`` load the rows and call ``build_report``.
Both are checked against each other on every sacct fixture (tests/cost/test_cost_store.py).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hpc.cost.common import PENDING_STATES, RUNNING_STATES
from hpc.cost.prices import PriceTable
from hpc.cost.report_rows import GROUPS, NONE_KEY, Report, Row, efficiency, iso_z

if TYPE_CHECKING:
    from hpc.cost.run_usage import AccountingSet
    from hpc.cost.store import Store

SQL_GROUPS = ("user", "account", "partition", "job")


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in(expr: str, values: frozenset[str] | set[str]) -> str:
    """``expr IN (values)``; FALSE for none."""
    if not values:
        return "FALSE"
    return f"{expr} IN ({', '.join(_lit(v) for v in sorted(values))})"


_NULL = object()  # a constant NULL aggregate (None means "ask the query")
MAX_CASE_RATES = 32  # more (partition, GPU type) pairs than this: a join on a rate table


def _rate_exprs(combos: list[tuple[str, str]], rates: list[float | None]) -> tuple[str, str, str]:
    """(rate, unpriced, join) SQL for the rows' GPU rate: a constant where every stored
    (partition, GPU type) pair has the same rate, a CASE over the pairs where they are few,
    else a join on ``_rates`` (which the caller registers)."""
    if len(combos) > MAX_CASE_RATES:
        join = (
            "LEFT JOIN _rates r ON r.p = coalesce(a.partition, '') "
            "AND r.g = coalesce(a.gpu_type, '')"
        )
        return "r.rate", "r.unpriced", join
    values = {(r or 0.0, r is None) for r in rates}
    if len(values) <= 1:
        only, unpriced = next(iter(values), (0.0, False))
        return repr(float(only)), "TRUE" if unpriced else "FALSE", ""
    whens = [
        f"WHEN coalesce(a.partition, '') = {_lit(p)} AND coalesce(a.gpu_type, '') = {_lit(g)}"
        for p, g in combos
    ]
    pairs = list(zip(whens, rates, strict=True))
    rate = " ".join(f"{w} THEN {float(r or 0.0)!r}" for w, r in pairs)
    miss = " ".join(f"{w} THEN {r is None}" for w, r in pairs)
    return f"CASE {rate} END", f"CASE {miss} END", ""


def build_store_report(
    store: Store,
    prices: PriceTable | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    group_by: str = "account",
    accounting: AccountingSet | None = None,
    now: datetime | None = None,
    cluster: str | None = None,
) -> Report:
    """What ``build_report(store.load(...), ...)`` gives, computed in the store."""
    if group_by not in SQL_GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(SQL_GROUPS)} (not {group_by!r})")
    assert group_by in GROUPS
    prices = prices or PriceTable()
    now = now or datetime.now(UTC)
    con = store.con
    ws = start.timestamp() if start else None
    we = end.timestamp() if end else None
    clip_at = min(we, now.timestamp()) if we is not None else now.timestamp()
    params: dict[str, Any] = {"clip": clip_at}
    where = where_a = "TRUE"
    if cluster is not None:
        where, where_a, params["cluster"] = "cluster = $cluster", "a.cluster = $cluster", cluster
    state = "coalesce(state, '')"
    lo, hi = "start", "e"
    inside = "timed"
    if we is not None:
        params["we"] = we
        inside += " AND start < $we"
        hi = "least(e, $we)"
    if ws is not None:
        params["ws"] = ws
        inside += " AND (e > $ws OR (e = start AND start >= $ws))"
        lo = "greatest(start, $ws)"
    unbounded = "TRUE" if ws is None and we is None else "FALSE"

    gpu_priced = bool(
        prices.gpu_default is not None
        or prices.gpu_by_type
        or prices.gpu_by_partition
        or prices.gpu_rules
    )
    registered: list[str] = []

    def register(name: str, columns: dict[str, tuple[str, list[Any]]]) -> None:
        """A temporary table of the given columns (name: (SQL type, values)), bound as
        list parameters and unnested side by side."""
        cols = ", ".join(f"unnest(?::{sql}[]) AS {col}" for col, (sql, _) in columns.items())
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {cols}",
            [values for _, values in columns.values()],
        )
        registered.append(name)

    try:
        rate_join, rate, unpriced = "", "0.0", "FALSE"
        if gpu_priced and not (prices.gpu_by_type or prices.gpu_by_partition or prices.gpu_rules):
            # Only a default: one rate for every row, no need to read the pairs (0.1 s
            # on a 20M-row store).
            rate = repr(float(prices.gpu_default or 0.0))
        elif gpu_priced:
            combos = con.execute(
                "SELECT DISTINCT coalesce(partition, ''), coalesce(gpu_type, '') "
                f"FROM allocations WHERE {where}",
                {k: v for k, v in params.items() if k == "cluster"},
            ).fetchall()
            rates = [prices.gpu_rate(p or None, g or None) for p, g in combos]
            rate, unpriced, rate_join = _rate_exprs(combos, rates)
            if rate_join:
                register(
                    "_rates",
                    {
                        "p": ("VARCHAR", [c[0] for c in combos]),
                        "g": ("VARCHAR", [c[1] for c in combos]),
                        "rate": ("DOUBLE", [r or 0.0 for r in rates]),
                        "unpriced": ("BOOLEAN", [r is None for r in rates]),
                    },
                )
        # The state sets, cut to the states stored: a short IN list is a few comparisons,
        # a long one a join over every row.
        present = {
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT coalesce(state, '') FROM allocations WHERE {where}",
                {k: v for k, v in params.items() if k == "cluster"},
            ).fetchall()
        }
        acct_join, util, energy, matched_key = "", "NULL::DOUBLE", "NULL::DOUBLE", "NULL"
        idle = agh = "NULL::DOUBLE"
        keys: list[str] = []
        if accounting is not None and accounting.runs:
            keys = sorted(accounting.runs)
            summaries = [accounting.runs[k].summary for k in keys]
            register(
                "_acct",
                {
                    "k": ("VARCHAR", keys),
                    "u": ("DOUBLE", [_float(s.get("gpu_util_mean")) for s in summaries]),
                    "en": ("DOUBLE", [_float(s.get("energy_kwh")) for s in summaries]),
                    "i": ("DOUBLE", [_idle(accounting, k)[0] for k in keys]),
                    "a": ("DOUBLE", [_idle(accounting, k)[1] for k in keys]),
                },
            )
            acct_join = (
                "LEFT JOIN _acct j1 ON j1.k = a.job_id LEFT JOIN _acct j2 ON j2.k = a.job_id_raw"
            )
            util = "CASE WHEN j1.k IS NOT NULL THEN j1.u ELSE j2.u END"
            energy = "CASE WHEN j1.k IS NOT NULL THEN j1.en ELSE j2.en END"
            matched_key = "coalesce(j1.k, j2.k)"
            idle = "CASE WHEN j1.k IS NOT NULL THEN j1.i ELSE j2.i END"
            agh = "CASE WHEN j1.k IS NOT NULL THEN j1.a ELSE j2.a END"
        key_col = "job_id" if group_by == "job" else group_by
        # The flag stored at ingest spares reading every JobID (a third of the query).
        ranged = "contains(a.job_id, '[')"
        if store.has_ranged():
            unfilled = con.execute(
                f"SELECT count(*) FROM allocations WHERE ranged IS NULL AND {where}",
                {k: v for k, v in params.items() if k == "cluster"},
            ).fetchall()
            if not unfilled[0][0]:
                ranged = "a.ranged"
        base = f"""
            SELECT a.start, a."end", a.elapsed_s, a.gpus, a.ncpus, a.billing, a.state,
                   {rate} AS rate, {unpriced} AS unpriced, {util} AS util,
                   {energy} AS energy, {matched_key} AS matched,
                   {idle} AS idle, {agh} AS agh,
                   {_in(state, RUNNING_STATES & present)} AS running,
                   {ranged} AS ranged,
                   coalesce(CAST(a.{_q(key_col)} AS VARCHAR), '{NONE_KEY}') AS key
            FROM allocations a {rate_join} {acct_join} WHERE {where_a}
        """
        classed = f"""
            SELECT *, NOT ranged AND NOT pending AS live FROM (
                SELECT *, {_in(state, PENDING_STATES & present)} AND NOT ranged AS pending
                FROM ({base})
            )
        """
        timed_q = f"""
            SELECT *, CASE WHEN live AND NOT running AND e0 IS NULL AND start IS NOT NULL
                           AND elapsed_s IS NOT NULL THEN start + elapsed_s ELSE e0 END AS e
            FROM (SELECT *, CASE WHEN running THEN $clip ELSE "end"::DOUBLE END AS e0
                  FROM ({classed}))
        """
        flags = f"""
            SELECT *, live AND NOT no_start AND NOT no_end AND NOT by_elapsed AS timed FROM (
                SELECT *, live AND start IS NULL AND NOT by_elapsed AS no_start,
                       live AND start IS NOT NULL AND e IS NULL AS no_end
                FROM (SELECT *, live AND start IS NULL AND coalesce(elapsed_s, 0) > 0
                                AND {unbounded} AS by_elapsed
                      FROM ({timed_q}))
            )
        """
        hours_q = f"""
            SELECT *, CASE WHEN by_elapsed THEN elapsed_s / 3600.0
                           WHEN inside THEN greatest(0.0, {hi} - {lo}) / 3600.0
                           ELSE 0.0 END AS hours,
                      inside OR by_elapsed AS used
            FROM (SELECT *, coalesce({inside}, FALSE) AS inside FROM ({flags}))
        """
        billing_mode = prices.billing_rate is not None
        running_present = bool(RUNNING_STATES & present)
        pending_present = bool(PENDING_STATES & present)
        cost_expr = f"gpu_hours * coalesce(rate, 0.0) + cpu_hours * {float(prices.cpu_hour)!r}"
        if billing_mode:
            cost_expr = (
                f"CASE WHEN billing IS NOT NULL THEN billing * hours * "
                f"{float(prices.billing_rate or 0.0)!r} ELSE {cost_expr} END"
            )
        refund = f"{_in(state, prices.refund_states & present)} AND used"
        priced = f"""
            SELECT *, CASE WHEN refunded THEN 0.0 ELSE cost0 END AS cost FROM (
                SELECT *, {cost_expr} AS cost0, {refund} AS refunded FROM (
                    SELECT *, coalesce(gpus, 0) * hours AS gpu_hours,
                              coalesce(ncpus, 0) * hours AS cpu_hours,
                              used AND running AS prov
                    FROM ({hours_q})
                )
            )
        """
        # One pass, grouped by key: the overall counts are the sums of the groups' (the
        # distinct joined jobs aside). Materialising the priced rows once and reading them
        # twice, or GROUPING SETS, cost several times as much on a 5.8M-row store.
        no_acct, no_refund = not keys, not prices.refund_states & present
        # (SQL, the value where the query shape makes it a constant): constants stay out
        # of the query, which then aggregates about half as many columns.
        group_aggs: list[tuple[str, Any]] = [
            ("count(*) FILTER (WHERE used)", None),
            ("sum(gpu_hours) FILTER (WHERE used)", None),
            ("sum(cpu_hours) FILTER (WHERE used)", None),
            ("sum(cost) FILTER (WHERE used)", None),
            (
                "sum(CASE WHEN util IS NULL THEN 0.0 ELSE util * gpu_hours END) "
                "FILTER (WHERE used)",
                0.0 if no_acct else None,
            ),
            (
                "sum(CASE WHEN util IS NULL THEN 0.0 ELSE gpu_hours END) FILTER (WHERE used)",
                0.0 if no_acct else None,
            ),
            ("count(util) FILTER (WHERE used)", 0 if no_acct else None),
            ("sum(coalesce(util, 0.0)) FILTER (WHERE used)", 0.0 if no_acct else None),
            ("sum(energy) FILTER (WHERE used)", _NULL if no_acct else None),
            ("sum(prov::BIGINT) FILTER (WHERE used)", 0 if not running_present else None),
            ("sum(idle) FILTER (WHERE used)", _NULL if no_acct else None),
            ("sum(agh) FILTER (WHERE used)", _NULL if no_acct else None),
        ]
        miss = "used AND coalesce(unpriced, FALSE) AND gpu_hours > 0"
        stats_aggs: list[tuple[str, Any]] = [
            ("count(*) FILTER (WHERE ranged)", None),
            ("count(*) FILTER (WHERE pending)", 0 if not pending_present else None),
            ("count(*) FILTER (WHERE no_start)", None),
            ("count(*) FILTER (WHERE no_end)", None),
            ("count(*) FILTER (WHERE timed AND NOT inside)", None),
            ("count(*) FILTER (WHERE prov)", 0 if not running_present else None),
            (f"count(*) FILTER (WHERE {miss})", 0 if unpriced == "FALSE" else None),
            (
                f"coalesce(sum(gpu_hours) FILTER (WHERE {miss}), 0.0)",
                0.0 if unpriced == "FALSE" else None,
            ),
            ("count(*) FILTER (WHERE used AND billing IS NULL)", None if billing_mode else 0),
            ("count(*) FILTER (WHERE refunded)", 0 if no_refund else None),
            ("coalesce(sum(cost0) FILTER (WHERE refunded), 0.0)", 0.0 if no_refund else None),
        ]
        aggs = group_aggs + stats_aggs
        asked = [sql for sql, const in aggs if const is None]
        # One pass, grouped by key: the overall counts are the sums of the groups' (the
        # distinct joined jobs aside). Materialising the priced rows once and reading them
        # twice, or GROUPING SETS, cost several times as much on a 5.8M-row store.
        fetched = con.execute(
            f"SELECT key, {', '.join(asked)} FROM ({priced}) GROUP BY key", params
        ).fetchall()
        out = []
        for r in fetched:
            values = iter(r[1:])
            filled = [next(values) if const is None else const for _, const in aggs]
            out.append((r[0], *[None if v is _NULL else v for v in filled]))
        stats = [sum(r[13 + i] for r in out) for i in range(11)]
        matched = 0
        if keys:
            only = {k: v for k, v in params.items() if k == "cluster"}
            sql = f"SELECT count(DISTINCT matched) FROM ({base})"
            matched = _count(con.execute(sql, only) if only else con.execute(sql))
        groups = [r[:13] for r in out if r[1]]
    finally:
        for name in registered:
            con.execute(f"DROP TABLE IF EXISTS {name}")

    skipped: Counter[str] = Counter()
    (ranged, pending, no_start, no_end, outside, prov, miss_n, miss_h, lack_bill, refunds,
     refund_cost) = stats  # fmt: skip
    skipped["pending array range (no task started)"] += ranged
    skipped["PENDING (costs nothing)"] += pending
    skipped["no Start time (never started, or not in the input)"] += no_start
    skipped["no End time and no Elapsed"] += no_end
    skipped["outside the report window"] += outside
    notes: list[str] = []
    if prov:
        at = "the window end" if we is not None and we <= now.timestamp() else f"now ({iso_z(now)})"
        notes.append(f"{prov} running allocation(s) counted up to {at}: provisional")
    if gpu_priced and miss_n:
        notes.append(
            f"{miss_h:.2f} GPU-hours in {miss_n} allocation(s) match no GPU rate: priced at 0"
        )
    if billing_mode and lack_bill:
        notes.append(f"{lack_bill} allocation(s) without billing TRES: priced by the GPU/CPU rates")
    if refunds:
        notes.append(
            f"{refunds} run(s) in {', '.join(sorted(prices.refund_states))} "
            f"refunded ({refund_cost:.2f} {prices.currency})".rstrip()
        )
    if keys:
        notes.append(f"accounting records joined for {matched} of {len(keys)} job(s)")

    rows = [_row(g) for g in groups]
    rows.sort(key=lambda r: (-r.cost, -r.gpu_hours, -r.cpu_hours, r.key))
    sums = [sum(g[i] or 0 for g in groups) for i in range(1, 9)]
    total = _row(
        (
            "total",
            *sums,
            _sum_known(groups, 9),
            sum(g[10] for g in groups),
            _sum_known(groups, 11),
            _sum_known(groups, 12),
        )
    )
    return Report(
        window_start=start,
        window_end=end,
        group_by=group_by,
        rows=rows,
        total=total,
        currency=prices.currency,
        now=now,
        skipped=+skipped,
        notes=notes,
        sources=[f"store {store.path}"],
    )


def _row(g: tuple[Any, ...]) -> Row:
    key, jobs, gh, ch, cost, w_util, w_has, n_util, s_util, energy, prov, idle, agh = g
    util = None
    if n_util:
        util = w_util / w_has if w_has > 0 else s_util / n_util
    return Row(key, int(jobs), float(gh or 0.0), float(ch or 0.0), float(cost or 0.0),
               util, None if energy is None else float(energy), int(prov or 0),
               None if idle is None else float(idle),
               efficiency(None if idle is None else float(idle), agh))  # fmt: skip


def _sum_known(groups: list[tuple[Any, ...]], i: int) -> float | None:
    known = [g[i] for g in groups if g[i] is not None]
    return float(sum(known)) if known else None


def _idle(accounting: AccountingSet, key: str) -> tuple[float | None, float | None]:
    """(idle GPU-hours, sampled GPU-hours) of a job's record; both None if idle unknown."""
    summary = accounting.runs[key].summary
    idle = _float(summary.get("idle_gpu_hours"))
    return (None, None) if idle is None else (idle, _float(summary.get("gpu_hours")))


def _float(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]


def _q(name: str) -> str:
    return '"' + name + '"'


def _count(cursor: Any) -> int:
    rows = cursor.fetchall()
    return int(rows[0][0]) if rows else 0
