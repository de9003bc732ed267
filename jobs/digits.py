"""Digits: a small DDP classifier on scikit-learn's bundled digits data (no download).

Entry point ``hpc.jobs.digits:main``. Config keys: job.{seed, lr, epochs,
batch_size, hidden}, checkpoint.every_steps. Resumes from the newest checkpoint
in its run directory at the exact batch it stopped at.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from hpc.rundir import records
from hpc.runtime.session import Session

log = logging.getLogger("hpc.jobs.digits")


def make_data(seed: int) -> tuple[TensorDataset, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return (
        TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
    )


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, device: torch.device) -> float:
    model.eval()
    x, y = data.tensors
    pred = model(x.to(device)).argmax(dim=1).cpu()
    model.train()
    return float((pred == y).float().mean())


def main(cfg: dict[str, Any]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    job = cfg["job"]
    torch.set_num_threads(int(cfg["resources"].get("cpus_per_task", 1)))
    torch.use_deterministic_algorithms(True)
    with Session.from_env(cfg) as s:
        train, test = make_data(int(job["seed"]))
        model = make_model(int(job["hidden"])).to(s.device)
        ddp = s.wrap_model(model)  # bitwise resume at any world size; see its docstring
        opt = torch.optim.SGD(ddp.parameters(), lr=float(job["lr"]), momentum=0.9)
        sampler = DistributedSampler(
            train, num_replicas=s.world_size, rank=s.rank, shuffle=True, seed=int(job["seed"])
        )
        loader = DataLoader(train, batch_size=int(job["batch_size"]), sampler=sampler)
        epochs = int(job["epochs"])
        steps_per_epoch = len(loader)
        last_step = epochs * steps_per_epoch
        step = 0
        resumed = s.resume()
        if resumed is not None:
            model.load_state_dict(resumed.state["model"])
            opt.load_state_dict(resumed.state["optimizer"])
            step = resumed.step

        def state(epoch: int) -> dict[str, Any]:
            return {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": s.rng_state(),
                "epoch": epoch,
                "batches_done_in_epoch": step - epoch * steps_per_epoch,
            }

        def checkpoint(epoch: int) -> bool:
            """Checkpoint when due; True when the job should stop (a stop signal)."""
            if s.should_checkpoint(step):
                s.save_checkpoint(step, state(epoch))
            return s.stop_requested

        start = time.monotonic()
        for epoch in range(step // steps_per_epoch, epochs):
            sampler.set_epoch(epoch)
            skip = step - epoch * steps_per_epoch  # batches done before the checkpoint
            slowest = 0.0
            for i, (x, y) in enumerate(loader):
                if i < skip:
                    continue
                began = time.monotonic()
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(ddp(x.to(s.device)), y.to(s.device))
                loss.backward()
                opt.step()
                step += 1
                s.log_metrics({"loss": loss.detach()}, step)  # read when written: no sync
                # The epoch's last step checkpoints after the epoch-end work (below).
                if i + 1 < steps_per_epoch and checkpoint(epoch):
                    return 0  # the session exits with the "preempted" code
                slowest = max(slowest, time.monotonic() - began)
            if s.is_main:
                accuracy = evaluate(model, test, s.device)
                s.log_metrics({"accuracy": accuracy}, step)
                log.info(
                    "epoch %d/%d  step %d  loss %.4f  accuracy %.4f  slowest step %.3fs  (%.1fs)",
                    epoch + 1,
                    epochs,
                    step,
                    loss.item(),
                    accuracy,
                    slowest,
                    time.monotonic() - start,
                )
            if checkpoint(epoch):  # covers the epoch's accuracy: a resume starts the next epoch
                return 0
        if not s.checkpoints.checkpoints() or step % s.every_steps:
            s.save_checkpoint(step, state(epochs - 1))  # the final state, for comparison
        if s.is_main:
            accuracy = evaluate(model, test, s.device)
            log.info(
                "final accuracy %.4f after %d steps (world size %d)", accuracy, step, s.world_size
            )
            with contextlib.suppress(FileNotFoundError):
                records.update(s.run_dir, extra={"accuracy": accuracy, "steps": step})
        assert step == last_step, (step, last_step)
    return 0
