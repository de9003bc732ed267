"""The hang watchdog on the real two-node Slurm test cluster: a SIGSTOPped rank ends
the job FAILED_HANG with its stacks dumped; it is requeued once (fault.hang_requeues=1),
and a second hang leaves it failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_preemption_slurm import squeue, wait_for_requeue_or_end

from slurm_helpers import require_cluster, wait_for_job
from support import REPO, hpc_launch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEADY = REPO / "tests" / "jobs" / "steady_steps.py"


def stop_rank_one(run_dir: Path, timeout: float = 240) -> int:
    path = run_dir / "ready.1"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "rank 1 made no 3 steps"
        time.sleep(0.25)
    pid = int(path.read_text())
    path.unlink()
    os.kill(pid, signal.SIGSTOP)  # n1 and n2 run on this machine
    return pid


def job_log(run_dir: Path) -> str:
    """What the batch shell printed, and the record: the message of a failed assertion."""
    logs = "".join(p.read_text(errors="replace") for p in run_dir.glob("logs/slurm-*.out"))
    return logs[-3000:] + (run_dir / "job.json").read_text()


def test_a_stopped_rank_ends_the_job_and_requeues_it_once(workdir: Path) -> None:
    require_cluster(min_nodes=2)
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            "cluster=slurm",
            "resources.nodes=2",
            "resources.tasks_per_node=1",
            "resources.time=00:10:00",
            f"job.entrypoint={STEADY}",
            "job.name=hpcH-hang",
            f"run_dir={run_dir}",
            "tracking.enabled=false",
            "checkpoint.every_steps=20",
            "fault.stall_timeout_s=5",
            "fault.first_step_timeout_s=120",
        ],
        workdir,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    job_id = str(json.loads((run_dir / "job.json").read_text())["job_id"])
    pids: list[int] = []
    try:
        pids.append(stop_rank_one(run_dir))
        assert wait_for_requeue_or_end(job_id) == "requeued", job_log(run_dir)
        rec = json.loads((run_dir / "job.json").read_text())
        assert rec["extra"]["hang_requeues"] == 1 and rec["extra"]["hang"]["ranks"] == [1]
        assert rec["extra"]["hang"]["kind"] == "stall", rec  # its first steps were reported
        first = (run_dir / "hangs" / "hang1.txt").read_text()
        assert "rank 1 STUCK: node n" in first and "--- rank 1 " in first
        assert "in all_reduce" in first.split("--- rank 0 ")[1].split("--- rank 1 ")[0]
        time.sleep(1.5)  # a new credential a second after the revoked one
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        pids.append(stop_rank_one(run_dir))
        assert wait_for_job(job_id, timeout=240) == "FAILED"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if squeue(job_id) is not None:
            subprocess.run(["scancel", job_id], capture_output=True, check=False)
    rec = json.loads((run_dir / "job.json").read_text())
    assert rec["state"] == "FAILED_HANG" and rec["exit_code"] == 76, rec
    assert rec["extra"]["hang_requeues"] == 1 and rec["extra"]["hang_count"] == 2
    assert "not requeued (fault.hang_requeues=1 used)" in rec["message"]
    assert "rank 1 STUCK" in (run_dir / "hangs" / "hang2.txt").read_text()
