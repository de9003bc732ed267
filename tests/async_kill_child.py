"""One rank of the kill -9 test of asynchronous checkpoints (tests/test_checkpoint_async.py).

Run in a process forked by a multiprocessing forkserver that imported torch once
(a fresh interpreter per trial and rank would cost seconds). The rank resumes from
the directory, checks what it loaded, then saves ``t = step + rank / 2`` through an
AsyncCheckpointer and overwrites ``t`` in place at once (the next training step),
forever; the test kills it. Its lines go to ``log`` with one unbuffered write each:

    resumed STEP | fresh     what load_latest found (checked against its step)
    ready                    the save loop starts
    staged STEP              save() returned: the write runs in the background
    saved STEP               wait() returned: rank 0 has committed STEP
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from hpc.runtime.checkpoint import CheckpointManager
from hpc.runtime.checkpoint_async import AsyncCheckpointer


class FileBarrier:
    """Rank r touches <n>.<r> at its n-th barrier and waits for every rank's file."""

    def __init__(self, directory: Path, rank: int, world: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.rank, self.world, self.n = directory, rank, world, 0

    def __call__(self) -> None:
        self.n += 1
        (self.directory / f"{self.n}.{self.rank}").touch()
        deadline = time.monotonic() + 120
        while not all((self.directory / f"{self.n}.{r}").exists() for r in range(self.world)):
            if time.monotonic() > deadline:
                sys.exit(3)
            time.sleep(0.001)


def value(step: int, rank: int) -> float:
    return step + 0.5 * rank


def run_rank(
    directory: Path, barrier: Path, log: Path, rank: int, world: int, elements: int
) -> None:
    torch.set_num_threads(1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def say(text: str) -> None:
        os.write(fd, f"{text}\n".encode())

    manager = CheckpointManager(
        directory, keep=2, rank=rank, world_size=world, barrier=FileBarrier(barrier, rank, world)
    )
    loaded = manager.load_latest()
    step = 0
    if loaded is not None:
        step = loaded.step
        assert loaded.state["step"] == step == loaded.manifest["step"], loaded.manifest
        assert loaded.state["rank"] == rank
        assert bool(torch.all(loaded.state["t"] == value(step, rank))), "content != step"
        say(f"resumed {step}")
    else:
        say("fresh")
    say("ready")
    saver = AsyncCheckpointer(manager, wait_for_ranks_s=120)
    t = torch.empty(elements)
    while True:
        step += 1
        t.fill_(value(step, rank))
        saver.save(step, {"t": t, "step": step, "rank": rank}, meta={"writer": "async-kill"})
        say(f"staged {step}")
        t.fill_(-1.0)  # the next step updates the state in place: must not reach the file
        saver.wait()
        say(f"saved {step}")
