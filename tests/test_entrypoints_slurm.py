"""Entry points on the real two-node Slurm test cluster: a torchrun-style script under
srun, and a plain script's own exactly-once resume (checkpoint, exit 75, requeue)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_entrypoints import RESUMABLE, TORCHRUN_SCRIPT, assert_ddp_ran, assert_each_step_once
from test_preemption_slurm import preempt, release, squeue, wait_for_line, wait_for_requeue_or_end

from slurm_helpers import require_cluster, wait_for_job
from support import hpc_launch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
QUIET = ["tracking.enabled=false"]


@pytest.fixture(autouse=True)
def _cluster() -> None:
    require_cluster(min_nodes=2)


@pytest.fixture
def jobs() -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for job_id in ids:
        if squeue(job_id) is not None:
            subprocess.run(["scancel", job_id], capture_output=True, check=False)


def only_run(workdir: Path, name: str) -> tuple[Path, dict[str, object]]:
    (run_dir,) = (workdir / "outputs" / name).iterdir()
    return run_dir, json.loads((run_dir / "job.json").read_text())


def test_torchrun_script_on_two_nodes(workdir: Path, jobs: list[str]) -> None:
    from test_entrypoints import ddp_lines

    proc = hpc_launch(
        [
            "cluster=slurm",
            "resources.nodes=2",
            "resources.tasks_per_node=1",
            "wait=true",
            "job.name=hpcE-torchrun",
            f"job.entrypoint={TORCHRUN_SCRIPT}",
            "job.args=[--steps,'6']",
            *QUIET,
        ],
        workdir,
        timeout=300,
    )
    run_dir, record = only_run(workdir, "hpcE-torchrun")
    jobs.append(str(record["job_id"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (run_dir / "logs" / f"slurm-{record['job_id']}.out").read_text()
    assert "train_ddp.py: rank 0/2 local_rank 0 node_rank 0 host n1 via slurm" in log
    assert "train_ddp.py: rank 1/2 local_rank 0 node_rank 1 host n2 via slurm" in log
    assert_ddp_ran(ddp_lines(log), 2, 6)
    assert record["state"] == "COMPLETED"


def test_plain_script_checkpoints_exits_75_is_requeued_and_resumes(
    workdir: Path, jobs: list[str]
) -> None:
    script = workdir / "resumable.py"
    script.write_text(RESUMABLE)
    proc = hpc_launch(
        [
            "cluster=slurm",
            "resources.tasks_per_node=1",
            "job.name=hpcE-resumable",
            f"job.entrypoint={script}",
            "job.args=['80']",
            *QUIET,
        ],
        workdir,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir, record = only_run(workdir, "hpcE-resumable")
    job_id = str(record["job_id"])
    jobs.append(job_id)
    log = run_dir / "logs" / f"slurm-{job_id}.out"
    wait_for_line(log, r"^did step 5$")
    preempt(job_id)
    assert wait_for_requeue_or_end(job_id) == "requeued"
    time.sleep(1)
    release(job_id)
    assert wait_for_job(job_id, timeout=240) == "COMPLETED"
    text = log.read_text()
    stopped = assert_each_step_once(text, 80)
    assert "finished 80 steps" in text
    assert f"preemption (USR2) at step {stopped}: requeueing" in text
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "COMPLETED" and record["exit_code"] == 0
    assert record["extra"]["restart_count"] == 1 and record["extra"]["restart_step"] == stopped
