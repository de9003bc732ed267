"""MLflow outages lose nothing and never slow training (a real ``mlflow server``).

The digits job runs locally (2 workers) against an MLflow tracking server that
is stopped mid-run and restarted on the same port and store, or that only comes
up near the end. Rank 0 spools every record to disk and a sender thread ships
it, so the job completes, every loss step reaches MLflow exactly once and in
order, and no training step waits on the server.

Why 150 epochs and not 40: digits trains 40 epochs in about 4 s here while an
``mlflow server`` takes 6-15 s to start, so with 40 epochs the restarted server
would only ever see the final flush; 150 epochs (~15-25 s) keep the job
training while the server is down *and* after it is back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from hpc.launchers.local import free_port

from preemption_helpers import only_run_dir
from support import cli_env

pytestmark = pytest.mark.slow

EPOCHS = 150
STEPS_PER_EPOCH = 23  # 1437 training samples / 2 ranks / batch 32
STEPS = EPOCHS * STEPS_PER_EPOCH
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .* slowest step (\d+\.\d+)s")


class MlflowServer:
    """``mlflow server`` on a fixed port and SQLite store, in its own process group."""

    def __init__(
        self,
        directory: Path,
        port: int,
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.extra_args = extra_args
        self.extra_env = extra_env or {}
        self.directory = directory
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None
        self.starts += 1
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no huey workers
        env.update(self.extra_env)
        env.pop("MLFLOW_TRACKING_URI", None)
        log = open(self.directory / f"server-{self.starts}.log", "wb")  # noqa: SIM115
        with log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{self.directory / 'mlflow.db'}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                    *self.extra_args,
                ],
                cwd=self.directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, f"no /health after {timeout}s: {self.log_tail()}"
            time.sleep(0.2)
        return time.time()

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # uvicorn's worker, if still there
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        deadline = time.monotonic() + 10
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not self.healthy(), "the server still answers after being stopped"

    def log_tail(self) -> str:
        path = self.directory / f"server-{self.starts}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def server(tmp_path: Path):
    directory = tmp_path / "mlflow"
    directory.mkdir()
    srv = MlflowServer(directory, free_port())
    yield srv
    srv.stop()


class Job:
    """``hpc-launch`` of the digits job, rank 0's output read line by line."""

    def __init__(self, workdir: Path, uri: str, args: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpc.cli.launch",
                f"tracking.uri={uri}",
                f"job.epochs={EPOCHS}",
                *args,
            ],
            cwd=workdir,
            env=cli_env(workdir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.events: dict[int, threading.Event] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def at_epoch(self, epoch: int) -> threading.Event:
        return self.events.setdefault(epoch, threading.Event())

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))
            match = EPOCH_LINE.match(line)
            if match:
                for epoch, event in list(self.events.items()):
                    if int(match.group(1)) >= epoch:
                        event.set()
        for event in list(self.events.values()):  # the job ended: wake any waiter
            event.set()

    def wait(self, timeout: float = 600) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.reader.join(timeout=10)
        return code

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    def epoch_lines(self) -> list[tuple[int, float]]:
        out = []
        for line in self.lines:
            match = EPOCH_LINE.match(line)
            if match:
                assert int(match.group(2)) == EPOCHS
                out.append((int(match.group(1)), float(match.group(3))))
        return out


def check_training_was_not_slowed(job: Job) -> None:
    epochs = job.epoch_lines()
    assert [e for e, _ in epochs] == list(range(1, EPOCHS + 1)), job.tail()
    slow = [(e, s) for e, s in epochs if s >= 1.0]
    assert not slow, f"epochs whose slowest step took >= 1 s: {slow}"


def check_mlflow_run(run_dir: Path, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    record = json.loads((run_dir / "job.json").read_text())
    run_id = record["mlflow_run_id"]
    assert run_id, "job.json never got its mlflow_run_id"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("hpc-launch")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id], "exactly one MLflow run"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "loss")
    steps = [m.step for m in history]
    assert sorted(steps) == list(range(1, STEPS + 1)), (
        f"{len(steps)} loss values, {len(set(steps))} distinct steps, "
        f"missing {sorted(set(range(1, STEPS + 1)) - set(steps))[:10]}"
    )
    by_step = sorted(history, key=lambda m: m.step)
    stamps = [m.timestamp for m in by_step]
    assert stamps == sorted(stamps), "loss values were logged out of order"
    accuracy = client.get_metric_history(run_id, "accuracy")
    assert sorted(m.step for m in accuracy) == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]
    params = run.data.params
    assert params["job.epochs"] == str(EPOCHS)
    assert params["job.lr"] == "0.05" and params["resources.tasks_per_node"] == "2"
    assert params["tracking.uri"] == uri
    tags = run.data.tags
    assert tags["launcher"] == "local" and tags["world_size"] == "2"
    assert tags["run_dir"] == str(run_dir) and tags["job_id"] == record["job_id"]
    assert tags["restart_count"] == "0" and tags["last_interruption"] == "none"
    assert not (run_dir / "PREEMPTED").exists()


def test_server_stopped_and_restarted_mid_run(server: MlflowServer, workdir: Path) -> None:
    server.start()
    server.wait_healthy()
    job = Job(workdir, server.url)
    stop_at = job.at_epoch(3)
    assert stop_at.wait(300), job.tail()
    assert job.proc.poll() is None, job.tail()
    server.stop()
    stopped_at = len(job.epoch_lines())
    time.sleep(3)
    server.start()
    up = server.wait_healthy()
    back_at = len(job.epoch_lines())
    code = job.wait()
    assert code == 0, job.tail()
    assert any("MLflow unreachable" in line for line in job.lines), "no outage was seen"
    print(f"server down from epoch {stopped_at} to epoch {back_at} (up at {up:.1f})")
    check_training_was_not_slowed(job)
    run_dir = only_run_dir(workdir)
    check_mlflow_run(run_dir, server.url)
    assert not list((run_dir / "tracking").glob(".*.tmp"))
    assert json.loads((run_dir / "job.json").read_text())["state"] == "COMPLETED"


def test_server_down_from_the_start_comes_up_near_the_end(
    server: MlflowServer, workdir: Path
) -> None:
    job = Job(workdir, server.url)
    late = job.at_epoch(EPOCHS // 3)
    assert late.wait(300), job.tail()
    run_dir = only_run_dir(workdir)
    assert json.loads((run_dir / "job.json").read_text())["mlflow_run_id"] is None
    server.start()
    up = server.wait_healthy()
    up_at = len(job.epoch_lines())
    code = job.wait()
    assert code == 0, job.tail()
    print(f"server up at epoch {up_at} of {EPOCHS}")
    check_training_was_not_slowed(job)
    check_mlflow_run(run_dir, server.url)
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "job.json").read_text())["mlflow_run_id"]
    run = MlflowClient(tracking_uri=server.url).get_run(run_id)
    assert run.info.start_time >= (up - 5) * 1000, "the run was created only once the server was up"
