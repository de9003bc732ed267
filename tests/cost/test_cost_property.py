"""Property: however allocations are grouped or windowed, the totals agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from hpc.cost.model import AllocationSet
from hpc.cost.report import GROUPS, build_report

T0 = datetime(2024, 1, 1, tzinfo=UTC)

alloc = st.fixed_dictionaries(
    {
        "start_s": st.integers(0, 10 * 86400),
        "dur_s": st.integers(0, 4 * 86400),
        "gpus": st.integers(0, 8),
        "ncpus": st.integers(0, 64),
        "user": st.sampled_from(["a", "b", "c", None]),
        "account": st.sampled_from(["x", "y", None]),
        "state": st.sampled_from(["COMPLETED", "FAILED", "RUNNING", "PENDING", "TIMEOUT"]),
    }
)


def records(items: list[dict[str, object]]) -> AllocationSet:
    rows = []
    for i, a in enumerate(items):
        start = T0 + timedelta(seconds=int(a["start_s"]))  # type: ignore[arg-type]
        pending = a["state"] == "PENDING"
        rows.append(
            {
                "job_id": str(1000 + i),
                "job_id_raw": str(1000 + i),
                "array_job_id": None,
                "array_task_id": None,
                "het_job_id": None,
                "het_offset": None,
                "user": a["user"],
                "account": a["account"],
                "partition": "p",
                "state": a["state"],
                "submit": start,
                "start": None if pending else start,
                "end": None
                if pending or a["state"] == "RUNNING"
                else start + timedelta(seconds=int(a["dur_s"])),  # type: ignore[arg-type]
                "elapsed_s": a["dur_s"],
                "ncpus": a["ncpus"],
                "gpus": a["gpus"],
                "gpu_type": None,
                "billing": None,
                "nodes": 1,
                "line": i + 1,
                "file": "prop",
            }
        )
    return AllocationSet.from_records(rows)


@settings(max_examples=60, deadline=None)
@given(st.lists(alloc, max_size=30), st.integers(0, 12 * 86400), st.integers(1, 6 * 86400))
def test_totals_agree_across_groupings_and_windows(items, w0, wlen) -> None:  # type: ignore[no-untyped-def]
    allocs = records(items)
    now = T0 + timedelta(days=15)
    start, end = T0 + timedelta(seconds=w0), T0 + timedelta(seconds=w0 + wlen)
    full = build_report(allocs, group_by="account", now=now)
    for group_by in GROUPS:
        rep = build_report(allocs, start=start, end=end, group_by=group_by, now=now)
        assert abs(sum(r.gpu_hours for r in rep.rows) - rep.total.gpu_hours) < 1e-6
        assert abs(sum(r.cpu_hours for r in rep.rows) - rep.total.cpu_hours) < 1e-6
        if group_by != "day":  # a job spanning days is counted on each of its days
            assert sum(r.jobs for r in rep.rows) == rep.total.jobs
        # a window never adds hours, and never more than its length per GPU
        assert rep.total.gpu_hours <= full.total.gpu_hours + 1e-6
        per_gpu_cap = sum(int(a["gpus"]) for a in items) * wlen / 3600  # type: ignore[arg-type]
        assert rep.total.gpu_hours <= per_gpu_cap + 1e-6
    started = [a for a in items if a["state"] != "PENDING"]
    assert full.total.jobs == len(started)
