"""Many jobs opening the same new SQLite MLflow store at once (a sweep's tasks starting)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TASK = """
import sys, time
from hpc.runtime.tracking import MlflowTracker
uri, spool, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
t = MlflowTracker(uri, "concurrent", spool, run_name=spool, send_interval_s=0.1)
t.log_metrics({"loss": 1.0}, 1)
t.commit(1)
left = t.finish("FINISHED", timeout_s=120)
sys.exit(0 if left == 0 and t.errors == 0 else 1)
"""


def test_parallel_first_contact_with_a_new_sqlite_store(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 8  # all processes have imported mlflow by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TASK, uri, str(tmp_path / f"s{i}"), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(6)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(outputs)[-3000:]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 6
    assert all(client.get_metric_history(r.info.run_id, "loss")[0].value == 1.0 for r in runs)
