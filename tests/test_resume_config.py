"""A resume runs under the config the run was started with, unless told otherwise.

Real local resumes (2 gloo workers, a real SQLite MLflow store): a changed config is
refused naming the keys, ``resume_allow_changes`` lets listed keys change and is
recorded (job.json history, MLflow tag), an unchanged resume still works, and a
checkpoint saved under another job config is warned about at resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from support import hpc_launch

pytestmark = pytest.mark.slow

BASE = ["job.epochs=1", "checkpoint.every_steps=20", "resources.tasks_per_node=2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    workdir = tmp_path_factory.mktemp("resume-config")
    run_dir = workdir / "run"
    proc = hpc_launch([*BASE, f"run_dir={run_dir}"], workdir)
    assert proc.returncode == 0, proc.stderr
    return workdir, run_dir


def _snapshot(run_dir: Path) -> tuple[str, str, list[str]]:
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    return (run_dir / "config.yaml").read_text(), (run_dir / "job.json").read_text(), checkpoints


@pytest.mark.parametrize(
    ("how", "changes", "named"),
    [
        ("run_dir", ["job.lr=0.5", "job.epochs=4"], ["job.epochs", "job.lr"]),
        ("run_dir", ["checkpoint.keep=5"], ["checkpoint.keep"]),
        ("resume", ["job.epochs=4"], ["job.epochs"]),
        ("resume", ["job.epochs=4", "job.lr=0.5", "resume_allow_changes=[job.epochs]"], ["job.lr"]),
    ],
)
def test_changed_config_is_refused_naming_the_keys(
    finished: tuple[Path, Path], how: str, changes: list[str], named: list[str]
) -> None:
    workdir, run_dir = finished
    before = _snapshot(run_dir)
    base = BASE if how == "run_dir" else []
    proc = hpc_launch([*base, f"{how}={run_dir}", *changes], workdir)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"error: {', '.join(named)}: differ" in lines[0], lines[0]
    assert f"{how}={str(run_dir)!r}" in lines[0]
    refused = lines[0].split("resume_allow_changes=[")[-1].rstrip("]")
    assert refused.split(",") == named, lines[0]
    assert _snapshot(run_dir) == before, "a refused resume must not touch the run"


def test_allowed_change_is_recorded_and_unchanged_resume_works(
    finished: tuple[Path, Path],
) -> None:
    from mlflow.tracking import MlflowClient

    workdir, run_dir = finished
    first = json.loads((run_dir / "job.json").read_text())
    proc = hpc_launch(
        [f"resume={run_dir}", "job.epochs=2", "resume_allow_changes=[job.epochs]"], workdir
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "COMPLETED"
    assert record["mlflow_run_id"] == first["mlflow_run_id"]
    history = record["extra"]["resume_changes"]
    assert [h["changes"] for h in history] == [{"job.epochs": [1, 2]}]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["job"]["epochs"] == 2 and config["resume_allow_changes"] == ["job.epochs"]
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "epoch 2/2" in log
    assert "was saved under job config" in log and "(allowed at resume)" in log

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(record["mlflow_run_id"])
    assert run.data.tags["resume_changes"] == "job.epochs: 1 -> 2"
    assert len(client.get_metric_history(run.info.run_id, "accuracy")) == 2

    # The allow list was for that call only: another change is refused again.
    proc = hpc_launch([f"resume={run_dir}", "job.epochs=3"], workdir)
    assert proc.returncode == 2 and "error: job.epochs: differs" in proc.stderr, proc.stderr

    # The same config again (through run_dir= with the overrides it now has): it resumes.
    proc = hpc_launch([*BASE, f"run_dir={run_dir}", "job.epochs=2"], workdir)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "COMPLETED" and len(record["extra"]["resume_changes"]) == 1

    # config.yaml changed by hand: the checkpoint's config hash no longer matches: warned.
    (run_dir / "config.yaml").write_text(
        (run_dir / "config.yaml").read_text().replace("lr: 0.05", "lr: 0.07")
    )
    proc = hpc_launch([f"resume={run_dir}"], workdir)
    assert proc.returncode == 0, proc.stderr
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "(changed outside hpc-launch)" in log
