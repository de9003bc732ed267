"""Reconciliation: jobs hpc-launch ran on the real cluster appear in a live cost report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from slurm_helpers import require_cluster
from support import hpc, hpc_launch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_live_report_matches_sacct_and_joins_own_records(workdir: Path) -> None:
    require_cluster(min_nodes=2)
    proc = hpc_launch(
        [
            "cluster=slurm",
            "resources.nodes=2",
            "resources.tasks_per_node=2",
            "resources.gpus_per_node=2",
            "job.epochs=3",
            "accounting.interval_s=0.5",
            "wait=true",
        ],
        workdir,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = next((workdir / "outputs" / "digits").iterdir())
    record = json.loads((run_dir / "job.json").read_text())
    job_id = record["job_id"]
    assert record["accounting_file"] and record["extra"]["accounting"]["nodes"] == 2
    assert record["extra"]["accounting"]["gpus"] == 0  # fake GPUs: no NVML, nothing invented
    raw = (
        subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "ElapsedRaw,AllocTRES,CPUTimeRAW"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split("|")
    )
    elapsed, tres, cpu_time = int(raw[0]), raw[1], int(raw[2])
    gpus = int(next(t.split("=")[1] for t in tres.split(",") if t.startswith("gres/gpu=")))
    assert gpus == 4
    report = hpc(
        [
            "cost",
            "report",
            "--live",
            "--accounting",
            str(workdir / "outputs"),
            "--by",
            "job",
            "--format",
            "json",
        ],
        workdir,
    )
    assert report.returncode == 0, report.stderr
    rows = {row["key"]: row for row in json.loads(report.stdout)["rows"]}
    row = rows[job_id]
    assert row["jobs"] == 1
    assert row["gpu_hours"] == pytest.approx(gpus * elapsed / 3600, abs=1e-6)
    assert row["cpu_hours"] == pytest.approx(cpu_time / 3600, abs=1e-6)
    assert "accounting records joined for" in report.stderr
