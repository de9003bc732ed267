"""Benchmark: step time of the DDP that ``Session.wrap_model`` builds vs plain DDP.

``wrap_model`` sets ``find_unused_parameters=True`` so DDP never re-buckets (the price
of bitwise resume at >= 3 ranks). This runs ``--ranks`` gloo processes on this machine
and times forward+backward+step of the same MLP under both wrappers, in alternating
blocks so that load changes hit both alike; it prints the median step times and the
ratio. (The bitwise promise itself is tested in tests/test_preemption_local.py.)

    python benchmarks/bench_ddp_wrap.py [--ranks 3] [--hidden 1024] [--layers 4] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def make_model(hidden: int, layers: int) -> nn.Module:
    blocks: list[nn.Module] = [nn.Linear(64, hidden), nn.ReLU()]
    for _ in range(layers - 1):
        blocks += [nn.Linear(hidden, hidden), nn.ReLU()]
    blocks.append(nn.Linear(hidden, 10))
    return nn.Sequential(*blocks)


def time_steps(ddp: nn.Module, steps: int, batch: int) -> list[float]:
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x, y = torch.randn(batch, 64), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - began)
    return times


def worker(rank: int, args: argparse.Namespace, port: int, out: dict[str, list[float]]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    torch.manual_seed(0)
    plain = DistributedDataParallel(make_model(args.hidden, args.layers))
    wrapped = DistributedDataParallel(
        make_model(args.hidden, args.layers), find_unused_parameters=True
    )
    results: dict[str, list[float]] = {"plain": [], "wrap_model": []}
    for ddp in (plain, wrapped):  # warm-up; plain DDP re-buckets after its first step
        time_steps(ddp, 3, args.batch)
    for _ in range(args.blocks):
        for name, ddp in (("plain", plain), ("wrap_model", wrapped)):
            results[name] += time_steps(ddp, args.steps // args.blocks, args.batch)
    if rank == 0:
        out.update(results)
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--blocks", type=int, default=4)
    args = ap.parse_args()
    from hpc.launchers.local import free_port

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(worker, args=(args, free_port(), out), nprocs=args.ranks)
        results = dict(out)
    params = sum(p.numel() for p in make_model(args.hidden, args.layers).parameters())
    plain = statistics.median(results["plain"]) * 1e3
    wrapped = statistics.median(results["wrap_model"]) * 1e3
    print(f"{args.ranks} gloo ranks, MLP {params / 1e6:.1f}M params, batch {args.batch}")
    print(f"plain DDP:           {plain:8.2f} ms/step (median of {len(results['plain'])})")
    print(f"wrap_model DDP:       {wrapped:8.2f} ms/step (no re-bucketing)")
    print(f"ratio wrap_model / plain: {wrapped / plain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
