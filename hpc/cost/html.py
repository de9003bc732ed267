"""The HTML cost report: one self-contained file (plotly.js inlined, no network access).

Charts: GPU-hours per day stacked by group (top groups, the rest as "other"), the
distribution of per-job GPU utilisation (from the accounting join) and the top jobs by
cost; then the report table, what was skipped and why, and the notes.
"""

from __future__ import annotations

import html
import json
from typing import Any

from hpc.cost.render import iso, side_notes
from hpc.cost.report_rows import Report

MAX_SERIES = 10
MAX_TABLE_ROWS = 500
PALETTE = [
    "#4C78A8",
    "#F58518",
    "#54A24B",
    "#E45756",
    "#72B7B2",
    "#EECA3B",
    "#B279A2",
    "#FF9DA6",
    "#9D755D",
    "#BAB0AC",
    "#8E8E8E",
]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;
background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#666;font-size:13px}.cards{display:flex;gap:12px;margin:16px 0;flex-wrap:wrap}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:10px 16px;min-width:130px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.panel{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:8px}
.wide{grid-column:1 / span 2}.chart{height:380px}
.empty{height:380px;display:flex;align-items:center;justify-content:center;color:#777;
text-align:center;padding:0 24px}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #e3e3e3;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f0f0f0}
tfoot td{font-weight:bold;background:#f7f7f7}ul{font-size:13px}
"""


def _num(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _eff(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _json(obj: Any) -> str:
    """JSON safe to put inside <script>."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _timeline_fig(report: Report) -> dict[str, Any] | None:
    if not report.timeline:
        return None
    days = list(report.timeline)
    totals: dict[str, float] = {}
    for per in report.timeline.values():
        for k, v in per.items():
            totals[k] = totals.get(k, 0.0) + v
    top = [k for k, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:MAX_SERIES]]
    rest = [k for k in totals if k not in top]
    traces = []
    for i, k in enumerate(top):
        traces.append(
            {
                "type": "bar",
                "name": html.escape(k),  # plotly reads tags in text: show them as typed
                "x": days,
                "y": [round(report.timeline[d].get(k, 0.0), 3) for d in days],
                "marker": {"color": PALETTE[i % len(PALETTE)]},
            }
        )
    if rest:
        traces.append(
            {
                "type": "bar",
                "name": f"other ({len(rest)})",
                "x": days,
                "y": [round(sum(report.timeline[d].get(k, 0.0) for k in rest), 3) for d in days],
                "marker": {"color": PALETTE[-1]},
            }
        )
    layout = {
        "barmode": "stack",
        "title": {"text": f"GPU-hours per day by {report.timeline_series}"},
        "xaxis": {"type": "category" if len(days) < 3 else "date"},
        "yaxis": {"title": {"text": "GPU-hours"}},
        "legend": {"orientation": "v"},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
    }
    return {"data": traces, "layout": layout}


def _util_fig(report: Report) -> dict[str, Any] | None:
    if not report.util_values:
        return None
    return {
        "data": [
            {
                "type": "histogram",
                "x": [round(u, 2) for u in report.util_values],
                "xbins": {"start": 0, "end": 100.0001, "size": 5},
                "marker": {"color": "#54A24B", "line": {"color": "#fff", "width": 1}},
            }
        ],
        "layout": {
            "title": {
                "text": f"GPU utilisation per job ({len(report.util_values)} jobs with accounting)"
            },
            "xaxis": {"title": {"text": "mean GPU utilisation (%)"}, "range": [0, 100]},
            "yaxis": {"title": {"text": "jobs"}},
            "bargap": 0.05,
            "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        },
    }


def _top_fig(report: Report) -> dict[str, Any] | None:
    jobs = [j for j in report.top_jobs if j["cost"] > 0 or j["gpu_hours"] > 0][:15]
    if not jobs:
        return None
    priced = any(j["cost"] > 0 for j in jobs)
    value = "cost" if priced else "gpu_hours"
    jobs = list(reversed(jobs))
    labels = [
        html.escape(f"{j['job_id']} · {j['user'] or '?'}") + (" *" if j["provisional"] else "")
        for j in jobs
    ]
    colors = [
        "#BAB0AC" if j["gpu_util_mean"] is None else f"hsl({int(j['gpu_util_mean'] * 1.2)},60%,45%)"
        for j in jobs
    ]
    text = [
        f"{j['gpus']} GPU {j['gpu_type'] or ''} · {j['gpu_hours']:,.1f} GPU-h"
        + ("" if j["gpu_util_mean"] is None else f" · {j['gpu_util_mean']:.0f}% util")
        for j in jobs
    ]
    unit = f" ({report.currency})" if priced and report.currency else ""
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "y": labels,
                "x": [round(j[value], 3) for j in jobs],
                "text": text,
                "hovertemplate": "%{y}<br>%{x:,.2f}<br>%{text}<extra></extra>",
                "marker": {"color": colors},
            }
        ],
        "layout": {
            "title": {
                "text": "Top jobs by "
                + ("cost" + unit if priced else "GPU-hours (no prices given)")
                + "<br><sub>colour: GPU utilisation, red 0% to green 100%; grey: not "
                "accounted; * running</sub>"
            },
            "xaxis": {"title": {"text": "cost" + unit if priced else "GPU-hours"}},
            "yaxis": {"automargin": True},
            "margin": {"l": 20, "r": 20, "t": 80, "b": 50},
        },
    }


def _panel(div_id: str, fig: dict[str, Any] | None, empty: str, wide: bool = False) -> str:
    cls = "panel wide" if wide else "panel"
    if fig is None:
        return f'<div class="{cls}"><div class="empty">{html.escape(empty)}</div></div>'
    return f'<div class="{cls}"><div id="{div_id}" class="chart"></div></div>'


def to_html(report: Report) -> str:
    """The whole report as one HTML document."""
    # lazy: optional plotly, only its bundled plotly.js
    from plotly.offline import get_plotlyjs  # noqa: PLC0415

    figs = {"timeline": _timeline_fig(report), "util": _util_fig(report), "top": _top_fig(report)}
    t = report.total
    cur = f" {report.currency}" if report.currency else ""
    window = f"{iso(report.window_start) or 'beginning'} → {iso(report.window_end) or 'now'}"
    cards = [
        (f"{t.jobs:,}", "jobs"),
        (_num(t.gpu_hours, 1), "GPU-hours"),
        (_num(t.cpu_hours, 1), "CPU-hours"),
        (_num(t.cost) + cur, "cost"),
        (
            _num(t.gpu_util_mean, 1) + ("" if t.gpu_util_mean is None else " %"),
            "GPU util (accounted jobs)",
        ),
        (_num(t.energy_kwh), "GPU energy kWh"),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>hpc cost report by {html.escape(report.group_by)}</title>",
        f"<style>{CSS}</style>",
        f"<script>{get_plotlyjs()}</script>",
        "</head><body>",
        f"<h1>GPU cost report by {html.escape(report.group_by)}</h1>",
        f'<div class="sub">Window {html.escape(window)} · generated {iso(report.now)}'
        f" · sources: {html.escape(', '.join(report.sources) or '—')}</div>",
        '<div class="cards">'
        + "".join(
            f'<div class="card"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>'
            for v, k in cards
        )
        + "</div>",
        '<div class="grid">',
        _panel("timeline", figs["timeline"], "No allocation ran in the window.", wide=True),
        _panel(
            "util",
            figs["util"],
            "No GPU utilisation data: pass --accounting with the "
            "run directories whose sampler recorded GPU samples.",
        ),
        _panel("top", figs["top"], "No job used GPUs or cost anything."),
        "</div>",
        _table(report),
        _notes(report),
        "<script>",
        "const figs = " + _json({k: v for k, v in figs.items() if v is not None}) + ";",
        "for (const [id, fig] of Object.entries(figs)) {",
        "  Plotly.newPlot(id, fig.data, fig.layout, {displayModeBar: false, responsive: true});",
        "}",
        "</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _table(report: Report) -> str:
    rows = report.rows[:MAX_TABLE_ROWS]
    cur = f" ({html.escape(report.currency)})" if report.currency else ""
    head = (
        f"<tr><th>{html.escape(report.group_by)}</th><th>jobs</th><th>GPU-h</th>"
        f"<th>CPU-h</th><th>cost{cur}</th><th>GPU util %</th><th>energy kWh</th>"
        "<th>idle GPU-h</th><th>efficiency %</th></tr>"
    )
    body = "".join(
        f"<tr><td>{html.escape(r.key)}{' *' if r.provisional_jobs else ''}</td>"
        f"<td>{r.jobs:,}</td><td>{_num(r.gpu_hours)}</td><td>{_num(r.cpu_hours)}</td>"
        f"<td>{_num(r.cost)}</td><td>{_num(r.gpu_util_mean, 1)}</td>"
        f"<td>{_num(r.energy_kwh)}</td><td>{_num(r.idle_gpu_hours)}</td>"
        f"<td>{_eff(r.efficiency)}</td></tr>"
        for r in rows
    )
    t = report.total
    foot = (
        f"<tr><td>total{' *' if t.provisional_jobs else ''}</td><td>{t.jobs:,}</td>"
        f"<td>{_num(t.gpu_hours)}</td><td>{_num(t.cpu_hours)}</td><td>{_num(t.cost)}</td>"
        f"<td>{_num(t.gpu_util_mean, 1)}</td><td>{_num(t.energy_kwh)}</td>"
        f"<td>{_num(t.idle_gpu_hours)}</td><td>{_eff(t.efficiency)}</td></tr>"
    )
    more = (
        f'<p class="sub">First {MAX_TABLE_ROWS} of {len(report.rows):,} rows: use '
        "--format csv for all.</p>"
        if len(report.rows) > MAX_TABLE_ROWS
        else ""
    )
    prov = (
        '<p class="sub">* includes running allocations counted up to the window end or '
        "now: provisional.</p>"
        if t.provisional_jobs
        else ""
    )
    return (
        f"<h2>By {html.escape(report.group_by)}</h2><table><thead>{head}</thead>"
        f"<tbody>{body}</tbody><tfoot>{foot}</tfoot></table>{more}{prov}"
    )


def _notes(report: Report) -> str:
    lines = side_notes(report)
    if not lines:
        return '<h2>Skipped rows and notes</h2><p class="sub">Nothing skipped.</p>'
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"<h2>Skipped rows and notes</h2><ul>{items}</ul>"
