"""Epoch-end work after a kill at the epoch's last checkpoint (issue 11, item 6).

``job.epochs=4 checkpoint.every_steps=23``: 23 steps per epoch with 2 ranks, so
every checkpoint falls on an epoch's last step. Rank 0 is killed right after the
checkpoint at step 46 is saved (tests/jobs/kill_after_checkpoint.py), then the run
is resumed: MLflow must hold each epoch's accuracy and each step's loss once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import hpc_launch

pytestmark = pytest.mark.slow

KILL_JOB = Path(__file__).parent / "jobs" / "kill_after_checkpoint.py"


def metric_steps(run_dir: Path, uri: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "job.json").read_text())["mlflow_run_id"]
    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def test_a_kill_at_an_epoch_end_checkpoint_loses_no_epoch_metric(workdir: Path) -> None:
    run_dir = workdir / "run"
    args = [f"job.entrypoint={KILL_JOB}", "job.epochs=4", "checkpoint.every_steps=23"]
    first = hpc_launch([*args, f"run_dir={run_dir}"], workdir, KILL_AT_STEP="46")
    assert first.returncode != 0 and (run_dir / "killed").exists(), first.stderr
    assert (run_dir / "checkpoints" / "LATEST").read_text().strip() == "step-000000046"
    again = hpc_launch([f"resume={run_dir}"], workdir, KILL_AT_STEP="46")
    assert again.returncode == 0, again.stderr
    assert "resumed from step-000000046" in again.stdout
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert metric_steps(run_dir, uri, "accuracy") == [23, 46, 69, 92]
    assert metric_steps(run_dir, uri, "loss") == list(range(1, 93))
