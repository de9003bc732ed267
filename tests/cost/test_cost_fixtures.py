"""Every real sacct fixture parses, and its totals match figures computed here, in the test,
from the raw fields (plain string splitting, not the reader under test)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hpc.cost.cli import main
from hpc.cost.sacct.reader import read_sacct

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "sacct"
XDMOD_FIELDS = (
    "jobid,jobidraw,cluster,partition,qos,account,group,gid,user,uid,submit,eligible,start,end,"
    "elapsed,exitcode,state,nnodes,ncpus,reqcpus,reqmem,reqtres,alloctres,timelimit,nodelist,"
    "jobname"
)
HB_FIELDS = (
    "JobID,JobName,User,Partition,NodeList,NNodes,NCPUs,NTasks,State,Submit,Start,End,Timelimit,"
    "Elapsed,TotalCPU,CPUTime,UserCPU,SystemCPU,ReqMem,MaxRSS,MaxVMSize,ReqTRES,AllocTRES,"
    "TRESUsageInMax,TRESUsageInTot,TRESUsageOutTot,MaxDiskRead,MaxDiskWrite,MaxRSSNode,"
    "MaxRSSTask,MaxVMSizeNode,MaxVMSizeTask,MaxDiskReadNode,MaxDiskReadTask,MaxDiskWriteNode,"
    "MaxDiskWriteTask,Comment"
)


# --- an independent, deliberately simple reading of the raw text ----------------------------
def rows_of(path: Path, delim: str, fields: str | None) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text(encoding="utf-8").split("\n") if ln.strip()]
    if fields is None:
        names = [n.lower() for n in lines[0].split(delim)]
        lines = lines[1:]
    else:
        names = [n.lower() for n in fields.split(",")]
    out = []
    for ln in lines:
        values = ln.split(delim)
        if len(values) == len(names) + 1 and values[-1] == "":  # --parsable
            values = values[:-1]
        assert len(values) == len(names), ln
        out.append(dict(zip(names, values, strict=True)))
    return out


def tres_gpus(tres: str) -> int:
    pairs = dict(p.split("=", 1) for p in tres.split(",") if "=" in p)
    if "gres/gpu" in pairs:
        return int(pairs["gres/gpu"])
    return sum(int(v) for k, v in pairs.items() if k.startswith("gres/gpu:"))


def when(text: str) -> datetime | None:
    if text in ("", "Unknown", "None"):
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


def expected(
    rows: list[dict[str, str]], window_end: datetime | None = None
) -> tuple[int, float, float]:
    """(jobs, GPU-hours, CPU-hours) of the allocation rows, from the raw fields."""
    jobs, gh, ch = 0, 0.0, 0.0
    for r in rows:
        jid, state = r["jobid"], r["state"].split(" ")[0]
        if "." in jid or "[" in jid or state == "PENDING":
            continue
        start, end = when(r["start"]), when(r["end"])
        if start is None:
            continue
        if state == "RUNNING":
            end = window_end
        assert end is not None
        hours = max(0.0, (end - start).total_seconds()) / 3600
        cpus = int(r.get("ncpus") or r.get("alloccpus") or 0)
        jobs += 1
        gh += tres_gpus(r.get("alloctres", "")) * hours
        ch += cpus * hours
    return jobs, gh, ch


ERR: dict[int, str] = {}


def report(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """Run the CLI; its standard error is kept in ERR[0] (skip reasons, notes)."""
    assert main(["report", *args, "--format", "json", "--by", "job"]) == 0
    captured = capsys.readouterr()
    ERR[0] = captured.err
    return json.loads(captured.out)


def check(doc: dict, jobs: int, gh: float, ch: float) -> None:
    assert doc["total"]["jobs"] == jobs
    assert doc["total"]["gpu_hours"] == pytest.approx(gh, abs=1e-5)
    assert doc["total"]["cpu_hours"] == pytest.approx(ch, abs=1e-5)
    assert sum(r["jobs"] for r in doc["rows"]) == jobs


# --- the fixtures ---------------------------------------------------------------------------
def test_xdmod_headerless_accounting_logs(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "xdmod_parsable2_noheader_accounting-logs.psv"
    rows = rows_of(path, "|", XDMOD_FIELDS)
    doc = report(capsys, "--sacct", str(path), "--sacct-format", XDMOD_FIELDS)
    check(doc, *expected(rows))
    allocs = {a.job_id: a for a in read_sacct(path, XDMOD_FIELDS).records()}
    assert allocs["5692623"].gpus == 2  # AllocTRES is only gres/gpu=2
    assert allocs["4107166"].state == "CANCELLED"  # "CANCELLED by 102216"
    assert allocs["4103947"].billing == 256


def test_xdmod_job_arrays_count_tasks_not_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "xdmod_parsable2_noheader_job-arrays.psv"
    rows = rows_of(path, "|", XDMOD_FIELDS)
    doc = report(capsys, "--sacct", str(path), "--sacct-format", XDMOD_FIELDS)
    check(doc, *expected(rows))
    assert [r["key"] for r in doc["rows"]] == ["4103947_100"]
    ranges = [r["jobid"] for r in rows if "[" in r["jobid"]]
    assert f"skipped {len(ranges)} row(s): pending array range" in ERR[0]
    recs = read_sacct(path, XDMOD_FIELDS).records()
    task = next(a for a in recs if a.job_id == "4103947_100")
    assert (task.array_job_id, task.array_task_id) == (4103947, 100)
    assert {a.job_id for a in recs if a.array_task_id is None} == set(ranges)


def test_hbjobinfo_snowman_delimiter_trailing_steps_arrays(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = FIX / "hbjobinfo_parsable_snowman-delim_gpu-tresusage_steps_arrays.txt"
    rows = rows_of(path, "☃", HB_FIELDS)
    end = datetime(2024, 4, 20, tzinfo=UTC)
    doc = report(
        capsys, "--sacct", str(path), "--sacct-format", HB_FIELDS, "--end", "2024-04-20T00:00:00"
    )
    check(doc, *expected(rows, window_end=end))
    err = ERR[0]
    pending = sum(1 for r in rows if "." not in r["jobid"] and r["state"] == "PENDING")
    assert f"skipped {pending} row(s): PENDING" in err
    # the delimiter is found without --delimiter, and given explicitly it works the same
    a = read_sacct(path, HB_FIELDS)
    b = read_sacct(path, HB_FIELDS, delimiter="☃")
    assert a.records() == b.records()
    allocs = [r for r in rows if "." not in r["jobid"]]
    assert len(a) == len(allocs)
    # gres/gpumem and gres/gpuutil (TRESUsageIn*) never count; typed+generic not doubled
    by_id = {r.job_id: r for r in a.records()}
    for r in allocs:
        assert by_id[r["jobid"]].gpus == tres_gpus(r["alloctres"]), r["jobid"]
    assert by_id["8298012"].gpus == 1 and by_id["8298012"].gpu_type == "v100"


def test_torchx_het_job_components(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "torchx_parsable2_header_hetjob.psv"
    recs = read_sacct(path).records()
    assert [(r.job_id, r.het_job_id, r.het_offset, r.ncpus) for r in recs] == [
        ("1853+0", 1853, 0, 1),
        ("1853+1", 1853, 1, 1),
        ("1853+2", 1853, 2, 1),
    ]
    doc = report(capsys, "--sacct", str(path))
    check(doc, 0, 0.0, 0.0)  # no Start/End in this output: nothing can be timed
    assert "skipped 3 row(s): no Start time" in ERR[0]


def test_slurmio_allocgres_running(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "slurmio_parsable2_header_allocgres_gpu_2019.psv"
    (row,) = rows_of(path, "|", None)
    recs = read_sacct(path).records()
    assert len(recs) == 1 and recs[0].gpus == int(row["allocgres"].split(":")[-1])
    h, m, s = (int(x) for x in row["elapsed"].split(":"))
    hours = (h * 3600 + m * 60 + s) / 3600
    doc = report(capsys, "--sacct", str(path))  # no window: Elapsed places it
    check(doc, 1, recs[0].gpus * hours, int(row["alloccpus"]) * hours)
    assert "provisional" in ERR[0]


def test_sarc_json_21_08_requeued(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "sarc_json_slurm-21.08.8_requeued_gpu.json"
    (job,) = json.loads(path.read_text())["jobs"]
    hours = (job["time"]["end"] - job["time"]["start"]) / 3600
    gpus = sum(t["count"] for t in job["tres"]["allocated"] if t["name"] == "gpu")
    cpus = sum(t["count"] for t in job["tres"]["allocated"] if t["type"] == "cpu")
    doc = report(capsys, "--sacct", str(path))
    check(doc, 1, gpus * hours, cpus * hours)
    (rec,) = read_sacct(path).records()
    assert rec.state == "REQUEUED" and rec.account == job["account"]


def test_sarc_json_23_02_running_clipped(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "sarc_json_slurm-23.02.6_running_gpu.json"
    (job,) = json.loads(path.read_text())["jobs"]
    assert job["time"]["end"] == 0
    gpus = sum(t["count"] for t in job["tres"]["allocated"] if t["name"] == "gpu")
    cpus = sum(t["count"] for t in job["tres"]["allocated"] if t["type"] == "cpu")
    # the window of the sacct command recorded in the file's meta
    doc = report(
        capsys, "--sacct", str(path), "--start", "2023-10-05T00:00", "--end", "2023-10-06T00:00"
    )
    check(doc, 1, gpus * 24.0, cpus * 24.0)
    assert doc["window"] == {"start": "2023-10-05T00:00:00Z", "end": "2023-10-06T00:00:00Z"}


def test_all_fixtures_together_are_the_sum(capsys: pytest.CaptureFixture[str]) -> None:
    xd = FIX / "xdmod_parsable2_noheader_accounting-logs.psv"
    js = FIX / "sarc_json_slurm-21.08.8_requeued_gpu.json"
    one = report(capsys, "--sacct", str(xd), "--sacct-format", XDMOD_FIELDS)
    two = report(capsys, "--sacct", str(js))
    both = report(capsys, "--sacct", str(xd), "--sacct", str(js), "--sacct-format", XDMOD_FIELDS)
    for k in ("jobs", "gpu_hours", "cpu_hours"):
        assert both["total"][k] == pytest.approx(one["total"][k] + two["total"][k])
