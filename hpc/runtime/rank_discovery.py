"""Which :class:`ClusterEnvironment` a process runs under: the one place that knows them all."""

from __future__ import annotations

import os
from collections.abc import Mapping

from hpc.runtime.environment import (
    ClusterEnvironment,
    EnvironmentError_,
    SingleProcessEnvironment,
    TorchrunEnvironment,
)
from hpc.runtime.mpi_env import OpenMpiEnvironment, PmiEnvironment
from hpc.runtime.slurm_env import SlurmEnvironment

# Most specific first, the single-process fallback last. torchrun's variables win
# (the local launcher and torchrun set them explicitly); mpirun inside a Slurm
# allocation sets both OMPI_* and SLURM_*, so MPI comes before Slurm.
ENVIRONMENTS: list[type[ClusterEnvironment]] = [
    TorchrunEnvironment,
    OpenMpiEnvironment,
    PmiEnvironment,
    SlurmEnvironment,
    SingleProcessEnvironment,
]


# The environment hpc.run selected for a script before exporting torchrun's variables
# from it: a Session the script opens reuses it (its name, node name, MPI rendezvous).
_selected: list[ClusterEnvironment] = []


def from_env(environ: Mapping[str, str] | None = None) -> ClusterEnvironment:
    """The first environment whose variables are present (the one already selected for
    this process, when asked about the process's own environment)."""
    if environ is None and _selected:
        return _selected[0]
    environ = os.environ if environ is None else environ
    for env_cls in ENVIRONMENTS:
        if env_cls.detect(environ):
            return env_cls(environ)
    raise EnvironmentError_("no cluster environment detected")  # unreachable: single matches


def select(env: ClusterEnvironment) -> None:
    """Make ``env`` the answer of :func:`from_env` for this process from now on."""
    _selected[:] = [env]
