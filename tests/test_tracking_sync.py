"""An outage that outlasts the job: the spool keeps the metrics and `hpc sync` sends them."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from support import hpc, hpc_launch

pytestmark = pytest.mark.slow


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens here once the socket closes


def test_unsent_metrics_survive_and_sync_later(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            f"run_dir={run_dir}",
            "job.epochs=2",
            f"tracking.uri=http://127.0.0.1:{closed_port()}",
            "tracking.flush_timeout_s=2",
        ],
        workdir,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr  # training is never stopped by tracking
    assert "records not sent yet" in proc.stdout + proc.stderr
    record = json.loads((run_dir / "job.json").read_text())
    assert record["mlflow_run_id"] is None and record["state"] == "COMPLETED"
    # The end says plainly that the metrics are not in MLflow yet, and how to send them.
    final = proc.stderr.strip().splitlines()[-1]
    assert "COMPLETED" in final and "metrics not in MLflow yet" in final, final
    assert f"send them with `hpc sync {run_dir}`" in final
    note = record["extra"]["tracking"]
    assert note["state"] == "unsent" and note["unsent"] > 0
    assert f"hpc sync {run_dir}" in note["message"]
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    synced = hpc(["sync", str(run_dir)], workdir, MLFLOW_TRACKING_URI=store)
    assert synced.returncode == 0, synced.stderr
    synced_record = json.loads((run_dir / "job.json").read_text())
    assert synced_record["extra"]["tracking"]["state"] == "sent"
    run_id = synced_record["mlflow_run_id"]
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["job.epochs"] == "2"
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(1, 47))
    again = hpc(["sync", str(run_dir)], workdir, MLFLOW_TRACKING_URI=store)
    assert again.returncode == 0 and "all records sent" in again.stderr
    assert len(client.get_metric_history(run_id, "loss")) == 46  # nothing sent twice
