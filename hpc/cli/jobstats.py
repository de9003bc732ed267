"""``hpc jobstats RUN_OR_JOB``: a job's GPU and CPU efficiency from its own samples."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import yaml

from hpc.accounting.jobstats import DeviceStats, JobStats, job_stats
from hpc.cli.jobs import find_run

BARS = " ▁▂▃▄▅▆▇█"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hpc jobstats",
        description="Per-GPU and per-node efficiency of one run, from its accounting samples.",
    )
    ap.add_argument("ref", metavar="RUN_OR_JOB", help="a run directory or a recent job id")
    ap.add_argument("--window", type=float, metavar="SECONDS", help="window length (default: auto)")
    ap.add_argument(
        "--below-util", type=float, metavar="PCT", help="idle under this %% (default: the run's "
        "accounting.idle.below_util, 5)"
    )  # fmt: skip
    ap.add_argument("--format", choices=("table", "json", "html"), default="table")
    ap.add_argument("--out", metavar="PATH", help="write here instead of standard output")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.window is not None and not args.window > 0:
        print("hpc jobstats: error: argument --window: must be > 0", file=sys.stderr)
        return 2
    try:
        run = find_run(args.ref)
        run_dir = Path(str(run.get("run_dir") or args.ref))
        cfg_path = run_dir / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        stats = job_stats(run_dir, args.window, args.below_util, cfg or {}, run.get("job_id"))
    except (LookupError, ValueError, OSError) as exc:
        print(f"hpc jobstats: error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        text = json.dumps(stats.to_dict(), indent=1) + "\n"
    elif args.format == "html":
        from hpc.cost.timeline import timeline_html  # noqa: PLC0415 (lazy: plotly's script)

        text = timeline_html(stats)
    else:
        text = render_table(stats)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if v is None else fmt.format(v)


def _gib(v: int | None) -> str:
    return "—" if v is None else f"{v / 2**30:.2f} GiB"


def spark(d: DeviceStats) -> str:
    top = 100.0
    out = []
    for w in d.windows:
        if w.mean is None:
            out.append("?")
        else:
            out.append(BARS[min(len(BARS) - 1, round(min(w.mean, top) / top * (len(BARS) - 1)))])
    return "".join(out)


def render_table(s: JobStats) -> str:
    lines = [
        f"job {s.job_id or '-'}  run {s.run_dir}",
        f"windows of {s.window_s:g}s; idle: reading under {s.below_util:g}% or no process",
        f"GPU-hours {s.gpu_hours:.3f}, idle {s.idle_gpu_hours:.3f}, "
        f"efficiency {_f(None if s.efficiency is None else 100 * s.efficiency)}%",
    ]
    for n in s.nodes:
        lines.append("")
        lines.append(
            f"{n.node} ({n.host or '?'}, {n.mode or '?'}): wall {n.wall_s:.0f}s, "
            f"CPU-hours {n.cpu_hours:.4f}, CPU efficiency "
            f"{_f(None if n.cpu_efficiency is None else 100 * n.cpu_efficiency)}%"
            f"{'' if n.cpus is None else f' of {n.cpus} CPUs'}, peak RSS {_gib(n.peak_rss_bytes)}, "
            f"idle windows {n.idle_events}"
        )
        for d in n.devices:
            start = datetime.fromtimestamp(d.windows[0].start_t, UTC) if d.windows else None
            lines.append(
                f"  {d.device:5} {d.metric:11} mean {_f(d.mean):>5}%"
                + (f" (NVML util {_f(d.nvml_util_mean)}%)" if d.nvml_util_mean is not None else "")
                + f"  mem peak {_gib(d.memory_peak_bytes)}  power mean {_f(d.power_mean_w)} W"
                f" max {_f(d.power_max_w)} W  energy {_f(d.energy_kwh, '{:.4f}')} kWh"
                + (
                    f"  allocated {d.allocated_hours:.3f} GPU-h, idle {d.idle_hours:.3f}"
                    if d.device.startswith("gpu")
                    else ""
                )
            )
            lines.append(
                f"        |{spark(d)}|  from {start:%Y-%m-%d %H:%M:%S}Z, "
                f"{len(d.windows)} windows; idle: "
                + (",".join(str(i) for i, w in enumerate(d.windows) if w.idle) or "none")
                if start
                else "        (no samples)"
            )
    return "\n".join(lines) + "\n"
