"""The step-overhead benchmark's training loop (run by bench_step_overhead.py).

A 2-rank gloo DDP loop: a 256→512→10 MLP, batch 64, one thread per rank. ``--mode
plain`` is the anchor, run by ``torchrun``; ``--mode hpc`` is the same loop under
``hpc-launch``, making the calls a job makes every step (``log_metrics`` with the
loss as it comes out of the step, a tensor, and ``should_checkpoint``) with
checkpoints effectively off. Each rank writes its per-step times' median to
``--out``/rank<N>.json. ``STEP_LOOP_CALLS`` (``log,ckpt`` by default; ``log``, ``ckpt``,
``none``) picks the calls, to find which one costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def run_steps(model: nn.Module, steps: int, hook) -> list[float]:  # type: ignore[no-untyped-def]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(int(os.environ.get("RANK", "0")))
    x, y = torch.randn(64, 256, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    times = []
    for step in range(1, steps + 1):
        began = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        hook(step, loss.detach())
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["plain", "hpc"], required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    if args.mode == "plain":
        dist.init_process_group("gloo")
        times = run_steps(DistributedDataParallel(model), args.steps, lambda step, loss: None)
        rank = dist.get_rank()
        dist.destroy_process_group()
    else:
        from hpc.runtime.session import Session

        with Session.from_env() as s:
            calls = os.environ.get("STEP_LOOP_CALLS", "log,ckpt").split(",")

            def hook(step: int, loss: torch.Tensor) -> None:
                if "log" in calls:
                    s.log_metrics({"loss": loss}, step)
                if "ckpt" in calls and s.should_checkpoint(step):
                    s.save_checkpoint(step, {"model": model.state_dict()})

            times = run_steps(DistributedDataParallel(model), args.steps, hook)
            rank = s.rank
    warm = times[len(times) // 10 :]  # the first tenth warms up
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"rank{rank}.json").write_text(
        json.dumps({"median_s": statistics.median(warm), "steps": len(warm)})
    )


if __name__ == "__main__":
    main()
