"""Digits with an FSDP2 (``fully_shard``) model and sharded DCP checkpoints, on CPU (gloo).

    hpc-launch job.entrypoint=hpc.jobs.fsdp_digits:main checkpoint.format=dcp \\
        resources.tasks_per_node=4

Uses the digits job's keys (job.{seed, lr, epochs, batch_size, hidden}). The data position
is global, so a resume may run on another number of ranks: step ``k`` trains on the global
batch ``k`` of a per-epoch permutation; rank ``r`` of ``n`` takes its samples ``r::n``. The
loss is a sum over the rank's samples divided by the global batch size and FSDP's gradient
divide factor is 1: every world size computes the same mean gradient (equal up to the
summation order). At world size 1 the model is not sharded (no process group).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hpc.jobs.digits import make_data, make_model
from hpc.rundir import records
from hpc.runtime.session import Session

log = logging.getLogger("hpc.jobs.fsdp_digits")


def shard(model: nn.Module, world_size: int) -> nn.Module:
    if world_size > 1:
        from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        model.set_gradient_divide_factor(1.0)
    return model


def global_batch(step: int, n: int, batch: int, seed: int) -> torch.Tensor:
    """Indices of global batch ``step`` (epochs of ``n // batch`` steps, reshuffled each)."""
    per_epoch = n // batch
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[i * batch : (i + 1) * batch]


def main(cfg: dict[str, Any]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    job = cfg["job"]
    torch.set_num_threads(int(cfg["resources"].get("cpus_per_task", 1)))
    seed, batch = int(job["seed"]), int(job["batch_size"])
    with Session.from_env(cfg) as s:
        train, test = make_data(seed)
        torch.manual_seed(seed)  # the same initial model on every rank and world size
        model = shard(make_model(int(job["hidden"])), s.world_size)
        opt = torch.optim.AdamW(model.parameters(), lr=float(job["lr"]))
        x_all, y_all = train.tensors
        last_step = int(job["epochs"]) * (len(train) // batch)
        step = 0
        resumed = s.resume(state={"model": model, "optimizer": opt})
        if resumed is not None:
            step = int(resumed.state["step"])
        loss_sum = torch.zeros(())
        while step < last_step:
            idx = global_batch(step, len(train), batch, seed)[s.rank :: s.world_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx], reduction="sum")
            (loss / batch).backward()
            opt.step()
            step += 1
            loss_sum = loss.detach()
            if s.should_checkpoint(step) or step == last_step:
                if dist.is_initialized():
                    dist.all_reduce(loss_sum)
                s.log_metrics({"loss": float(loss_sum) / batch}, step)
                state = {"model": model, "optimizer": opt, "step": step, "rng": s.rng_state()}
                s.save_checkpoint(step, state)
                if s.stop_requested:
                    return 0  # the session exits with the "preempted" code
        with torch.no_grad():  # every rank: the sharded forward is collective
            accuracy = float((model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean())
        if s.is_main:
            s.log_metrics({"accuracy": accuracy}, step)
            log.info(
                "final accuracy %.4f after %d steps (world size %d)", accuracy, step, s.world_size
            )
            with contextlib.suppress(FileNotFoundError):
                records.update(s.run_dir, extra={"accuracy": accuracy, "steps": step})
    return 0
