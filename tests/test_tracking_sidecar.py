"""Metric shipping out of the training process: the node's sidecar (issue 14).

Rank 0 only appends to the spool; ``python -m hpc.runtime.sidecar``, its child,
ships it to MLflow and runs the accounting sampler. These runs use the digits job
through tests/jobs/sidecar_probe.py, which reports the sidecar's pid and whether
mlflow was ever imported into a rank.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from test_tracking_outage import (
    EPOCHS,
    Job,
    MlflowServer,
    check_mlflow_run,
    check_training_was_not_slowed,
)
from test_tracking_sync import closed_port

from hpc.runtime.spool import MetricSpool
from hpc.runtime.tracking import SpoolTracker

from support import hpc, hpc_launch

PROBE = Path(__file__).parent / "jobs" / "sidecar_probe.py"


def spool_records(spool_dir: Path) -> list[dict]:
    path = spool_dir / "spool.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tensors_are_read_when_written_in_order(tmp_path: Path) -> None:
    tracker = SpoolTracker(tmp_path, hold_steps=3)
    running = torch.zeros(())
    tracker.log_metrics({"a": 1.0}, 1)  # nothing held: straight to the spool
    for step in (2, 3):
        running += 1.0
        tracker.log_metrics({"loss": running, "a": float(step)}, step)
    running += 100.0  # an in-place update after logging changes nothing logged
    assert [r["s"] for r in spool_records(tmp_path)] == [1]  # two steps held
    tracker.log_metrics({"a": 4.0}, 4)  # a float behind held tensors waits its turn
    got = [(r["key"], r["s"], r["v"]) for r in spool_records(tmp_path)]
    assert got == [
        ("a", 1, 1.0),
        ("loss", 2, 1.0),
        ("a", 2, 2.0),
        ("loss", 3, 2.0),
        ("a", 3, 3.0),
        ("a", 4, 4.0),
    ]
    tracker.log_metrics({"loss": torch.tensor([5.0])}, 5)
    tracker.commit(5)  # a commit writes what is held first
    last = spool_records(tmp_path)[-2:]
    assert last == [
        {"k": "m", "key": "loss", "v": 5.0, "ts": last[0]["ts"], "s": 5},
        {"k": "c", "s": 5},
    ]
    with pytest.raises(ValueError, match="2 elements"):
        tracker.log_metrics({"bad": torch.zeros(2)}, 6)
    tracker.finish()
    sent = MetricSpool(tmp_path, writer=False)
    assert [s for _, s in sent.pending(final=False)][-1] == {"k": "c", "s": 5}


def sidecar_gone(pid: int, timeout: float = 60) -> bool:
    """True once ``pid`` is no longer a sidecar process (waits up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if b"hpc.runtime.sidecar" not in cmdline or state == "Z":
            return True
        time.sleep(0.2)
    return False


def mlflow_lines(output: str) -> list[str]:
    """The probe's lines (the local launcher shows rank 0's output)."""
    return sorted(line for line in output.splitlines() if "mlflow imported:" in line)


def test_ranks_never_import_mlflow_and_the_sidecar_ships(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = workdir / "run"
    proc = hpc_launch(
        [f"run_dir={run_dir}", f"job.entrypoint={PROBE}", "job.epochs=2"], workdir, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert mlflow_lines(output) == ["hpc-test: rank 0 mlflow imported: False"], output[-3000:]
    assert "sidecar not available" not in output
    pid = int((run_dir / "sidecar.pid").read_text())
    assert pid > 0 and sidecar_gone(pid), "the sidecar outlived its rank"
    record = json.loads((run_dir / "job.json").read_text())
    assert record["extra"]["tracking"]["state"] == "sent"
    assert record["extra"]["accounting"]["samples"] >= 1  # the sampler ran in the sidecar
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["job.epochs"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(
        range(1, 47)
    )


def test_the_sidecar_dies_with_its_rank_and_sync_sends_the_rest(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            f"run_dir={run_dir}",
            f"job.entrypoint={PROBE}",
            "job.epochs=4",
            "checkpoint.every_steps=23",
            f"tracking.uri=http://127.0.0.1:{closed_port()}",  # nothing sent before the kill
        ],
        workdir,
        timeout=300,
        KILL_AT_STEP="46",
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    pid = int((run_dir / "sidecar.pid").read_text())
    assert pid > 0 and sidecar_gone(pid), "the sidecar outlived its rank (kill -9)"
    records = spool_records(run_dir / "tracking")
    commits = [r["s"] for r in records if r["k"] == "c"]
    assert commits == [0, 23, 46], commits  # resume() commits 0 on a fresh start
    loss_steps = [r["s"] for r in records if r["k"] == "m" and r["key"] == "loss"]
    assert loss_steps[:46] == list(range(1, 47)), "the spool lost metrics"
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    synced = hpc(["sync", str(run_dir)], workdir, MLFLOW_TRACKING_URI=store)
    assert synced.returncode == 0, synced.stderr
    run_id = json.loads((run_dir / "job.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=store)
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(1, 47)), "committed metrics: each step once"
    assert sorted(m.step for m in client.get_metric_history(run_id, "accuracy")) == [23, 46]
    again = hpc(["sync", str(run_dir)], workdir, MLFLOW_TRACKING_URI=store)
    assert again.returncode == 0
    assert len(client.get_metric_history(run_id, "loss")) == 46  # nothing sent twice


@pytest.fixture
def server(tmp_path: Path):
    from hpc.launchers.local import free_port

    directory = tmp_path / "mlflow"
    directory.mkdir()
    srv = MlflowServer(directory, free_port())
    yield srv
    srv.stop()


def test_server_outage_with_the_sidecar_loses_and_duplicates_nothing(
    server: MlflowServer, workdir: Path
) -> None:
    server.start()
    server.wait_healthy()
    job = Job(workdir, server.url, (f"job.entrypoint={PROBE}",))
    assert job.at_epoch(3).wait(300), job.tail()
    assert job.proc.poll() is None, job.tail()
    server.stop()
    time.sleep(3)
    server.start()
    server.wait_healthy()
    assert job.wait() == 0, job.tail()
    output = "\n".join(job.lines)
    assert "MLflow unreachable" in output, "no outage was seen"
    assert "sidecar not available" not in output
    assert mlflow_lines(output) == ["hpc-test: rank 0 mlflow imported: False"], job.tail()
    check_training_was_not_slowed(job)
    run_dir = next((workdir / "outputs" / "digits").iterdir())
    check_mlflow_run(run_dir, server.url)  # every step once, in order; one run; FINISHED
    assert not os.path.exists(run_dir / "PREEMPTED") and EPOCHS == 150


def test_without_the_sidecar_the_rank_sends_itself(workdir: Path) -> None:
    """``HPC_SIDECAR=0`` (as when it cannot start): the in-process sender, same result."""
    from mlflow.tracking import MlflowClient

    run_dir = workdir / "run"
    proc = hpc_launch(
        [f"run_dir={run_dir}", f"job.entrypoint={PROBE}", "job.epochs=1"],
        workdir,
        timeout=300,
        HPC_SIDECAR="0",
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert mlflow_lines(output) == ["hpc-test: rank 0 mlflow imported: True"], output[-3000:]
    assert output.count("sidecar not available") == 1, output[-3000:]  # warned once
    assert int((run_dir / "sidecar.pid").read_text()) == -1
    record = json.loads((run_dir / "job.json").read_text())
    assert record["extra"]["tracking"]["state"] == "sent"
    assert record["extra"]["accounting"]["samples"] >= 1
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(record["mlflow_run_id"], "loss")]
    assert sorted(steps) == list(range(1, 24))
