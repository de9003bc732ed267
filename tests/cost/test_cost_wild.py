"""The sacct outputs collected for issue 15 (tests/fixtures/sacct/SOURCES.md) parse, and their
totals match figures computed here from the raw text or JSON with plain splitting and
``json.loads`` -- not with the reader under test. Files that cannot be a cost input fail
with one line that names the file."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hpc.cost.cli import main
from hpc.cost.model import CostInputError
from hpc.cost.sacct.reader import read_sacct

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "sacct"
DEFAULT_FIELDS = ["jobid", "jobname", "partition", "account", "alloccpus", "state", "exitcode"]


def table(path: Path) -> list[dict[str, str]]:
    """Rows of a ``|``-separated file with a header; ``--parsable``'s last ``|`` dropped."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    split = [ln[:-1].split("|") if ln.endswith("|") else ln.split("|") for ln in lines]
    names = [n.lower() for n in split[0]]
    for values in split[1:]:
        assert len(values) == len(names), values
    return [dict(zip(names, values, strict=True)) for values in split[1:]]


def allocations(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if "." not in r["jobid"]]


def when(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


def report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict, str]:
    assert main(["report", *args, "--format", "json", "--by", "job"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def check(doc: dict, jobs: int, gpu_hours: float, cpu_hours: float) -> None:
    assert doc["total"]["jobs"] == jobs
    assert doc["total"]["gpu_hours"] == pytest.approx(gpu_hours, abs=1e-5)
    assert doc["total"]["cpu_hours"] == pytest.approx(cpu_hours, abs=1e-5)


# --- text outputs -----------------------------------------------------------------------
def test_oxford_parsable_allocgres_steps_timeout_cancelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = FIX / "safe-oxford_parsable_header_allocgres_steps_2017.txt"
    rows = table(path)
    allocs = allocations(rows)
    assert len(rows) == 57 and len(allocs) == 53  # 4 ".1" steps (orted)
    gpu_h = cpu_h = 0.0
    for r in allocs:
        hours = (when(r["end"]) - when(r["start"])).total_seconds() / 3600
        gpus = int(r["allocgres"].split(":")[1]) if r["allocgres"] else 0
        gpu_h += gpus * hours
        cpu_h += int(r["alloccpus"]) * hours
    doc, _ = report(capsys, "--sacct", str(path))
    check(doc, 53, gpu_h, cpu_h)
    by_id = {a.job_id: a for a in read_sacct(path).records()}
    assert len(by_id) == 53
    assert by_id["605717"].gpus == 2 and by_id["609197"].gpus == 1
    assert by_id["611415"].state == "CANCELLED"  # "CANCELLED by 4594"
    assert by_id["605840"].state == "TIMEOUT" and by_id["605603"].nodes == 8
    assert sum(a.gpus or 0 for a in by_id.values()) == 2 + 2 + 1 + 1


@pytest.mark.parametrize(
    ("name", "trailing"),
    [
        ("snakemake-alpine_parsable2_header_default-fields.psv", False),
        ("java-dragen_parsable_header_default-fields.txt", True),
        ("go-comment_P_header_default-fields.psv", False),
        ("torchx_parsable_header_hetjob-176.txt", True),
    ],
)
def test_default_fields_parse_but_cannot_be_timed(
    capsys: pytest.CaptureFixture[str], name: str, trailing: bool
) -> None:
    path = FIX / name
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0].endswith("|") == trailing
    rows = table(path)
    assert [k for k in rows[0]] == DEFAULT_FIELDS
    allocs = allocations(rows)
    recs = read_sacct(path).records()
    assert [(r.job_id, r.account or "", r.ncpus) for r in recs] == [
        (a["jobid"], a["account"], int(a["alloccpus"])) for a in allocs
    ]
    assert [r.state for r in recs] == [a["state"] for a in allocs]
    doc, err = report(capsys, "--sacct", str(path))
    check(doc, 0, 0.0, 0.0)  # no Start/End/Elapsed field: no hours to count
    assert f"skipped {len(allocs)} row(s): no Start time" in err


def test_torchx_parsable_het_components() -> None:
    recs = read_sacct(FIX / "torchx_parsable_header_hetjob-176.txt").records()
    assert [(r.het_job_id, r.het_offset) for r in recs] == [(176, 0), (176, 1), (176, 2)]


def test_file_without_final_newline() -> None:
    path = FIX / "java-dragen_parsable_header_default-fields.txt"
    assert not path.read_bytes().endswith(b"\n")
    (rec,) = read_sacct(path).records()
    assert (rec.job_id, rec.state, rec.partition) == ("89", "FAILED", "dragen")


def test_jobid_alloctres_only_mig_and_typed_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "slurm-mail_P_header_jobid-alloctres_mig-typed-gpu.psv"
    allocs = allocations(table(path))
    want = []
    for r in allocs:
        pairs = dict(p.split("=", 1) for p in r["alloctres"].split(","))
        (typed,) = [k.split(":", 1)[1] for k in pairs if k.startswith("gres/gpu:")]
        want.append((r["jobid"], int(pairs["gres/gpu"]), typed, int(pairs["cpu"])))
    recs = read_sacct(path).records()
    # gres/gpu:<type>=1 next to gres/gpu=1 is one GPU, and gres/cpu is not a GPU
    assert [(r.job_id, r.gpus, r.gpu_type, r.ncpus) for r in recs] == want
    assert want[0][2] == "a100_3g.20gb"  # a MIG slice, counted as the GPU it is billed as
    doc, err = report(capsys, "--sacct", str(path))
    check(doc, 0, 0.0, 0.0)
    assert "skipped 2 row(s): no Start time" in err


# --- JSON outputs ------------------------------------------------------------------------
def _job_figures(job: dict) -> tuple[int, int]:
    """(GPUs, CPUs) of a job's allocated TRES, read from the JSON directly."""
    tres = job["tres"]["allocated"]
    gpus = sum(t["count"] for t in tres if t["type"] == "gres" and t["name"] == "gpu")
    cpus = sum(t["count"] for t in tres if t["type"] == "cpu")
    return gpus, cpus


def test_json_22_05_failed_multi_node_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "sarc_json_slurm-22.05.9_gpu.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["meta"]["Slurm"]["release"] == "22.05.9"
    (job,) = data["jobs"]
    gpus, cpus = _job_figures(job)
    assert (gpus, cpus) == (16, 96) and job["state"]["current"] == "FAILED"
    hours = (job["time"]["end"] - job["time"]["start"]) / 3600
    doc, _ = report(capsys, "--sacct", str(path))
    check(doc, 1, gpus * hours, cpus * hours)
    (rec,) = read_sacct(path).records()
    assert (rec.state, rec.nodes, rec.gpus) == ("FAILED", 4, 16)


def test_json_23_11_running_state_list(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "sarc_json_slurm-23.11.5_running_state-list.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["meta"]["plugin"]["data_parser"] == "data_parser/v0.0.40"
    (job,) = data["jobs"]
    assert job["state"]["current"] == ["RUNNING"] and job["time"]["end"] == 0
    gpus, cpus = _job_figures(job)
    # the window of the sacct command recorded in meta.command
    assert data["meta"]["command"][2:6] == ["-S", "2024-05-16T00:00", "-E", "2024-05-17T00:00"]
    doc, _ = report(
        capsys, "--sacct", str(path), "--start", "2024-05-16T00:00", "--end", "2024-05-17T00:00"
    )
    check(doc, 1, gpus * 24.0, cpus * 24.0)
    (rec,) = read_sacct(path).records()
    assert (rec.state, rec.end, rec.gpus, rec.ncpus) == ("RUNNING", None, 2, 4)


def test_json_24_05_completed_with_steps(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "slurmdbd_json_slurm-24.05.4_completed_steps.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["meta"]["slurm"]["release"] == "24.05.4"
    (job,) = data["jobs"]
    gpus, cpus = _job_figures(job)
    hours = (job["time"]["end"] - job["time"]["start"]) / 3600
    doc, _ = report(capsys, "--sacct", str(path))
    check(doc, 1, gpus * hours, cpus * hours)
    (rec,) = read_sacct(path).records()
    assert (rec.job_id, rec.state, rec.gpus, rec.ncpus) == ("26", "COMPLETED", 0, 1)
    assert rec.start == datetime.fromtimestamp(job["time"]["start"], UTC)
    assert rec.user == job["user"] and rec.partition == job["partition"]


def test_all_new_json_files_together_are_the_sum(capsys: pytest.CaptureFixture[str]) -> None:
    names = ["sarc_json_slurm-22.05.9_gpu.json", "slurmdbd_json_slurm-24.05.4_completed_steps.json"]
    parts = [report(capsys, "--sacct", str(FIX / n))[0]["total"] for n in names]
    args = [a for n in names for a in ("--sacct", str(FIX / n))]
    both = report(capsys, *args)[0]["total"]
    for k in ("jobs", "gpu_hours", "cpu_hours"):
        assert both[k] == pytest.approx(sum(p[k] for p in parts))


# --- files that cannot be a cost input ----------------------------------------------------
def test_fixed_width_default_table_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIX / "soperator_fixed-width_default.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert set(lines[1]) <= {"-", " "}  # the ruler under sacct's default header
    with pytest.raises(CostInputError) as err:
        read_sacct(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:1: fixed-width sacct output") and "--parsable2" in msg
    assert "\n" not in msg
    assert main(["report", "--sacct", str(path)]) != 0
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and str(path) in err_text


def test_alloctres_only_output_has_no_job_id() -> None:
    path = FIX / "jobstats_P_X_noheader_alloctres-only.psv"
    (line,) = path.read_text(encoding="utf-8").splitlines()
    assert "gres/gpu=4" in line and "|" not in line
    with pytest.raises(CostInputError, match=rf"^{path}:1: no header line and no field list"):
        read_sacct(path)
    with pytest.raises(CostInputError, match=rf"^{path}:1: no JobID field"):
        read_sacct(path, "alloctres")
