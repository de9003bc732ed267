"""A sweep's secret overrides never reach sweep.json, and every task's workers still get them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from hpc.credentials import ENV_FILE, read_env_file
from hpc.launchers.slurm.sweep_task import prepare
from hpc.sweeps.plan import (
    SECRET_OVERRIDES_FILE,
    SWEEP_FILE,
    plan_sweep,
    sweep_record,
    write_record,
)

SECRET = "s3cr3t-Value-42"


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_secret_overrides_stay_out_of_the_sweep_record(workdir: Path) -> None:
    plan = plan_sweep(
        [
            "cluster=slurm",
            f"+nccl.env.MY_API_TOKEN={SECRET}",
            f"tracking.uri=https://bob:{SECRET}@mlflow.example.org",
            "job.lr=0.1,0.2",
        ]
    )
    write_record(plan.sweep_dir, sweep_record(plan, "digits", "slurm"))
    record_text = (plan.sweep_dir / SWEEP_FILE).read_text()
    assert SECRET not in record_text
    assert "job.lr=0.1" in record_text
    secrets_file = plan.sweep_dir / SECRET_OVERRIDES_FILE
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    for task in json.loads(record_text)["tasks"]:
        run_dir = prepare(plan.sweep_dir, int(task["index"]))
        written = "".join(
            p.read_text() for p in run_dir.rglob("*") if p.is_file() and p.name != ENV_FILE
        )
        assert SECRET not in written
        env = read_env_file(run_dir / ENV_FILE)
        assert env["MY_API_TOKEN"] == SECRET
        assert env["MLFLOW_TRACKING_PASSWORD"] == SECRET
        assert stat.S_IMODE((run_dir / ENV_FILE).stat().st_mode) == 0o600


def test_sweep_without_secrets_writes_no_secret_file(workdir: Path) -> None:
    plan = plan_sweep(["cluster=slurm", "job.lr=0.1,0.2"])
    write_record(plan.sweep_dir, sweep_record(plan, "digits", "slurm"))
    assert not (plan.sweep_dir / SECRET_OVERRIDES_FILE).exists()
    run_dir = prepare(plan.sweep_dir, 0)
    assert not (run_dir / ENV_FILE).exists()
