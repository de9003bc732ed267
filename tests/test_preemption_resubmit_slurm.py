"""``preemption.mode=resubmit`` on the real test cluster: the job queues its own
successor (``--dependency=afternotok``) before it runs, for clusters whose preemption
cancels instead of requeueing.

The preemption is real: the test cluster's partition ``scavenger`` has
``PreemptMode=CANCEL`` (``GraceTime=20``), and a job in ``urgent`` (a higher
``PriorityTier``) that needs the nodes makes Slurm cancel the running job. The
successor resumes the run directory, and the run ends bitwise equal to an
uninterrupted one, each step logged once. A finished run cancels its successor, and
the restarts-without-progress cap still ends the chain.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from test_preemption_slurm import (
    SHORT_STEPS,
    STUCK,
    TWO_NODES,
    jobs,  # noqa: F401  (fixture)
    preempt,
    record,
    sacct_states,
    short_reference,  # noqa: F401  (fixture)
    squeue,
    wait_for_line,
)

from preemption_helpers import assert_bitwise_equal, final_model, loss_history, only_run_dir
from slurm_helpers import require_cluster, wait_for_job
from support import hpc_launch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

RESUBMIT = ["preemption.mode=resubmit", "resources.partition=scavenger"]
ACTIVE = ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING", "REQUEUED")


@pytest.fixture(autouse=True)
def _cluster() -> None:
    require_cluster(min_nodes=2)


def submit(workdir: Path, args: list[str], jobs: list[str]) -> tuple[str, Path]:  # noqa: F811
    """Submit a job named by its ``job.name=`` override; its first job id and run dir."""
    (name,) = [a.split("=", 1)[1] for a in args if a.startswith("job.name=")]
    proc = hpc_launch(args, workdir, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(workdir, name)
    job_id = str(record(run_dir)["job_id"])
    jobs.append(job_id)
    return job_id, run_dir


def successor_of(log: Path, job_id: str) -> str:
    text = wait_for_line(log, rf"^hpc-launch: successor job \d+ queued .*job {job_id} ")
    found = re.search(rf"^hpc-launch: successor job (\d+) queued .*job {job_id} ", text, re.M)
    assert found, text[-2000:]
    return found.group(1)


def wait_for_end(job_id: str, timeout: float = 300) -> str:
    """The job's final state once slurmctld no longer runs or queues it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = squeue(job_id)
        if queued is None or queued[0] not in ACTIVE:
            states = sacct_states(job_id)
            if states and states[-1] not in ACTIVE:
                return states[-1]
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end within {timeout}s")


def test_cancelling_preemption_resubmits_and_resumes_bitwise_equal(
    short_reference: tuple[dict, list],  # noqa: F811
    workdir: Path,
    jobs: list[str],  # noqa: F811
) -> None:
    args = [*TWO_NODES, *RESUBMIT, "job.name=hpcR-resubmit", "job.epochs=150"]
    args += ["checkpoint.every_steps=100000"]
    first, run_dir = submit(workdir, args, jobs)
    log = run_dir / "logs" / f"slurm-{first}.out"
    second = successor_of(log, first)
    jobs.append(second)
    assert squeue(second) == ("PENDING", "Dependency")
    wait_for_line(log, r"^epoch 2/150 ")
    # A job in the higher-tier partition that needs both nodes: Slurm cancels ours.
    urgent = subprocess.run(
        ["sbatch", "--parsable", "-p", "urgent", "-N2", "--exclusive", "-J", "hpcR-urgent",
         "-o", str(workdir / "urgent.out"), "--wrap", "sleep 2"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    jobs.append(urgent)
    # The ranks checkpoint within GraceTime and the batch shell exits 75 on its own:
    # Slurm then records FAILED (75); PREEMPTED only if the grace time ran out first.
    ended = wait_for_end(first)
    assert ended in ("FAILED", "PREEMPTED"), ended
    text = log.read_text()
    stopped = re.search(r"stopping at step (\d+) \(SIGTERM\)", text)
    assert stopped, text[-3000:]
    assert f"job {second} resumes the run" in text, text[-2000:]
    rec = record(run_dir)
    assert rec["job_id"] == second and rec["extra"]["resubmitted_from"] == first, rec
    assert wait_for_job(urgent, timeout=300) == "COMPLETED"
    assert wait_for_job(second, timeout=400) == "COMPLETED"
    later = (run_dir / "logs" / f"slurm-{second}.out").read_text()
    assert f"resumed from step-{int(stopped.group(1)):09d}" in later, later[-3000:]
    assert "(restart 1)" in later and "final accuracy" in later
    third = successor_of(run_dir / "logs" / f"slurm-{second}.out", second)
    jobs.append(third)
    assert f"successor job {third} cancelled" in later
    assert wait_for_end(third, timeout=60) == "CANCELLED"
    rec = record(run_dir)
    assert rec["state"] == "COMPLETED" and rec["exit_code"] == 0, rec
    assert rec["extra"]["restart_count"] == 1 and rec["job_id"] == second
    assert sacct_states(first) == [ended] and sacct_states(second) == ["COMPLETED"]
    ref_model, ref_losses = short_reference
    assert_bitwise_equal(final_model(run_dir), ref_model)
    losses = loss_history(run_dir, f"sqlite:///{workdir / 'mlflow.db'}")
    assert [s for s, _ in losses] == list(range(1, SHORT_STEPS + 1)), "each step exactly once"
    assert losses == ref_losses


def test_a_finished_run_cancels_its_successor(workdir: Path, jobs: list[str]) -> None:  # noqa: F811
    args = ["cluster=slurm", "resources.tasks_per_node=1", *RESUBMIT, "job.name=hpcR-done"]
    first, run_dir = submit(workdir, [*args, "job.epochs=2", "tracking.enabled=false"], jobs)
    log = run_dir / "logs" / f"slurm-{first}.out"
    second = successor_of(log, first)
    jobs.append(second)
    assert wait_for_job(first, timeout=300) == "COMPLETED"
    assert wait_for_end(second, timeout=60) == "CANCELLED"
    assert f"successor job {second} cancelled" in log.read_text()
    rec = record(run_dir)
    assert rec["state"] == "COMPLETED" and rec["job_id"] == first, rec


def test_restarts_without_progress_end_the_chain(workdir: Path, jobs: list[str]) -> None:  # noqa: F811
    # The first run gets to step 3, later runs stay there: with a cap of 0 the first stop
    # hands over to the successor, the second does not, and cancels its own successor.
    script = workdir / "stuck.py"
    script.write_text(STUCK)
    args = ["cluster=slurm", "resources.tasks_per_node=1", *RESUBMIT, "job.name=hpcR-stuck"]
    args += [f"job.entrypoint={script}", "tracking.enabled=false"]
    args += ["checkpoint.every_steps=100000", "preemption.max_restarts_without_progress=0"]
    first, run_dir = submit(workdir, args, jobs)
    log = run_dir / "logs" / f"slurm-{first}.out"
    second = successor_of(log, first)
    jobs.append(second)
    wait_for_line(log, r"^stuck at step 3$")
    preempt(first)  # the lead-time signal: a checkpointed stop, exit 75
    assert wait_for_end(first) == "FAILED"
    log2 = run_dir / "logs" / f"slurm-{second}.out"
    wait_for_line(log2, r"^stuck at step 3$")
    third = successor_of(log2, second)
    jobs.append(third)
    rec = record(run_dir)
    assert rec["job_id"] == second and rec["extra"]["restart_count"] == 1, rec
    preempt(second)
    assert wait_for_end(second) == "FAILED"
    assert wait_for_end(third, timeout=60) == "CANCELLED"
    rec = record(run_dir)
    assert rec["state"] == "FAILED" and rec["exit_code"] == 75, rec
    assert "1 restarts without step progress: not requeued" in rec["message"]
    assert f"successor job {third} cancelled" in log2.read_text()
