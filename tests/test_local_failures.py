"""Worker failure and signal propagation in the local launcher, with real processes."""

from __future__ import annotations

import json
import os
import shutil
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


FULL_DISK_WORKER = """
import os, time, torch
from hpc.runtime.session import Session, load_config


class SlowToPickle:  # rank 0's state takes a moment: rank 1 has its shard written by then
    def __reduce__(self):
        time.sleep(1.0)
        return (int, (0,))


with Session.from_env(load_config()) as s:
    state = {"w": torch.zeros(4)}
    if s.rank == 0:  # 8 MB: more than the checkpoint file system holds
        state = {"slow": SlowToPickle(), "w": torch.zeros(2 << 20)}
    try:
        s.save_checkpoint(1, state)
    finally:
        if s.rank == 0:
            time.sleep(float(os.environ.get("RANK0_EXIT_DELAY", "0")))
"""


def test_full_disk_on_rank0_blames_rank0(workdir: Path) -> None:
    """Rank 0 hits a real ENOSPC (a 1 MB tmpfs in a private mount namespace) while saving;
    rank 1 only sees the lost peer and exits first. The final line must name rank 0."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private tmpfs")
    script = workdir / "full_disk.py"
    script.write_text(FULL_DISK_WORKER)
    ckpt, run_dir = workdir / "ckpt", workdir / "run"
    ckpt.mkdir()
    mount = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", mount, str(ckpt), "true"])
    if probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs in a user+mount namespace here")
    args = [f"job.entrypoint={script}", f"run_dir={run_dir}", f"checkpoint.dir={ckpt}"]
    args += ["tracking.enabled=false", "cluster.kill_grace_s=5"]
    launch = [sys.executable, "-m", "hpc.cli.launch", *args]
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount, str(ckpt), *launch],
        cwd=workdir,
        env=cli_env(workdir, RANK0_EXIT_DELAY="3"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "No space left on device" in (run_dir / "logs" / "rank0.log").read_text()
    assert proc.returncode == 1, proc.stderr
    final = proc.stderr.strip().splitlines()[-1]
    assert "rank 0 failed with exit code 1" in final and "No space left" in final, final
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "FAILED" and "rank 0" in record["message"]


HANG_AT_EXIT_WORKER = """
import os, time, torch, torch.distributed as dist
from hpc.runtime.session import Session, load_config

with Session.from_env(load_config()) as s:
    ddp = s.wrap_model(torch.nn.Linear(4, 2))
    ddp(torch.randn(3, 4)).sum().backward()
# The session tore down while the wrapper is alive: reducer released, group destroyed.
assert not dist.is_initialized() and ddp.process_group is None
assert not hasattr(ddp, "reducer"), "the reducer still holds the process group"
print(f"rank {s.rank} teardown ok", flush=True)
if s.rank == 1:
    time.sleep(120)  # stands in for a rank stuck in teardown after the session
"""


HANG_WITHOUT_SESSION = """
import os, time
if os.environ["RANK"] == "1":
    time.sleep(120)  # a plain script (no Session, no FINISHED) whose rank 1 never exits
"""


def test_rank_hung_at_exit_is_killed_and_named(workdir: Path) -> None:
    """Rank 0 finishes, rank 1 never exits: the launcher must not wait forever. The run
    wrote FINISHED, so it is COMPLETED, and the final line names the hung rank."""
    script = workdir / "hang.py"
    script.write_text(HANG_AT_EXIT_WORKER)
    run_dir = workdir / "run"
    started = time.monotonic()
    proc = hpc_launch(
        [
            f"job.entrypoint={script}",
            f"run_dir={run_dir}",
            "tracking.enabled=false",
            "cluster.exit_grace_s=3",
        ],
        workdir,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 80
    final = proc.stderr.strip().splitlines()[-1]
    assert "COMPLETED" in final and "warning: rank 1 did not exit within 3s" in final, final
    for rank in (0, 1):
        assert f"rank {rank} teardown ok" in (run_dir / "logs" / f"rank{rank}.log").read_text()
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "COMPLETED" and "rank 1 did not exit" in record["message"]


def test_unfinished_rank_hung_at_exit_fails_named(workdir: Path) -> None:
    """Without FINISHED (a plain script), a rank hung after another exited is a named error."""
    script = workdir / "plain_hang.py"
    script.write_text(HANG_WITHOUT_SESSION)
    run_dir = workdir / "run"
    started = time.monotonic()
    proc = hpc_launch(
        [f"job.entrypoint={script}", f"run_dir={run_dir}", "cluster.exit_grace_s=3"],
        workdir,
        timeout=90,
    )
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 80
    assert "rank 1 did not exit within 3s (cluster.exit_grace_s) after rank 0" in proc.stderr
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "FAILED" and "rank 1 did not exit" in record["message"]
