"""Price tables: validation, rate lookup, billing mode, refunds, and window clipping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hpc.cost.model import AllocationSet, CostInputError
from hpc.cost.prices import PriceTable, load_prices
from hpc.cost.report import build_report

T = datetime(2024, 5, 1, tzinfo=UTC)

PRICES = """\
version: 1
currency: EUR
gpu_hour:
  default: 2.0
  by_gpu_type: {a100: 3.0, v100: 1.0}
  by_partition: {cheap: 0.5}
  rules:
    - {partition: cheap, gpu_type: a100, rate: 2.5}
cpu_hour: 0.01
"""


def alloc(
    job: str,
    hours: float,
    gpus: int = 1,
    cpus: int = 4,
    *,
    partition: str = "gpu",
    gpu_type: str | None = None,
    state: str = "COMPLETED",
    billing: float | None = None,
    start: datetime = T,
    account: str = "a",
) -> dict[str, object]:
    return {
        "job_id": job,
        "job_id_raw": job,
        "array_job_id": None,
        "array_task_id": None,
        "het_job_id": None,
        "het_offset": None,
        "user": "u",
        "account": account,
        "partition": partition,
        "state": state,
        "submit": start,
        "start": start,
        "end": start + timedelta(hours=hours),
        "elapsed_s": int(hours * 3600),
        "ncpus": cpus,
        "gpus": gpus,
        "gpu_type": gpu_type,
        "billing": billing,
        "nodes": 1,
        "line": 1,
        "file": "t",
    }


def prices(tmp_path: Path, text: str = PRICES) -> PriceTable:
    p = tmp_path / "prices.yaml"
    p.write_text(text, encoding="utf-8")
    return load_prices(p)


def test_rate_lookup_order(tmp_path: Path) -> None:
    pt = prices(tmp_path)
    assert pt.gpu_rate("cheap", "a100") == 2.5  # rule: partition + type
    assert pt.gpu_rate("gpu", "a100") == 3.0  # by type
    assert pt.gpu_rate("cheap", "h100") == 0.5  # by partition
    assert pt.gpu_rate("gpu", None) == 2.0  # default
    assert PriceTable().gpu_rate("gpu", "a100") is None


def test_costs_from_rates(tmp_path: Path) -> None:
    rows = [
        alloc("1", 2, 2, 8, gpu_type="a100"),
        alloc("2", 1, 1, 4, partition="cheap"),
        alloc("3", 3, 0, 16),
    ]
    rep = build_report(AllocationSet.from_records(rows), prices(tmp_path), group_by="job")
    cost = {r.key: r.cost for r in rep.rows}
    assert cost["1"] == pytest.approx(2 * 2 * 3.0 + 8 * 2 * 0.01)
    assert cost["2"] == pytest.approx(1 * 1 * 0.5 + 4 * 1 * 0.01)
    assert cost["3"] == pytest.approx(16 * 3 * 0.01)
    assert rep.total.cost == pytest.approx(sum(cost.values()))
    assert rep.currency == "EUR"


def test_unpriced_gpus_are_noted(tmp_path: Path) -> None:
    pt = prices(tmp_path, "gpu_hour:\n  by_gpu_type: {a100: 3.0}\n")
    rep = build_report(AllocationSet.from_records([alloc("1", 1, 2, gpu_type="h100")]), pt)
    assert rep.total.cost == 0.0
    assert any("match no GPU rate" in n for n in rep.notes)


def test_billing_mode(tmp_path: Path) -> None:
    pt = prices(tmp_path, PRICES + "billing: {rate: 0.1}\n")
    rows = [alloc("1", 2, 2, billing=24.0), alloc("2", 1, 1, 4, gpu_type="v100")]
    rep = build_report(AllocationSet.from_records(rows), pt, group_by="job")
    cost = {r.key: r.cost for r in rep.rows}
    assert cost["1"] == pytest.approx(24 * 2 * 0.1)  # billing x hours x rate
    assert cost["2"] == pytest.approx(1 * 1.0 + 4 * 0.01)  # no billing TRES: GPU/CPU rates
    assert any("without billing TRES" in n for n in rep.notes)


def test_refund_of_preempted_and_node_fail(tmp_path: Path) -> None:
    pt = prices(tmp_path, PRICES + "refund_states: [PREEMPTED, NODE_FAIL]\n")
    rows = [
        alloc("1", 1, state="PREEMPTED"),
        alloc("2", 1, state="NODE_FAIL"),
        alloc("3", 1, state="FAILED"),
    ]
    rep = build_report(AllocationSet.from_records(rows), pt, group_by="job")
    cost = {r.key: r.cost for r in rep.rows}
    assert cost["1"] == cost["2"] == 0.0 and cost["3"] > 0
    assert rep.total.gpu_hours == pytest.approx(3.0)  # hours are still reported
    assert any("refunded" in n for n in rep.notes)


@pytest.mark.parametrize(
    ("start_h", "hours", "expect"),
    [
        (-2, 4, 2.0),  # starts before the window: clipped at its start
        (22, 4, 2.0),  # ends after the window: clipped at its end
        (1, 2, 2.0),  # inside
        (-5, 2, None),  # entirely before: skipped
        (25, 1, None),  # entirely after: skipped
        (-2, 30, 24.0),  # spans the whole window
        (3, 0, 0.0),  # zero length, inside: counts as a job with 0 hours
    ],
)
def test_window_clipping(start_h: float, hours: float, expect: float | None) -> None:
    rows = [alloc("1", hours, gpus=1, start=T + timedelta(hours=start_h))]
    rep = build_report(AllocationSet.from_records(rows), start=T, end=T + timedelta(days=1))
    # hours = max(0, min(end, window_end) - max(start, window_start))
    if expect is None:
        assert rep.total.jobs == 0 and rep.skipped["outside the report window"] == 1
    else:
        assert rep.total.jobs == 1 and rep.total.gpu_hours == pytest.approx(expect)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu_hour:\n  defualt: 2\n", r"key gpu_hour\.defualt: unknown key"),
        ("gpu_hour:\n  default: -1\n", r"key gpu_hour\.default: -1 is less than the minimum"),
        ("cpu_hour: cheap\n", r"key cpu_hour: 'cheap' is not of type 'number'"),
        ("gpu_hour:\n  by_gpu_type: {a100: x}\n", r"key gpu_hour\.by_gpu_type\.a100: 'x'"),
        ("refund_states: [preempted]\n", r"key refund_states\.0: 'preempted' does not match"),
        ("billing: {}\n", r"key billing: 'rate' is a required property"),
        ("version: 2\n", r"key version: 1 was expected"),
        ("[1, 2]\n", r"key \(top level\): \[1, 2\] is not of type 'object'"),
        (
            "gpu_hour:\n  rules:\n    - {partition: p, gpu_type: t, rate: 1}\n"
            "    - {partition: p, gpu_type: t, rate: 2}\n",
            r"key gpu_hour\.rules\.1: duplicate rule",
        ),
    ],
)
def test_bad_price_tables_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(CostInputError, match=rf"^{p}: {message}"):
        load_prices(p)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "syntax.yaml"
    p.write_text("currency: EUR\ngpu_hour:\n  default: [1\n", encoding="utf-8")
    with pytest.raises(CostInputError, match=rf"^{p}:\d+: not valid YAML"):
        load_prices(p)


def test_empty_file_is_a_zero_table(tmp_path: Path) -> None:
    pt = prices(tmp_path, "")
    assert not pt.priced and pt.cpu_hour == 0.0
