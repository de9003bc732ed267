"""The main job end to end: 2 local DDP workers, checkpoints, job.json, MLflow read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import hpc, hpc_launch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    workdir = tmp_path_factory.mktemp("digits")
    proc = hpc_launch(["checkpoint.every_steps=40", "checkpoint.keep=2"], workdir)
    assert proc.returncode == 0, proc.stderr
    runs = list((workdir / "outputs" / "digits").iterdir())
    assert len(runs) == 1
    return workdir, runs[0]


def test_record_and_accuracy(finished_run: tuple[Path, Path]) -> None:
    workdir, run_dir = finished_run
    record = json.loads((run_dir / "job.json").read_text())
    for key in (
        "name",
        "launcher",
        "job_id",
        "run_dir",
        "tracking_uri",
        "mlflow_run_id",
        "checkpoint_dir",
        "accounting_file",
        "state",
        "config_file",
    ):
        assert key in record, key
    assert record["state"] == "COMPLETED" and record["exit_code"] == 0
    assert record["launcher"] == "local" and record["name"] == "digits"
    assert record["tracking_uri"] == f"sqlite:///{workdir / 'mlflow.db'}"
    assert record["extra"]["accuracy"] >= 0.90
    assert record["extra"]["project"] == "hpc-launch"  # tracking.experiment: project budgets
    assert Path(record["config_file"]).is_file()
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "world size 2" in log and "final accuracy" in log


def test_checkpoints(finished_run: tuple[Path, Path]) -> None:
    _, run_dir = finished_run
    ckpt = run_dir / "checkpoints"
    steps = sorted(p.name for p in ckpt.glob("step-*"))
    # 184 steps (8 epochs x 23 batches per rank), every 40 -> 40..160, then the final
    # state at 184; the last 2 are kept.
    assert steps == ["step-000000160", "step-000000184"]
    assert (ckpt / "LATEST").read_text().strip() == "step-000000184"
    manifest = json.loads((ckpt / "step-000000184" / "manifest.json").read_text())
    assert manifest["step"] == 184 and manifest["world_size"] == 2
    assert manifest["contents"]["rank1.pt"] == [
        "batches_done_in_epoch",
        "epoch",
        "model",
        "optimizer",
        "rng",
    ]
    assert (run_dir / "FINISHED").exists()
    assert set(manifest["files"]) == {"rank0.pt", "rank1.pt"}
    assert not list(ckpt.glob(".*.tmp"))


def test_mlflow_run(finished_run: tuple[Path, Path]) -> None:
    from mlflow.tracking import MlflowClient

    workdir, run_dir = finished_run
    record = json.loads((run_dir / "job.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["job.lr"] == "0.05" and params["resources.tasks_per_node"] == "2"
    assert params["job.entrypoint"] == "hpc.jobs.digits:main"
    tags = run.data.tags
    assert tags["launcher"] == "local" and tags["job_id"] == record["job_id"]
    assert tags["host"] and tags["world_size"] == "2"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, 185))  # one value per step
    accuracy = client.get_metric_history(run.info.run_id, "accuracy")
    assert len(accuracy) == 8 and accuracy[-1].value >= 0.90


def test_status_and_show(finished_run: tuple[Path, Path]) -> None:
    workdir, run_dir = finished_run
    status = hpc(["status", "--json"], workdir)
    assert status.returncode == 0, status.stderr
    runs = json.loads(status.stdout)
    assert [r["run_dir"] for r in runs] == [str(run_dir)]
    assert runs[0]["state"] == "COMPLETED"
    table = hpc(["status"], workdir)
    assert "digits" in table.stdout and "COMPLETED" in table.stdout
    show = hpc(["show", str(run_dir)], workdir)
    assert json.loads(show.stdout)["job_id"] == runs[0]["job_id"]
    missing = hpc(["show", str(workdir / "nope")], workdir)
    assert missing.returncode == 2 and "job.json" in missing.stderr
