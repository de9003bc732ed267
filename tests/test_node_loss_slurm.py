"""A node lost in the middle of a 2-node job on the real test cluster: its slurmd, its
slurmstepd and its rank are killed hard (as a crashed node's would be). The batch shell
finds the node within fault.node_probe_timeout_s, adds it to the run's exclusion list,
and a successor job that excludes it resumes the run from its last durable checkpoint
on the spare node n3, once, to the end; no process of the run is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from slurm_helpers import require_cluster, wait_for_job
from support import REPO, hpc_launch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEADY = REPO / "tests" / "jobs" / "steady_steps.py"
STEPS = 400
NAME = "nl-loss"
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
            subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)
        time.sleep(1)


def sacct(job_id: str, fields: str, duplicates: bool = False) -> list[str]:
    """Job-level rows (every attempt with ``duplicates``), once the job has ended there."""
    cmd = ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", fields] + (["-D"] if duplicates else [])
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
        STEPS=str(STEPS),
    )
    assert proc.returncode == 0, proc.stderr
    first = str(record(run_dir)["job_id"])
    lost = ""
    successor = ""
    try:
        ready = run_dir / "ready.1"
        pid = int(
            wait_for("3 steps on rank 1", lambda: ready.exists() and ready.read_text(), run_dir)
        )
        wait_for("a checkpoint", (run_dir / "checkpoints" / "LATEST").exists, run_dir)
        lost = json.loads((run_dir / "heartbeat" / "rank1.json").read_text())["node"]
        slurmd = int(Path(f"/run/slurmd-{lost}.pid").read_text())
        stepd = parent(pid)
        killed = time.monotonic()
        for victim in (slurmd, stepd, pid):  # the node dies: its daemons and its rank
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        rec = wait_for(
            "a successor", lambda: (r := record(run_dir))["job_id"] != first and r, run_dir
        )
        detected_s = time.monotonic() - killed
        latest = (run_dir / "checkpoints" / "LATEST").read_text().strip()
        restore(lost)
        successor = str(rec["job_id"])
        assert rec["extra"]["excluded_nodes"] == [lost], job_log(run_dir)
        assert rec["extra"]["lost_nodes"] == [lost]
        assert rec["extra"]["resubmitted_from"] == first and rec["extra"]["node_resubmits"] == 1
        assert wait_for_job(successor, timeout=120) == "COMPLETED", job_log(run_dir)
        print(f"node loss detected and resubmitted {detected_s:.1f}s after the kill")
    finally:
        if lost:
            restore(lost)
        subprocess.run(["scancel", f"--name={NAME}"], capture_output=True, check=False)
    # Bounded: srun's grace and its wait for the lost task (KillWait + 2 s), the probe
    # (5 s); and before the cluster's SlurmdTimeout (30 s) would mark the node down.
    assert detected_s < 30, detected_s
    # The first job ended with its own code, was not requeued by Slurm as well, and the
    # successor ran once, without the lost node.
    assert sacct(first, "State,ExitCode", duplicates=True) == ["FAILED|79:0"], job_log(run_dir)
    assert sacct(successor, "State", duplicates=True) == ["COMPLETED"]
    nodes = hostnames(sacct(successor, "NodeList")[0])
    assert lost not in nodes and len(nodes) == 2, nodes
    rec = record(run_dir)
    assert rec["state"] == "COMPLETED" and rec["job_id"] == successor, rec
    assert rec["extra"]["last_interruption"] == "node_lost"
    assert rec["extra"]["restart_count"] == 1
    log = (run_dir / "logs" / f"slurm-{successor}.out").read_text()
    step = int(latest.rsplit("-", 1)[1])
    for rank in (0, 1):  # the checkpoint newest at the loss, once
        assert log.count(f"rank {rank} starts after step ") == 1, log
        assert f"rank {rank} starts after step {step} on " in log, log
    assert f"rank 0 done at step {STEPS}" in log and "(restart 1)" in log, log
    first_log = (run_dir / "logs" / f"slurm-{first}.out").read_text()
    assert f"node {lost} lost" in first_log, first_log
    assert f"job {successor} goes on without {lost}" in first_log, first_log
    # No rank, step or probe of the run is left on any node.
    left = subprocess.run(["pgrep", "-af", str(run_dir)], capture_output=True, text=True).stdout
    assert not left.strip(), left
    for node in ("n1", "n2", "n3"):
        assert node_state(node) in ("idle", "mix", "alloc"), (node, node_state(node))
