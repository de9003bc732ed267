"""A finished run is COMPLETED, whatever arrives after FINISHED (issue 11, item 5).

The job (tests/jobs/hold_at_exit.py) writes FINISHED through the Session and then
holds its interpreter's shutdown until the test has sent its stop signal: no
sleep races. The signal goes to the launcher (which forwards it) and straight
to every worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import cli_env, hpc

HOLD_JOB = Path(__file__).parent / "jobs" / "hold_at_exit.py"
JOB = [f"job.entrypoint={HOLD_JOB}", "tracking.enabled=false", "checkpoint.every_steps=1"]


def wait_for_files(paths: list[Path], proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() and p.read_text() for p in paths):
        assert proc.poll() is None, f"launcher exited {proc.returncode} before the hold"
        assert time.monotonic() < deadline, f"no {paths} after {timeout}s"
        time.sleep(0.05)


def shown_state(workdir: Path, run_dir: Path) -> tuple[str, str]:
    show = hpc(["show", str(run_dir)], workdir)
    status = hpc(["status", "--json"], workdir)
    assert show.returncode == 0 and status.returncode == 0, show.stderr + status.stderr
    (listed,) = [r for r in json.loads(status.stdout) if r["run_dir"] == str(run_dir)]
    return json.loads(show.stdout)["state"], listed["state"]


@pytest.mark.parametrize("signame", ["SIGUSR2", "SIGTERM"])
def test_a_stop_signal_after_finished_leaves_the_run_completed(workdir: Path, signame: str) -> None:
    run_dir = workdir / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpc.cli.launch", *JOB, f"run_dir={run_dir}"],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        markers = [run_dir / f"exiting.{rank}" for rank in (0, 1)]
        wait_for_files(markers, proc)
        assert (run_dir / "FINISHED").exists()
        signum = signal.Signals[signame]
        proc.send_signal(signum)
        for marker in markers:  # the workers are shutting down: FINISHED is written
            os.kill(int(marker.read_text()), signum)
        time.sleep(0.3)  # let the launcher forward it too
        (run_dir / "release").touch()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "COMPLETED" in out.splitlines()[-1], out
    record = json.loads((run_dir / "job.json").read_text())
    assert (record["state"], record["exit_code"]) == ("COMPLETED", 0), record
    assert shown_state(workdir, run_dir) == ("COMPLETED", "COMPLETED")


def test_hpc_show_says_completed_for_a_finished_run_recorded_failed(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record left FAILED by a kill after the end (as before this fix) shows COMPLETED."""
    from hpc.rundir import records

    monkeypatch.setenv("HPC_STATE_DIR", str(workdir / ".state"))
    run_dir = workdir / "run"

    records.create(
        records.RunRecord(
            name="digits",
            launcher="slurm",
            run_dir=str(run_dir),
            config_file=str(run_dir / "config.yaml"),
            tracking_uri=None,
            checkpoint_dir=str(run_dir / "checkpoints"),
            state="FAILED",
            exit_code=140,
        )
    )
    (run_dir / "FINISHED").write_text("finished\n")
    assert shown_state(workdir, run_dir) == ("COMPLETED", "COMPLETED")
