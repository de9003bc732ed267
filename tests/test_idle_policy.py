"""The idle policy, hpc jobstats and the Prometheus textfile (issue 17, items 4-6).

Sample streams in the sampler's format: CPU-only files from real runs here
(tests/fixtures/accounting/cpu_*.jsonl) and GPU files of the same format written by
tests/fixtures/accounting/make_gpu_samples.py; the ``stop`` action on a real local run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from hpc.accounting.idle import IdleDetector, IdlePolicy, scan_file
from hpc.accounting.prometheus import render
from hpc.accounting.sampler import Sampler, SamplerConfig
from hpc.cli.jobstats import main as jobstats_main
from hpc.exitcodes import COMPLETED_IDLE
from hpc.rundir import records
from tests.support import FIXTURES, hpc, hpc_launch

SAMPLES = FIXTURES / "accounting"
JOBS = Path(__file__).parent / "jobs"
# goes_idle.py, 2 ranks, stopped by accounting.idle once a 1.5 s window of CPU samples idles.
IDLE_STOP = [
    f"job.entrypoint={JOBS / 'goes_idle.py'}",
    "resources.tasks_per_node=2",
    "checkpoint.every_steps=100000",
    "accounting.interval_s=0.2",
    "accounting.idle.window_s=1.5",
    "accounting.idle.below_util=30",
    "accounting.idle.action=stop",
]


def test_real_cpu_streams_idle_only_where_the_run_idled() -> None:
    policy = IdlePolicy(window_s=1.5, below_util=30, action="stop")
    assert scan_file(SAMPLES / "cpu_digits_busy.jsonl", policy) == []
    events = scan_file(SAMPLES / "cpu_busy_then_idle.jsonl", policy)
    assert [e.device for e in events] == ["cpu"]
    recs = [json.loads(x) for x in (SAMPLES / "cpu_busy_then_idle.jsonl").read_text().splitlines()]
    busy = [r["t"] for r in recs if (r.get("cpu_percent") or 0) >= 30]
    assert busy and events[0].start_t > max(busy) and events[0].metric == "cpu_percent"


def test_gpu_judged_per_window_not_on_the_job_average() -> None:
    path = SAMPLES / "gpu_h100x2_one_idle.jsonl"
    events = scan_file(path, IdlePolicy(window_s=600, below_util=5, action="warn"))
    assert {e.device for e in events} == {"gpu1"}
    assert len(events) == 2  # 20 min idle: one event per whole window
    assert all(e.max_util is not None and e.max_util < 5 for e in events)
    # the job average (both GPUs) is far above the threshold
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    utils = [g["util"] for r in recs if r["type"] == "sample" for g in r["gpus"]]
    assert sum(utils) / len(utils) > 40


def test_gpm_sm_activity_and_gpus_without_a_process() -> None:
    events = scan_file(SAMPLES / "gpu_h200_gpm_no_process.jsonl", IdlePolicy(300, 5, "stop"))
    by = {e.device: e for e in events}
    assert set(by) == {"gpu0", "gpu1"}
    assert by["gpu0"].metric == "sm_active"  # NVML util reads 100 there
    assert by["gpu1"].reason == "no process on the GPU"
    # both after the requeue: the busy first start never counts
    restart_t = [
        json.loads(line)["t"]
        for line in (SAMPLES / "gpu_h200_gpm_no_process.jsonl").read_text().splitlines()
        if '"type":"header"' in line
    ][1]
    assert all(e.start_t >= restart_t for e in events)


def test_a_missing_reading_or_a_restart_breaks_the_stretch() -> None:
    d = IdleDetector(IdlePolicy(window_s=10, below_util=5, action="warn"))

    def sample(t: float, util: int | None) -> list:
        return d.feed({"type": "sample", "t": t, "gpus": [{"index": 0, "util": util}]})

    assert sample(0, 1) == [] and sample(5, 1) == []
    assert sample(8, None) == []  # unknown: the stretch ends
    assert sample(12, 0) == [] and sample(20, 0) == []
    d.feed({"type": "header", "t": 21})
    assert sample(23, 0) == [] and sample(30, 0) == []
    assert [e.device for e in sample(33, 0)] == ["gpu0"]


def test_jobstats_on_gpu_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (run / "accounting").mkdir(parents=True)
    shutil.copy(SAMPLES / "gpu_h100x2_one_idle.jsonl", run / "accounting" / "node0.jsonl")
    shutil.copy(SAMPLES / "gpu_h200_gpm_no_process.jsonl", run / "accounting" / "node1.jsonl")
    (run / "job.json").write_text(json.dumps({"job_id": "81234", "run_dir": str(run)}))
    cfg = {"resources": {"cpus_per_task": 8, "tasks_per_node": 2}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert jobstats_main([str(run), "--format", "json", "--window", "300"]) == 0
    doc = json.loads(capsys.readouterr().out)
    n0, n1 = doc["nodes"]
    g0, g1 = n0["devices"]
    assert (g0["metric"], g1["metric"]) == ("util", "util")
    assert g0["mean"] > 90 and g1["mean"] < 2
    assert g0["memory_peak_bytes"] == 61 * 2**30 + 120 * 1000
    assert g0["energy_kwh"] == pytest.approx(121 * 6.1e6 / 1000 / 3.6e6 - 6.1e3 / 3.6e6)
    assert g1["idle_hours"] == pytest.approx(1200 / 3600) and g0["idle_hours"] == 0
    assert [w["idle"] for w in g1["windows"]] == [True] * 5  # 4 whole windows + the last
    assert n0["cpu_efficiency"] == pytest.approx(121 * 40 / (1200.5 * 16))
    h0, h1 = n1["devices"]
    assert h0["metric"] == "sm_active" and h0["nvml_util_mean"] > 99
    assert h1["idle_hours"] == pytest.approx(360 / 3600)  # no process after the restart
    assert h0["energy_kwh"] is not None  # power integrated (no counter)
    assert doc["idle_gpu_hours"] == pytest.approx(sum(
        d["idle_hours"] for n in doc["nodes"] for d in n["devices"]
    ))  # fmt: skip
    assert 0 < doc["efficiency"] < 1
    assert jobstats_main([str(run)]) == 0
    table = capsys.readouterr().out
    assert "gpu1  util" in table and "sm_active" in table and "idle" in table
    out = tmp_path / "t.html"
    assert jobstats_main([str(run), "--format", "html", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Plotly.newPlot" in text and "idle GPU-hours" in text
    assert jobstats_main([str(tmp_path / "nowhere")]) == 2
    assert "no run directory" in capsys.readouterr().err


PROM_LINE = re.compile(r'^hpc_job_[a-z_]+\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)+\} -?[0-9.e+]+$')


def test_prometheus_textfile_format() -> None:
    rec = json.loads((SAMPLES / "gpu_h200_gpm_no_process.jsonl").read_text().splitlines()[40])
    text = render(rec, {"job_id": "81234", "user": 'a"b', "account": "phys"}, {0: 17, 1: 17})
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or PROM_LINE.match(line)
    labels = 'job_id="81234",user="a\\"b",account="phys"'
    assert f'hpc_job_gpu_sm_active_percent{{{labels},gpu="0"}}' in text
    assert f'hpc_job_step{{{labels},rank="1"}} 17' in text
    assert "# TYPE hpc_job_gpu_energy_joules_total counter" not in text  # no counter there


def test_sampler_writes_idle_records_and_the_textfile(tmp_path: Path) -> None:
    prom = tmp_path / "textfile"
    run = tmp_path / "run"
    (run / "heartbeat").mkdir(parents=True)
    (run / "heartbeat" / "rank0.json").write_text(json.dumps({"rank": 0, "step": 5}))
    config = SamplerConfig(
        path=run / "accounting" / "node0.jsonl",
        pids=[],  # nothing to measure: 0 % CPU, idle from the first sample
        job_id="42",
        idle={"window_s": 1e-6, "below_util": 5, "action": "warn"},
        prometheus_dir=str(prom),
        labels={"job_id": "42", "user": "u", "account": "a"},
    )
    sampler = Sampler(config)
    sampler.open()
    for _ in range(4):  # the first has no CPU percent yet (no interval)
        sampler.sample_once()
    files = list(prom.glob("*.prom"))
    assert [f.name for f in files] == ["hpc_job_42_node0.prom"]
    assert 'hpc_job_step{job_id="42",user="u",account="a",node="0",rank="0"} 5' in (
        files[0].read_text()
    )
    assert not list(prom.glob(".*"))  # the temp file was renamed into place
    sampler.stop()
    assert not list(prom.glob("*.prom"))  # a finished job's series end
    lines = [json.loads(x) for x in config.path.read_text().splitlines()]
    assert [r["device"] for r in lines if r["type"] == "idle"] == ["cpu", "cpu"]
    marker = json.loads((run / "accounting" / "idle-node0.json").read_text())
    assert marker["action"] == "warn" and len(marker["events"]) == 2


def test_bad_idle_config_is_one_line(tmp_path: Path) -> None:
    proc = hpc_launch(["dry_run=true", "accounting.idle.action=halt"], tmp_path)
    assert proc.returncode == 2
    assert "accounting.idle.action: 'halt' is not off, warn or stop" in proc.stderr


def test_stop_on_a_real_local_run_that_goes_idle(tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    proc = hpc_launch(
        [*IDLE_STOP, f"run_dir={tmp_path / 'run'}", f"accounting.prometheus_textfile={prom}"],
        tmp_path,
        timeout=180,
    )
    assert proc.returncode == COMPLETED_IDLE, proc.stdout + proc.stderr
    run = tmp_path / "run"
    record = records.load(run)
    assert record["state"] == "COMPLETED_IDLE" and record["exit_code"] == COMPLETED_IDLE
    assert "stopping at step" in proc.stdout and "(idle)" in proc.stdout
    assert (run / "checkpoints" / "LATEST").exists()
    assert not (run / "FINISHED").exists()
    samples = (run / "accounting" / "node0.jsonl").read_text()
    assert '"type":"idle"' in samples
    assert not list(prom.glob("*.prom"))  # removed at the end
    shown = hpc(["jobstats", str(run), "--format", "json", "--below-util", "30"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["nodes"][0]["devices"][0]["device"] == "cpu"
    assert any(w["idle"] for w in doc["nodes"][0]["devices"][0]["windows"])


def test_example_dashboard_uses_only_series_we_write() -> None:
    dash = json.loads((FIXTURES.parents[1] / "examples/grafana/hpc-launch-jobs.json").read_text())
    rec = json.loads((SAMPLES / "gpu_h200_gpm_no_process.jsonl").read_text().splitlines()[40])
    written = set(re.findall(r"^(hpc_job_\w+)\{", render(rec, {"job_id": "1"}, {0: 1}), re.M))
    used = {
        m
        for p in dash["panels"]
        for t in p["targets"]
        for m in re.findall(r"hpc_job_\w+", t["expr"])
    }
    assert used and used <= written, used - written
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"job_id", "user", "account"} <= names


SACCT = (
    "JobID|JobIDRaw|User|Account|Partition|State|Submit|Start|End|Elapsed|NCPUS|AllocTRES\n"
    "81234|81234|ann|phys|gpu|COMPLETED|2026-05-28T20:20:00|2026-05-28T20:26:40|"
    "2026-05-28T20:46:41|00:20:01|16|billing=16,cpu=16,gres/gpu=2\n"
    "81235|81235|bob|chem|gpu|COMPLETED|2026-05-28T20:20:00|2026-05-28T20:26:40|"
    "2026-05-28T20:46:41|00:20:01|16|billing=16,cpu=16,gres/gpu=2\n"
)


def test_cost_report_idle_columns_file_and_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpc.cost.cli import main as cost_main

    monkeypatch.setenv("HPC_COST_STORE", str(tmp_path / "s.duckdb"))
    run = tmp_path / "runs" / "r1"
    (run / "accounting").mkdir(parents=True)
    shutil.copy(SAMPLES / "gpu_h100x2_one_idle.jsonl", run / "accounting" / "node0.jsonl")
    record = {"job_id": "81234", "run_dir": str(run), "accounting_file": "accounting"}
    (run / "job.json").write_text(json.dumps(record))
    sacct = tmp_path / "s.psv"
    sacct.write_text(SACCT)
    args = ["--by", "job", "--format", "json"]
    assert cost_main(["report", "--sacct", str(sacct), "--accounting", str(run), *args]) == 0
    direct = json.loads(capsys.readouterr().out)
    rows = {r["key"]: r for r in direct["rows"]}
    assert rows["81234"]["idle_gpu_hours"] == pytest.approx(1 / 3, abs=1e-6)
    assert rows["81234"]["efficiency"] == pytest.approx(0.5, abs=1e-3)
    assert rows["81235"]["idle_gpu_hours"] is None and rows["81235"]["efficiency"] is None
    assert direct["total"]["efficiency"] == rows["81234"]["efficiency"]  # accounted jobs only
    ingest = ["ingest", "--sacct", str(sacct), "--accounting", str(run.parent)]
    assert cost_main(ingest) == 0
    capsys.readouterr()
    assert cost_main(["report", "--store", *args]) == 0
    stored = json.loads(capsys.readouterr().out)
    assert stored["rows"] == direct["rows"] and stored["total"] == direct["total"]
    assert cost_main(["report", "--store", "--by", "user"]) == 0
    table = capsys.readouterr().out
    assert "idle GPU-h" in table and "efficiency %" in table and "50.0" in table


@pytest.mark.slurm
def test_an_idle_stop_on_slurm_is_no_failure(tmp_path: Path) -> None:
    """On the test cluster: the job ends COMPLETED for Slurm (the batch shell exits 0; the
    step keeps 77), COMPLETED_IDLE in job.json and for ``hpc-launch wait=true`` (exit 77),
    and no node-loss probe runs for it."""
    from slurm_helpers import require_cluster, sacct_fields

    require_cluster()
    overrides = ["cluster=slurm", "job.name=hpcI-idle", *IDLE_STOP, f"run_dir={tmp_path / 'run'}"]
    overrides.append("wait=true")
    proc = hpc_launch(overrides, tmp_path, timeout=240)
    assert proc.returncode == COMPLETED_IDLE, proc.stdout + proc.stderr
    record = records.load(tmp_path / "run")
    assert record["state"] == "COMPLETED_IDLE" and record["exit_code"] == COMPLETED_IDLE
    log = Path(record["extra"]["log_file"]).read_text()
    assert "(idle)" in log and "step exited with code 77" in log
    assert "node loss" not in log and "every node answers" not in log
    acct = sacct_fields(record["job_id"], ["State", "ExitCode"])
    assert acct == {"State": "COMPLETED", "ExitCode": "0:0"}


def test_slurm_batch_records_completed_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpc.launchers.slurm.job_steps import finish
    from hpc.states import TERMINAL, JobState

    monkeypatch.setenv("HPC_STATE_DIR", str(tmp_path / "state"))
    run = tmp_path / "run"
    records.create(records.RunRecord("j", "slurm", str(run), "c.yaml", None, "ck", state="RUNNING"))
    finish(run, COMPLETED_IDLE)
    assert records.load(run)["state"] == JobState.COMPLETED_IDLE
    assert JobState.COMPLETED_IDLE in TERMINAL
