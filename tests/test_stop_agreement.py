"""The stop agreement on real gloo process groups: every rank stops at the same call,
never before some rank saw its signal, and at most two intervals after (exactly one
call after with an interval of one call)."""

from __future__ import annotations

import os
import random

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from hpc.ports import free_port
from hpc.runtime.stop_agreement import StopAgreement

WORLD, TRIALS, CALLS = 3, 40, 30
INTERVALS = (1, 5)  # max_interval; a long target_s makes every proposal the maximum


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


def _cases(seed: int) -> list[tuple[int, list[int | None]]]:
    return [(m, trial) for m in INTERVALS for trial in _signal_calls(seed)]


def _expected_stop(trial: list[int | None], max_interval: int) -> int | None:
    """The schedule by hand: the first all-reduce starts at call 0 and is read at call 1;
    each read starts the next. The first two are one call apart (no step time measured
    yet), then ``max_interval``. A read stops everyone when some rank's flag was up at
    the call that started it."""
    start, read, reads = 0, 1, 0
    while read < CALLS:
        if any(seen is not None and start >= seen for seen in trial):
            return read
        reads += 1
        start, read = read, read + (1 if reads < 2 else max_interval)
    return None


def _rank(rank: int, port: int, seed: int, results: dict[int, list[int | None]]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    stops: list[int | None] = []
    for max_interval, trial in _cases(seed):
        agreement = StopAgreement(WORLD, target_s=3600.0, max_interval=max_interval)
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
def test_all_ranks_stop_at_the_same_call_soon_after_the_first_signal(seed: int) -> None:
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(
        _rank, args=(free_port(), seed, results), nprocs=WORLD, start_method="spawn", join=True
    )
    for index, (max_interval, trial) in enumerate(_cases(seed)):
        per_rank = {results[rank][index] for rank in range(WORLD)}
        assert len(per_rank) == 1, f"case {index}: ranks disagree {per_rank}"
        (stop,) = per_rank
        seen = [c for c in trial if c is not None]
        assert stop == _expected_stop(trial, max_interval), f"case {index}: {trial}"
        if stop is not None:
            assert min(seen) < stop <= min(seen) + 2 * max_interval + 1
        if max_interval == 1:  # one call after the first signal, as a per-step all-reduce
            assert stop == (min(seen) + 1 if seen and min(seen) + 1 < CALLS else None)


def test_a_single_process_stops_at_its_own_signal() -> None:
    agreement = StopAgreement(1)
    assert [agreement.agreed(flag) for flag in (False, False, True, False)] == [
        False,
        False,
        True,
        True,
    ]
