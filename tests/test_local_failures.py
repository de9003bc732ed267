"""Worker failure and signal propagation in the local launcher, with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import cli_env, hpc_launch

WORKER = """
import os, subprocess, sys, time
rank = int(os.environ["RANK"])
child = subprocess.Popen(["sleep", "300"])  # a grandchild that must not be orphaned
out = os.path.join(os.environ["HPC_RUN_DIR"], f"pids.{rank}")
with open(out + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()} {child.pid}")
os.replace(out + ".tmp", out)
print(f"rank {rank} ready", flush=True)
if rank == int(os.environ.get("FAIL_RANK", "-1")):
    time.sleep(0.5)
    sys.exit(3)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids(run_dir: Path, ranks: int) -> list[int]:
    pids: list[int] = []
    for rank in range(ranks):
        pids += [int(p) for p in (run_dir / f"pids.{rank}").read_text().split()]
    return pids


def wait_gone(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.fixture
def script(workdir: Path) -> Path:
    path = workdir / "worker.py"
    path.write_text(WORKER)
    return path


def test_worker_failure_fails_job_and_names_rank(workdir: Path, script: Path) -> None:
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            f"job.entrypoint={script}",
            f"run_dir={run_dir}",
            "tracking.enabled=false",
            "cluster.kill_grace_s=3",
        ],
        workdir,
        FAIL_RANK="1",
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert "rank 1 failed with exit code 3" in proc.stderr
    assert wait_gone(worker_pids(run_dir, 2)) == [], "orphaned processes left behind"
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "FAILED" and record["exit_code"] == 3
    assert "rank 1" in record["message"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_is_forwarded_and_workers_reaped(
    workdir: Path, script: Path, signum: int, code: int
) -> None:
    run_dir = workdir / "run"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpc.cli.launch",
            f"job.entrypoint={script}",
            f"run_dir={run_dir}",
            "tracking.enabled=false",
            "resources.tasks_per_node=3",
        ],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not all((run_dir / f"pids.{r}").exists() for r in range(3)):
            assert time.monotonic() < deadline, "workers did not start"
            assert launcher.poll() is None, launcher.communicate()
            time.sleep(0.1)
        pids = worker_pids(run_dir, 3)
        assert all(alive(p) for p in pids)
        os.kill(launcher.pid, signum)
        _, err = launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == code, err
    assert wait_gone(pids) == [], "orphaned processes left behind"
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "CANCELLED" and record["exit_code"] == code
