"""Training on hpc-launch's Session: checkpoints, resume, metrics, any launcher.

Entry point ``my_project.train:main`` (``job.entrypoint`` in conf/config.yaml). The
Session discovers the ranks, starts torch.distributed, binds the process, runs the
node's accounting, turns a preemption signal into one checkpoint of every rank and
logs metrics to MLflow; a requeued or restarted run resumes at the step it stopped.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from hpc.rundir import records
from hpc.runtime.session import Session


def make_data(data: DictConfig, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """The data set described by ``data``, generated from ``seed`` (the same on every rank)."""
    rng = np.random.default_rng(seed)
    n, classes = int(data.samples), int(data.classes)
    y = rng.integers(0, classes, size=n)
    if data.kind == "spirals":
        t = rng.uniform(0.25, 1.0, size=n) * 3 * np.pi
        angle = t + np.pi * y
        x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) / (3 * np.pi)
        x += rng.normal(0.0, float(data.noise) / 10, size=x.shape)
    elif data.kind == "blobs":
        centres = rng.normal(0.0, 3.0, size=(classes, int(data.features)))
        x = centres[y] + rng.normal(0.0, float(data.noise), size=(n, int(data.features)))
    else:
        raise ValueError(f"data.kind: unknown kind {data.kind!r} (blobs, spirals)")
    x_t, y_t = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    split = int(n * (1 - float(data.test_fraction)))
    return TensorDataset(x_t[:split], y_t[:split]), TensorDataset(x_t[split:], y_t[split:])


def make_model(model: DictConfig, features: int, classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(features, int(model.hidden)), nn.ReLU()]
    for _ in range(int(model.layers) - 1):
        layers += [nn.Linear(int(model.hidden), int(model.hidden)), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(int(model.hidden), classes))


def make_optimizer(optim: DictConfig, params: Any) -> torch.optim.Optimizer:
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=float(optim.lr), betas=tuple(optim.betas))
    return torch.optim.SGD(params, lr=float(optim.lr), momentum=float(optim.momentum))


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset, device: torch.device) -> float:
    x, y = (t.to(device) for t in data.tensors)
    return float((model(x).argmax(dim=1) == y).float().mean())


def main(cfg: DictConfig) -> int:
    torch.set_num_threads(1)
    seed = int(cfg.train.seed)
    with Session.from_env(cfg) as s:
        train, test = make_data(cfg.data, seed)
        model = make_model(cfg.model, int(cfg.data.features), int(cfg.data.classes))
        model = model.to(s.device)  # a GPU when resources.gpus_per_node > 0
        ddp = s.wrap_model(model)
        opt = make_optimizer(cfg.optim, ddp.parameters())
        sampler = DistributedSampler(train, num_replicas=s.world_size, rank=s.rank, seed=seed)
        loader = DataLoader(train, batch_size=int(cfg.train.batch_size), sampler=sampler)
        steps_per_epoch, epochs = len(loader), int(cfg.train.epochs)
        step = 0
        resumed = s.resume()
        if resumed is not None:
            model.load_state_dict(resumed.state["model"])
            opt.load_state_dict(resumed.state["optimizer"])
            step = resumed.step
        started = time.monotonic()
        for epoch in range(step // steps_per_epoch, epochs):
            sampler.set_epoch(epoch)
            for i, (x, y) in enumerate(loader):
                if i < step - epoch * steps_per_epoch:
                    continue  # done before the checkpoint this run resumed from
                opt.zero_grad(set_to_none=True)
                x, y = x.to(s.device), y.to(s.device)
                loss = nn.functional.cross_entropy(ddp(x), y)
                loss.backward()
                opt.step()
                step += 1
                s.log_metrics({"loss": loss.item()}, step)
                if s.should_checkpoint(step):
                    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
                    s.save_checkpoint(step, {**state, "rng": s.rng_state()})
                    if s.stop_requested:
                        return 0  # the session exits with the "preempted" code
        if s.is_main:
            acc = accuracy(model, test, s.device)
            s.log_metrics({"accuracy": acc}, step)
            print(
                f"my_project: model hidden={cfg.model.hidden} layers={cfg.model.layers} "
                f"optim {cfg.optim.name}: accuracy {acc:.3f} after {step} steps "
                f"(world size {s.world_size}, {time.monotonic() - started:.1f}s)",
                flush=True,
            )
            with contextlib.suppress(FileNotFoundError):
                records.update(s.run_dir, extra={"accuracy": acc, "steps": step})
    return 0
