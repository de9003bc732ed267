"""Sweeps (``hpc-launch -m``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def run_sweep(overrides: Sequence[str]) -> int:
    print("hpc-launch: error: -m: sweeps are not implemented yet", file=sys.stderr)
    return 2
