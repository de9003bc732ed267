"""Helpers for tests that run against a real Slurm cluster.

The project ships a single-machine test cluster (``slurm/testcluster/up``).
Tests call :func:`require_cluster` first: it skips the test when no cluster is
reachable, or fails it when ``HPC_TEST_SLURM=1`` (set by CI, where a missing
cluster is a broken setup rather than a developer machine without Slurm).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence

import pytest

SKIP_MESSAGE = "Slurm test cluster not running: start it with slurm/testcluster/up"

# Node states (sinfo %t, compact form) in which a node can run jobs.
# plnd: a node the backfill scheduler has planned for a pending job.
USABLE_NODE_STATES = frozenset({"idle", "mix", "alloc", "comp", "plnd"})

# Job states after which a job never runs again (sacct/squeue long names).
TERMINAL_JOB_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)


def _run(cmd: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)


def _slurm_required() -> bool:
    return os.environ.get("HPC_TEST_SLURM", "").strip().lower() in {"1", "true", "yes"}


def cluster_problem(min_nodes: int = 1) -> str | None:
    """Return why the cluster is unusable, or None if it is up."""
    if shutil.which("sinfo") is None:
        return "sinfo not found on PATH (Slurm client not installed)"
    try:
        res = _run(["sinfo", "-h", "-N", "-o", "%N %t"], timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out (slurmctld not answering)"
    if res.returncode != 0:
        return f"sinfo failed (rc={res.returncode}): {res.stderr.strip()[-500:]}"
    states: dict[str, str] = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]  # a node in 2 partitions is listed twice
    usable = [n for n, s in states.items() if s in USABLE_NODE_STATES]
    if len(usable) < min_nodes:
        shown = ", ".join(f"{n}={s}" for n, s in sorted(states.items())) or "no nodes"
        return f"need {min_nodes} usable node(s), sinfo shows: {shown}"
    return None


def require_cluster(min_nodes: int = 1) -> None:
    """Skip (or, with HPC_TEST_SLURM=1, fail) unless a Slurm cluster is up."""
    problem = cluster_problem(min_nodes)
    if problem is None:
        return
    if _slurm_required():
        pytest.fail(f"HPC_TEST_SLURM=1 but {SKIP_MESSAGE} ({problem})", pytrace=False)
    pytest.skip(f"{SKIP_MESSAGE} ({problem})")


def sbatch(args: Sequence[str]) -> int:
    """Submit with ``sbatch --parsable ARGS`` and return the job id."""
    res = _run(["sbatch", "--parsable", *args])
    if res.returncode != 0:
        raise RuntimeError(f"sbatch {' '.join(args)} failed: {res.stderr.strip()}")
    # --parsable prints "jobid" or "jobid;cluster".
    return int(res.stdout.strip().split(";")[0])


def job_state(job_id: int | str) -> str | None:
    """Current state of a job, from sacct, else squeue; None if unknown.

    For an array job the first non-terminal task state is returned while any
    task is still active, else the first task state that is not COMPLETED.
    """
    states: list[str] = []
    res = _run(["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "State"])
    if res.returncode == 0:
        # "CANCELLED by 0" -> "CANCELLED"; "RUNNING+" style suffixes dropped.
        states = [ln.split()[0].rstrip("+") for ln in res.stdout.splitlines() if ln.strip()]
    if not states:
        # slurmdbd may not have the record yet: ask slurmctld.
        res = _run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"])
        if res.returncode == 0:
            states = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
    if not states:
        return None
    active = [s for s in states if s not in TERMINAL_JOB_STATES]
    if active:
        return active[0]
    failed = [s for s in states if s != "COMPLETED"]
    return failed[0] if failed else "COMPLETED"


def wait_for_job(job_id: int | str, timeout: float = 120.0, poll: float = 1.0) -> str:
    """Poll until the job reaches a terminal state and return that state.

    Raises TimeoutError (naming the last state seen) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    state: str | None = None
    while True:
        state = job_state(job_id)
        if state in TERMINAL_JOB_STATES:
            return state
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} still {state or 'unknown'} after {timeout}s")
        time.sleep(poll)


def sacct_fields(job_id: int | str, fields: Sequence[str], settle_s: float = 30) -> dict[str, str]:
    """Job-level (``-X``) sacct fields of a job, as a dict.

    slurmdbd records a job's end after the controller reports it: with ``State``
    asked for, wait up to ``settle_s`` for the accounting to show a final state.
    """
    deadline = time.monotonic() + settle_s
    while True:
        res = _run(["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", ",".join(fields)])
        if res.returncode != 0:
            raise RuntimeError(f"sacct failed: {res.stderr.strip()}")
        line = res.stdout.splitlines()[0] if res.stdout.strip() else ""
        found = dict(zip(fields, line.split("|"), strict=False))
        state = found.get("State", "").split(" ")[0]
        settled = line and ("State" not in fields or state in TERMINAL_JOB_STATES)
        if settled or time.monotonic() > deadline:
            return found
        time.sleep(0.5)
