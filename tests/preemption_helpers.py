"""Helpers for the preemption tests: final parameters and MLflow loss histories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def only_run_dir(workdir: Path, name: str = "digits") -> Path:
    runs = [p for p in (workdir / "outputs" / name).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def final_model(run_dir: Path) -> dict[str, Any]:
    import torch

    latest = (run_dir / "checkpoints" / "LATEST").read_text().strip()
    with open(run_dir / "checkpoints" / latest / "rank0.pt", "rb") as fh:
        return torch.load(fh, weights_only=False)["model"]


def assert_bitwise_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    import torch

    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"parameter {key} differs"


def loss_history(run_dir: Path, tracking_uri: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    record = json.loads((run_dir / "job.json").read_text())
    client = MlflowClient(tracking_uri=tracking_uri)
    history = client.get_metric_history(record["mlflow_run_id"], "loss")
    return sorted((m.step, m.value) for m in history)
