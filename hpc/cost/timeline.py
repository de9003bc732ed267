"""The per-job timeline: ``hpc jobstats RUN --format html`` (one self-contained file).

One chart per node: each device's reading per window (NVML util, GPM SM activity, or the
job's CPU percent on a node without GPUs), the windows in which every sample was idle
shaded, and GPU memory in use on a second axis. Then the per-device table.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from hpc.accounting.jobstats import JobStats, NodeStats
from hpc.cost.html import CSS, PALETTE, _json


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node_fig(n: NodeStats, window_s: float) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    for i, d in enumerate(n.devices):
        color = PALETTE[i % len(PALETTE)]
        xs = [_iso(w.start_t + window_s / 2) for w in d.windows]
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{d.device} {d.metric} %",
                "x": xs,
                "y": [w.mean for w in d.windows],
                "line": {"color": color},
            }
        )
        for w in d.windows:
            if w.idle:
                shapes.append(
                    {
                        "type": "rect", "xref": "x", "yref": "paper",
                        "x0": _iso(w.start_t), "x1": _iso(w.start_t + window_s),
                        "y0": 0, "y1": 1, "fillcolor": "#E45756", "opacity": 0.12,
                        "line": {"width": 0},
                    }
                )  # fmt: skip
    return {
        "data": data,
        "layout": {
            "title": {"text": f"{html.escape(n.node)} ({html.escape(n.host or '?')})"},
            "yaxis": {"title": {"text": "% per window"}, "rangemode": "tozero"},
            "shapes": shapes,
            "margin": {"t": 40, "l": 50, "r": 20, "b": 40},
            "legend": {"orientation": "h"},
        },
    }


def timeline_html(stats: JobStats) -> str:
    from plotly.offline import get_plotlyjs  # noqa: PLC0415 (lazy: optional plotly)

    figs = {f"node{i}": _node_fig(n, stats.window_s) for i, n in enumerate(stats.nodes)}
    eff = "—" if stats.efficiency is None else f"{100 * stats.efficiency:.1f} %"
    cards = [
        (f"{stats.gpu_hours:.3f}", "GPU-hours allocated"),
        (f"{stats.idle_gpu_hours:.3f}", "idle GPU-hours"),
        (eff, "efficiency"),
        (f"{stats.window_s:g} s", "window"),
    ]
    rows = []
    for n in stats.nodes:
        for d in n.devices:
            mem = d.memory_peak_bytes
            cells = (
                n.node,
                d.device,
                d.metric,
                "—" if d.mean is None else f"{d.mean:.1f}",
                "—" if mem is None else f"{mem / 2**30:.2f}",
                "—" if d.power_mean_w is None else f"{d.power_mean_w:.0f}",
                "—" if d.energy_kwh is None else f"{d.energy_kwh:.4f}",
                f"{d.allocated_hours:.3f}",
                f"{d.idle_hours:.3f}",
                sum(w.idle for w in d.windows),
            )
            rows.append(
                "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells) + "</tr>"
            )
    head = (
        "node", "device", "metric", "mean %", "mem peak GiB", "power W", "energy kWh",
        "GPU-h", "idle GPU-h", "idle windows",
    )  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hpc jobstats {html.escape(stats.job_id or stats.run_dir)}</title>",
        f"<style>{CSS}</style>",
        f"<script>{get_plotlyjs()}</script>",
        "</head><body>",
        f"<h1>Job {html.escape(stats.job_id or '-')}: timeline</h1>",
        f'<div class="sub">{html.escape(stats.run_dir)} · idle: every sample of a window '
        f"under {stats.below_util:g}% or no process (shaded)</div>",
        '<div class="cards">'
        + "".join(
            f'<div class="card"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>'
            for v, k in cards
        )
        + "</div>",
        *(f'<div class="panel"><div id="{k}" class="chart"></div></div>' for k in figs),
        "<h2>Devices</h2><table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>",
        "<script>",
        "const figs = " + _json(figs) + ";",
        "for (const [id, fig] of Object.entries(figs)) {",
        "  Plotly.newPlot(id, fig.data, fig.layout, {displayModeBar: false, responsive: true});",
        "}",
        "</script></body></html>",
    ]
    return "\n".join(parts) + "\n"
