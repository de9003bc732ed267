"""Interruptions on the real Slurm test cluster (issue 11, items 5 and 11).

- A stop signal or a requeue that arrives just after FINISHED leaves the run
  COMPLETED (job.json, ``hpc show``), on Slurm as locally.
- ``last_interruption`` records Slurm's own reason for a requeue by hand (the
  time-limit and preemption reasons: test_preemption_slurm.py; NODE_FAIL parsing
  against real sacct output: test_slurm_reason.py). No node is taken down here: on
  the 22.05 test cluster, `scontrol update state=down` under a running job, then a
  restart of the requeued job on that node, crashed slurmctld (a segfault).

The jobs are tiny scripts under tests/jobs/ that wait for the test, not sleeps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import test_preemption_slurm as base
from test_preemption_slurm import (
    record,
    release,
    run,
    sacct_states,
    squeue,
    submit,
    wait_for_line,
    wait_for_requeue_or_end,
)

from slurm_helpers import require_cluster, wait_for_job
from support import hpc

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
jobs = base.jobs  # the fixture: cancels what a test left in the queue

JOBS = Path(__file__).parent / "jobs"
ONE_TASK = ["cluster=slurm", "resources.tasks_per_node=1", "tracking.enabled=false"]


@pytest.fixture(autouse=True)
def _cluster() -> None:
    require_cluster(min_nodes=2)


def wait_for_file(path: Path, job_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"no {path} after {timeout}s ({squeue(job_id)})"
        time.sleep(0.1)


def shown(workdir: Path, run_dir: Path) -> str:
    out = hpc(["show", str(run_dir)], workdir)
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["state"])


@pytest.mark.parametrize("stop", ["usr2", "requeue"])
def test_a_stop_just_after_finished_leaves_the_job_completed(
    workdir: Path,
    jobs: list[str],
    stop: str,
) -> None:
    job_id, run_dir = submit(
        workdir,
        [*ONE_TASK, f"job.entrypoint={JOBS / 'hold_at_exit.py'}", "checkpoint.every_steps=1"],
        jobs,
    )
    wait_for_file(run_dir / "exiting.0", job_id)  # FINISHED written, the rank shutting down
    assert (run_dir / "FINISHED").exists()
    if stop == "usr2":
        assert run(["scancel", "-b", "-s", "USR2", job_id]).returncode == 0
    else:
        assert run(["scontrol", "requeue", job_id]).returncode == 0
    time.sleep(1)  # the batch shell forwards the signal to the step
    (run_dir / "release").touch()
    if stop == "requeue":
        assert wait_for_requeue_or_end(job_id) == "requeued"
        release(job_id)
    assert wait_for_job(job_id, timeout=180) == "COMPLETED"
    log = run_dir / "logs" / f"slurm-{job_id}.out"
    if stop == "requeue":
        assert f"{run_dir} already finished; nothing to do" in log.read_text()
    rec = record(run_dir)
    assert (rec["state"], rec["exit_code"]) == ("COMPLETED", 0), (rec, log.read_text()[-2000:])
    assert shown(workdir, run_dir) == "COMPLETED"


def test_a_requeue_by_hand_is_recorded_as_such(workdir: Path, jobs: list[str]) -> None:
    job_id, run_dir = submit(
        workdir,
        [*ONE_TASK, f"job.entrypoint={JOBS / 'wait_for_stop.py'}", "checkpoint.every_steps=100000"],
        jobs,
    )
    log = run_dir / "logs" / f"slurm-{job_id}.out"
    wait_for_line(log, r"^waiting for a stop$")
    assert run(["scontrol", "requeue", job_id]).returncode == 0
    # Slurm kills the batch shell KillWait (10 s) after its TERM: it may not get to
    # record anything. The restart reads Slurm's account of the attempt.
    assert wait_for_requeue_or_end(job_id) == "requeued"
    release(job_id)
    assert wait_for_job(job_id, timeout=180) == "COMPLETED"
    text = log.read_text()
    assert "resumed: done" in text, text[-2000:]
    rec = record(run_dir)
    assert rec["state"] == "COMPLETED" and rec["extra"]["restart_count"] == 1, rec
    assert rec["extra"].get("last_interruption") == "manual_requeue", rec
    assert sacct_states(job_id) == ["REQUEUED", "COMPLETED"]
