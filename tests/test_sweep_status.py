"""``hpc status SWEEP``: a real array's task states and its MLflow child runs' metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slurm_helpers import require_cluster, wait_for_job
from support import hpc, hpc_launch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_sweep_status_shows_states_metrics_and_best(workdir: Path) -> None:
    require_cluster()
    from mlflow.tracking import MlflowClient

    proc = hpc_launch(
        [
            "-m",
            "cluster=slurm",
            "job.lr=0.05,0.1",
            "job.epochs=1",
            "resources.tasks_per_node=1",
        ],
        workdir,
    )
    assert proc.returncode == 0, proc.stderr
    array_id = proc.stdout.strip()
    sweep_dir = next((workdir / "outputs" / "digits").glob("sweep-*"))

    early = hpc(["status", array_id, "--json"], workdir)  # by array id, while it runs
    assert early.returncode == 0, early.stderr
    assert json.loads(early.stdout)["sweep_dir"] == str(sweep_dir)

    for index in range(2):
        assert wait_for_job(f"{array_id}_{index}", timeout=600) == "COMPLETED"

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    accuracy = {}
    for index in range(2):
        record = json.loads((sweep_dir / str(index) / "job.json").read_text())
        run = client.get_run(record["mlflow_run_id"])
        accuracy[index] = run.data.metrics["accuracy"]
    best = max(accuracy, key=lambda i: accuracy[i])

    shown = hpc(["status", str(sweep_dir)], workdir)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "2/2 done" in out and "failed 0" in out
    for index, lr in enumerate(("0.05", "0.1")):
        row = next(ln for ln in out.splitlines() if f"{array_id}_{index}" in ln)
        assert "COMPLETED" in row and f"job.lr={lr}" in row
        assert f"{accuracy[index]:.4g}" in row
    lr = ("0.05", "0.1")[best]
    assert re.search(rf"best accuracy \(max\): task {best} \(job.lr={lr}\) = ", out), out

    data = json.loads(hpc(["status", str(sweep_dir), "--json"], workdir).stdout)
    assert data["counts"] == {"done": 2, "running": 0, "failed": 0, "pending": 0}
    assert data["best"] == best
    assert {t["index"]: t["metrics"]["accuracy"] for t in data["tasks"]} == accuracy
    assert all("loss" in t["metrics"] for t in data["tasks"])

    lowest = hpc(["status", array_id, "--metric", "loss", "--mode", "min", "--json"], workdir)
    losses = {t["index"]: t["metrics"]["loss"] for t in json.loads(lowest.stdout)["tasks"]}
    assert json.loads(lowest.stdout)["best"] == min(losses, key=lambda i: losses[i])

    watched = hpc(["status", str(sweep_dir), "--watch", "2"], workdir, timeout=60)
    assert watched.returncode == 0 and "2/2 done" in watched.stdout  # finished: no loop

    missing = hpc(["status", "999999999"], workdir)
    assert missing.returncode == 2 and "no sweep with this array id" in missing.stderr
