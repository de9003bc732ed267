"""The pre-flight step on the real two-node test cluster: a missing HCA and a checkpoint
directory that turned read-only after submission each end the job before any rank
starts, FAILED_PREFLIGHT (exit code 78) with every node named; a resume excludes them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_preflight import read_only

from slurm_helpers import require_cluster, wait_for_job
from support import REPO, hpc_launch

pytestmark = [pytest.mark.slurm]
STEADY = REPO / "tests" / "jobs" / "steady_steps.py"


def submit(workdir: Path, run_dir: Path, *extra: str) -> str:
    proc = hpc_launch(
        [
            "cluster=slurm",
            "resources.nodes=2",
            "resources.tasks_per_node=1",
            "resources.time=00:05:00",
            f"job.entrypoint={STEADY}",
            "job.name=hpcF-preflight",
            f"run_dir={run_dir}",
            "tracking.enabled=false",
            *extra,
        ],
        workdir,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return str(json.loads((run_dir / "job.json").read_text())["job_id"])


def ended_by_preflight(run_dir: Path, job_id: str, check: str) -> dict:
    assert wait_for_job(job_id, timeout=120) == "FAILED"
    exit_code = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "ExitCode"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert exit_code[-1:] == ["78:0"], exit_code
    rec = json.loads((run_dir / "job.json").read_text())
    assert rec["state"] == "FAILED_PREFLIGHT" and rec["exit_code"] == 78, rec
    assert set(rec["extra"]["preflight"]) == {"n1", "n2"}, rec
    assert all(d.startswith(f"{check}: ") for d in rec["extra"]["preflight"].values()), rec
    assert rec["extra"]["excluded_nodes"] == ["n1", "n2"]
    assert "pre-flight check failed on n1,n2" in rec["message"]
    assert not list(run_dir.glob("logs/rank*.log")), "a rank started"
    log = next(run_dir.glob("logs/slurm-*.out")).read_text()
    assert "steady_steps.py: rank" not in log, log
    return rec


def test_a_missing_hca_fails_fast_and_a_resume_excludes_the_nodes(workdir: Path) -> None:
    require_cluster(min_nodes=2)
    run_dir = workdir / "run"
    job_id = submit(workdir, run_dir, "+nccl.env.NCCL_IB_HCA=mlx5_9")
    rec = ended_by_preflight(run_dir, job_id, "hcas")
    assert "NCCL_IB_HCA names mlx5_9" in rec["extra"]["preflight"]["n2"]
    dry = hpc_launch([f"resume={run_dir}", "dry_run=true"], workdir, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --exclude=n1,n2\n" in dry.stdout


def test_a_checkpoint_dir_gone_read_only_fails_fast(workdir: Path) -> None:
    require_cluster(min_nodes=2)
    run_dir = workdir / "run"
    job_id = submit(workdir, run_dir, "cluster.sbatch_args=[--hold]")
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    try:
        with read_only(checkpoints):
            subprocess.run(["scontrol", "release", job_id], check=True)
            rec = ended_by_preflight(run_dir, job_id, "checkpoint.dir")
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, check=False)
    assert "Read-only file system" in rec["extra"]["preflight"]["n1"]
