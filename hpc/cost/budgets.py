"""Budgets that hold: ``budgets.yaml``, what each has consumed, and the submit check.

Files (every one found applies): ``$HPC_BUDGETS`` (``:``-separated), else
``budgets.yaml`` in the user's then the site's profile dirs (``hpc config`` lists them:
``~/.config/hpc-launch``, ``/etc/xdg/hpc-launch``, ``/etc/hpc-launch``)::

    version: 1
    prices: prices.yaml        # for money budgets (relative to this file); else
                               # $HPC_COST_PRICES, else prices.yaml in the profile dirs
    budgets:
      - name: lab-month
        account: lab           # match keys, all optional (none: every job):
        # user: alice          #   account, user, project (the job's tracking.experiment),
        # project: vision      #   sweep (the job name of an ``hpc-launch -m`` sweep)
        gpu_hours: 500         # exactly one of gpu_hours, money
        period: month          # month | quarter | total (UTC calendar periods)
        policy: refuse         # warn | refuse
        hold: true             # also cap running sweeps: pending tasks are held

Consumed: the accounting store's rows in the period (``hpc cost ingest``) plus, from
``sacct`` (running and not yet ingested jobs), this period's matching jobs; a job in
both counts once (sacct's row wins). Running jobs count up to now.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hpc.cost.common import CostInputError
from hpc.cost.estimate import Estimate, Figure, budget_files, fmt_figure, row_figure
from hpc.cost.prices import PriceTable, load_prices

PERIODS = ("month", "quarter", "total")
POLICIES = ("warn", "refuse")
MATCH_KEYS = ("account", "user", "project", "sweep")
_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["budgets"],
    "properties": {
        "version": {"const": 1},
        "prices": {"type": "string", "minLength": 1},
        "budgets": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
                    **{k: _NAME for k in MATCH_KEYS},
                    "gpu_hours": {"type": "number", "exclusiveMinimum": 0},
                    "money": {"type": "number", "exclusiveMinimum": 0},
                    "period": {"enum": list(PERIODS)},
                    "policy": {"enum": list(POLICIES)},
                    "hold": {"type": "boolean"},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class Budget:
    name: str
    unit: str  # "gpu_hours" or "money"
    limit: float
    period: str = "month"
    policy: str = "warn"
    hold: bool = False
    match: dict[str, str] = field(default_factory=dict)
    source: str = ""
    key: str = ""  # budgets.N, for messages naming the file and key
    prices: PriceTable | None = None

    def scope(self) -> str:
        who = ", ".join(f"{k}={v}" for k, v in self.match.items()) or "every job"
        return f"{who}; {self.period}"

    def matches(self, job: dict[str, str | None]) -> bool:
        """``job``: account, user, project, sweep (name) of one job; globs allowed."""
        for key, pattern in self.match.items():
            value = job.get(key)
            if value is None or not fnmatch.fnmatchcase(value, pattern):
                return False
        return True

    def fmt(self, amount: float) -> str:
        if self.unit == "gpu_hours":
            return f"{amount:.4g} GPU-h"
        currency = self.prices.currency if self.prices else ""
        return f"{amount:.2f}{' ' + currency if currency else ''}"


def load_budgets(paths: list[Path] | None = None, prices: PriceTable | None = None) -> list[Budget]:
    """Every budget of every file; a bad file is a CostInputError naming it and the key."""
    out: list[Budget] = []
    for path in budget_files() if paths is None else paths:
        out += load_file(path, prices)
    return out


def load_file(path: Path, prices: PriceTable | None = None) -> list[Budget]:
    import yaml  # noqa: PLC0415

    source = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CostInputError(source, exc.strerror or str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise CostInputError(
            source, f"not valid YAML: {getattr(exc, 'problem', exc)}",
            mark.line + 1 if mark is not None else None,
        ) from None  # fmt: skip
    return parse_budgets(doc, source, prices, path.parent)


def parse_budgets(
    doc: Any, source: str = "<budgets>", prices: PriceTable | None = None,
    base: Path | None = None,
) -> list[Budget]:  # fmt: skip
    import jsonschema  # noqa: PLC0415

    errors = sorted(
        jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            if extra:
                key = ".".join([*map(str, err.absolute_path), extra[0]])
                raise CostInputError(source, f"key {key}: unknown key")
        raise CostInputError(source, f"key {key}: {err.message}")
    if doc.get("prices"):
        p = Path(doc["prices"])
        p = p if p.is_absolute() or base is None else base / p
        try:
            prices = load_prices(p)
        except CostInputError as exc:
            raise CostInputError(source, f"key prices: {exc}") from None
    out: list[Budget] = []
    seen: set[str] = set()
    for i, item in enumerate(doc["budgets"]):
        key = f"budgets.{i}"
        units = [u for u in ("gpu_hours", "money") if u in item]
        if len(units) != 1:
            raise CostInputError(source, f"key {key}: give exactly one of gpu_hours, money")
        if item["name"] in seen:
            raise CostInputError(source, f"key {key}.name: duplicate budget {item['name']!r}")
        seen.add(item["name"])
        if units[0] == "money" and (prices is None or not prices.priced):
            raise CostInputError(
                source,
                f"key {key}.money: a money budget needs a price table (prices: in this "
                "file, $HPC_COST_PRICES or prices.yaml in the profile dirs)",
            )
        out.append(
            Budget(
                name=item["name"],
                unit=units[0],
                limit=float(item[units[0]]),
                period=item.get("period", "month"),
                policy=item.get("policy", "warn"),
                hold=bool(item.get("hold", False)),
                match={k: str(item[k]) for k in MATCH_KEYS if k in item},
                source=source,
                key=key,
                prices=prices,
            )
        )
    return out


def period_start(period: str, now: datetime) -> datetime | None:
    now = now.astimezone(UTC)
    if period == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if period == "quarter":
        month = 3 * ((now.month - 1) // 3) + 1
        return now.replace(month=month, day=1, hour=0, minute=0, second=0, microsecond=0)
    return None


@dataclass
class Usage:
    """One allocation as the budgets see it."""

    job_id: str
    name: str | None
    user: str | None
    account: str | None
    project: str | None
    partition: str | None
    state: str | None
    start: datetime | None
    end: datetime | None  # None: still running
    gpus: int = 0
    ncpus: int = 0
    gpu_type: str | None = None
    billing: float | None = None

    def key(self) -> dict[str, str | None]:
        return {
            "account": self.account,
            "user": self.user,
            "project": self.project,
            "sweep": self.name,
        }

    def hours_in(self, since: datetime | None, now: datetime) -> float:
        if self.start is None:
            return 0.0
        begin = max(self.start, since) if since else self.start
        end = min(self.end or now, now)
        return max(0.0, (end - begin).total_seconds() / 3600)


def consumed(budget: Budget, usage: list[Usage], now: datetime) -> float:
    since = period_start(budget.period, now)
    total = Figure(0.0, 0.0, 0.0)
    for u in usage:
        if not budget.matches(u.key()):
            continue
        hours = u.hours_in(since, now)
        if hours <= 0:
            continue
        total = total + row_figure(
            u.gpus, u.ncpus, hours, u.partition, u.gpu_type, u.billing, u.state, budget.prices
        )
    return total.amount(budget.unit) or 0.0


@dataclass
class Verdict:
    budget: Budget
    consumed: float
    estimate: float
    refused: bool
    spent: bool

    @property
    def over(self) -> bool:
        return self.consumed + self.estimate > self.budget.limit

    def line(self) -> str:
        b = self.budget
        verb = "refused" if self.refused else "warning"
        return (
            f"budget {b.name} ({b.scope()}, {b.source}): {verb}: consumed {b.fmt(self.consumed)}"
            f" + estimate {b.fmt(self.estimate)} > limit {b.fmt(b.limit)}"
        )


def check(
    budgets: list[Budget],
    job: dict[str, str | None],
    est: Estimate,
    usage: list[Usage],
    now: datetime,
    scheduled: bool = False,
) -> list[Verdict]:
    """The verdict of every matching budget that ``est`` would exceed.

    A scheduled launch (``scheduled``) is refused by a ``warn`` budget too once it is
    spent (nobody reads an unattended launch's warnings).
    """
    out = []
    for b in budgets:
        if not b.matches(job):
            continue
        fig = est.upper if est.upper is not None else est.typical
        amount = (fig.amount(b.unit) if fig is not None else 0.0) or 0.0
        used = consumed(b, usage, now)
        if used + amount <= b.limit:
            continue
        spent = used >= b.limit
        refused = b.policy == "refuse" or (scheduled and spent)
        out.append(Verdict(b, used, amount, refused, spent))
    return out


# --- where usage comes from ------------------------------------------------------------

SACCT_FIELDS = "JobID,JobName,User,Account,Partition,State,Start,End,AllocCPUS,AllocTRES"


def _time(text: str) -> datetime | None:
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        return None


def parse_tres(text: str) -> tuple[int, str | None, float | None]:
    """``billing=4,cpu=4,gres/gpu:a100=2,gres/gpu=2`` -> (2, "a100", 4.0)."""
    gpus, gpu_type, billing = 0, None, None
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key == "gres/gpu" and value.isdigit():
            gpus = int(value)
        elif key.startswith("gres/gpu:"):
            gpu_type = key.split(":", 1)[1]
            if not gpus and value.isdigit():
                gpus = int(value)
        elif key == "billing":
            with contextlib.suppress(ValueError):
                billing = float(value)
    return gpus, gpu_type, billing


def parse_sacct(text: str) -> list[Usage]:
    out = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 10:
            continue
        job_id, name, user, account, partition, state, start, end, cpus, tres = parts
        state = state.split(" ")[0]
        if state == "PENDING" or "[" in job_id:
            continue
        gpus, gpu_type, billing = parse_tres(tres)
        running = state in ("RUNNING", "SUSPENDED", "COMPLETING")
        out.append(
            Usage(
                job_id,
                name or None,
                user or None,
                account or None,
                None,
                partition or None,
                state,
                _time(start),
                None if running else _time(end),
                gpus,
                int(cpus) if cpus.isdigit() else 0,
                gpu_type,
                billing,
            )
        )
    return out


def live_usage(since: datetime | None, names: list[str] | None = None) -> list[Usage]:
    """Jobs since ``since`` from sacct (running ones included); [] without sacct, or
    with ``HPC_COST_LIVE=0`` (the store alone)."""
    if os.environ.get("HPC_COST_LIVE") == "0" or shutil.which("sacct") is None:
        return []
    start = (since or datetime(1970, 1, 2, tzinfo=UTC)).strftime("%Y-%m-%dT%H:%M:%S")
    base = ["sacct", "-X", "-n", "-P", "-S", start, "-E", "now", "-o", SACCT_FIELDS]
    if names:
        base += ["--name", ",".join(names)]
    env = {**os.environ, "TZ": "UTC"}
    for extra in (["--allusers"], []):
        try:
            proc = subprocess.run(
                [*base, *extra], capture_output=True, text=True, timeout=60, env=env
            )
        except (subprocess.TimeoutExpired, OSError):
            return []
        if proc.returncode == 0:
            return parse_sacct(proc.stdout)
    return []


def stored_usage(since: datetime | None, store_path: str | Path | None = None) -> list[Usage]:
    """The store's rows that may overlap [since, now) (none without a store)."""
    from hpc.cost.store import Store, default_path  # noqa: PLC0415 (lazy: duckdb)

    path = Path(store_path) if store_path else default_path()
    if not path.exists():
        return []
    try:
        store = Store(path, read_only=True)
    except CostInputError:
        return []
    where = "TRUE" if since is None else '("end" IS NULL OR "end" >= ?)'
    params = [] if since is None else [int(since.timestamp())]
    with store:
        rows = store.con.execute(
            "SELECT a.job_id, json_extract_string(r.record, '$.name'), a.user, a.account, "
            "json_extract_string(r.record, '$.extra.project'), "
            'a.partition, a.state, a.start, a."end", a.gpus, a.ncpus, a.gpu_type, a.billing '
            "FROM allocations a LEFT JOIN runs r ON r.cluster = a.cluster AND r.job_id = a.job_id "
            f"WHERE a.start IS NOT NULL AND {where}",
            params,
        ).fetchall()
    out = []
    for job_id, name, user, account, project, part, state, start, end, *rest in rows:
        gpus, ncpus, gtype, bill = rest
        running = state in ("RUNNING", "SUSPENDED", "COMPLETING")
        out.append(
            Usage(
                job_id,
                name,
                user,
                account,
                project,
                part,
                state,
                datetime.fromtimestamp(start, UTC),
                None if running or end is None else datetime.fromtimestamp(end, UTC),
                int(gpus or 0),
                int(ncpus or 0),
                gtype,
                bill,
            )
        )
    return out


def gather_usage(
    budgets: list[Budget], now: datetime, store_path: str | Path | None = None
) -> list[Usage]:
    """Store plus sacct over the earliest period of ``budgets``; sacct wins per job id.

    A job's project (``tracking.experiment``) is in its run record (``job.json``,
    ``extra.project``), which ``hpc cost ingest --accounting`` stores: a project budget
    counts the jobs whose records are in the store."""
    if not budgets:
        return []
    starts = [period_start(b.period, now) for b in budgets]
    since = None if None in starts else min(s for s in starts if s is not None)
    by_id = {u.job_id: u for u in stored_usage(since, store_path)}
    for u in live_usage(since):
        known = by_id.get(u.job_id)
        if known is not None:  # sacct knows no project: the job's record in the store does
            u.project = u.project or known.project
        by_id[u.job_id] = u
    return list(by_id.values())


def state_lines(budgets: list[Budget], usage: list[Usage], now: datetime) -> list[dict[str, Any]]:
    rows = []
    for b in budgets:
        used = consumed(b, usage, now)
        start = period_start(b.period, now)
        rows.append(
            {
                "name": b.name,
                "scope": b.scope(),
                "unit": b.unit,
                "limit": b.limit,
                "consumed": round(used, 6),
                "left": round(b.limit - used, 6),
                "percent": round(100 * used / b.limit, 1),
                "period_start": start.isoformat() if start else None,
                "policy": b.policy,
                "hold": b.hold,
                "state": "spent" if used >= b.limit else "ok",
                "file": b.source,
                "shown": f"{b.fmt(used)} of {b.fmt(b.limit)}",
            }
        )
    return rows


__all__ = ["Budget", "Usage", "Verdict", "check", "consumed", "fmt_figure", "load_budgets"]
