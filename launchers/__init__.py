"""Launchers: one module per backend behind the small interface in ``base``.

``get_launcher(name)`` imports only the backend asked for, so the submit path
stays light.
"""

from __future__ import annotations

import importlib

from hpc.launchers.base import JobHandle, Launcher, Plan

_REGISTRY: dict[str, str] = {
    "local": "hpc.launchers.local:LocalLauncher",
    "slurm": "hpc.launchers.slurm:SlurmLauncher",
    "k8s": "hpc.launchers.kubernetes:KubernetesLauncher",
    "mpi": "hpc.launchers.mpi:MpiLauncher",
}


def register(name: str, target: str) -> None:
    """Register a backend as ``"package.module:ClassName"``."""
    _REGISTRY[name] = target


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_launcher(name: str) -> Launcher:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown launcher {name!r} (one of {', '.join(available())})") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise KeyError(f"launcher {name!r} is not available yet ({exc})") from None
    return getattr(module, class_name)()


__all__ = ["JobHandle", "Launcher", "Plan", "available", "get_launcher", "register"]
