"""One rank of the DCP tests (run by tests/test_checkpoint_dcp.py, one process per rank).

    python tests/dcp_worker.py train CKPT_DIR OUT_DIR START STOP SAVE_AT[,...] [sgd|adam] [EXPECT]

DCP_ASYNC=1 saves asynchronously (``blocking=False``). START > 0 resumes from the newest
checkpoint at or below START; it must be step EXPECT (default START). A CheckpointError
is printed and exits 3.

Environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (gloo). The model is an FSDP2
``fully_shard`` Linear(8, 12) in float64 trained with SGD (momentum 0.5, lr 2**-7) on a
fixed global batch of 12 samples per step, split evenly over the ranks (12 divides by 4, 3
and 2). Inputs are 0/1, targets and initial weights small dyadic numbers, the loss a sum and
the gradient divide factor 1: every product and sum is exact in float64 for these few steps,
so the result does not depend on the world size or the reduction order.

Writes (rank 0) OUT_DIR/loaded-<start>.pt (the full state right after a resume),
saved-<step>.pt (the full state at each save) and final-<stop>-ws<N>.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.fsdp import fully_shard

from hpc.runtime.checkpoint_dcp import CheckpointError, DcpCheckpointManager

GLOBAL_BATCH = 12


def make_model() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(8, 12, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.randint(-4, 5, (12, 8), generator=gen) / 4.0)
        model.bias.copy_(torch.randint(-4, 5, (12,), generator=gen) / 4.0)
    fully_shard(model)
    model.set_gradient_divide_factor(1.0)  # a sum over the global batch: no 1/3
    return model


def batch(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(0, 2, (GLOBAL_BATCH, 8), generator=gen).to(torch.float64)
    t = torch.randint(-3, 4, (GLOBAL_BATCH, 12), generator=gen).to(torch.float64)
    per = GLOBAL_BATCH // world
    return x[rank * per : (rank + 1) * per], t[rank * per : (rank + 1) * per]


def full_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state gathered in full on rank 0 (collective)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(model, [opt], options=options)
    return {"model": model_sd, "optimizer": optim_sd}


def main() -> int:
    mode, ckpt_dir, out_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    start, stop = int(sys.argv[4]), int(sys.argv[5])
    save_at = {int(s) for s in sys.argv[6].split(",") if s}
    optimizer = sys.argv[7] if len(sys.argv) > 7 else "sgd"
    expect = int(sys.argv[8]) if len(sys.argv) > 8 else start  # the step the resume finds
    asynchronous = os.environ.get("DCP_ASYNC") == "1"
    assert mode == "train", mode
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)
    model = make_model()
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=2**-7)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=2**-7, momentum=0.5)
    manager = DcpCheckpointManager(ckpt_dir, keep=3, rank=rank, world_size=world)
    step = 0
    if start:
        try:
            loaded = manager.load_latest({"model": model, "optimizer": opt}, at_most=start)
        except CheckpointError as exc:
            print(f"CheckpointError: {exc}", flush=True)
            dist.barrier()  # all ranks failed alike: tear down together
            dist.destroy_process_group()
            return 3
        assert loaded is not None and loaded.step == expect, loaded
        assert loaded.state["step"] == expect and loaded.state["model"] is model
        same = loaded.manifest["world_size"] == world
        assert ("rng" in loaded.state) == same, (loaded.manifest["world_size"], world)
        step = expect
        print(f"resumed {step}", flush=True)
        full = full_state(model, opt)
        if rank == 0:
            torch.save(full, out_dir / f"loaded-{step}-ws{world}.pt")
    while step < stop:
        x, t = batch(step, rank, world)
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((model(x) - t) ** 2).sum()
        loss.backward()
        opt.step()
        step += 1
        if step in save_at:
            state = {"model": model, "optimizer": opt, "step": step, "rng": torch.get_rng_state()}
            # DCP_ASYNC=1: the save returns once staged; training goes on at once and
            # changes the parameters in place while the shards are still being written.
            manager.save(step, state, meta={"writer": "dcp-test"}, blocking=not asynchronous)
            full = full_state(model, opt)
            if rank == 0:
                torch.save(full, out_dir / f"saved-{step}-ws{world}.pt")
    committed = manager.wait()  # the last asynchronous save, if any
    if asynchronous and rank == 0:
        assert committed is not None and (committed / "manifest.json").exists(), committed
    full = full_state(model, opt)
    if rank == 0:
        torch.save(full, out_dir / f"final-{stop}-ws{world}.pt")
    dist.barrier()  # no rank closes its connections while another still uses them
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # The process groups are destroyed; skip the interpreter's teardown, where gloo's
    # threads can still drop tensors and abort the process ("terminate called without an
    # active exception": seen once in CI after a clean end, cf. pytorch/pytorch#179291).
    sys.stdout.flush()
    os._exit(code)
