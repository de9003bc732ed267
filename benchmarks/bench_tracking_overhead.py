"""Benchmark: step time of a 2-rank gloo DDP loop that logs its loss every step.

Three ways, side by side in one run (alternating rounds, so load changes hit all alike):

- ``off``: no tracker (the anchor);
- ``thread``: rank 0's in-process MLflow sender (``HPC_SIDECAR=0``, the fallback);
- ``sidecar``: rank 0 only appends to the spool; ``hpc.runtime.sidecar`` ships it.

The loop is issue 14's: a 256→512→10 MLP, batch 64, one thread per rank; rank 0
logs ``loss`` (the tensor, no ``.item()``) every step and commits every 500 steps,
to a SQLite MLflow store in a temporary directory. It prints each way's median step
and its ratio to ``off`` (target: sidecar ≤ 1.05), and whether rank 0 imported mlflow.

    python benchmarks/bench_tracking_overhead.py [--steps 4000] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

WAYS = ("off", "thread", "sidecar")


def tracker_for(way: str, directory: Path) -> object:
    from hpc.runtime.sidecar import Sidecar, SidecarTracker, mlflow_tracker
    from hpc.runtime.tracking import Tracker

    spec = {
        "uri": f"sqlite:///{directory / 'mlflow.db'}",
        "experiment": "bench",
        "spool_dir": str(directory / "tracking"),
        "run_name": way,
        "run_dir": str(directory),
    }
    if way == "off":
        return Tracker()
    if way == "thread":
        return mlflow_tracker(spec, writer=True)
    side, why = Sidecar.start(sorted(os.sched_getaffinity(0)), 10)
    assert side is not None, why
    tracker = SidecarTracker(side, spec["spool_dir"], directory)
    assert side.track(spec)
    return tracker


def worker(rank: int, way: str, steps: int, port: int, directory: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = DistributedDataParallel(
        nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
    tracker: object = tracker_for(way, Path(directory)) if rank == 0 else None
    times = []
    for step in range(1, steps + 1):
        began = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if tracker is not None:
            tracker.log_metrics({"loss": loss.detach()}, step)  # type: ignore[attr-defined]
            if step % 500 == 0:
                tracker.commit(step)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - began)
    if tracker is not None:
        tracker.finish("FINISHED", timeout_s=60)  # type: ignore[attr-defined]
        skip = min(100, steps // 10)
        result = {
            "median_ms": 1000 * statistics.median(times[skip:]),
            "mlflow": "mlflow" in sys.modules,
        }
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def run_once(way: str, steps: int) -> dict[str, float]:
    from hpc.launchers.local import free_port

    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "result.json")
        mp.spawn(worker, args=(way, steps, free_port(), directory, out), nprocs=2, join=True)
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="300 steps, 1 round: a smoke run")
    args = parser.parse_args()
    steps, rounds = (300, 1) if args.quick else (args.steps, args.rounds)
    medians: dict[str, list[float]] = {way: [] for way in WAYS}
    imported: dict[str, bool] = {}
    for r in range(rounds):
        for way in WAYS[r % 3 :] + WAYS[: r % 3]:
            result = run_once(way, steps)
            medians[way].append(result["median_ms"])
            imported[way] = bool(result["mlflow"])
    base = statistics.median(medians["off"])
    print(f"steps {steps} x {rounds} rounds; median step per way (ms), ratio to off")
    for way in WAYS:
        m = statistics.median(medians[way])
        print(f"  {way:8s} {m:7.3f} ms  ratio {m / base:5.3f}  mlflow in rank 0: {imported[way]}")


if __name__ == "__main__":
    main()
