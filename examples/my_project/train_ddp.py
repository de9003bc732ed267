"""A plain torchrun script: no hpc-launch imports, DDP with gloo for a few steps.

Runs as is under ``torchrun --nproc-per-node 2 train_ddp.py --steps 20``, and under
hpc-launch on every launcher (``job.entrypoint=train_ddp.py``, ``job.args`` as its
arguments, e.g. ``'job.args=[--hidden,${model.hidden}]'`` from the project's model
group), which sets the same variables torchrun sets: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=16)
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    dist.init_process_group("gloo", init_method="env://")
    torch.manual_seed(0)  # the same initial model everywhere (DDP broadcasts it anyway)
    model = DistributedDataParallel(
        nn.Sequential(nn.Linear(8, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 1))
    )
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    target = torch.arange(8, dtype=torch.float32)
    for _ in range(args.steps):
        x = torch.randn(32, 8, generator=gen)
        loss = nn.functional.mse_loss(model(x).squeeze(1), x @ target / 8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(world)]
    dist.all_gather(gathered, weights)
    same = all(torch.equal(g, weights) for g in gathered)
    print(
        f"train_ddp: rank {rank}/{world} local_rank {local_rank} "
        f"master {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} steps {args.steps} "
        f"hidden {args.hidden} "
        f"loss {loss.item():.4f} replicas_equal {same} checksum {float(weights.sum()):.6f}",
        flush=True,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
