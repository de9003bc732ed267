"""Launchers: one module per backend behind the interface in :mod:`hpc.backend`.

They are found through the entry points of group ``hpc_launch.launchers``
(:mod:`hpc.registry`), which imports only the backend asked for.
"""

from __future__ import annotations

from hpc.backend import JobHandle, Launcher, Plan
from hpc.registry import available, get_launcher

__all__ = ["JobHandle", "Launcher", "Plan", "available", "get_launcher"]
