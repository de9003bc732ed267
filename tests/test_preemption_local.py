"""Preemption on the local launcher: random preemptions resume to bitwise-equal results."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from preemption_helpers import assert_bitwise_equal, final_model, loss_history, only_run_dir
from support import cli_env, hpc_launch

pytestmark = pytest.mark.slow

# 40 epochs x 23 batches per rank = 920 steps, checkpoints only at preemptions and the end.
JOB = ["job.epochs=40", "checkpoint.every_steps=100000"]
STEPS = 920


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[tuple[int, float]]]:
    workdir = tmp_path_factory.mktemp("reference")
    proc = hpc_launch(JOB, workdir, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(workdir)
    return final_model(run_dir), loss_history(run_dir, f"sqlite:///{workdir / 'mlflow.db'}")


# Async: periodic checkpoints too, so that stops also come while a save is in flight.
ASYNC_JOB = ["job.epochs=40", "checkpoint.every_steps=37", "checkpoint.async=true"]


@pytest.mark.parametrize("job", [JOB, ASYNC_JOB], ids=["sync", "async"])
def test_ten_random_preemptions_end_bitwise_equal(reference, workdir: Path, job) -> None:
    rng = random.Random(1234)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpc.cli.launch", *job],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            # Training runs: the first start, then after each restart's resume.
            first = line.startswith("hpc-launch: rank 0/2") and not any(
                "stopping at step" in seen for seen in lines
            )
            if first or "resumed from" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = 0
    try:
        while sent < 10 and proc.poll() is None:
            if not started.wait(timeout=120):
                break
            started.clear()
            time.sleep(rng.uniform(0.01, 0.25))  # a random step somewhere in the run
            if proc.poll() is None:
                proc.send_signal(signal.SIGUSR2)
                sent += 1
        assert proc.wait(timeout=600) == 0, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    stops = [line for line in lines if "stopping at step" in line]
    assert sent == 10 and len(stops) == 10, "".join(lines[-40:])
    assert len({s.split("stopping at step ")[1].split()[0] for s in stops}) >= 5
    run_dir = only_run_dir(workdir)
    ref_model, ref_losses = reference
    assert_bitwise_equal(final_model(run_dir), ref_model)
    losses = loss_history(run_dir, f"sqlite:///{workdir / 'mlflow.db'}")
    assert [s for s, _ in losses] == list(range(1, STEPS + 1)), "each step exactly once"
    assert losses == ref_losses  # same values too: nothing replayed differently


def test_sigterm_stops_and_resume_continues(reference, workdir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpc.cli.launch", *JOB],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = []
    for line in proc.stdout:  # type: ignore[union-attr]
        out.append(line)
        if line.startswith("epoch 3/"):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, "".join(out)
    run_dir = only_run_dir(workdir)
    assert f"resume={run_dir}" in "".join(out)
    assert (run_dir / "checkpoints" / "LATEST").exists()
    again = hpc_launch([f"resume={run_dir}"], workdir, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resumed from step-" in again.stdout
    assert_bitwise_equal(final_model(run_dir), reference[0])
    losses = loss_history(run_dir, f"sqlite:///{workdir / 'mlflow.db'}")
    assert losses == reference[1]


def test_resume_rejects_config_changes(workdir: Path, reference) -> None:
    proc = hpc_launch(["job.epochs=1", "tracking.enabled=false"], workdir, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(workdir)
    bad = hpc_launch([f"resume={run_dir}", "job.lr=0.5"], workdir)
    assert bad.returncode == 2 and "error: job.lr:" in bad.stderr


def _launch_and_preempt_once(args: list[str], workdir: Path) -> list[str]:
    """Run ``args``, send one USR2 (checkpoint and restart) after the first epoch."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpc.cli.launch", *args],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("epoch 1/") and not any("stopping at" in s for s in lines):
                proc.send_signal(signal.SIGUSR2)
        assert proc.wait(timeout=300) == 0, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
    return lines


# 8 ranks: HPC_TEST_RANKS=2,3,4,8 (slow on 2 cores; run by hand, not in CI).
RANKS = [int(r) for r in os.environ.get("HPC_TEST_RANKS", "2,3,4").split(",")]


@pytest.mark.parametrize("ranks", RANKS)
def test_resume_bitwise_equal_at_world_size(ranks: int, workdir: Path) -> None:
    """From 3 ranks on, a resumed run used to drift by an ulp (DDP re-bucketing)."""
    job = [
        "job.epochs=3",
        "checkpoint.every_steps=100000",
        "tracking.enabled=false",
        f"resources.tasks_per_node={ranks}",
    ]
    ref = hpc_launch([*job, f"run_dir={workdir / 'ref'}"], workdir, timeout=300)
    assert ref.returncode == 0, ref.stderr
    lines = _launch_and_preempt_once([*job, f"run_dir={workdir / 'pre'}"], workdir)
    assert any("resumed from step-" in line for line in lines), "".join(lines[-30:])
    assert_bitwise_equal(final_model(workdir / "pre"), final_model(workdir / "ref"))
