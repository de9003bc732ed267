"""Checkpoints survive kill -9 anywhere inside a save, and corrupt ones are skipped.

The crash test runs two ranks (two processes, a file-based barrier) that save
~12 MB per rank in a loop through ``CheckpointManager(dir, keep=2)``; the test
SIGKILLs both at random moments (fixed seed) and checks what a fresh manager
finds, then starts the ranks again on the same directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from hpc.runtime import checkpoint as ckpt
from hpc.runtime.checkpoint import LATEST, MANIFEST, CheckpointManager

ELEMENTS = 3_000_000  # float32: 12 MB per rank and checkpoint
WORLD = 2
TRIALS = 22

CHILD = r'''
import sys, time
from pathlib import Path

import torch

from hpc.runtime.checkpoint import CheckpointManager

directory, barrier_dir = Path(sys.argv[1]), Path(sys.argv[2])
rank, world, saves, elements = (int(a) for a in sys.argv[3:7])


class FileBarrier:
    """Rank r touches <n>.<r> at its n-th barrier and waits for every rank's file."""

    def __init__(self) -> None:
        barrier_dir.mkdir(parents=True, exist_ok=True)
        self.n = 0

    def __call__(self) -> None:
        self.n += 1
        (barrier_dir / f"{self.n}.{rank}").touch()
        deadline = time.monotonic() + 120
        while not all((barrier_dir / f"{self.n}.{r}").exists() for r in range(world)):
            if time.monotonic() > deadline:
                sys.exit(3)
            time.sleep(0.001)


def value(step: int) -> float:
    return step + 0.5 * rank


manager = CheckpointManager(directory, keep=2, rank=rank, world_size=world, barrier=FileBarrier())
loaded = manager.load_latest()
step = 0
if loaded is not None:
    step = loaded.step
    assert loaded.state["step"] == step == loaded.manifest["step"], loaded.manifest
    assert loaded.state["rank"] == rank
    assert bool(torch.all(loaded.state["t"] == value(step))), "content does not match the step"
    print(f"resumed {step}", flush=True)
else:
    print("fresh", flush=True)
print("ready", flush=True)
for _ in range(saves):
    step += 1
    state = {"t": torch.full((elements,), value(step)), "step": step, "rank": rank}
    manager.save(step, state, meta={"writer": "crash-test"})
    print(f"saved {step}", flush=True)
'''


class Child:
    """One rank's process, its output collected by a thread."""

    def __init__(self, script: Path, directory: Path, barrier: Path, rank: int, saves: int):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *map(str, (script, directory, barrier, rank, WORLD, saves, ELEMENTS)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))
            if line.startswith("ready"):
                self.ready.set()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def saved(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith("saved ")]

    def resumed(self) -> int | None:
        for line in self.lines:
            if line.startswith("resumed "):
                return int(line.split()[1])
            if line == "fresh":
                return None
        raise AssertionError(f"no resume line: {self.lines}")


def start_ranks(script: Path, directory: Path, barrier: Path, saves: int) -> list[Child]:
    return [Child(script, directory, barrier, rank, saves) for rank in range(WORLD)]


def check_directory(directory: Path, confirmed: int, attempted: int) -> int | None:
    """What a fresh manager sees after a crash; returns the step it would resume from."""
    managers = [CheckpointManager(directory, keep=2, rank=r, world_size=WORLD) for r in range(2)]
    names = [p.name for p in managers[0].checkpoints()]
    assert all(re.fullmatch(r"step-\d{9}", name) for name in names), names
    debris = [p.name for p in directory.glob(".*") if p.is_dir()] if directory.is_dir() else []
    assert all(name not in names for name in debris), (debris, names)
    steps = []
    for rank, manager in enumerate(managers):
        loaded = manager.load_latest()
        if loaded is None:
            assert confirmed == 0, f"rank {rank}: no checkpoint although step {confirmed} saved"
            steps.append(None)
            continue
        assert not loaded.path.name.startswith("."), loaded.path
        assert loaded.path.name in names
        assert confirmed <= loaded.step <= attempted, (confirmed, loaded.step, attempted)
        assert loaded.state["step"] == loaded.step == loaded.manifest["step"]
        assert loaded.manifest["world_size"] == WORLD
        assert loaded.state["rank"] == rank
        assert bool(torch.all(loaded.state["t"] == loaded.step + 0.5 * rank))
        steps.append(loaded.step)
    assert steps[0] == steps[1], f"the ranks would resume from different steps: {steps}"
    latest = directory / LATEST
    if latest.exists():
        name = latest.read_text().strip()
        target = directory / name
        assert target.is_dir(), f"LATEST names {name}, which does not exist"
        assert name in names
        manifest = managers[0]._manifest(target)
        assert manifest is not None, f"LATEST names {name}, which is incomplete"
        for file, info in manifest["files"].items():
            assert ckpt._sha256(target / file) == info["sha256"], f"{name}/{file} is corrupt"
        assert int(manifest["step"]) <= (steps[0] or 0)
    else:
        assert steps[0] is None or steps[0] <= 2, "LATEST missing although saves completed"
    return steps[0]


def crash_phase(directory: Path) -> str:
    """Where in save() the kill most likely landed, from what it left behind."""
    tmp = [p for p in directory.glob(".step-*.tmp") if p.is_dir()]
    if tmp:
        names = {p.name for p in tmp[0].iterdir()}
        if MANIFEST in names:
            return "manifest written, not renamed"
        if any(n.endswith(".json") for n in names):
            return "rank files written"
        return "writing rank files"
    newest = CheckpointManager(directory).checkpoints()
    latest = (directory / LATEST).read_text().strip() if (directory / LATEST).exists() else ""
    if newest and newest[-1].name != latest:
        return "renamed, LATEST not moved"
    if len(newest) > 2:
        return "pruning"
    return "between saves"


@pytest.mark.slow
def test_kill_9_at_random_points_while_saving(tmp_path: Path) -> None:
    script = tmp_path / "saver.py"
    script.write_text(CHILD)
    directory = tmp_path / "checkpoints"
    rng = random.Random(20261126)
    confirmed = 0  # the newest step whose save() returned on rank 0
    attempted = 0
    expected_resume: int | None = None
    phases: list[str] = []
    for trial in range(TRIALS):
        ranks = start_ranks(script, directory, tmp_path / "barrier" / str(trial), saves=10_000)
        try:
            for child in ranks:
                assert child.ready.wait(60), child.lines
            for child in ranks:  # the restart found what the previous check found
                assert child.resumed() == expected_resume, (trial, child.lines)
            start_step = expected_resume or 0
            # Early trials also kill before the first save completes (None is then allowed).
            time.sleep(rng.uniform(0.0, 0.1) if trial < 2 else rng.uniform(0.05, 0.6))
            order = ranks if rng.random() < 0.5 else ranks[::-1]
            order[0].kill()
            time.sleep(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.05)]))  # one dies first
            order[1].kill()
        finally:
            for child in ranks:
                child.kill()
        codes = [child.finish() for child in ranks]
        assert codes == [-signal.SIGKILL] * WORLD, (codes, ranks[0].lines[-5:])
        saved = ranks[0].saved()
        confirmed = max([confirmed, *saved])
        attempted = max(saved or [start_step]) + 1
        phases.append(crash_phase(directory))
        expected_resume = check_directory(directory, confirmed, attempted)
    assert confirmed > 0, "no save ever completed: the kills came too early"
    print("kill landed:", {phase: phases.count(phase) for phase in sorted(set(phases))})
    inside = len(phases) - phases.count("between saves")
    assert inside >= 3, f"only {inside} kills landed inside a save: {phases}"
    # The next start keeps working: resume and save a few more, without a kill.
    ranks = start_ranks(script, directory, tmp_path / "barrier" / "final", saves=3)
    codes = [child.finish(timeout=120) for child in ranks]
    assert codes == [0] * WORLD, ranks[0].lines
    assert [child.resumed() for child in ranks] == [expected_resume] * WORLD
    last = (expected_resume or 0) + 3
    assert ranks[0].saved()[-1] == last
    assert check_directory(directory, last, last) == last
    assert (directory / LATEST).read_text().strip() == f"step-{last:09d}"
    assert len(CheckpointManager(directory).checkpoints()) == 2  # keep=2 pruned the rest


# -- corrupt checkpoints on purpose ------------------------------------------------------------


def save_steps(directory: Path, steps: list[int], world: int = 1) -> list[CheckpointManager]:
    """Save ``steps`` with ``world`` ranks as threads sharing a real barrier."""
    barrier = threading.Barrier(world)
    managers = [
        CheckpointManager(directory, keep=3, rank=r, world_size=world, barrier=barrier.wait)
        for r in range(world)
    ]
    errors: list[BaseException] = []
    for step in steps:

        def save(manager: CheckpointManager, step: int = step) -> None:
            try:
                manager.save(step, {"t": torch.full((1000,), float(step)), "step": step})
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=save, args=(m,)) for m in managers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
    return managers


def corrupt(path: Path, how: str) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        data = bytearray(path.read_bytes())
        for i in range(len(data) // 3, len(data) // 3 + 16):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "delete":
        path.unlink()
    elif how == "garble":
        path.write_text('{"step": 2, "files": ')
    else:
        raise ValueError(how)


@pytest.mark.parametrize(
    ("victim", "how", "message"),
    [
        ("rank0.pt", "truncate", "incomplete or corrupt"),
        ("rank0.pt", "flip", "fails its checksum"),
        ("rank0.pt", "delete", "incomplete or corrupt"),
        (MANIFEST, "delete", "incomplete or corrupt"),
        (MANIFEST, "garble", "incomplete or corrupt"),
    ],
)
def test_a_corrupt_newest_checkpoint_falls_back_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, victim: str, how: str, message: str
) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2):
        manager.save(step, {"t": torch.full((1000,), float(step)), "step": step})
    corrupt(tmp_path / "step-000000002" / victim, how)
    fresh = CheckpointManager(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING, logger="hpc.runtime.checkpoint"):
        loaded = fresh.load_latest()
    assert loaded is not None and loaded.step == 1
    assert loaded.state["step"] == 1 and bool(torch.all(loaded.state["t"] == 1.0))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step-000000002" in w and message in w for w in warnings), warnings
    assert fresh.valid_steps() == ([1] if how != "flip" else [2, 1])  # sizes only there


def test_every_checkpoint_corrupt_means_none(tmp_path: Path, caplog) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2):
        manager.save(step, {"step": step})
    corrupt(tmp_path / "step-000000001" / "rank0.pt", "flip")
    corrupt(tmp_path / "step-000000002" / MANIFEST, "delete")
    with caplog.at_level(logging.WARNING, logger="hpc.runtime.checkpoint"):
        assert CheckpointManager(tmp_path).load_latest() is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_another_ranks_truncated_file_invalidates_the_checkpoint_for_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    managers = save_steps(tmp_path, [1, 2], world=2)
    corrupt(tmp_path / "step-000000002" / "rank1.pt", "truncate")
    with caplog.at_level(logging.WARNING, logger="hpc.runtime.checkpoint"):
        loaded = [
            CheckpointManager(tmp_path, rank=m.rank, world_size=2).load_latest() for m in managers
        ]
    assert [c.step for c in loaded if c] == [1, 1]
    assert any("rank1.pt has the wrong size" in r.getMessage() for r in caplog.records)


def test_a_flipped_byte_in_one_ranks_file_is_caught_by_that_rank(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Only the loading rank's own file is hashed: rank 0 still sees step 2 and rank 1 falls
    # back to step 1; Session.resume() then agrees on the minimum (step 1) for both.
    save_steps(tmp_path, [1, 2], world=2)
    corrupt(tmp_path / "step-000000002" / "rank1.pt", "flip")
    with caplog.at_level(logging.WARNING, logger="hpc.runtime.checkpoint"):
        rank0 = CheckpointManager(tmp_path, rank=0, world_size=2).load_latest()
        rank1 = CheckpointManager(tmp_path, rank=1, world_size=2).load_latest()
        older = CheckpointManager(tmp_path, rank=0, world_size=2).load_latest(at_most=1)
    assert rank0 is not None and rank0.step == 2
    assert rank1 is not None and rank1.step == 1
    assert older is not None and older.step == 1
    assert any("rank1.pt fails its checksum" in r.getMessage() for r in caplog.records)


def test_temp_directories_and_stray_names_are_not_checkpoints(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(1, {"step": 1})
    # A complete-looking save that was never renamed into place, and other debris.
    (tmp_path / ".step-000000002.tmp").mkdir()
    for name in ("rank0.pt", MANIFEST):
        (tmp_path / ".step-000000002.tmp" / name).write_bytes(
            (tmp_path / "step-000000001" / name).read_bytes()
        )
    (tmp_path / "step-000000003").write_text("a file, not a directory")
    assert [p.name for p in manager.checkpoints()] == ["step-000000001"]
    loaded = CheckpointManager(tmp_path).load_latest()
    assert loaded is not None and loaded.step == 1
    manager.save(2, {"step": 2})  # the debris of the same step is replaced
    assert not (tmp_path / ".step-000000002.tmp").exists()
    assert CheckpointManager(tmp_path).load_latest().step == 2


def test_crash_while_replacing_the_same_step_keeps_latest_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same step is saved again e.g. when a run preempted at its last step is requeued:
    # digits resumes at the last step and saves it once more at the end.
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save(1, {"step": 1})
    manager.save(2, {"step": 2})
    real_replace = os.replace

    class Crash(BaseException):
        pass

    def crashing_replace(src: Any, dst: Any) -> None:
        if Path(src).name == ".step-000000002.tmp":
            raise Crash  # kill -9 here: no code after this point runs
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crashing_replace)
    with contextlib.suppress(Crash):  # at the rename, if save() renames (it keeps a valid step)
        manager.save(2, {"step": 2})
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    name = (tmp_path / LATEST).read_text().strip()
    assert (tmp_path / name / MANIFEST).exists(), f"LATEST names {name}, which is gone"
