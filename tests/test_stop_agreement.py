"""The stop agreement on real gloo process groups: every rank stops at the same call,
exactly one call after the first rank saw its signal, and never before any rank did."""

from __future__ import annotations

import os
import random

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from hpc.ports import free_port
from hpc.runtime.stop_agreement import StopAgreement

WORLD, TRIALS, CALLS = 3, 40, 30


def _signal_calls(seed: int) -> list[list[int | None]]:
    """Per trial, per rank: the call at which that rank's flag goes up (None: never)."""
    rng = random.Random(seed)
    trials = []
    for _ in range(TRIALS):
        trials.append(
            [
                rng.choice([None, *range(CALLS)]) if rng.random() < 0.8 else None
                for _ in range(WORLD)
            ]
        )
    return trials


def _rank(rank: int, port: int, seed: int, results: dict[int, list[int | None]]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    stops: list[int | None] = []
    for trial in _signal_calls(seed):
        agreement = StopAgreement(WORLD)
        seen_at = trial[rank]
        stopped_at = None
        for call in range(CALLS):
            flag = seen_at is not None and call >= seen_at
            if agreement.agreed(flag):
                stopped_at = call
                assert all(agreement.agreed(False) for _ in range(3)), "a stop stays agreed"
                break
        agreement.close()
        stops.append(stopped_at)
    dist.destroy_process_group()
    results[rank] = stops


@pytest.mark.parametrize("seed", [1, 2])
def test_all_ranks_stop_at_the_same_call_one_after_the_first_signal(seed: int) -> None:
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(
        _rank, args=(free_port(), seed, results), nprocs=WORLD, start_method="spawn", join=True
    )
    for index, trial in enumerate(_signal_calls(seed)):
        per_rank = {results[rank][index] for rank in range(WORLD)}
        assert len(per_rank) == 1, f"trial {index}: ranks disagree {per_rank}"
        seen = [c for c in trial if c is not None]
        expected = min(seen) + 1 if seen and min(seen) + 1 < CALLS else None
        assert per_rank == {expected}, f"trial {index}: signals at {trial}"


def test_a_single_process_stops_at_its_own_signal() -> None:
    agreement = StopAgreement(1)
    assert [agreement.agreed(flag) for flag in (False, False, True, False)] == [
        False,
        False,
        True,
        True,
    ]
