"""The hang watchdog in the local launcher, with real faults: a SIGSTOPped rank of a
2-rank gloo run, a straggler, and runs that are slow but progressing (no false alarm).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support import REPO, cli_env, hpc_launch

STEADY = REPO / "tests" / "jobs" / "steady_steps.py"
FAST = ["fault.stall_timeout_s=3", "fault.first_step_timeout_s=30"]


def launch(workdir: Path, run_dir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpc.cli.launch",
            f"job.entrypoint={STEADY}",
            "job.name=hpcH-local",
            f"run_dir={run_dir}",
            "checkpoint.every_steps=1000",
            *args,
        ],
        cwd=workdir,
        env=cli_env(workdir, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str], run_dir: Path, rank: int, timeout: float = 120) -> int:
    """The pid of ``rank`` once it has made 3 steps."""
    path = run_dir / f"ready.{rank}"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"rank {rank} made no 3 steps"
        time.sleep(0.1)
    return int(path.read_text())


def record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "job.json").read_text())


def test_a_stopped_rank_is_detected_dumped_named_and_fails_the_job(workdir: Path) -> None:
    run_dir = workdir / "run"
    proc = launch(workdir, run_dir, *FAST)
    stopped = 0
    try:
        stopped = wait_ready(proc, run_dir, 1)
        deadline = time.monotonic() + 60  # the MLflow run exists (the hang is tagged on it)
        while not record(run_dir).get("mlflow_run_id"):
            assert time.monotonic() < deadline, "no MLflow run"
            time.sleep(0.2)
        os.kill(stopped, signal.SIGSTOP)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        if stopped:
            with_suppressed_kill(stopped, signal.SIGKILL)
    assert proc.returncode == 76, err
    assert "FAILED_HANG" in err and "rank 1 on " in err, err
    rec = record(run_dir)
    assert rec["state"] == "FAILED_HANG" and rec["exit_code"] == 76
    hang = rec["extra"]["hang"]
    assert hang["ranks"] == [1] and hang["kind"] == "stall" and hang["nodes"]
    text = Path(hang["stacks"]).read_text()
    assert "rank 1 STUCK" in text and "rank 0: " in text
    # both ranks' stacks: rank 0 waits in the all-reduce, rank 1 (continued) in its loop
    rank0, rank1 = text.split("--- rank 0 ")[1].split("--- rank 1 ")
    assert "in all_reduce" in rank0 and "steady_steps.py" in rank0
    assert rank1.startswith("(node") and "after SIGCONT" in rank1.splitlines()[0]
    assert "steady_steps.py" in rank1
    tags = mlflow_tags(workdir / "mlflow.db", rec["mlflow_run_id"])
    assert tags["hang.ranks"] == "1" and tags["hang.kind"] == "stall"
    assert tags["hang.stacks"] == hang["stacks"] and tags["last_interruption"] == "hang"


def test_a_straggler_is_named(workdir: Path) -> None:
    run_dir = workdir / "run"
    proc = launch(
        workdir,
        run_dir,
        "fault.stall_timeout_s=10",
        "fault.first_step_timeout_s=60",
        "fault.straggler_steps=30",
        "tracking.enabled=false",
        NO_COLLECTIVE="1",
        SLOW_RANK="1",
    )
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 76, err
    hang = record(run_dir)["extra"]["hang"]
    assert hang["kind"] == "straggler" and hang["ranks"] == [1], hang
    assert "fault.straggler_steps=30" in hang["detail"]


@pytest.mark.parametrize(
    ("env", "what"),
    [
        ({"STEP_S": "1.5", "STEPS": "5"}, "steps slower than a heartbeat, each under the timeout"),
        ({"FIRST_STEP_DELAY_S": "8", "STEPS": "3"}, "a first step later than stall_timeout_s"),
    ],
)
def test_slow_but_progressing_runs_are_not_hangs(
    workdir: Path, env: dict[str, str], what: str
) -> None:
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            f"job.entrypoint={STEADY}",
            "job.name=hpcH-slow",
            f"run_dir={run_dir}",
            "checkpoint.every_steps=1000",
            "tracking.enabled=false",
            "fault.stall_timeout_s=3",
            "fault.first_step_timeout_s=20",
        ],
        workdir,
        timeout=120,
        **env,
    )
    assert proc.returncode == 0, f"{what}: {proc.stderr}"
    rec = record(run_dir)
    assert rec["state"] == "COMPLETED" and "hang" not in rec["extra"], what
    assert not (run_dir / "hangs").exists()
    beats = [json.loads(p.read_text()) for p in (run_dir / "heartbeat").glob("rank*.json")]
    assert sorted(b["rank"] for b in beats) == [0, 1]  # they were watched
    assert all(b["state"] == "exiting" and b["step"] == int(env["STEPS"]) for b in beats)


def test_watchdog_off_leaves_a_stopped_rank_alone(workdir: Path) -> None:
    run_dir = workdir / "run"
    proc = launch(workdir, run_dir, *FAST, "fault.watchdog=false", "tracking.enabled=false")
    stopped = 0
    try:
        stopped = wait_ready(proc, run_dir, 1)
        os.kill(stopped, signal.SIGSTOP)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)  # three stall timeouts and more: nothing acts
        assert not (run_dir / "heartbeat").exists()
        assert record(run_dir)["state"] == "RUNNING"
    finally:
        proc.send_signal(signal.SIGTERM)
        if stopped:
            with_suppressed_kill(stopped, signal.SIGKILL)
        proc.communicate(timeout=60)


def with_suppressed_kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def mlflow_tags(db: Path, run_id: str) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,))
        return dict(rows.fetchall())


def test_the_first_step_is_reported_at_once_later_ones_on_the_beat(tmp_path: Path) -> None:
    """A rank stopped right after its first steps must not look like one that never
    reached a step (that would wait for fault.first_step_timeout_s instead)."""
    from hpc.runtime.heartbeat import Heartbeat, read_beats

    beat = Heartbeat(tmp_path, 0, 1, "n0", {"stall_timeout_s": 50})  # a beat every 5 s
    beat.start()
    try:
        assert read_beats(tmp_path)[0]["step"] is None
        beat.progress(1)
        deadline = time.monotonic() + 2
        while read_beats(tmp_path)[0]["step"] != 1:
            assert time.monotonic() < deadline, "the first step was not reported at once"
            time.sleep(0.02)
        beat.progress(2)
        time.sleep(0.3)
        assert read_beats(tmp_path)[0]["step"] == 1, "later steps wait for the next beat"
    finally:
        beat.stop()
    assert read_beats(tmp_path)[0] | {"step": 2, "state": "done"} == read_beats(tmp_path)[0]
