"""The accounting store: ingest is idempotent, updates replace, and a report over the store
gives what the same report over the file gives (every sacct fixture, with and without a
window, computed by the existing report code path)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pytest

from hpc.cost.cli import main
from hpc.cost.ingest import ingest_sacct
from hpc.cost.model import RUNNING_STATES
from hpc.cost.report import Report, build_report
from hpc.cost.sacct.reader import read_sacct
from hpc.cost.store import Store

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "sacct"
XDMOD = (
    "jobid,jobidraw,cluster,partition,qos,account,group,gid,user,uid,submit,eligible,start,end,"
    "elapsed,exitcode,state,nnodes,ncpus,reqcpus,reqmem,reqtres,alloctres,timelimit,nodelist,"
    "jobname"
)
HB = (
    "JobID,JobName,User,Partition,NodeList,NNodes,NCPUs,NTasks,State,Submit,Start,End,Timelimit,"
    "Elapsed,TotalCPU,CPUTime,UserCPU,SystemCPU,ReqMem,MaxRSS,MaxVMSize,ReqTRES,AllocTRES,"
    "TRESUsageInMax,TRESUsageInTot,TRESUsageOutTot,MaxDiskRead,MaxDiskWrite,MaxRSSNode,"
    "MaxRSSTask,MaxVMSizeNode,MaxVMSizeTask,MaxDiskReadNode,MaxDiskReadTask,MaxDiskWriteNode,"
    "MaxDiskWriteTask,Comment"
)
FIELDS = {
    "xdmod_parsable2_noheader_accounting-logs.psv": XDMOD,
    "xdmod_parsable2_noheader_job-arrays.psv": XDMOD,
    "hbjobinfo_parsable_snowman-delim_gpu-tresusage_steps_arrays.txt": HB,
}
REFUSED = {"soperator_fixed-width_default.txt", "jobstats_P_X_noheader_alloctres-only.psv"}
READABLE = sorted(
    p.name for p in FIX.iterdir() if p.suffix in (".psv", ".txt", ".json") and p.name not in REFUSED
)
NOW = datetime(2025, 1, 1, tzinfo=UTC)
# Reasons a reader counts while reading (the ingest reports them); the others are the report's.
READ_TIME = {"blank line", "duplicate row (same JobID and Submit)", "repeated header line"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Every readable fixture ingested once, each under a cluster of its own name."""
    path = tmp_path_factory.mktemp("store") / "cost.duckdb"
    with Store(path) as s:
        for name in READABLE:
            ingest_sacct(s, FIX / name, name, name, _fields(name))
    return Store(path, read_only=True)


def _fields(name: str) -> list[str] | None:
    text = FIELDS.get(name)
    return [f.lower() for f in text.split(",")] if text else None


def _figures(report: Report) -> dict[str, object]:
    def row(r: object) -> tuple[object, ...]:
        return tuple(
            round(v, 6) if isinstance(v, float) else v
            for v in (
                r.key, r.jobs, r.gpu_hours, r.cpu_hours, r.cost, r.provisional_jobs  # type: ignore[attr-defined]
            )
        )  # fmt: skip

    skipped = {k: v for k, v in report.skipped.items() if k not in READ_TIME}
    return {"rows": sorted(map(row, report.rows)), "total": row(report.total), "skipped": skipped}


def _window(name: str) -> tuple[datetime, datetime] | None:
    """The middle third of the fixture's time span (None when nothing is timed)."""
    t = read_sacct(FIX / name, _fields(name)).table
    lo, hi = pc.min(t["start"]).as_py(), pc.max(pc.coalesce(t["end"], t["start"])).as_py()
    if lo is None or hi is None or hi <= lo:
        return None
    third = (hi - lo) / 3
    return lo + third, lo + 2 * third


@pytest.mark.parametrize("name", READABLE)
@pytest.mark.parametrize("by", ["job", "day"])
def test_every_fixture_reports_the_same_from_the_store(store: Store, name: str, by: str) -> None:
    direct = read_sacct(FIX / name, _fields(name))
    stored = store.load(cluster=name)
    assert len(stored) == len(direct)
    want = _figures(build_report(direct, group_by=by, now=NOW))
    assert _figures(build_report(stored, group_by=by, now=NOW)) == want
    window = _window(name)
    if window is not None:  # rows surely outside are counted in SQL, not loaded
        a, b = window
        want = _figures(build_report(direct, start=a, end=b, group_by=by, now=NOW))
        got = store.load(a, b, cluster=name)
        assert _figures(build_report(got, start=a, end=b, group_by=by, now=NOW)) == want
        for only in ({"start": a}, {"end": b}):
            want = _figures(build_report(direct, group_by=by, now=NOW, **only))  # type: ignore[arg-type]
            got = store.load(cluster=name, **only)
            assert _figures(build_report(got, group_by=by, now=NOW, **only)) == want  # type: ignore[arg-type]


def test_all_fixtures_together(store: Store) -> None:
    total = build_report(store.load(), now=NOW).total
    parts = [build_report(read_sacct(FIX / n, _fields(n)), now=NOW).total for n in READABLE]
    assert total.jobs == sum(p.jobs for p in parts)
    assert total.gpu_hours == pytest.approx(sum(p.gpu_hours for p in parts))
    assert total.cpu_hours == pytest.approx(sum(p.cpu_hours for p in parts))


def test_reingest_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hpc.cost.store.BUCKET_ROWS", 7)  # upserted in 15 buckets
    name = "hbjobinfo_parsable_snowman-delim_gpu-tresusage_steps_arrays.txt"
    with Store(tmp_path / "s.duckdb") as s:
        first = ingest_sacct(s, FIX / name, name, "c1", _fields(name))
        before = s.load().table.sort_by([("job_id", "ascending"), ("line", "ascending")])
        again = ingest_sacct(s, FIX / name, name, "c1", _fields(name))
        after = s.load().table.sort_by([("job_id", "ascending"), ("line", "ascending")])
        other = ingest_sacct(s, FIX / name, name, "c2", _fields(name))  # another cluster
        assert s.count("c1") == s.count("c2") == first.counts.new
    assert first.counts.new == 100 and first.counts.updated == 0
    assert (again.counts.new, again.counts.updated, again.counts.unchanged) == (0, 0, 100)
    assert after.equals(before)
    assert other.counts.new == 100


HEAD = "JobID|JobIDRaw|User|Account|Partition|State|Submit|Start|End|Elapsed|NCPUS|AllocTRES"


def _job(state: str, end: str, elapsed: str, steps: bool = True) -> str:
    rows = [
        f"7|7|ann|phys|gpu|{state}|2024-05-01T09:00:00|2024-05-01T10:00:00|{end}|{elapsed}|8|"
        "billing=8,cpu=8,gres/gpu=2",
        # a requeued run of job 8: two Submits, two allocations (sacct -D)
        "8|8|bob|chem|gpu|REQUEUED|2024-05-01T08:00:00|2024-05-01T08:00:00|"
        "2024-05-01T09:00:00|01:00:00|4|cpu=4,gres/gpu=1",
        f"8|8|bob|chem|gpu|{state}|2024-05-01T09:30:00|2024-05-01T10:00:00|{end}|{elapsed}|4|",
    ]
    if steps:  # the allocation row of run 2 has no TRES: its step fills it
        rows.append(
            f"8.batch|8.batch||||{state}|2024-05-01T10:00:00|2024-05-01T10:00:00|{end}|"
            f"{elapsed}|4|cpu=4,gres/gpu=1"
        )
    return HEAD + "\n" + "\n".join(rows) + "\n"


def test_running_then_completed_is_updated_not_duplicated(tmp_path: Path) -> None:
    running, done = tmp_path / "r.psv", tmp_path / "d.psv"
    running.write_text(_job("RUNNING", "Unknown", "02:00:00"), encoding="utf-8")
    done.write_text(_job("COMPLETED", "2024-05-01T14:00:00", "04:00:00"), encoding="utf-8")
    end = datetime(2024, 5, 2, tzinfo=UTC)
    with Store(tmp_path / "s.duckdb") as s:
        a = ingest_sacct(s, running, "r", "c")
        t = s.load().table
        assert sorted(t["state"].to_pylist()) == ["REQUEUED", "RUNNING", "RUNNING"]
        assert pc.sum(t["gpus"]).as_py() == 4  # run 2 of job 8 filled from its step
        b = ingest_sacct(s, done, "d", "c")
        t = s.load().table
        assert (a.counts.new, b.counts.new, b.counts.updated, b.counts.unchanged) == (3, 0, 2, 1)
        assert sorted(t["state"].to_pylist()) == ["COMPLETED", "COMPLETED", "REQUEUED"]
        got = build_report(s.load(), end=end, group_by="job", now=NOW)
    want = build_report(read_sacct(done), end=end, group_by="job", now=NOW)
    assert _figures(got) == _figures(want)
    assert got.total.provisional_jobs == 0 and got.total.gpu_hours == pytest.approx(2 * 4 + 1 + 4)
    assert not RUNNING_STATES & set(t["state"].to_pylist())


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_ingest_stdin_and_report_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("HPC_COST_STORE", raising=False)
    src = FIX / "xdmod_parsable2_noheader_accounting-logs.psv"
    stdin = io.TextIOWrapper(io.BytesIO(src.read_bytes()))
    monkeypatch.setattr("sys.stdin", stdin)
    rc, _, err = _cli(capsys, "ingest", "--sacct", "-", "--sacct-format", XDMOD)
    assert rc == 0, err
    assert (tmp_path / "state" / "cost.duckdb").is_file()  # the default path
    assert "<stdin>: " in err and " new, 0 updated, 0 unchanged" in err
    window = ["--start", "2017-01-01", "--end", "2030-01-01", "--format", "json"]
    rc, out, err = _cli(capsys, "report", "--store", "--by", "user", *window)
    assert rc == 0, err
    rc, direct, _ = _cli(
        capsys, "report", "--sacct", str(src), "--sacct-format", XDMOD, "--by", "user", *window
    )
    got, want = json.loads(out), json.loads(direct)
    assert got["rows"] == want["rows"] and got["total"] == want["total"]
    # HPC_COST_STORE names another store: empty there
    monkeypatch.setenv("HPC_COST_STORE", str(tmp_path / "other.duckdb"))
    rc, _, err = _cli(capsys, "report", "--store")
    assert rc == 2 and "other.duckdb: no accounting store here" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest"], "nothing to ingest"),
        (["ingest", "--sacct", str(FIX / "soperator_fixed-width_default.txt")], "fixed-width"),
        (
            ["ingest", "--sacct", str(FIX / "jobstats_P_X_noheader_alloctres-only.psv")],
            "no header line and no field list",
        ),
        (["ingest", "--sacct", "x.psv", "--lookback", "2"], "only with --live"),
        (["ingest", "--live", "--lookback", "-1"], "argument --lookback"),
        (["report", "--store", "--sacct", "x.psv"], "argument --store"),
        (["report", "--cluster", "c", "--sacct", "x.psv"], "argument --cluster"),
    ],
)
def test_cli_errors_are_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("HPC_COST_STORE", str(tmp_path / "s.duckdb"))
    rc, _, err = _cli(capsys, *args)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_accounting_records_are_stored_and_joined(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPC_COST_STORE", str(tmp_path / "s.duckdb"))
    sacct = tmp_path / "s.psv"
    sacct.write_text(_job("COMPLETED", "2024-05-01T14:00:00", "04:00:00"), encoding="utf-8")
    run = tmp_path / "runs" / "run-7"
    run.mkdir(parents=True)
    t0 = datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp()
    recs = [{"type": "header", "version": 1, "t": t0, "mode": "nvml", "gpus": 2, "devices": []}]
    recs += [
        {
            "type": "sample",
            "t": t0 + 60 * (i + 1),
            "cpu_s": 60.0,
            "rss": 1000,
            "gpus": [{"index": g, "util": u, "mem": 1, "power_w": 300.0} for g in (0, 1)],
        }
        for i, u in enumerate((70, 80, 90))
    ]
    (run / "accounting.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "job.json").write_text(json.dumps({"job_id": "7"}))
    rc, _, err = _cli(capsys, "ingest", "--sacct", str(sacct), "--accounting", str(run.parent))
    assert rc == 0 and "accounting records: 1 new" in err, err
    rc, _, err = _cli(capsys, "ingest", "--accounting", str(run.parent))
    assert "accounting records: 0 new, 0 updated, 1 unchanged" in err
    args = ["--format", "json", "--by", "job", "--end", "2024-05-02"]
    rc, out, err = _cli(capsys, "report", "--store", *args)
    assert rc == 0, err
    rc, direct, _ = _cli(capsys, "report", "--sacct", str(sacct), "--accounting", str(run), *args)
    got, want = json.loads(out), json.loads(direct)
    assert got["rows"] == want["rows"]
    assert {r["key"]: r["gpu_util_mean"] for r in got["rows"]}["7"] == pytest.approx(80.0)
    assert timedelta(0) < timedelta(hours=got["total"]["gpu_hours"])


PRICE_TABLES = {
    "none": None,
    "rates": "currency: EUR\ngpu_hour: {by_gpu_type: {v100: 3.0, a100: 4.0}, "
    "by_partition: {gpu: 2.0}}\ncpu_hour: 0.01\nrefund_states: [NODE_FAIL, TIMEOUT]\n",
    "billing": "currency: EUR\ngpu_hour: {default: 2.5}\ncpu_hour: 0.02\nbilling: {rate: 0.1}\n",
}


def _close(a: Report, b: Report) -> None:
    def flat(r: Report) -> list[tuple[object, ...]]:
        return [
            (x.key, x.jobs, x.provisional_jobs, x.gpu_util_mean is None, x.energy_kwh is None)
            for x in [*r.rows, r.total]
        ]

    assert flat(a) == flat(b)
    for x, y in zip([*a.rows, a.total], [*b.rows, b.total], strict=True):
        for col in ("gpu_hours", "cpu_hours", "cost", "gpu_util_mean", "energy_kwh"):
            want = getattr(y, col)
            assert getattr(x, col) == (None if want is None else pytest.approx(want, rel=1e-9))
    assert a.skipped == b.skipped
    strip = [n.split(":")[0] if "GPU-hours" in n else n for n in a.notes]
    assert strip == [n.split(":")[0] if "GPU-hours" in n else n for n in b.notes]


@pytest.mark.parametrize("name", READABLE)
def test_sql_report_equals_build_report(store: Store, name: str, tmp_path: Path) -> None:
    from hpc.cost.prices import load_prices
    from hpc.cost.store_report import SQL_GROUPS, build_store_report

    window = _window(name)
    windows = [(None, None)] + ([window, (window[0], None), (None, window[1])] if window else [])
    every = store.load(cluster=name)
    n = 0
    for label, text in PRICE_TABLES.items():
        prices = None
        if text:
            (tmp_path / f"{label}.yaml").write_text(text, encoding="utf-8")
            prices = load_prices(tmp_path / f"{label}.yaml")
        for a, b in windows:  # each price table and window once, the groupings in turn
            by = SQL_GROUPS[n % len(SQL_GROUPS)]
            n += 1
            want = build_report(every, prices, a, b, by, now=NOW)
            got = build_store_report(store, prices, a, b, by, now=NOW, cluster=name)
            _close(got, want)


def test_sql_rate_join_equals_build_report(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many (partition, GPU type) pairs: the rates come from a temporary table, joined."""
    from hpc.cost import store_report
    from hpc.cost.prices import load_prices

    monkeypatch.setattr(store_report, "MAX_CASE_RATES", 0)
    (tmp_path / "rates.yaml").write_text(PRICE_TABLES["rates"] or "", encoding="utf-8")
    prices = load_prices(tmp_path / "rates.yaml")
    for name in READABLE:
        want = build_report(store.load(cluster=name), prices, group_by="partition", now=NOW)
        got = store_report.build_store_report(
            store, prices, group_by="partition", now=NOW, cluster=name
        )
        _close(got, want)
    temp = store.con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchall()
    assert temp == [(0,)]  # dropped after each report


def test_live_ingest_spools_sacct_and_updates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in sacct: RUNNING on the first call, COMPLETED on the next; --allusers refused."""
    fake = tmp_path / "bin" / "sacct"
    fake.parent.mkdir()
    row = "77|77|me|acct|gpu|{}|2024-05-01T10:00:00|2024-05-01T10:00:00|{}|01:00:00|1|4|gres/gpu=2"
    fake.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --allusers "*) echo "sacct: error: Access denied" >&2; exit 1;; esac\n'
        'd="$(dirname "$0")"\n'
        f"if [ -e \"$d/done\" ]; then echo '{row.format('COMPLETED', '2024-05-01T11:00:00')}'\n"
        f"else echo '{row.format('RUNNING', 'Unknown')}'; touch \"$d/done\"; fi\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{tmp_path / 'nothing'}:/usr/bin:/bin")
    monkeypatch.setenv("HPC_COST_STORE", str(tmp_path / "s.duckdb"))
    rc, _, err = _cli(capsys, "ingest", "--live", "--lookback", "2", "--cluster", "c1")
    assert rc == 0 and "sacct --live: 1 new, 0 updated, 0 unchanged" in err, err
    assert "--allusers refused (sacct: error: Access denied)" in err
    rc, _, err = _cli(capsys, "ingest", "--live", "--lookback", "2", "--cluster", "c1")
    assert "sacct --live: 0 new, 1 updated, 0 unchanged" in err, err
    args = ["--format", "json", "--by", "job", "--cluster", "c1"]
    rc, out, err = _cli(capsys, "report", "--store", *args)
    doc = json.loads(out)
    assert rc == 0 and doc["total"]["jobs"] == 1 and doc["total"]["gpu_hours"] == 2.0
    assert "provisional" not in " ".join(doc.get("notes", []))


ONLY_SQL = """
import json, runpy, sys
sys.argv = ["hpc cost", *sys.argv[1:]]
try:
    runpy.run_module("hpc.cost.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"pyarrow", "numpy", "pandas"})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.mark.parametrize("by, heavy", [("account", []), ("day", ["numpy", "pyarrow"])])
def test_a_report_over_the_store_in_sql_imports_no_pyarrow(
    store: Store, tmp_path: Path, by: str, heavy: list[str]
) -> None:
    """The SQL report path starts without pyarrow and numpy (half its time on 20M rows);
    ``--by day`` loads the rows as a table, which needs them (the check can fail)."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(str(PRICE_TABLES["rates"]), encoding="utf-8")
    args = ["report", "--store", str(store.path), "--prices", str(prices), "--by", by]
    proc = subprocess.run(
        [sys.executable, "-c", ONLY_SQL, *args, "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    seen = json.loads(proc.stderr.strip().splitlines()[-1])
    assert seen == {"code": 0, "heavy": heavy}, proc.stderr
    assert json.loads(proc.stdout)["total"]["jobs"] > 0
