"""sacct shapes and folding rules, on small inputs written by the tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hpc.cost.model import CostInputError
from hpc.cost.report import build_report
from hpc.cost.sacct.reader import read_sacct, read_sacct_bytes

HEAD = "JobID|JobIDRaw|User|Account|Partition|State|Submit|Start|End|Elapsed|NCPUS|AllocTRES"
T0, T1 = "2024-03-01T10:00:00", "2024-03-01T12:00:00"  # two hours


def write(tmp_path: Path, text: str, name: str = "s.psv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def line(
    jid: str,
    state: str = "COMPLETED",
    tres: str = "cpu=4,gres/gpu=2",
    *,
    start: str = T0,
    end: str = T1,
    submit: str = T0,
    user: str = "ann",
    account: str = "phys",
    ncpus: str = "4",
    elapsed: str = "02:00:00",
) -> str:
    return (
        f"{jid}|{jid}|{user}|{account}|gpu|{state}|{submit}|{start}|{end}|{elapsed}|{ncpus}|{tres}"
    )


def by_id(path: Path, **kw: object) -> dict[str, object]:
    return {a.job_id: a for a in read_sacct(path, **kw).records()}  # type: ignore[arg-type]


# --- layouts ----------------------------------------------------------------------------------
def test_header_and_headerless_give_the_same_records(tmp_path: Path) -> None:
    body = line("10") + "\n" + line("11", tres="cpu=4") + "\n"
    with_header = read_sacct(write(tmp_path, HEAD + "\n" + body, "a.psv")).records()
    fields = HEAD.replace("|", ",")
    headerless = read_sacct(write(tmp_path, body, "b.psv"), fields).records()
    assert [(a.job_id, a.gpus, a.ncpus, a.start) for a in with_header] == [
        (a.job_id, a.gpus, a.ncpus, a.start) for a in headerless
    ]
    assert with_header[0].line == 2 and headerless[0].line == 1


def test_headerless_without_field_list_is_a_clear_error(tmp_path: Path) -> None:
    p = write(tmp_path, line("10") + "\n")
    with pytest.raises(CostInputError, match=r"s\.psv:1: no header line .*--sacct-format"):
        read_sacct(p)


@pytest.mark.parametrize("delim", [";", "☃", "^|^", "\t"])
@pytest.mark.parametrize("trailing", [False, True])
def test_any_delimiter_and_parsable_trailing(tmp_path: Path, delim: str, trailing: bool) -> None:
    end = delim if trailing else ""
    text = "\n".join(x.replace("|", delim) + end for x in (HEAD, line("7"), line("8.batch")))
    p = write(tmp_path, text + "\n")
    for given in (None, delim):
        (rec,) = read_sacct(p, delimiter=given).records()
        assert (rec.job_id, rec.gpus, rec.ncpus, rec.user) == ("7", 2, 4, "ann")
    # headerless, the delimiter found by counting fields
    p2 = write(tmp_path, text.split("\n", 1)[1] + "\n", "nohead.psv")
    (rec,) = read_sacct(p2, HEAD.replace("|", ",")).records()
    assert rec.gpus == 2


def test_sacct_format_widths_and_case(tmp_path: Path) -> None:
    p = write(tmp_path, line("5") + "\n")
    fields = (
        "jobid%20,JOBIDRAW,user,account,partition%3,state,submit,start,end,elapsed,ncpus,alloctres"
    )
    assert read_sacct(p, fields).records()[0].partition == "gpu"


# --- GPUs -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tres", "gpus", "gtype"),
    [
        ("billing=8,cpu=8,gres/gpu:v100=1,gres/gpu=1,mem=50G,node=1", 1, "v100"),
        ("cpu=8,gres/gpu:a100=2,mem=1G", 2, "a100"),
        ("cpu=8,gres/gpu=4", 4, None),
        ("cpu=8,gres/gpumem=7954688K,gres/gpuutil=90", 0, None),
        ("cpu=8,gres/gpu=1,gres/gpumem=37956M,gres/gpuutil=100", 1, None),
        ("cpu=8,gres/gpu:a100=1,gres/gpu:v100=2", 3, "a100+v100"),
        ("cpu=8,mem=1G", 0, None),
    ],
)
def test_alloctres_gpu_counting(tmp_path: Path, tres: str, gpus: int, gtype: str | None) -> None:
    (rec,) = read_sacct(write(tmp_path, HEAD + "\n" + line("1", tres=tres) + "\n")).records()
    assert (rec.gpus, rec.gpu_type) == (gpus, gtype)


@pytest.mark.parametrize(
    ("gres", "gpus", "gtype"),
    [
        ("gpu:1", 1, None),
        ("gpu:tesla:2", 2, "tesla"),
        ("gpu:2080ti:3(IDX:0-2)", 3, "2080ti"),
        ("", 0, None),
        ("mps:100", 0, None),
    ],
)
def test_old_allocgres(tmp_path: Path, gres: str, gpus: int, gtype: str | None) -> None:
    text = "JobID|State|Start|End|AllocCPUS|AllocGRES|AllocTRES\n"
    text += f"1|COMPLETED|{T0}|{T1}|2|{gres}|cpu=2\n"
    (rec,) = read_sacct(write(tmp_path, text)).records()
    assert (rec.gpus, rec.gpu_type, rec.ncpus) == (gpus, gtype, 2)


# --- steps, arrays, het jobs, requeues --------------------------------------------------------
def test_steps_fold_into_allocation_and_only_fill_gaps(tmp_path: Path) -> None:
    rows = [
        line("20", tres=""),  # the allocation row lacks TRES: its steps fill it
        line("20.batch", tres="cpu=4,gres/gpu=1"),
        line("20.extern", tres="cpu=4,gres/gpu=3"),
        line("20.0", tres="cpu=4,gres/gpu=2"),
        line("21", tres="cpu=4,gres/gpu=1"),  # has TRES: steps never override it
        line("21.batch", tres="cpu=4,gres/gpu=8"),
        line("21.interactive", tres="cpu=4,gres/gpu=8"),
        line("22.0", tres="cpu=4,gres/gpu=1"),  # a step without its allocation row
    ]
    s = read_sacct(write(tmp_path, HEAD + "\n" + "\n".join(rows) + "\n"))
    recs = {a.job_id: a for a in s.records()}
    assert set(recs) == {"20", "21"}
    assert recs["20"].gpus == 3 and recs["21"].gpus == 1
    assert s.skipped == {"step without its allocation row": 1}


def test_array_tasks_pending_ranges_and_het(tmp_path: Path) -> None:
    rows = [
        line("123_4"),
        line("123_4.batch"),
        line("123_[5-7]", "PENDING", "", start="Unknown", end="Unknown"),
        line("99+0"),
        line("99+1", tres="cpu=1"),
        line("99+0.0"),
    ]
    s = read_sacct(write(tmp_path, HEAD + "\n" + "\n".join(rows) + "\n"))
    recs = {a.job_id: a for a in s.records()}
    assert (recs["123_4"].array_job_id, recs["123_4"].array_task_id) == (123, 4)
    assert recs["123_[5-7]"].array_task_id is None
    assert (recs["99+1"].het_job_id, recs["99+1"].het_offset) == (99, 1)
    rep = build_report(s, group_by="job")
    assert {r.key: r.jobs for r in rep.rows} == {"123_4": 1, "99+0": 1, "99+1": 1}
    assert rep.skipped["PENDING (costs nothing)"] == 0
    assert rep.skipped["pending array range (no task started)"] == 1


def test_requeued_runs_count_once_each_and_duplicates_once(tmp_path: Path) -> None:
    first = line(
        "30", "REQUEUED", submit="2024-03-01T08:00:00", start=T0, end="2024-03-01T11:00:00"
    )
    second = line(
        "30", submit="2024-03-01T11:00:00", start="2024-03-01T11:30:00", end="2024-03-01T12:30:00"
    )
    s = read_sacct(write(tmp_path, HEAD + "\n" + "\n".join([first, second, second]) + "\n"))
    assert len(s) == 2
    assert s.skipped == {"duplicate row (same JobID and Submit)": 1}
    rep = build_report(s, group_by="job")
    assert rep.total.jobs == 2 and rep.rows[0].jobs == 2
    assert rep.total.gpu_hours == pytest.approx(2 * (1.0 + 1.0))


def test_pending_running_unknown_times(tmp_path: Path) -> None:
    rows = [
        line("40", "PENDING", "", start="Unknown", end="Unknown"),
        line("41", "RUNNING", start=T0, end="Unknown"),
        line("42", "CANCELLED by 0", start="None", end=T1, elapsed="00:00:00"),
        line("43", "COMPLETED", start="", end=""),
    ]
    s = read_sacct(write(tmp_path, HEAD + "\n" + "\n".join(rows) + "\n"))
    end = datetime(2024, 3, 1, 13, tzinfo=UTC)
    rep = build_report(s, start=datetime(2024, 3, 1, tzinfo=UTC), end=end, group_by="job")
    assert [r.key for r in rep.rows] == ["41"]
    assert rep.rows[0].gpu_hours == pytest.approx(2 * 3.0) and rep.rows[0].provisional_jobs == 1
    assert rep.skipped["PENDING (costs nothing)"] == 1
    assert rep.skipped["no Start time (never started, or not in the input)"] == 2
    # without a window, RUNNING is counted up to "now", and Elapsed places a row that has
    # no Start (never one whose Elapsed is 0: it did not run)
    now = datetime(2024, 3, 1, 11, tzinfo=UTC)
    rep2 = build_report(s, group_by="job", now=now)
    assert {r.key: r.gpu_hours for r in rep2.rows} == {"41": 2 * 1.0, "43": 2 * 2.0}
    assert rep2.skipped["no Start time (never started, or not in the input)"] == 1


def test_blank_lines_and_repeated_headers_are_counted(tmp_path: Path) -> None:
    text = "\n" + HEAD + "\n" + line("1") + "\n\n" + HEAD + "\n" + line("2") + "\n\n"
    s = read_sacct(write(tmp_path, text))
    assert [a.job_id for a in s.records()] == ["1", "2"]
    assert [a.line for a in s.records()] == [3, 6]
    assert s.skipped == {"blank line": 3, "repeated header line": 1}


# --- malformed input --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("55|55|x|y|gpu|COMPLETED|" + T0, r"expected 12 fields, found 7"),
        (line("56", start="2024-13-01T00:00:00"), r"start: not a time: '2024-13-01T00:00:00'"),
        (line("57", ncpus="four"), r"ncpus: not a number: 'four'"),
        (line("abc"), r"not a Slurm job id: 'abc'"),
        (line(""), r"empty JobID"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    p = write(tmp_path, HEAD + "\n" + line("1") + "\n" + line("2") + "\n" + bad + "\n")
    with pytest.raises(CostInputError, match=rf"^{p}:4: {message}"):
        read_sacct(p)


def test_malformed_line_deep_in_a_big_file(tmp_path: Path) -> None:
    rows = [line(str(i)) for i in range(1, 30001)]
    rows[25000] = rows[25000] + "|extra"
    p = write(tmp_path, HEAD + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(CostInputError, match=rf"^{p}:25002: expected 12 fields, found 13"):
        read_sacct(p)


def test_bad_utf8_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "u.psv"
    p.write_bytes(
        (HEAD + "\n" + line("1") + "\n").encode()
        + b"2|2|\xff\xfe|a|gpu|COMPLETED|"
        + (T0 + "|" + T1 + "|02:00:00|4|cpu=4\n").encode()
    )
    with pytest.raises(CostInputError, match=rf"^{p}:3: not UTF-8"):
        read_sacct(p)


# --- JSON shapes ------------------------------------------------------------------------------
def _wrap(n: int | None) -> dict[str, object]:
    return {"set": n is not None, "infinite": False, "number": n or 0}


def test_json_23_11_state_lists_and_wrapped_numbers() -> None:
    start = int(datetime(2024, 3, 1, 10, tzinfo=UTC).timestamp())
    job = {
        "job_id": 501,
        "user": "bo",
        "account": "chem",
        "partition": "gpu",
        "array": {"job_id": 500, "task_id": _wrap(1), "task": ""},
        "het": {"job_id": 0, "job_offset": _wrap(None)},
        "state": {"current": ["COMPLETED"], "reason": "None"},
        "time": {
            "submission": _wrap(start),
            "start": _wrap(start),
            "end": _wrap(start + 3600),
            "elapsed": 3600,
        },
        "tres": {
            "allocated": [
                {"type": "cpu", "name": "", "count": 8},
                {"type": "billing", "count": 10},
                {"type": "gres", "name": "gpu", "count": _wrap(2)},
                {"type": "gres", "name": "gpu:h100", "count": 2},
                {"type": "gres", "name": "gpumem", "count": 80000},
            ]
        },
        "steps": [],
    }
    doc = {
        "meta": {},
        "errors": [],
        "jobs": [
            job,
            dict(
                job,
                job_id=502,
                array={"job_id": 500, "task_id": _wrap(None), "task": "2-4"},
                state={"current": ["PENDING"]},
                time={"submission": start, "start": 0, "end": 0, "elapsed": 0},
            ),
        ],
    }
    s = read_sacct_bytes(json.dumps(doc).encode(), "j.json")
    a, b = s.records()
    assert (a.job_id, a.job_id_raw, a.array_task_id, a.state) == ("500_1", "501", 1, "COMPLETED")
    assert (a.gpus, a.gpu_type, a.ncpus, a.billing) == (2, "h100", 8, 10.0)
    assert a.end == datetime(2024, 3, 1, 11, tzinfo=UTC)
    assert (b.job_id, b.state, b.start) == ("500_[2-4]", "PENDING", None)


def test_json_steps_fill_what_the_job_lacks() -> None:
    t = 1_700_000_000
    job = {
        "job_id": 7,
        "state": {"current": "COMPLETED"},
        "time": {"start": t, "end": t + 60},
        "tres": {"allocated": []},
        "steps": [
            {
                "step": {"id": "7.batch"},
                "time": {"start": t, "end": t + 60},
                "tres": {
                    "allocated": [
                        {"type": "gres", "name": "gpu", "count": 4},
                        {"type": "cpu", "count": 16},
                    ]
                },
            }
        ],
    }
    (rec,) = read_sacct_bytes(json.dumps({"jobs": [job]}).encode(), "x.json").records()
    assert (rec.gpus, rec.ncpus) == (4, 16)


def test_json_errors_name_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, '{"jobs": [\n  {"job_id": 1,}\n]}', "bad.json")
    with pytest.raises(CostInputError, match=rf"^{p}:2: not valid JSON"):
        read_sacct(p)
    p2 = write(tmp_path, '{"jobs": [{"job_id": 1}, {"name": "x"}]}', "nojob.json")
    with pytest.raises(CostInputError, match=r"jobs\[1\]: no numeric job_id"):
        read_sacct(p2)
