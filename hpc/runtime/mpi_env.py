"""Rank discovery under ``mpirun``: Open MPI (``OMPI_COMM_WORLD_*``) and PMI (MPICH, Intel MPI).

Ranks come from the MPI launcher's variables. The torch.distributed rendezvous
comes from MASTER_ADDR/MASTER_PORT when the launcher set them (the MPIJob does:
worker 0's DNS name); otherwise rank 0 picks its address and a free port and
broadcasts both over MPI with mpi4py (imported only then; ``pip install
hpc-launch[mpi]``), so every rank agrees before torch.distributed initialises.

Note: Open MPI's ``OMPI_COMM_WORLD_NODE_RANK`` is *not* the node index (it is a
process's rank among all jobs' processes on its node); the node index is
derived as ``rank // local_world_size``, which holds for the block mappings that
hpc-launch's launchers request (``--map-by ppr:N:node``, ``-ppn N``).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, Protocol

from hpc.ports import free_port
from hpc.runtime.environment import ClusterEnvironment, EnvironmentError_, RankInfo, checked


class Broadcaster(Protocol):
    """What the rendezvous needs from an MPI communicator (mpi4py's ``COMM_WORLD``)."""

    def bcast(self, obj: Any, root: int = 0) -> Any: ...


def this_host_address(single_node: bool) -> str:
    """An address the other ranks can reach rank 0 at."""
    if single_node:
        return "127.0.0.1"
    host = socket.gethostname()
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return host
    for info in infos:
        addr = str(info[4][0])
        if not addr.startswith("127."):
            return addr
    return host


def agree_rendezvous(
    comm: Broadcaster,
    rank: int,
    single_node: bool,
    addr: str | None = None,
    port: int | None = None,
) -> tuple[str, int]:
    """Rank 0 fills in what is missing (its address, a free port); every rank gets the same."""
    proposal = None
    if rank == 0:
        proposal = (addr or this_host_address(single_node), port or free_port())
    agreed = comm.bcast(proposal, root=0)
    return str(agreed[0]), int(agreed[1])


def world_comm() -> Broadcaster:
    try:
        from mpi4py import MPI  # noqa: PLC0415 (lazy: optional, only under mpirun)
    except ImportError as exc:
        raise EnvironmentError_(
            "mpi: MASTER_ADDR/MASTER_PORT are not set and mpi4py is missing to agree on them"
            f" ({exc}); pip install 'hpc-launch[mpi]'"
        ) from None
    return MPI.COMM_WORLD


class _MpiEnvironment(ClusterEnvironment):
    """Shared part: variables → ranks; MASTER_* or an MPI broadcast → rendezvous."""

    RANK: str
    SIZE: str
    LOCAL_RANK: tuple[str, ...]
    LOCAL_SIZE: tuple[str, ...]

    def __init__(
        self, environ: Mapping[str, str] | None = None, comm: Broadcaster | None = None
    ) -> None:
        super().__init__(environ)
        self._comm = comm
        self._info: RankInfo | None = None

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        return cls.RANK in environ and cls.SIZE in environ

    def _first_int(self, names: tuple[str, ...]) -> int | None:
        for name in names:
            if self.environ.get(name, "") != "":
                return self._int(name)
        return None

    def ranks(self) -> tuple[int, int, int, int]:
        """(rank, world size, local rank, local world size) from the variables alone."""
        rank, world = self._int(self.RANK), self._int(self.SIZE)
        local_rank = self._first_int(self.LOCAL_RANK)
        local_world = self._first_int(self.LOCAL_SIZE)
        if local_rank is None:
            local_rank = rank if local_world in (None, world) else rank % local_world
        if local_world is None:
            if local_rank != rank:
                raise EnvironmentError_(
                    f"{self.name}: {self.LOCAL_RANK[0]} is set but {self.LOCAL_SIZE[0]} is not"
                )
            local_world = world
        return rank, world, local_rank, local_world

    def rank_info(self) -> RankInfo:
        if self._info is not None:  # the broadcast is collective: run it once
            return self._info
        rank, world, local_rank, local_world = self.ranks()
        if not 0 <= rank < world:
            raise EnvironmentError_(f"{self.name}: rank {rank} outside world size {world}")
        node_rank = rank // max(local_world, 1)
        addr = self.environ.get("MASTER_ADDR") or None
        port_text = self.environ.get("MASTER_PORT") or None
        port = self._int("MASTER_PORT") if port_text is not None else None
        if addr is None or port is None:
            if world == 1:
                addr, port = addr or "127.0.0.1", port or free_port()
            else:
                comm = self._comm or world_comm()
                addr, port = agree_rendezvous(comm, rank, local_world == world, addr, port)
        self._info = checked(
            RankInfo(
                rank=rank,
                world_size=world,
                local_rank=local_rank,
                local_world_size=local_world,
                node_rank=node_rank,
                master_addr=addr,
                master_port=port,
            ),
            self.name,
        )
        return self._info


class OpenMpiEnvironment(_MpiEnvironment):
    """Open MPI's ``mpirun``/``orterun``/``prterun`` (also inside a Kubeflow MPIJob)."""

    name = "openmpi"
    RANK = "OMPI_COMM_WORLD_RANK"
    SIZE = "OMPI_COMM_WORLD_SIZE"
    LOCAL_RANK = ("OMPI_COMM_WORLD_LOCAL_RANK",)
    LOCAL_SIZE = ("OMPI_COMM_WORLD_LOCAL_SIZE",)


class PmiEnvironment(_MpiEnvironment):
    """PMI launchers: MPICH's and Intel MPI's Hydra (``mpiexec``/``mpirun``)."""

    name = "pmi"
    RANK = "PMI_RANK"
    SIZE = "PMI_SIZE"
    LOCAL_RANK = ("MPI_LOCALRANKID", "PMI_LOCAL_RANK")
    LOCAL_SIZE = ("MPI_LOCALNRANKS", "PMI_LOCAL_SIZE")


__all__ = [
    "OpenMpiEnvironment",
    "PmiEnvironment",
    "agree_rendezvous",
    "this_host_address",
]
