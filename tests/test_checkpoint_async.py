"""Asynchronous checkpoints: a snapshot of the state, files instead of collectives,
errors surfaced in the training thread, and a failed save failing the run."""

from __future__ import annotations

import json
import multiprocessing
import random
import signal
import threading
import time
from pathlib import Path

import async_kill_child
import pytest
import torch
from test_checkpoint_crash import check_directory, crash_phase

from hpc.runtime.checkpoint import LATEST, CheckpointManager
from hpc.runtime.checkpoint_async import AsyncCheckpointer, AsyncCheckpointError

from support import hpc_launch

ELEMENTS = 4_000_000  # 16 MB: the background write takes far longer than an in-place update


def test_the_file_holds_the_staged_values_not_later_updates(tmp_path: Path) -> None:
    weight = torch.full((ELEMENTS,), 1.0)
    bias = torch.arange(10, dtype=torch.float64)
    state = {"model": {"w": weight, "b": bias, "tied": weight}, "extra": {"lr": [0.1]}, "step": 1}
    saver = AsyncCheckpointer(CheckpointManager(tmp_path, keep=3))
    path = saver.save(1, state)
    assert saver.stager.nbytes == weight.nbytes + bias.nbytes  # one buffer for the tied tensor
    # The training thread goes on at once: the model and the rest change in place.
    weight.add_(100.0)
    bias.mul_(-1)
    state["extra"]["lr"][0] = 99.0
    state["step"] = 2
    saver.wait()
    assert (tmp_path / LATEST).read_text().strip() == path.name
    loaded = CheckpointManager(tmp_path).load_latest()
    assert loaded is not None and loaded.step == 1 and loaded.path == path
    assert bool(torch.all(loaded.state["model"]["w"] == 1.0))
    assert torch.equal(loaded.state["model"]["b"], torch.arange(10, dtype=torch.float64))
    assert loaded.state["extra"] == {"lr": [0.1]} and loaded.state["step"] == 1
    # The next save reuses the staging buffers: the new values, and the old file unchanged.
    saver.save(2, state)
    weight.zero_()
    saver.close()
    second = CheckpointManager(tmp_path, keep=3).load_latest()
    assert second is not None and second.step == 2
    assert bool(torch.all(second.state["model"]["w"] == 101.0))
    first = CheckpointManager(tmp_path, keep=3).load_latest(at_most=1)
    assert first is not None and bool(torch.all(first.state["model"]["w"] == 1.0))
    assert saver.stager.nbytes == 0  # close() frees the buffers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_staging_from_device_memory_is_a_pinned_snapshot(tmp_path: Path) -> None:
    weight = torch.full((ELEMENTS,), 1.0, device="cuda")
    saver = AsyncCheckpointer(CheckpointManager(tmp_path))
    saver.save(1, {"w": weight, "step": 1})
    assert all(b.is_pinned() and b.device.type == "cpu" for b in saver.stager._buffers)
    weight.add_(100.0)  # on the device, right after the non-blocking copies
    saver.close()
    loaded = CheckpointManager(tmp_path).load_latest()
    assert loaded is not None and loaded.state["w"].device.type == "cpu"
    assert bool(torch.all(loaded.state["w"] == 1.0))


def _ranks(directory: Path, world: int, wait_s: float = 60.0) -> list[AsyncCheckpointer]:
    """``world`` ranks as threads: a real barrier for the synchronous part only."""
    barrier = threading.Barrier(world)
    return [
        AsyncCheckpointer(
            CheckpointManager(directory, keep=2, rank=r, world_size=world, barrier=barrier.wait),
            wait_for_ranks_s=wait_s,
        )
        for r in range(world)
    ]


def _on_all(savers: list[AsyncCheckpointer], work) -> list[BaseException | None]:
    """Run ``work(rank, saver)`` on every rank's thread; each rank's exception or None."""
    errors: list[BaseException | None] = [None] * len(savers)

    def run(rank: int) -> None:
        try:
            work(rank, savers[rank])
        except BaseException as exc:
            errors[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(savers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_rank0_commits_once_every_ranks_part_is_there(tmp_path: Path) -> None:
    savers = _ranks(tmp_path, 3)
    commits: list[tuple[int, str, bool]] = []

    def work(rank: int, saver: AsyncCheckpointer) -> None:
        for step in (1, 2, 3):

            def on_commit(done: int, path: Path) -> None:
                commits.append((done, path.name, (tmp_path / LATEST).exists()))

            saver.save(step, {"t": torch.full((1000,), step + rank / 10)}, on_commit=on_commit)
        saver.close()

    assert _on_all(savers, work) == [None, None, None]
    assert commits == [(s, f"step-{s:09d}", True) for s in (1, 2, 3)]  # rank 0, in order
    manifest = json.loads((tmp_path / "step-000000003" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["rank0.pt", "rank1.pt", "rank2.pt"]
    for rank in range(3):
        loaded = CheckpointManager(tmp_path, rank=rank, world_size=3).load_latest()
        assert loaded is not None and loaded.step == 3
        assert bool(torch.all(loaded.state["t"] == 3 + rank / 10))
    assert [p.name for p in CheckpointManager(tmp_path).checkpoints()] == [
        "step-000000002",
        "step-000000003",
    ]


def test_a_failed_part_fails_the_commit_and_surfaces_on_both_ranks(tmp_path: Path) -> None:
    # Timeout long: rank 0 must fail because of rank 1's .failed file, not wait it out.
    savers = _ranks(tmp_path, 2, wait_s=600.0)
    seen: list[list[str]] = [[], []]

    def work(rank: int, saver: AsyncCheckpointer) -> None:
        saver.save(1, {"t": torch.ones(10)})
        saver.wait()
        # Rank 1's second state cannot be pickled: its background write fails.
        bad = {"t": torch.ones(10), "f": (lambda: 0) if rank == 1 else None}
        saver.save(2, bad)
        try:
            saver.save(3, {"t": torch.ones(10)})  # waits for step 2 first: raises there
        except AsyncCheckpointError as exc:
            seen[rank].append(str(exc))
        saver.wait()  # the error was raised once; nothing in flight

    assert _on_all(savers, work) == [None, None]
    assert "step 2 failed on rank 1" in seen[1][0], seen
    assert "step 2 failed on rank 0" in seen[0][0] and "rank1" in seen[0][0], seen
    assert "within" not in seen[0][0]  # not the timeout
    assert (tmp_path / LATEST).read_text().strip() == "step-000000001"
    assert [p.name for p in CheckpointManager(tmp_path).checkpoints()] == ["step-000000001"]
    # The ranks go on: the next save commits.
    assert _on_all(savers, lambda r, s: (s.save(4, {"t": torch.ones(10)}), s.close())) == [
        None,
        None,
    ]
    assert (tmp_path / LATEST).read_text().strip() == "step-000000004"


def test_rank0_gives_up_on_a_missing_part_after_its_timeout(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, rank=0, world_size=2)  # rank 1 never writes
    saver = AsyncCheckpointer(manager, wait_for_ranks_s=0.5)
    saver.save(1, {"t": torch.ones(10)})
    with pytest.raises(AsyncCheckpointError, match=r"ranks \[1\] wrote no part within"):
        saver.wait()
    assert not (tmp_path / LATEST).exists()


FAILING_JOB = """
import sys
from hpc.runtime.session import Session

with Session.from_env() as s:
    s.save_checkpoint(1, {"step": 1})
    state = {"step": 2, "f": (lambda: 0) if s.rank == int(sys.argv[1]) else None}
    s.save_checkpoint(2, state)  # fails in the background
    print(f"rank {s.rank}: left the loop", flush=True)
"""


@pytest.mark.parametrize("bad_rank", [0, 1])
def test_a_failed_background_save_fails_the_run(workdir: Path, bad_rank: int) -> None:
    script = workdir / "failing_job.py"
    script.write_text(FAILING_JOB)
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            f"job.entrypoint={script}",
            f"job.args=[{bad_rank}]",
            f"run_dir={run_dir}",
            "checkpoint.async=true",
            "tracking.enabled=false",
        ],
        workdir,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "left the loop" in out  # save_checkpoint returned: the error came at the exit
    assert "AsyncCheckpointError" in out and "step 2 failed" in out, out
    assert not (run_dir / "FINISHED").exists()
    assert (run_dir / "checkpoints" / LATEST).read_text().strip() == "step-000000001"


# -- kill -9 during asynchronous saves ---------------------------------------------------------

KILL_TRIALS = 24
KILL_ELEMENTS = 3_000_000  # float32: 12 MB per rank and checkpoint


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.slow
def test_kill_9_during_async_saves_leaves_a_valid_checkpoint(tmp_path: Path) -> None:
    """Two ranks save in a loop through AsyncCheckpointer; both get SIGKILL at random
    moments (fixed seed), mostly while the background thread writes or commits. Each
    time, a fresh manager must find the previous good checkpoint or the new one with
    the staged content (never the in-place update after it), and the ranks resume."""
    ctx = multiprocessing.get_context("forkserver")  # torch imported once, not per trial
    ctx.set_forkserver_preload(["torch", "async_kill_child"])
    directory = tmp_path / "checkpoints"
    rng = random.Random(20261202)
    confirmed, expected_resume = 0, None
    phases: list[str] = []
    in_background = 0
    for trial in range(KILL_TRIALS):
        logs = [tmp_path / "logs" / f"{trial}.{r}" for r in range(2)]
        logs[0].parent.mkdir(exist_ok=True)
        ranks = [
            ctx.Process(
                target=async_kill_child.run_rank,
                args=(directory, tmp_path / "barrier" / str(trial), logs[r], r, 2, KILL_ELEMENTS),
            )
            for r in range(2)
        ]
        for proc in ranks:
            proc.start()
        try:
            deadline = time.monotonic() + 60
            while not all("ready" in _lines(log) for log in logs):
                assert time.monotonic() < deadline, [_lines(log) for log in logs]
                assert all(p.is_alive() for p in ranks), [_lines(log) for log in logs]
                time.sleep(0.005)
            want = "fresh" if expected_resume is None else f"resumed {expected_resume}"
            assert [_lines(log)[0] for log in logs] == [want, want], (trial, want)
            start_step = expected_resume or 0
            time.sleep(rng.uniform(0.0, 0.1) if trial < 2 else rng.uniform(0.05, 0.5))
            order = ranks if rng.random() < 0.5 else ranks[::-1]
            order[0].kill()
            time.sleep(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.05)]))  # one dies first
            order[1].kill()
        finally:
            for proc in ranks:
                proc.kill()
                proc.join(timeout=30)
        codes = [proc.exitcode for proc in ranks]
        assert codes == [-signal.SIGKILL] * 2, (codes, [_lines(log)[-5:] for log in logs])
        lines = _lines(logs[0])
        saved = [int(line.split()[1]) for line in lines if line.startswith("saved ")]
        in_background += lines[-1].startswith("staged ")
        confirmed = max([confirmed, *saved])
        attempted = max(saved or [start_step]) + 1
        phases.append(crash_phase(directory))
        expected_resume = check_directory(directory, confirmed, attempted)
    print("kill landed:", {phase: phases.count(phase) for phase in sorted(set(phases))})
    print(f"rank 0 had a save in the background at {in_background} of {KILL_TRIALS} kills")
    assert confirmed > 0, "no save ever completed: the kills came too early"
    assert in_background >= 3, f"only {in_background} kills hit a background save"
    inside = len(phases) - phases.count("between saves")
    assert inside >= 3, f"only {inside} kills landed inside a save: {phases}"
