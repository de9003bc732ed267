"""Estimates and budgets: the maths on a real accounting store, budgets.yaml errors, and
the submit check through the real CLIs (no cluster: HPC_COST_LIVE=0 keeps sacct out)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hpc.cost.budgets import (
    Usage,
    check,
    consumed,
    gather_usage,
    parse_budgets,
    parse_sacct,
    period_start,
    stored_usage,
)
from hpc.cost.estimate import (
    Estimate,
    Figure,
    Request,
    estimate,
    parse_billing_weights,
    typical_from_store,
    upper_bound,
)
from hpc.cost.ingest import ingest_sacct
from hpc.cost.model import CostInputError
from hpc.cost.prices import parse_prices
from hpc.cost.run_usage import AccountingSet, RunAccounting
from hpc.cost.store import Store
from hpc.exitcodes import BUDGET_REFUSED

from support import hpc, hpc_launch

PRICES = parse_prices(
    {"currency": "EUR", "gpu_hour": {"default": 2.0, "by_gpu_type": {"a100": 3.0}}, "cpu_hour": 0.5}
)
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
HEADER = (
    "JobID|JobIDRaw|User|Account|Partition|State|Submit|Start|End|Elapsed|NNodes|AllocCPUS|"
    "AllocTRES"
)
ROWS = [
    # 2 a100 GPUs, 1 h, in December: 2 GPU-h, 6 EUR + 4 CPU x 1 h x 0.5 = 8 EUR
    "101|101|alice|lab|gpu|COMPLETED|2026-12-01T09:00:00|2026-12-01T10:00:00|2026-12-01T11:00:00|01:00:00|1|4|cpu=4,gres/gpu:a100=2,gres/gpu=2",
    # 1 GPU, 3 h, in December: 3 GPU-h, 6 + 1.5 = 7.5 EUR
    "102|102|alice|lab|gpu|COMPLETED|2026-12-02T09:00:00|2026-12-02T10:00:00|2026-12-02T13:00:00|03:00:00|1|1|cpu=1,gres/gpu=1",
    # spans the month start: 1 of its 2 h in December (1 GPU)
    "103|103|bob|lab|gpu|COMPLETED|2026-11-30T22:00:00|2026-11-30T23:00:00|2026-12-01T01:00:00|02:00:00|1|1|cpu=1,gres/gpu=1",
    # November only, another account
    "104|104|bob|other|gpu|COMPLETED|2026-11-10T09:00:00|2026-11-10T10:00:00|2026-11-10T20:00:00|10:00:00|1|1|cpu=1,gres/gpu=1",
]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    psv = tmp_path / "sacct.psv"
    psv.write_text("\n".join([HEADER, *ROWS]) + "\n")
    path = tmp_path / "cost.duckdb"
    runs = AccountingSet()
    for job_id, name in (("101", "train"), ("102", "train"), ("103", "eval")):
        runs.runs[job_id] = RunAccounting(job_id, {}, record={"name": name, "job_id": job_id})
    with Store(path) as s:
        ingest_sacct(s, psv, "sacct.psv", "default")
        s.put_runs("default", runs)
    return path


def budgets(doc: dict, prices=PRICES):  # type: ignore[no-untyped-def]
    return parse_budgets({"version": 1, "budgets": doc}, "b.yaml", prices)


def test_periods() -> None:
    assert period_start("month", NOW) == datetime(2026, 12, 1, tzinfo=UTC)
    assert period_start("quarter", datetime(2026, 8, 15, tzinfo=UTC)) == datetime(
        2026, 7, 1, tzinfo=UTC
    )
    assert period_start("total", NOW) is None


def test_consumed_on_the_store(store_path: Path) -> None:
    usage = stored_usage(None, store_path)
    assert {u.job_id: u.name for u in usage} == {
        "101": "train", "102": "train", "103": "eval", "104": None,
    }  # fmt: skip
    (lab_month, lab_total, alice, train, money) = budgets(
        [
            {"name": "lab-month", "account": "lab", "gpu_hours": 10},
            {"name": "lab-total", "account": "lab", "gpu_hours": 10, "period": "total"},
            {"name": "alice", "user": "alice", "gpu_hours": 10},
            {"name": "train", "sweep": "tr*", "gpu_hours": 10},
            {"name": "money", "money": 100, "period": "quarter"},
        ]
    )
    assert consumed(lab_month, usage, NOW) == pytest.approx(2 + 3 + 1)  # 103 clipped at Dec 1
    assert consumed(lab_total, usage, NOW) == pytest.approx(2 + 3 + 2)
    assert consumed(alice, usage, NOW) == pytest.approx(5)
    assert consumed(train, usage, NOW) == pytest.approx(5)
    # Q4: every row; 101: 2x3 + 4x0.5, 102: 3x2 + 0.5x3, 103: 2x2 + 2x0.5, 104: 10x2 + 10x0.5
    assert consumed(money, usage, NOW) == pytest.approx(8 + 7.5 + 5 + 25)


def test_a_project_budget_counts_the_jobs_whose_records_name_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    psv = tmp_path / "sacct.psv"
    psv.write_text("\n".join([HEADER, *ROWS]) + "\n")
    path = tmp_path / "cost.duckdb"
    runs = AccountingSet()
    for job_id, project in (("101", "vision"), ("102", "speech"), ("103", "vision")):
        record = {"name": "train", "job_id": job_id, "extra": {"project": project}}
        runs.runs[job_id] = RunAccounting(job_id, {}, record=record)
    with Store(path) as s:
        ingest_sacct(s, psv, "sacct.psv", "default")
        s.put_runs("default", runs)
    vision, speech = budgets(
        [
            {"name": "v", "project": "vision", "gpu_hours": 10, "period": "total"},
            {"name": "s", "project": "sp*", "gpu_hours": 10, "period": "total"},
        ]
    )
    usage = stored_usage(None, path)
    assert consumed(vision, usage, NOW) == pytest.approx(2 + 2)  # 101 and 103
    assert consumed(speech, usage, NOW) == pytest.approx(3)
    # A job sacct reports as running now keeps the project its stored record names.
    live = "102|train|alice|lab|gpu|RUNNING|2026-12-03T10:00:00|Unknown|1|cpu=1,gres/gpu=1\n"
    monkeypatch.setattr("hpc.cost.budgets.live_usage", lambda *_: parse_sacct(live))
    usage = gather_usage([speech], NOW, path)
    assert consumed(speech, usage, NOW) == pytest.approx(2)  # 10:00 to NOW, 1 GPU


def test_running_jobs_count_up_to_now_and_sacct_rows_parse() -> None:
    text = (
        "201|bud-x|alice|lab|gpu|RUNNING|2026-12-03T10:00:00|Unknown|2|cpu=2,gres/gpu=2\n"
        "202_[1-3]|bud-x|alice|lab|gpu|PENDING|Unknown|Unknown|0|\n"
        "203|bud-y|alice|lab|gpu|CANCELLED by 0|2026-12-03T09:00:00|2026-12-03T09:30:00|1|"
        "billing=7,cpu=1,gres/gpu:a100=1\n"
    )
    usage = parse_sacct(text)
    assert [u.job_id for u in usage] == ["201", "203"]
    assert usage[1].state == "CANCELLED" and usage[1].gpu_type == "a100" and usage[1].billing == 7
    (b,) = budgets([{"name": "b", "gpu_hours": 100}])
    assert consumed(b, usage, NOW) == pytest.approx(2 * 2 + 0.5)


def test_check_policies() -> None:
    usage = [
        Usage("1", "n", "alice", "lab", None, "gpu", "COMPLETED",
              datetime(2026, 12, 2, tzinfo=UTC), datetime(2026, 12, 2, 4, tzinfo=UTC), gpus=1),
    ]  # fmt: skip
    warn, refuse, spent = budgets(
        [
            {"name": "w", "gpu_hours": 5, "policy": "warn"},
            {"name": "r", "account": "lab", "gpu_hours": 5, "policy": "refuse"},
            {"name": "s", "gpu_hours": 4, "policy": "warn"},
        ]
    )
    est = Estimate(Figure(2.0, 0.0), None)
    job = {"account": "lab", "user": "alice", "project": None, "sweep": None}
    verdicts = {v.budget.name: v for v in check([warn, refuse, spent], job, est, usage, NOW)}
    assert verdicts["w"].refused is False and verdicts["r"].refused is True
    assert "consumed 4 GPU-h + estimate 2 GPU-h > limit 5 GPU-h" in verdicts["r"].line()
    assert "budget r (account=lab; month, b.yaml): refused" in verdicts["r"].line()
    # Unattended (a schedule): a spent warn budget refuses too; one with room left warns.
    sched = {v.budget.name: v.refused for v in check([warn, spent], job, est, usage, NOW, True)}
    assert sched == {"w": False, "s": True}
    other = dict(job, account="other")
    assert [v.budget.name for v in check([refuse], other, est, usage, NOW)] == []
    small = Estimate(Figure(0.5, 0.0), None)
    assert check([warn], job, small, usage, NOW) == []


def test_upper_bound_prices_and_billing_weights() -> None:
    req = Request("train", nodes=2, gpus_per_node=4, cpus_per_node=16, time_s=2 * 3600,
                  gpu_type="a100", mem_gb_per_node=64.0)  # fmt: skip
    fig = upper_bound(req, PRICES)
    assert (fig.gpu_hours, fig.cpu_hours) == (16, 64)
    assert fig.money == pytest.approx(16 * 3.0 + 64 * 0.5)
    weights = parse_billing_weights("CPU=1.0,Mem=0.25G,GRES/gpu=2.0")
    assert weights == {"cpu": 1.0, "mem": 0.25, "gres/gpu": 2.0}
    assert parse_billing_weights("Mem=512")["mem"] == 512 * 1024
    billing = parse_prices({"billing": {"rate": 0.1}})
    # billing per hour = 32 CPU x 1 + 8 GPU x 2 + 128 GB x 0.25 = 80; x 2 h x 0.1
    assert upper_bound(req, billing, weights).money == pytest.approx(16.0)  # type: ignore[union-attr]
    assert upper_bound(Request("x", 1, 1, 1, None), PRICES) is None


def test_typical_is_the_median_of_this_users_runs(store_path: Path) -> None:
    fig, runs = typical_from_store("train", "alice", PRICES, store_path)
    assert runs == 2 and fig is not None
    assert fig.gpu_hours == pytest.approx(2.5) and fig.money == pytest.approx((8 + 7.5) / 2)
    assert typical_from_store("train", "bob", PRICES, store_path) == (None, 0)
    assert typical_from_store("nope", "alice", PRICES, store_path) == (None, 0)
    # A sweep of 3 tasks of this shape: three times each figure.
    req = Request("train", 1, 1, 2, 3600)
    est = estimate([(req, 3)], PRICES, user="alice", store_path=store_path, look_up_weights=False)
    assert est.jobs == 3 and est.upper is not None and est.typical is not None
    assert est.upper.gpu_hours == 3 and est.upper.money == pytest.approx(3 * (2 + 1))
    assert est.typical.gpu_hours == pytest.approx(7.5)
    assert est.line().startswith("estimate for 3 tasks: at most 3 GPU-h, 6 CPU-h, 9.00 EUR;")
    assert "typical 7.5 GPU-h" in est.line() and "median of 2 earlier run(s)" in est.line()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("budgets: [{name: a, gpu_hours: 1, colour: red}]", "key budgets.0.colour: unknown key"),
        ("budgets: [{name: a}]", "key budgets.0: give exactly one of gpu_hours, money"),
        ("budgets: [{name: a, gpu_hours: 1, money: 2}]", "key budgets.0: give exactly one"),
        ("budgets: [{name: a, gpu_hours: -1}]", "key budgets.0.gpu_hours:"),
        ("budgets: [{name: a, gpu_hours: 1, period: week}]", "key budgets.0.period:"),
        ("budgets: [{name: a, gpu_hours: 1, policy: stop}]", "key budgets.0.policy:"),
        ("budgets: [{name: a, money: 1}]", "key budgets.0.money: a money budget needs a price"),
        ("budgets: [{name: a, gpu_hours: 1}, {name: a, gpu_hours: 2}]", "key budgets.1.name:"),
        ("budgets: [{name: a, gpu_hours: 1}]\nprices: nope.yaml", "key prices:"),
        ("budgets: [{name: a, gpu_hours: 1}\n", "not valid YAML"),
    ],
)
def test_bad_budgets_file_is_one_line_naming_file_and_key(
    workdir: Path, doc: str, message: str
) -> None:
    path = workdir / "budgets.yaml"
    path.write_text(doc)
    env = {"HPC_BUDGETS": str(path), "HPC_COST_LIVE": "0"}
    procs = [hpc(["cost", "budgets"], workdir, **env)]
    if "unknown key" in message or "price" in message:  # hpc-launch reads it the same way
        procs.append(hpc_launch(["dry_run=true"], workdir, **env))
    for proc in procs:
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert str(path) in lines[0] and message in lines[0], lines[0]


def test_parse_budgets_unit() -> None:
    with pytest.raises(CostInputError, match=r"key budgets\.0\.money"):
        budgets([{"name": "m", "money": 1}], prices=None)


def test_refused_launch_submits_nothing_and_estimate_says_so(workdir: Path) -> None:
    (workdir / "prices.yaml").write_text("currency: EUR\ncpu_hour: 1.0\n")
    (workdir / "budgets.yaml").write_text(
        "version: 1\nprices: prices.yaml\nbudgets:\n"
        "  - {name: tiny, money: 0.4, policy: refuse, period: total}\n"
        "  - {name: roomy, gpu_hours: 1000}\n"
    )
    env = {"HPC_BUDGETS": str(workdir / "budgets.yaml"), "HPC_COST_LIVE": "0"}
    args = ["resources.tasks_per_node=1", "resources.time=00:30:00", "job.epochs=1"]
    proc = hpc_launch(args, workdir, **env)
    assert proc.returncode == BUDGET_REFUSED, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line, nothing else
    assert line == (
        f"hpc-launch: error: budget tiny (every job; total, {workdir / 'budgets.yaml'}): refused: "
        "consumed 0.00 EUR + estimate 0.50 EUR > limit 0.40 EUR; nothing submitted"
    )
    assert not (workdir / "outputs").exists()
    est = hpc(["cost", "estimate", "--json", *args], workdir, **env)
    assert est.returncode == 0, est.stderr
    data = json.loads(est.stdout)
    assert data["upper"] == {"gpu_hours": 0.0, "cpu_hours": 0.5, "money": 0.5}
    assert data["refused_by"].startswith("budget tiny ")
    table = hpc(["cost", "budgets"], workdir, **env)
    assert "tiny" in table.stdout and "0.00 EUR of 0.40 EUR" in table.stdout
