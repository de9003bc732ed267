"""The same project as an ordinary Hydra app: ``@hydra.main`` over the same config dir,
with no hpc-launch import. It trains in one process and returns the test accuracy.

    python app.py model=large                                   # here, in this process
    python app.py -m model=small,large \\
        hydra/launcher=hpc_slurm hydra.launcher.wait=true          # each point an hpc-launch job

With ``hydra/launcher=hpc_slurm`` (or ``hpc_local``) each point of the sweep runs as
a full hpc-launch job (placement, NCCL variables, preemption signal and requeue,
accounting, an MLflow child run when tracking is configured); with ``wait=true`` the
returned accuracies come back to Hydra, so return-value sweepers can use them.
"""

from __future__ import annotations

import hydra
import my_project.schema  # noqa: F401  (registers the groups' structured configs)
import torch
from my_project.train import accuracy, make_data, make_model, make_optimizer
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    torch.set_num_threads(1)
    torch.manual_seed(int(cfg.train.seed))
    train, test = make_data(cfg.data, int(cfg.train.seed))
    model = make_model(cfg.model, int(cfg.data.features), int(cfg.data.classes))
    opt = make_optimizer(cfg.optim, model.parameters())
    loader = DataLoader(train, batch_size=int(cfg.train.batch_size), shuffle=True)
    for _ in range(int(cfg.train.epochs)):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    acc = accuracy(model, test, torch.device("cpu"))
    print(f"app: model hidden={cfg.model.hidden} accuracy {acc:.3f}", flush=True)
    return acc


if __name__ == "__main__":
    main()
