"""``hpc status SWEEP_DIR_OR_ARRAY_ID``: one sweep's tasks, progress, metrics and best task.

States come from the sweep's backend, asked once per refresh for all tasks
(:meth:`hpc.backend.Launcher.refresh_states`: on Slurm one squeue/sacct query of the
sweep's arrays), falling back to each task's ``job.json``.
Metrics come from MLflow (imported here only, lazily): the sweep's parent run
(``mlflow_parent.json``) gives all child runs with their latest metrics in one
search; tasks without a parent are read one run at a time. Finished tasks'
metrics are cached between ``--watch`` refreshes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc.cli.jobs import refresh_states
from hpc.cost.cap import read_hold
from hpc.rundir import records
from hpc.states import CATEGORIES, category

SWEEP_FILE = "sweep.json"
COLORS = {"done": "green", "running": "yellow", "failed": "red", "pending": "grey50"}


@dataclass
class TaskView:
    index: int
    overrides: list[str]
    run_dir: str
    job_id: str | None
    state: str = "UNKNOWN"
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def category(self) -> str:
        return category(self.state)


class SweepError(LookupError):
    pass


def find_sweep(ref: str) -> Path:
    """A sweep directory from a path (the sweep's or one task's) or an array (task) id."""
    path = Path(ref).expanduser()
    if path.is_dir():
        for candidate in (path, path.parent):
            if (candidate / SWEEP_FILE).exists():
                return candidate.resolve()
        raise SweepError(f"{ref}: no {SWEEP_FILE} here (not a sweep directory)")
    if path.is_file() and path.name == SWEEP_FILE:
        return path.parent.resolve()
    array_id = ref.split("_")[0]
    if not array_id.isdigit():
        raise SweepError(f"{ref}: no such sweep directory, and not an array id")
    for sweep_dir in _indexed_sweeps():
        try:
            data = json.loads((sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if any(str(a.get("array_id")) == array_id for a in data.get("arrays", [])):
            return sweep_dir
    raise SweepError(f"{ref}: no sweep with this array id among the recent runs")


def _indexed_sweeps() -> list[Path]:
    index = records.state_dir() / "runs.jsonl"
    if not index.exists():
        return []
    seen: list[Path] = []
    for line in reversed(index.read_text(encoding="utf-8").splitlines()):
        try:
            run_dir = Path(json.loads(line)["run_dir"])
        except (ValueError, KeyError, TypeError):
            continue
        for candidate in (run_dir, run_dir.parent):
            if candidate not in seen and (candidate / SWEEP_FILE).exists():
                seen.append(candidate)
    return seen


class SweepStatus:
    """Loads a sweep and refreshes its tasks' states and metrics."""

    def __init__(self, sweep_dir: Path, metric: str = "accuracy") -> None:
        self.sweep_dir = sweep_dir
        self.metric = metric
        self.sweep: dict[str, Any] = {}
        self.tasks: list[TaskView] = []
        self.warnings: list[str] = []
        self.hold: dict[str, Any] | None = None  # budget_hold.json (hpc.cost.cap)
        self._clients: dict[str, Any] = {}
        self._final_metrics: dict[int, dict[str, float]] = {}
        self._mlflow_failed = False

    def refresh(self) -> None:
        self.warnings = []
        self.sweep = json.loads((self.sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))
        self.hold = read_hold(self.sweep_dir)
        self.tasks = []
        for entry in self.sweep.get("tasks", []):
            job_id = (
                f"{entry['array_id']}_{entry['array_index']}"
                if entry.get("array_id") is not None and entry.get("array_index") is not None
                else None
            )
            task = TaskView(int(entry["index"]), list(entry["overrides"]), entry["run_dir"], job_id)
            try:
                task.record = records.load(task.run_dir)
            except (FileNotFoundError, ValueError):
                task.record = _point_status(self.sweep_dir, task.index)
            self.tasks.append(task)
        self._refresh_states()
        self._refresh_metrics()
        for task in self.tasks:  # no MLflow value: the job's own final value, if it wrote one
            value = (task.record.get("extra") or {}).get(self.metric)
            if self.metric not in task.metrics and isinstance(value, int | float):
                task.metrics = {**task.metrics, self.metric: float(value)}

    def _refresh_states(self) -> None:
        """Each task's state from its backend (one query for a Slurm sweep's arrays)."""
        pending = "PENDING" if self.sweep.get("arrays") else "UNKNOWN"
        runs = [
            {
                **task.record,
                "launcher": task.record.get("launcher") or self.sweep.get("launcher"),
                "run_dir": task.run_dir,
                "job_id": task.job_id or task.record.get("job_id"),
                "state": str(task.record.get("state") or pending),
            }
            for task in self.tasks
        ]
        self.warnings += refresh_states(runs)
        for task, run in zip(self.tasks, runs, strict=True):
            task.state, task.reason = run["state"], str(run.get("reason") or "")

    def _client(self, uri: str) -> Any:
        if uri not in self._clients:
            # lazy: mlflow only to read metrics
            from mlflow.tracking import MlflowClient  # noqa: PLC0415

            self._clients[uri] = MlflowClient(tracking_uri=uri)
        return self._clients[uri]

    def _refresh_metrics(self) -> None:
        wanted: dict[str, list[TaskView]] = {}
        for task in self.tasks:
            if task.index in self._final_metrics:
                task.metrics = self._final_metrics[task.index]
                continue
            run_id = task.record.get("mlflow_run_id")
            uri = _usable_uri(task.record.get("tracking_uri"))
            if run_id and uri:
                wanted.setdefault(uri, []).append(task)
        if not wanted or self._mlflow_failed:
            return
        try:
            for uri, tasks in wanted.items():
                self._fetch(uri, tasks)
        except ImportError:
            self._mlflow_failed = True
            self.warnings.append("mlflow is not installed here: no metrics (pip install mlflow)")
        except Exception as exc:
            self.warnings.append(f"MLflow: {str(exc).splitlines()[0] if str(exc) else exc!r}")

    def _fetch(self, uri: str, tasks: list[TaskView]) -> None:
        client = self._client(uri)
        by_run: dict[str, dict[str, float]] = {}
        parent_file = self.sweep_dir / "mlflow_parent.json"
        if parent_file.exists() and len(tasks) > 1:
            parent_id = json.loads(parent_file.read_text(encoding="utf-8"))["run_id"]
            experiment = client.get_run(parent_id).info.experiment_id
            token = None
            while True:
                page = client.search_runs(
                    [experiment],
                    filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                    max_results=1000,
                    page_token=token,
                )
                for run in page:
                    by_run[run.info.run_id] = dict(run.data.metrics)
                token = page.token
                if not token:
                    break
        for task in tasks:
            run_id = str(task.record["mlflow_run_id"])
            if run_id not in by_run:
                by_run[run_id] = dict(client.get_run(run_id).data.metrics)
            task.metrics = by_run[run_id]
            if task.category in ("done", "failed"):
                self._final_metrics[task.index] = task.metrics

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(CATEGORIES, 0)
        for task in self.tasks:
            out[task.category] += 1
        return out

    def best(self, mode: str) -> TaskView | None:
        scored = [t for t in self.tasks if self.metric in t.metrics]
        if not scored:
            return None
        pick = max if mode == "max" else min
        return pick(scored, key=lambda t: t.metrics[self.metric])

    def finished(self) -> bool:
        return all(t.category in ("done", "failed") for t in self.tasks)

    def as_json(self, mode: str) -> dict[str, Any]:
        best = self.best(mode)
        return {
            "sweep_dir": str(self.sweep_dir),
            "name": self.sweep.get("name"),
            "arrays": [a.get("array_id") for a in self.sweep.get("arrays", [])],
            "counts": self.counts(),
            "metric": self.metric,
            "mode": mode,
            "best": best.index if best else None,
            "tasks": [
                {
                    "index": t.index,
                    "job_id": t.job_id,
                    "state": t.state,
                    "category": t.category,
                    "overrides": t.overrides,
                    "run_dir": t.run_dir,
                    "metrics": t.metrics,
                }
                for t in self.tasks
            ],
            "warnings": self.warnings,
            "budget_hold": self.hold,
        }


def _point_status(sweep_dir: Path, index: int) -> dict[str, Any]:
    """A Hydra-plugin sweep point's state (``.hpc_tasks/I.json``), which has no job.json."""
    try:
        data = json.loads((sweep_dir / ".hpc_tasks" / f"{index}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _usable_uri(uri: Any) -> str | None:
    """job.json holds the URI with any password redacted: then the environment's."""
    if not uri:
        return None
    if ":***@" in str(uri):
        return os.environ.get("MLFLOW_TRACKING_URI")
    return str(uri)


def render(status: SweepStatus, mode: str) -> Any:
    from rich.console import Group  # noqa: PLC0415 (lazy: rich only for the table, not --json)
    from rich.table import Table  # noqa: PLC0415 (lazy: rich only for the table, not --json)
    from rich.text import Text  # noqa: PLC0415 (lazy: rich only for the table, not --json)

    counts = status.counts()
    total = max(1, len(status.tasks))
    width = 40
    bar = Text()
    used = 0
    for name in CATEGORIES:
        cells = round(width * counts[name] / total)
        cells = min(cells, width - used)
        bar.append("█" * cells if name != "pending" else "░" * cells, style=COLORS[name])
        used += cells
    bar.append("░" * (width - used), style=COLORS["pending"])
    summary = Text(f" {counts['done']}/{len(status.tasks)} done", style="bold")
    summary.append(
        f"  running {counts['running']}  failed {counts['failed']}  pending {counts['pending']}"
    )
    arrays = ", ".join(str(a.get("array_id")) for a in status.sweep.get("arrays", [])) or "-"
    title = Text(
        f"sweep {status.sweep.get('name', '?')}  {status.sweep_dir}  (array {arrays})",
        style="bold",
    )
    best = status.best(mode)
    table = Table(show_edge=False, pad_edge=False)
    for column in ("task", "job id", "state", "overrides", status.metric):
        table.add_column(column, overflow="fold")
    for task in status.tasks:
        value = task.metrics.get(status.metric)
        shown = f"{value:.4g}" if isinstance(value, int | float) else "-"
        state = task.state + (
            f" ({task.reason})" if task.reason and task.state != "RUNNING" else ""
        )
        marker = " *" if best is not None and task.index == best.index else ""
        table.add_row(
            f"{task.index}{marker}",
            task.job_id or "-",
            Text(state, style=COLORS[task.category]),
            " ".join(task.overrides),
            shown,
        )
    parts: list[Any] = [title, bar + summary, table]
    if best is not None:
        parts.append(
            Text(
                f"best {status.metric} ({mode}): task {best.index} "
                f"({' '.join(best.overrides)}) = {best.metrics[status.metric]:.6g}",
                style="bold green",
            )
        )
    else:
        parts.append(Text(f"best {status.metric} ({mode}): no task has logged it yet"))
    if status.hold:
        arrays = " ".join(map(str, status.hold.get("arrays") or [])) or "ARRAY"
        parts.append(
            Text(
                f"held: {status.hold.get('message')}; pending tasks are held, not lost "
                f"(scontrol release {arrays} to go on)",
                style="bold red",
            )
        )
    parts += [Text(f"warning: {w}", style="yellow") for w in status.warnings]
    return Group(*parts)


def show(
    ref: str,
    *,
    metric: str = "accuracy",
    mode: str = "max",
    watch: float | None = None,
    as_json: bool = False,
) -> int:
    if mode not in ("max", "min"):
        print(f"hpc: error: --mode: expected max or min, got {mode!r}", file=sys.stderr)
        return 2
    try:
        status = SweepStatus(find_sweep(ref), metric)
        status.refresh()
    except (SweepError, OSError, ValueError, KeyError) as exc:
        print(f"hpc: error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(status.as_json(mode), indent=2))
        return 0
    from rich.console import Console  # noqa: PLC0415 (lazy: rich only for the table, not --json)

    console = Console(width=200 if not sys.stdout.isatty() else None)
    if watch is None or status.finished():
        console.print(render(status, mode))
        return 0
    from rich.live import Live  # noqa: PLC0415 (lazy: rich only for the table, not --json)

    period = max(2.0, float(watch))  # at most one Slurm query per refresh, >= 2 s apart
    try:
        with Live(render(status, mode), console=console, auto_refresh=False) as live:
            while not status.finished():
                time.sleep(period)
                status.refresh()
                live.update(render(status, mode), refresh=True)
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hpc.cli.sweeps SWEEP [--metric M] [--mode max|min] [--watch [S]] [--json]``."""
    parser = argparse.ArgumentParser(prog="hpc status", description="One sweep's tasks.")
    parser.add_argument("sweep", metavar="SWEEP_DIR_OR_ARRAY_ID")
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--mode", choices=("max", "min"), default="max")
    parser.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return show(args.sweep, metric=args.metric, mode=args.mode, watch=args.watch, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
