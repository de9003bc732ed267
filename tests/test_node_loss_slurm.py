"""A node lost in the middle of a 2-node job on the real test cluster: its slurmd, its
slurmstepd and its rank are killed hard (as a crashed node's would be). The batch shell
finds the node within fault.node_probe_timeout_s, adds it to the run's exclusion list,
and a successor job that excludes it resumes the run from its last durable checkpoint
on the spare node n3, once, to the end.
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

from slurm_helpers import require_cluster, wait_for_job
from support import REPO, hpc_launch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEADY = REPO / "tests" / "jobs" / "steady_steps.py"
STEPS = 400


def wait_for(what: str, check, timeout: float = 120):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.2)
    return value


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "job.json").read_text())


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def restore(node: str) -> None:
    """The node's slurmd again, as slurm/testcluster/up starts it; resumed if it went down."""
    if subprocess.run(["pgrep", "-f", f"slurmd -N {node}$"], capture_output=True).returncode:
        subprocess.run(["slurmd", "-N", node], check=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["sinfo", "-h", "-N", "-n", node, "-o", "%t"], capture_output=True, text=True
        ).stdout.split()
        if state and state[0] in ("idle", "mix", "alloc"):
            return
        if state and state[0].rstrip("*~#") in ("down", "drain", "drng", "fail"):
            subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)
        time.sleep(1)


def sacct(job_id: str, fields: str) -> str:
    return subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", fields],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_a_lost_node_is_excluded_and_the_run_resumes_once_without_it(workdir: Path) -> None:
    require_cluster(min_nodes=3)
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            "cluster=slurm",
            "resources.partition=faults",
            "resources.nodes=2",
            "resources.tasks_per_node=1",
            "resources.time=00:10:00",
            "cluster.exit_grace_s=5",
            f"job.entrypoint={STEADY}",
            "job.name=hpcN-loss",
            f"run_dir={run_dir}",
            "tracking.enabled=false",
            "checkpoint.every_steps=20",
            "fault.node_probe_timeout_s=10",
        ],
        workdir,
        timeout=120,
        STEPS=str(STEPS),
    )
    assert proc.returncode == 0, proc.stderr
    first = str(record(run_dir)["job_id"])
    lost = ""
    try:
        pid = int(
            wait_for(
                "3 steps on rank 1",
                lambda: (run_dir / "ready.1").exists() and (run_dir / "ready.1").read_text(),
            )
        )
        wait_for("a checkpoint", lambda: (run_dir / "checkpoints" / "LATEST").exists())
        lost = json.loads((run_dir / "heartbeat" / "rank1.json").read_text())["node"]
        slurmd = int(Path(f"/run/slurmd-{lost}.pid").read_text())
        stepd = parent(pid)
        for victim in (slurmd, stepd, pid):  # the node dies: its daemons and its rank
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        rec = wait_for("a successor", lambda: (r := record(run_dir))["job_id"] != first and r)
        latest = (run_dir / "checkpoints" / "LATEST").read_text().strip()
        restore(lost)
        successor = str(rec["job_id"])
        assert rec["extra"]["excluded_nodes"] == [lost] and rec["extra"]["lost_nodes"] == [lost]
        assert rec["extra"]["resubmitted_from"] == first and rec["extra"]["node_resubmits"] == 1
        assert wait_for_job(successor, timeout=240) == "COMPLETED"
    finally:
        if lost:
            restore(lost)
        subprocess.run(["scancel", "--name=hpcN-loss"], capture_output=True, check=False)
    assert sacct(first, "State,ExitCode").split("|") == ["FAILED", "79:0"]
    nodes = sacct(successor, "NodeList")
    assert (
        lost
        not in subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True
        ).stdout.split()
    ), nodes
    rec = record(run_dir)
    assert rec["state"] == "COMPLETED" and rec["job_id"] == successor, rec
    assert rec["extra"]["last_interruption"] == "node_lost"
    log = (run_dir / "logs" / f"slurm-{successor}.out").read_text()
    step = int(latest.rsplit("-", 1)[1])
    assert f"rank 0 starts after step {step} on " in log, log  # the checkpoint at the loss
    assert f"rank 0 done at step {STEPS}" in log and "(restart 1)" in log, log
    first_log = (run_dir / "logs" / f"slurm-{first}.out").read_text()
    assert (
        f"node {lost} lost" in first_log and f"job {successor} goes on without {lost}" in first_log
    )
