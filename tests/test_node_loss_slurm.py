"""A node lost in the middle of a 2-node job on the real test cluster (partition
``faults``: n1, n2 and the spare n3).

- The node dies with its ranks (its slurmd, its slurmstepd and its rank killed hard):
  the batch shell finds it within fault.node_probe_timeout_s, adds it to the run's
  exclusion list, and a successor job that excludes it resumes the run from its last
  durable checkpoint, once, to the end.
- Only the node's slurmd dies (the ranks go on): Slurm marks the node down after
  SlurmdTimeout and requeues the job itself (NODE_FAIL); the next attempt runs without
  the node, records it in the exclusion list and resumes once.

Neither leaves a process of the run behind. Each kills the slurmd of rank 1's node (not
the batch shell's) and starts it again before it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_preemption_slurm import release, sacct_states, squeue

from slurm_helpers import require_cluster, wait_for_job
from support import REPO, hpc_launch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEADY = REPO / "tests" / "jobs" / "steady_steps.py"
NAME = "nl-loss"
AFTER_RESUME = 100  # steps a resumed attempt makes before it ends
T = TypeVar("T")


def job_log(run_dir: Path) -> str:
    """The end of every attempt's log and job.json, for a failure message."""
    logs = "".join(p.read_text(errors="replace") for p in sorted(run_dir.glob("logs/slurm-*.out")))
    return logs[-4000:] + (run_dir / "job.json").read_text()


def wait_for(what: str, check: Callable[[], T], run_dir: Path, timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"no {what} within {timeout}s\n{job_log(run_dir)}"
        time.sleep(0.2)
    return value


def record(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "job.json").read_text()))


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def node_state(node: str) -> str:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-n", node, "-o", "%t"], capture_output=True, text=True
    ).stdout.split()
    return out[0] if out else ""


def restore(node: str) -> None:
    """The node's slurmd again, as slurm/testcluster/up starts it; resumed if it went down."""
    if subprocess.run(["pgrep", "-f", f"slurmd -N {node}$"], capture_output=True).returncode:
        subprocess.run(["slurmd", "-N", node], check=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = node_state(node)
        if state in ("idle", "mix", "alloc"):
            return
        if state.rstrip("*~#") in ("down", "drain", "drng", "fail"):
            subprocess.run(
                ["scontrol", "update", f"NodeName={node}", "State=RESUME"], capture_output=True
            )
        time.sleep(1)


def sacct(job_id: str, fields: str) -> list[str]:
    """Every attempt's job-level row, once none is running or completing any more."""
    cmd = ["sacct", "-X", "-D", "-n", "-P", "-j", job_id, "-o", fields]
    deadline = time.monotonic() + 30
    while True:
        rows = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        if rows and not any("RUNNING" in r or "COMPLETING" in r for r in rows):
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def hostnames(nodelist: str) -> list[str]:
    return subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True
    ).stdout.split()


@pytest.fixture
def launched(workdir: Path) -> Iterator[tuple[Path, str, list[str]]]:
    """A 2-node steady_steps run in partition faults, 3 steps and a checkpoint in: (run
    dir, job id, the node whose slurmd the test may kill). At the end that node runs
    again and no job of this test is left."""
    require_cluster(min_nodes=3)
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            "cluster=slurm",
            "resources.partition=faults",
            "resources.nodes=2",
            "resources.tasks_per_node=1",
            "resources.time=00:10:00",
            "cluster.exit_grace_s=2",
            f"job.entrypoint={STEADY}",
            f"job.name={NAME}",
            f"run_dir={run_dir}",
            "tracking.enabled=false",
            "checkpoint.every_steps=20",
            "fault.node_probe_timeout_s=5",
        ],
        workdir,
        timeout=120,
        STEPS_AFTER_RESUME=str(AFTER_RESUME),
    )
    assert proc.returncode == 0, proc.stderr
    victim: list[str] = []
    try:
        ready = run_dir / "ready.1"
        wait_for("3 steps on rank 1", lambda: ready.exists() and ready.read_text(), run_dir)
        wait_for("a checkpoint", (run_dir / "checkpoints" / "LATEST").exists, run_dir)
        victim.append(json.loads((run_dir / "heartbeat" / "rank1.json").read_text())["node"])
        yield run_dir, str(record(run_dir)["job_id"]), victim
    finally:
        for node in victim:
            restore(node)
        subprocess.run(["scancel", f"--name={NAME}"], capture_output=True, check=False)


def kill(*pids: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def slurmd_pid(node: str) -> int:
    return int(Path(f"/run/slurmd-{node}.pid").read_text())


def latest_step(run_dir: Path) -> int:
    return int((run_dir / "checkpoints" / "LATEST").read_text().strip().rsplit("-", 1)[1])


def assert_resumed_once(log: str, step: int) -> None:
    """Both ranks of the attempt in ``log`` started after ``step``, once, and finished."""
    for rank in (0, 1):
        assert f"rank {rank} starts after step {step} on " in log, log
        assert log.count(f"rank {rank} done at step ") == 1, log
    assert f"rank 0 done at step {step + AFTER_RESUME}" in log, log


def assert_nothing_left(run_dir: Path) -> None:
    left = subprocess.run(["pgrep", "-af", str(run_dir)], capture_output=True, text=True).stdout
    assert not left.strip(), left
    for node in ("n1", "n2", "n3"):
        assert node_state(node) in ("idle", "mix", "alloc"), (node, node_state(node))


def test_a_lost_node_is_excluded_and_the_run_resumes_once_without_it(
    launched: tuple[Path, str, list[str]],
) -> None:
    run_dir, first, (lost,) = launched
    pid = int((run_dir / "ready.1").read_text())
    killed = time.monotonic()
    kill(slurmd_pid(lost), parent(pid), pid)  # the node dies: its daemons and its rank
    rec = wait_for("a successor", lambda: (r := record(run_dir))["job_id"] != first and r, run_dir)
    detected_s = time.monotonic() - killed
    step = latest_step(run_dir)
    restore(lost)
    successor = str(rec["job_id"])
    assert rec["extra"]["excluded_nodes"] == [lost], job_log(run_dir)
    assert rec["extra"]["lost_nodes"] == [lost]
    assert rec["extra"]["resubmitted_from"] == first and rec["extra"]["node_resubmits"] == 1
    assert wait_for_job(successor, timeout=120) == "COMPLETED", job_log(run_dir)
    print(f"node loss detected and resubmitted {detected_s:.1f}s after the kill")
    # Bounded: srun's grace and its wait for the lost task (KillWait + 2 s), the probe
    # (5 + 2 s); and before the cluster's SlurmdTimeout (30 s) would mark the node down.
    assert detected_s < 30, detected_s
    # The first job ended with its own code and was not requeued by Slurm as well; the
    # successor ran once, without the lost node.
    assert sacct(first, "State,ExitCode") == ["FAILED|79:0"], job_log(run_dir)
    assert sacct(successor, "State") == ["COMPLETED"]
    nodes = hostnames(sacct(successor, "NodeList")[0])
    assert lost not in nodes and len(nodes) == 2, nodes
    rec = record(run_dir)
    assert rec["state"] == "COMPLETED" and rec["job_id"] == successor, rec
    assert rec["extra"]["last_interruption"] == "node_lost"
    assert rec["extra"]["restart_count"] == 1
    log = (run_dir / "logs" / f"slurm-{successor}.out").read_text()
    assert "(restart 1)" in log, log
    assert_resumed_once(log, step)  # from the checkpoint newest at the loss
    first_log = (run_dir / "logs" / f"slurm-{first}.out").read_text()
    assert f"node {lost} lost" in first_log, first_log
    assert f"job {successor} goes on without {lost}" in first_log, first_log
    assert_nothing_left(run_dir)


def test_a_dead_slurmd_gets_the_job_requeued_without_its_node(
    launched: tuple[Path, str, list[str]],
) -> None:
    run_dir, job_id, (lost,) = launched
    killed = time.monotonic()
    kill(slurmd_pid(lost))  # the ranks and their slurmstepd go on
    wait_for(
        "a requeue",
        lambda: (q := squeue(job_id)) is not None and q[0] == "PENDING",
        run_dir,
        timeout=90,
    )
    requeued_s = time.monotonic() - killed
    release(job_id)
    wait_for("the next attempt", lambda: record(run_dir)["extra"].get("restart_count"), run_dir)
    step = latest_step(run_dir)
    assert wait_for_job(job_id, timeout=120) == "COMPLETED", job_log(run_dir)
    print(f"requeued by Slurm {requeued_s:.1f}s after the slurmd was killed")
    assert sacct_states(job_id) == ["NODE_FAIL", "COMPLETED"], job_log(run_dir)
    nodes = hostnames(sacct(job_id, "NodeList")[-1])
    assert lost not in nodes and len(nodes) == 2, nodes
    rec = record(run_dir)
    assert rec["state"] == "COMPLETED" and rec["extra"]["restart_count"] == 1, rec
    assert rec["extra"]["last_interruption"] == "node_fail"
    assert rec["extra"]["excluded_nodes"] == [lost]
    log = (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    assert "node_fail at step " in log[: log.index("(restart 1)")], log  # the batch shell's word
    second = log[log.index("(restart 1)") :]
    assert_resumed_once(second, step)
    restore(lost)
    assert_nothing_left(run_dir)
