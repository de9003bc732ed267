"""Render a :class:`~hpc.cost.report.Report` as JSON, CSV, a rich table or HTML.

JSON is exactly::

    {"window": {"start": ISO8601|null, "end": ISO8601|null}, "group_by": "account",
     "rows": [{"key", "jobs", "gpu_hours", "cpu_hours", "cost", "gpu_util_mean",
               "idle_gpu_hours", "efficiency"}],
     "total": {"jobs", "gpu_hours", "cpu_hours", "cost", "idle_gpu_hours", "efficiency"}}

``idle_gpu_hours`` and ``efficiency`` (0..1) come from the joined accounting records
(null without any).

Skipped rows and notes are not part of the JSON/CSV: :func:`side_notes` gives them as
text lines for standard error; the table and HTML show them.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

from hpc.cost.report_rows import Report, Row

DIGITS = 6
MAX_TABLE_ROWS = 2000  # a terminal table longer than this helps nobody


def iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _r(x: float) -> float:
    return round(float(x), DIGITS) + 0.0  # + 0.0 turns -0.0 into 0.0


def to_dict(report: Report) -> dict[str, Any]:
    """The JSON document (see the module doc for its exact shape)."""
    return {
        "window": {"start": iso(report.window_start), "end": iso(report.window_end)},
        "group_by": report.group_by,
        "rows": [
            {
                "key": r.key,
                "jobs": int(r.jobs),
                "gpu_hours": _r(r.gpu_hours),
                "cpu_hours": _r(r.cpu_hours),
                "cost": _r(r.cost),
                "gpu_util_mean": None if r.gpu_util_mean is None else _r(r.gpu_util_mean),
                "idle_gpu_hours": _opt(r.idle_gpu_hours),
                "efficiency": _opt(r.efficiency),
            }
            for r in report.rows
        ],
        "total": {
            "jobs": int(report.total.jobs),
            "gpu_hours": _r(report.total.gpu_hours),
            "cpu_hours": _r(report.total.cpu_hours),
            "cost": _r(report.total.cost),
            "idle_gpu_hours": _opt(report.total.idle_gpu_hours),
            "efficiency": _opt(report.total.efficiency),
        },
    }


def _opt(v: float | None) -> float | None:
    return None if v is None else _r(v)


def to_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2) + "\n"


CSV_COLUMNS = (
    "key",
    "jobs",
    "gpu_hours",
    "cpu_hours",
    "cost",
    "gpu_util_mean",
    "energy_kwh",
    "provisional_jobs",
    "idle_gpu_hours",
    "efficiency",
)


def to_csv(report: Report) -> str:
    """One line per group and a last ``total`` line; empty cells for unknown values."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow((report.group_by, *CSV_COLUMNS[1:]))
    for r in [*report.rows, report.total]:
        w.writerow(_csv_row(r))
    return out.getvalue()


def _csv_row(r: Row) -> list[object]:
    def opt(v: float | None) -> object:
        return "" if v is None else _r(v)

    return [
        r.key,
        int(r.jobs),
        _r(r.gpu_hours),
        _r(r.cpu_hours),
        _r(r.cost),
        opt(r.gpu_util_mean),
        opt(r.energy_kwh),
        int(r.provisional_jobs),
        opt(r.idle_gpu_hours),
        opt(r.efficiency),
    ]


def side_notes(report: Report) -> list[str]:
    """Skipped rows (per reason) and notes, one line each."""
    lines = [f"skipped {n:,} row(s): {why}" for why, n in sorted(report.skipped.items())]
    return lines + [f"note: {note}" for note in report.notes]


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def to_table(report: Report, width: int | None = None) -> str:
    """A rich table (plain text, no colour codes) with the skipped/notes lines under it."""
    from rich.console import Console  # noqa: PLC0415 (lazy: rich only for the table format)
    from rich.table import Table  # noqa: PLC0415 (lazy: rich only for the table format)

    cur = f" ({report.currency})" if report.currency else ""
    window = f"{iso(report.window_start) or '…'} → {iso(report.window_end) or '…'}"
    table = Table(title=f"GPU cost by {report.group_by}, {window}", show_footer=True)
    t = report.total
    prov = " *" if t.provisional_jobs else ""
    table.add_column(report.group_by, footer="total" + prov)
    table.add_column("jobs", justify="right", footer=f"{t.jobs:,}")
    table.add_column("GPU-h", justify="right", footer=_fmt(t.gpu_hours))
    table.add_column("CPU-h", justify="right", footer=_fmt(t.cpu_hours))
    table.add_column("cost" + cur, justify="right", footer=_fmt(t.cost))
    table.add_column("GPU util %", justify="right", footer=_fmt(t.gpu_util_mean, 1))
    table.add_column("idle GPU-h", justify="right", footer=_fmt(t.idle_gpu_hours))
    table.add_column("efficiency %", justify="right", footer=_pct(t.efficiency))
    table.add_column("energy kWh", justify="right", footer=_fmt(t.energy_kwh))
    for r in report.rows[:MAX_TABLE_ROWS]:
        table.add_row(
            r.key + (" *" if r.provisional_jobs else ""),
            f"{r.jobs:,}",
            _fmt(r.gpu_hours),
            _fmt(r.cpu_hours),
            _fmt(r.cost),
            _fmt(r.gpu_util_mean, 1),
            _fmt(r.idle_gpu_hours),
            _pct(r.efficiency),
            _fmt(r.energy_kwh),
        )
    buf = io.StringIO()
    console = Console(file=buf, width=width or 120, color_system=None, force_terminal=False)
    console.print(table)
    if len(report.rows) > MAX_TABLE_ROWS:
        console.print(
            f"(first {MAX_TABLE_ROWS:,} of {len(report.rows):,} rows; the total covers "
            "all: use --format csv or json for every row)"
        )
    if t.provisional_jobs:
        console.print(f"* includes {t.provisional_jobs} running allocation(s): provisional")
    for line in side_notes(report):
        console.print(line, markup=False, highlight=False)
    return buf.getvalue()
