"""Report shapes (JSON exact, CSV, table), grouping, the accounting join and CLI errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from hpc.cost.cli import main

HEAD = "JobID|JobIDRaw|User|Account|Partition|State|Submit|Start|End|Elapsed|NCPUS|AllocTRES"
ROWS = [
    # 2 GPUs x 10 h across a day boundary (6 h on 05-01, 4 h on 05-02)
    "100|100|ann|phys|gpu|COMPLETED|2024-05-01T17:00:00|2024-05-01T18:00:00|2024-05-02T04:00:00"
    "|10:00:00|8|billing=8,cpu=8,gres/gpu:a100=2,gres/gpu=2",
    "100.batch|100.batch||||COMPLETED|2024-05-01T18:00:00|2024-05-01T18:00:00|"
    "2024-05-02T04:00:00|10:00:00|8|cpu=8,gres/gpu=2",
    # 1 GPU x 2 h
    "101_1|101|bob|chem|gpu|FAILED|2024-05-02T08:00:00|2024-05-02T08:00:00|2024-05-02T10:00:00"
    "|02:00:00|4|cpu=4,gres/gpu=1",
    # CPU only, 4 h
    "102|102|ann|phys|cpu|COMPLETED|2024-05-02T00:00:00|2024-05-02T00:00:00|2024-05-02T04:00:00"
    "|04:00:00|16|cpu=16",
    "103|103|cat|phys|gpu|PENDING|2024-05-02T00:00:00|Unknown|Unknown|00:00:00|4|",
]
PRICES = "currency: EUR\ngpu_hour: {default: 2.0, by_gpu_type: {a100: 3.0}}\ncpu_hour: 0.01\n"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    sacct = tmp_path / "s.psv"
    sacct.write_text(HEAD + "\n" + "\n".join(ROWS) + "\n", encoding="utf-8")
    prices = tmp_path / "p.yaml"
    prices.write_text(PRICES, encoding="utf-8")
    return {"sacct": sacct, "prices": prices}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["report", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("by", ["user", "account", "partition", "day", "job"])
def test_json_shape_is_exact(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], by: str
) -> None:
    rc, out, err = run(
        capsys,
        "--sacct",
        str(files["sacct"]),
        "--prices",
        str(files["prices"]),
        "--format",
        "json",
        "--by",
        by,
    )
    assert rc == 0, err
    doc = json.loads(out)
    assert list(doc) == ["window", "group_by", "rows", "total"]
    assert doc["window"] == {"start": None, "end": None} and doc["group_by"] == by
    assert list(doc["total"]) == [
        "jobs", "gpu_hours", "cpu_hours", "cost", "idle_gpu_hours", "efficiency"
    ]  # fmt: skip
    assert isinstance(doc["total"]["jobs"], int)
    for row in doc["rows"]:
        assert list(row) == [
            "key", "jobs", "gpu_hours", "cpu_hours", "cost", "gpu_util_mean",
            "idle_gpu_hours", "efficiency",
        ]  # fmt: skip
        assert isinstance(row["key"], str) and isinstance(row["jobs"], int)
        for k in ("gpu_hours", "cpu_hours", "cost"):
            assert isinstance(row[k], float)
        assert row["gpu_util_mean"] is None
    t = doc["total"]
    assert t["jobs"] == 3  # the step is not a job, PENDING costs nothing
    assert t["gpu_hours"] == pytest.approx(2 * 10 + 1 * 2)
    assert t["cpu_hours"] == pytest.approx(8 * 10 + 4 * 2 + 16 * 4)
    assert t["cost"] == pytest.approx(20 * 3.0 + 2 * 2.0 + (80 + 8 + 64) * 0.01)
    for k in ("gpu_hours", "cpu_hours", "cost"):
        assert sum(r[k] for r in doc["rows"]) == pytest.approx(t[k])
    assert "skipped 1 row(s): PENDING (costs nothing)" in err


def test_by_day_splits_hours_over_days(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    rc, out, _ = run(capsys, "--sacct", str(files["sacct"]), "--format", "json", "--by", "day")
    assert rc == 0
    rows = {r["key"]: r for r in json.loads(out)["rows"]}
    assert list(rows) == ["2024-05-01", "2024-05-02"]
    assert rows["2024-05-01"]["gpu_hours"] == pytest.approx(2 * 6)
    assert rows["2024-05-02"]["gpu_hours"] == pytest.approx(2 * 4 + 2)
    assert (rows["2024-05-01"]["jobs"], rows["2024-05-02"]["jobs"]) == (1, 3)


def test_window_in_json_and_clipping(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    rc, out, _ = run(
        capsys,
        "--sacct",
        str(files["sacct"]),
        "--format",
        "json",
        "--start",
        "2024-05-02",
        "--end",
        "2024-05-02T09:00:00+00:00",
        "--by",
        "job",
    )
    assert rc == 0
    doc = json.loads(out)
    assert doc["window"] == {"start": "2024-05-02T00:00:00Z", "end": "2024-05-02T09:00:00Z"}
    got = {r["key"]: r["gpu_hours"] for r in doc["rows"]}
    assert got == {"100": pytest.approx(8.0), "101_1": pytest.approx(1.0), "102": 0.0}


def test_csv_and_table(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    out_csv = tmp_path / "r.csv"
    rc, out, err = run(
        capsys,
        "--sacct",
        str(files["sacct"]),
        "--prices",
        str(files["prices"]),
        "--format",
        "csv",
        "--by",
        "user",
        "--out",
        str(out_csv),
    )
    assert rc == 0 and out == "" and f"wrote {out_csv}" in err
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert [r["user"] for r in rows] == ["ann", "bob", "total"]
    assert float(rows[-1]["gpu_hours"]) == pytest.approx(22.0)
    assert rows[0]["gpu_util_mean"] == ""
    rc, out, _ = run(capsys, "--sacct", str(files["sacct"]), "--prices", str(files["prices"]))
    assert rc == 0
    assert "GPU cost by account" in out and "phys" in out and "total" in out
    assert "skipped 1 row(s): PENDING (costs nothing)" in out  # shown in the report itself


def write_accounting(path: Path, utils: list[int], t0: float = 1714586400.0) -> None:
    """A sampler file in the documented record format: 2 GPUs, 3 samples, energy counter."""
    recs = [
        {
            "type": "header",
            "version": 1,
            "t": t0,
            "mode": "nvml",
            "reason": "test",
            "gpus": 2,
            "devices": [],
        }
    ]
    for i, u in enumerate(utils):
        recs.append(
            {
                "type": "sample",
                "t": t0 + 60 * (i + 1),
                "cpu_s": 60.0,
                "rss": 1000,
                "gpus": [
                    {
                        "index": g,
                        "util": u,
                        "mem": 10**9,
                        "power_w": 300.0,
                        "energy_mj": 1000 * 3600 * 100 * i,
                    }
                    for g in (0, 1)
                ],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")


def test_accounting_join_gives_utilisation(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    for job, utils in (("100", [80, 90, 100]), ("101", [10, 20, 30])):
        d = runs / f"run-{job}"
        d.mkdir(parents=True)
        write_accounting(d / "accounting.jsonl", utils)
        (d / "job.json").write_text(
            json.dumps(
                {"job_id": job, "mlflow_run_id": "abc", "accounting_file": "accounting.jsonl"}
            )
        )
    (runs / "never-submitted").mkdir()
    (runs / "never-submitted" / "job.json").write_text(json.dumps({"job_id": None}))
    rc, out, err = run(
        capsys,
        "--sacct",
        str(files["sacct"]),
        "--accounting",
        str(runs),
        "--format",
        "json",
        "--by",
        "job",
    )
    assert rc == 0, err
    util = {r["key"]: r["gpu_util_mean"] for r in json.loads(out)["rows"]}
    # 101_1 is matched through its raw job id (what SLURM_JOB_ID holds in an array task)
    assert util == {"100": pytest.approx(90.0), "101_1": pytest.approx(20.0), "102": None}
    assert "run directory without job_id" in err
    rc, out, _ = run(
        capsys,
        "--sacct",
        str(files["sacct"]),
        "--accounting",
        str(runs),
        "--format",
        "json",
        "--by",
        "account",
    )
    by = {r["key"]: r["gpu_util_mean"] for r in json.loads(out)["rows"]}
    assert by["phys"] == pytest.approx(90.0) and by["chem"] == pytest.approx(20.0)
    rc, out, _ = run(
        capsys,
        "--sacct",
        str(files["sacct"]),
        "--accounting",
        str(runs),
        "--format",
        "table",
        "--by",
        "job",
    )
    # energy: the counter rises 0.1 kWh per sample on each of 2 GPUs, 3 samples
    line_100 = next(ln for ln in out.splitlines() if ln.startswith("│ 100 "))
    assert line_100.split("│")[-2].strip() == f"{2 * 0.1 * 2:.2f}"


def test_accounting_only_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    write_accounting(d / "accounting.jsonl", [50, 50, 50])
    (d / "job.json").write_text(
        json.dumps({"job_id": "local-1", "state": "COMPLETED", "launcher": "local"})
    )
    rc, out, err = run(capsys, "--accounting", str(d), "--format", "json", "--by", "partition")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["rows"][0]["key"] == "local" and doc["total"]["jobs"] == 1
    assert doc["total"]["gpu_hours"] == pytest.approx(2 * 180 / 3600)
    assert doc["rows"][0]["gpu_util_mean"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to report"),
        (["--sacct", "/nonexistent/s.psv"], "/nonexistent/s.psv: No such file"),
        (["--sacct", "{sacct}", "--by", "week"], "argument --by: invalid choice: 'week'"),
        (["--sacct", "{sacct}", "--start", "yesterday"], "argument --start: not a time"),
        (
            ["--sacct", "{sacct}", "--start", "2024-05-02", "--end", "2024-05-01"],
            "argument --end: must be after --start",
        ),
        (["--sacct", "{bad}"], "{bad}:3: expected 12 fields, found 3"),
        (["--sacct", "{sacct}", "--prices", "{badprices}"], "{badprices}: key cpu_hour"),
        (["--sacct", "{sacct}", "--sacct-format", "a,b c!"], "argument --sacct-format"),
        (["--accounting", "/nonexistent"], "/nonexistent: --accounting: no such directory"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    bad = tmp_path / "bad.psv"
    bad.write_text(HEAD + "\n" + ROWS[0] + "\n1|2|3\n", encoding="utf-8")
    badprices = tmp_path / "bad.yaml"
    badprices.write_text("cpu_hour: -3\n", encoding="utf-8")
    subs = {"sacct": files["sacct"], "bad": bad, "badprices": badprices}
    rc, out, err = run(capsys, *[a.format(**subs) for a in args])
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("hpc cost: error: ")
    assert message.format(**subs) in err


def test_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--help"]) == 0
    assert "--sacct-format" in capsys.readouterr().out


def test_sacct_from_standard_input(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(files["sacct"].read_bytes()))
    monkeypatch.setattr("sys.stdin", stdin)
    rc, out, err = run(capsys, "--sacct", "-", "--format", "json")
    assert rc == 0, err
    assert json.loads(out)["total"]["jobs"] == 3


def test_html_without_plotly_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "plotly", None)
    monkeypatch.setitem(__import__("sys").modules, "plotly.offline", None)
    rc, out, err = run(capsys, "--sacct", str(files["sacct"]), "--format", "html")
    assert rc == 2 and out == ""
    assert err.startswith("hpc cost: error: argument --format html needs plotly")
