"""Concurrent real runs sharing one new SQLite store all get their MLflow run (issue 11/7).

Before the fix every run's first contact queued on the store's init lock: with many
runs starting at once the last ones waited past the flush timeout and ended
COMPLETED with "records not sent yet", no MLflow run and no ``mlflow_run_id``. Now
the launcher creates the store and experiment once before the workers start, and
later first contacts skip the lock. The flush timeout is the default 60 s: with 30 s
the old code failed with 8 runs, but the fixed code then also failed on a loaded
2-core machine from plain CPU starvation (no lock involved).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import cli_env

pytestmark = pytest.mark.slow

RUNS = 8
EPOCHS = 1
STEPS = 23 * EPOCHS  # 1437 digits samples / 2 ranks / batch 32


def test_concurrent_runs_on_a_new_sqlite_store_all_reach_mlflow(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpc.cli.launch",
                f"tracking.uri={uri}",
                f"job.epochs={EPOCHS}",
                "tracking.flush_timeout_s=60",
                "accounting.enabled=false",
                f"run_dir={workdir / f'run{i}'}",
            ],
            cwd=workdir,
            env=cli_env(workdir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(RUNS)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * RUNS, "\n".join(outputs)[-4000:]
    unsent = [i for i, out in enumerate(outputs) if "not sent yet" in out]
    assert not unsent, f"runs {unsent} left metrics unsent:\n{outputs[unsent[0]][-2000:]}"
    client = MlflowClient(tracking_uri=uri)
    for i in range(RUNS):
        record = json.loads((workdir / f"run{i}" / "job.json").read_text())
        assert record["mlflow_run_id"], f"run{i} has no MLflow run"
        assert record["extra"]["tracking"]["state"] == "sent"
        history = client.get_metric_history(record["mlflow_run_id"], "loss")
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), f"run{i}"
