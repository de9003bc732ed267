"""Cost estimates before submitting: an upper bound and a typical figure.

* **Upper bound**: the allocation the job asks for, held for its whole time limit:
  GPUs x hours and CPUs x hours, priced with the price table (GPU rate by partition and
  GPU type, plus the CPU-hour rate), or, in billing mode (``billing.rate`` in the table),
  the partition's ``TRESBillingWeights`` applied to the request, times hours, times the
  rate.
* **Typical**: the median of this user's most recent runs (:data:`TYPICAL_RUNS`) of the
  same job name found in the accounting store (run records joined to their allocation
  rows: ``hpc cost ingest --accounting DIR --sacct ...``).

A sweep's estimate is the sum over its tasks.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import statistics
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # hpc.cost.prices imports pyarrow (via hpc.cost.model): only when priced
    from hpc.cost.prices import PriceTable

TYPICAL_RUNS = 10
PRICES_VARIABLE = "HPC_COST_PRICES"
PRICES_FILE = "prices.yaml"
_MEM_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)B?$", re.I)
_MEM_UNIT = {"": 1 / 1024, "K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}


@dataclass(frozen=True)
class Request:
    """What one job asks for (from its composed config)."""

    name: str
    nodes: int
    gpus_per_node: int
    cpus_per_node: int
    time_s: int | None
    partition: str | None = None
    account: str | None = None
    mem_gb_per_node: float | None = None
    gpu_type: str | None = None
    project: str | None = None

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def cpus(self) -> int:
        return self.nodes * self.cpus_per_node


@dataclass
class Figure:
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    money: float | None = None  # None: not priced

    def __add__(self, other: Figure) -> Figure:
        money = None if self.money is None or other.money is None else self.money + other.money
        return Figure(self.gpu_hours + other.gpu_hours, self.cpu_hours + other.cpu_hours, money)

    def scaled(self, n: int) -> Figure:
        money = None if self.money is None else self.money * n
        return Figure(self.gpu_hours * n, self.cpu_hours * n, money)

    def amount(self, unit: str) -> float | None:
        return self.gpu_hours if unit == "gpu_hours" else self.money


@dataclass
class Estimate:
    upper: Figure | None  # None: no time limit
    typical: Figure | None  # None: no earlier runs in the store
    typical_runs: int = 0
    jobs: int = 1
    currency: str = ""
    notes: list[str] = field(default_factory=list)

    def __add__(self, other: Estimate) -> Estimate:
        upper = None if self.upper is None or other.upper is None else self.upper + other.upper
        typical = (
            None if self.typical is None or other.typical is None else self.typical + other.typical
        )
        return Estimate(
            upper,
            typical,
            min(self.typical_runs, other.typical_runs),
            self.jobs + other.jobs,
            self.currency or other.currency,
            [*self.notes, *(n for n in other.notes if n not in self.notes)],
        )

    def line(self) -> str:
        """``estimate: at most 4 GPU-h, 16 CPU-h, 12.00 EUR; typical ...``."""
        what = f" for {self.jobs} tasks" if self.jobs > 1 else ""
        upper = (
            f"at most {fmt_figure(self.upper, self.currency)}"
            if self.upper is not None
            else "no upper bound (no time limit)"
        )
        if self.typical is not None:
            typical = (
                f"typical {fmt_figure(self.typical, self.currency)} "
                f"(median of {self.typical_runs} earlier run(s) of this job name)"
            )
        else:
            typical = "typical: no earlier runs of this job name in the accounting store"
        return f"estimate{what}: {upper}; {typical}"


def fmt_figure(f: Figure, currency: str = "") -> str:
    text = f"{f.gpu_hours:.4g} GPU-h, {f.cpu_hours:.4g} CPU-h"
    if f.money is not None:
        text += f", {f.money:.2f}{' ' + currency if currency else ''}"
    return text


def _mem_gb(text: Any) -> float | None:
    if text in (None, ""):
        return None
    m = _MEM_RE.match(str(text).strip())
    if not m:
        return None
    return float(m.group(1)) * _MEM_UNIT[m.group(2).upper()]


def request_of(config: Mapping[str, Any], time_s: int | None) -> Request:
    """A job's request from its composed config (``time_s``: its parsed time limit)."""
    res = config["resources"]
    tracking = config.get("tracking") or {}
    return Request(
        name=str((config.get("job") or {}).get("name") or ""),
        nodes=int(res.get("nodes") or 1),
        gpus_per_node=int(res.get("gpus_per_node") or 0),
        cpus_per_node=int(res.get("tasks_per_node") or 1) * int(res.get("cpus_per_task") or 1),
        time_s=time_s,
        partition=res.get("partition"),
        account=res.get("account"),
        mem_gb_per_node=_mem_gb(res.get("mem")),
        project=tracking.get("experiment"),
    )


def find_prices(explicit: str | Path | None = None) -> PriceTable | None:
    """The price table: ``explicit``, else ``$HPC_COST_PRICES``, else the first
    ``prices.yaml`` of the profile dirs (user, then site); None when there is none."""
    path: str | Path | None = explicit or os.environ.get(PRICES_VARIABLE)
    if not path:
        from hpc.spec.sources import profile_dirs  # noqa: PLC0415

        found = [Path(d) / PRICES_FILE for _, d in profile_dirs()]
        path = next((p for p in found if p.is_file()), None)
    if not path:
        return None
    from hpc.cost.prices import load_prices  # noqa: PLC0415 (lazy: pyarrow, see above)

    return load_prices(path)


BUDGETS_VARIABLE = "HPC_BUDGETS"
BUDGETS_FILE = "budgets.yaml"


def budget_files() -> list[Path]:
    """``$HPC_BUDGETS`` (``:``-separated), else ``budgets.yaml`` in each profile dir."""
    env = os.environ.get(BUDGETS_VARIABLE)
    if env is not None:
        return [Path(p) for p in env.split(":") if p]
    from hpc.spec.sources import profile_dirs  # noqa: PLC0415

    return [Path(d) / BUDGETS_FILE for _, d in profile_dirs() if (Path(d) / BUDGETS_FILE).is_file()]


def parse_billing_weights(text: str) -> dict[str, float]:
    """``CPU=1.0,Mem=0.25G,GRES/gpu=2.0`` -> {"cpu": 1.0, "mem": 0.25, "gres/gpu": 2.0}.

    Memory weights are per GB (Slurm's ``G`` suffix; a bare number is per MB).
    """
    out: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        if not key or not value:
            continue
        value = value.strip()
        scale = 1.0
        if key.lower() == "mem":
            suffix = value[-1:].upper()
            if suffix in ("K", "M", "G", "T"):
                value = value[:-1]
                scale = {"K": 1024**2, "M": 1024, "G": 1.0, "T": 1 / 1024}[suffix]
            else:
                scale = 1024.0  # per MB -> per GB
        try:
            out[key.lower()] = float(value) * scale
        except ValueError:
            continue
    return out


def billing_weights(partition: str | None) -> dict[str, float] | None:
    """The partition's TRESBillingWeights (``scontrol show partition``), None if unset."""
    if shutil.which("scontrol") is None:
        return None
    cmd = ["scontrol", "-o", "show", "partition", *([partition] if partition else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if proc.returncode != 0:
        return None
    lines = proc.stdout.splitlines()
    if not partition:  # the default partition
        lines = [ln for ln in lines if "Default=YES" in ln] or lines[:1]
    for line in lines[:1]:
        found = re.search(r"TRESBillingWeights=(\S+)", line)
        if found:
            return parse_billing_weights(found.group(1))
    return None


def upper_bound(
    req: Request, prices: PriceTable | None, weights: Mapping[str, float] | None = None
) -> Figure | None:
    """The request held for its whole time limit; None without a time limit."""
    if req.time_s is None:
        return None
    hours = req.time_s / 3600
    fig = Figure(req.gpus * hours, req.cpus * hours)
    if prices is None or not prices.priced:
        return fig
    if prices.billing_rate is not None and weights:
        gpu_w = weights.get(f"gres/gpu:{req.gpu_type}", weights.get("gres/gpu", 0.0))
        billing = (
            weights.get("cpu", 0.0) * req.cpus
            + gpu_w * req.gpus
            + weights.get("mem", 0.0) * (req.mem_gb_per_node or 0.0) * req.nodes
            + weights.get("node", 0.0) * req.nodes
        )
        fig.money = billing * hours * prices.billing_rate
        return fig
    rate = prices.gpu_rate(req.partition, req.gpu_type) if req.gpus else 0.0
    fig.money = (rate or 0.0) * fig.gpu_hours + prices.cpu_hour * fig.cpu_hours
    return fig


def row_figure(
    gpus: int, ncpus: int, hours: float, partition: str | None, gpu_type: str | None,
    billing: float | None, state: str | None, prices: PriceTable | None,
) -> Figure:  # fmt: skip
    """What one allocation row used (priced as ``hpc cost report`` prices it)."""
    fig = Figure(gpus * hours, ncpus * hours)
    if prices is None or not prices.priced:
        return fig
    if state in prices.refund_states:
        fig.money = 0.0
    elif prices.billing_rate is not None and billing is not None:
        fig.money = billing * hours * prices.billing_rate
    else:
        rate = prices.gpu_rate(partition, gpu_type) if gpus else 0.0
        fig.money = (rate or 0.0) * fig.gpu_hours + prices.cpu_hour * fig.cpu_hours
    return fig


def median_figure(figures: list[Figure]) -> Figure:
    money = [f.money for f in figures]
    return Figure(
        statistics.median(f.gpu_hours for f in figures),
        statistics.median(f.cpu_hours for f in figures),
        None if None in money else statistics.median(m for m in money if m is not None),
    )


def store_file() -> Path:
    """:func:`hpc.cost.store.default_path`, without importing the store (pyarrow, duckdb)."""
    from hpc.rundir.records import state_dir  # noqa: PLC0415

    env = os.environ.get("HPC_COST_STORE")
    return Path(env) if env else state_dir() / "cost.duckdb"


def typical_from_store(
    name: str, user: str | None, prices: PriceTable | None, store_path: str | Path | None = None
) -> tuple[Figure | None, int]:
    """The median of the last TYPICAL_RUNS finished runs of ``name`` by ``user``."""
    path = Path(store_path) if store_path else store_file()
    if not path.exists():
        return None, 0
    rows = _stored_runs(path, name, user)
    figures = [
        row_figure(
            int(r["gpus"] or 0),
            int(r["ncpus"] or 0),
            float(r["elapsed_s"] or 0) / 3600,
            r["partition"],
            r["gpu_type"],
            r["billing"],
            r["state"],
            prices,
        )
        for r in rows
    ]
    if not figures:
        return None, 0
    return median_figure(figures), len(figures)


def _stored_runs(path: Path, name: str, user: str | None) -> list[dict[str, Any]]:
    from hpc.cost.model import CostInputError  # noqa: PLC0415
    from hpc.cost.store import Store  # noqa: PLC0415 (lazy: duckdb only with a store)

    try:
        store = Store(path, read_only=True)
    except CostInputError:
        return []  # being written (locked) or not a store: no typical figure
    with store:
        found = store.con.execute(
            "SELECT a.gpus, a.ncpus, a.elapsed_s, a.partition, a.gpu_type, a.billing, a.state, "
            "a.user, r.record FROM runs r JOIN allocations a "
            "ON a.cluster = r.cluster AND a.job_id = r.job_id "
            "WHERE json_extract_string(r.record, '$.name') = ? AND a.elapsed_s > 0 "
            "AND a.state NOT IN ('RUNNING', 'PENDING', 'SUSPENDED') "
            "ORDER BY a.start DESC NULLS LAST",
            [name],
        ).fetchall()
    out = []
    for gpus, ncpus, elapsed, partition, gpu_type, billing, state, row_user, record in found:
        owner = row_user or _record_user(record)
        if user is not None and owner is not None and owner != user:
            continue
        out.append(
            {
                "gpus": gpus,
                "ncpus": ncpus,
                "elapsed_s": elapsed,
                "partition": partition,
                "gpu_type": gpu_type,
                "billing": billing,
                "state": state,
            }
        )
        if len(out) >= TYPICAL_RUNS:
            break
    return out


def _record_user(record: str | None) -> str | None:
    try:
        data = json.loads(record or "{}")
    except ValueError:
        return None
    value = data.get("user") or (data.get("extra") or {}).get("user")
    return str(value) if value else None


def current_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def estimate(
    requests: Iterable[tuple[Request, int]],
    prices: PriceTable | None,
    *,
    user: str | None = None,
    store_path: str | Path | None = None,
    weights: Mapping[str, float] | None = None,
    look_up_weights: bool = True,
) -> Estimate:
    """The estimate of ``count`` jobs of each request (a sweep: one entry per shape)."""
    total: Estimate | None = None
    user = user if user is not None else current_user()
    typical_cache: dict[str, tuple[Figure | None, int]] = {}
    for req, count in requests:
        w = weights
        if w is None and look_up_weights and prices is not None and prices.billing_rate:
            w = billing_weights(req.partition)
        upper = upper_bound(req, prices, w)
        notes = []
        if prices is not None and prices.billing_rate and not w:
            notes.append("no TRESBillingWeights found: priced by the GPU/CPU rates")
        if req.name not in typical_cache:
            typical_cache[req.name] = typical_from_store(req.name, user, prices, store_path)
        typical, runs = typical_cache[req.name]
        one = Estimate(
            upper.scaled(count) if upper is not None else None,
            typical.scaled(count) if typical is not None else None,
            runs,
            count,
            prices.currency if prices else "",
            notes,
        )
        total = one if total is None else total + one
    return total if total is not None else Estimate(Figure(), None, 0, 0)
