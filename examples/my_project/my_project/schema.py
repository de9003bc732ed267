"""The project's own structured configs, registered in Hydra's ConfigStore.

Each group's YAML files extend their schema (``defaults: [base_model, _self_]``), so
a typo in a key (``model.hiden=32``) or a wrong type (``model.layers=two``) is
refused before anything runs, as for the framework's own keys. The primary config
names this module (``job.schema``) so that hpc-launch imports it before composing.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    hidden: int = MISSING
    layers: int = 1


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = MISSING
    momentum: float = 0.0


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = MISSING
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class DataConfig:
    kind: str = "blobs"  # blobs | spirals
    samples: int = 1024
    features: int = 16
    classes: int = 4
    noise: float = 1.0
    test_fraction: float = 0.25


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="model", name="base_model", node=ModelConfig)
    store.store(group="optim", name="base_sgd", node=SGDConfig)
    store.store(group="optim", name="base_adam", node=AdamConfig)
    store.store(group="data", name="base_data", node=DataConfig)


register()
