"""Rank discovery: a tiny ClusterEnvironment interface (after Lightning's).

Each environment says whether it applies (``detect``) and reads rank, world
size, local rank and the rendezvous address from its own variables. This module
knows none of the launcher-specific subclasses; :mod:`hpc.runtime.rank_discovery`
orders them and picks the first that applies.
"""

from __future__ import annotations

import abc
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass


class EnvironmentError_(RuntimeError):
    """A launcher's variables are missing or inconsistent."""


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int


class ClusterEnvironment(abc.ABC):
    """Where rank, world size and rendezvous come from."""

    name: str

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    @classmethod
    @abc.abstractmethod
    def detect(cls, environ: Mapping[str, str]) -> bool: ...

    @abc.abstractmethod
    def rank_info(self) -> RankInfo: ...

    def node_name(self) -> str:
        """This node's name as the scheduler knows it (the host name by default)."""
        return socket.gethostname()

    def _int(self, name: str) -> int:
        value = self.environ.get(name)
        if value is None:
            raise EnvironmentError_(f"{self.name}: environment variable {name} is not set")
        try:
            return int(value)
        except ValueError:
            raise EnvironmentError_(f"{self.name}: {name}={value!r} is not an integer") from None


class TorchrunEnvironment(ClusterEnvironment):
    """torchrun's contract, also used by the local launcher."""

    name = "torchrun"

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        return all(k in environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))

    def rank_info(self) -> RankInfo:
        rank = self._int("RANK")
        world = self._int("WORLD_SIZE")
        local_rank = int(self.environ.get("LOCAL_RANK", rank))
        local_world = int(self.environ.get("LOCAL_WORLD_SIZE", world))
        node_rank = int(self.environ.get("GROUP_RANK", rank // max(local_world, 1)))
        return checked(
            RankInfo(
                rank=rank,
                world_size=world,
                local_rank=local_rank,
                local_world_size=local_world,
                node_rank=node_rank,
                master_addr=self.environ["MASTER_ADDR"],
                master_port=self._int("MASTER_PORT"),
            ),
            self.name,
        )


class SingleProcessEnvironment(ClusterEnvironment):
    """A plain ``python script.py``: world size 1."""

    name = "single"

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        return True

    def rank_info(self) -> RankInfo:
        return RankInfo(0, 1, 0, 1, 0, "127.0.0.1", int(self.environ.get("MASTER_PORT", 29500)))


def checked(info: RankInfo, source: str) -> RankInfo:
    """``info`` if its ranks lie inside their world sizes; EnvironmentError_ otherwise."""
    if not 0 <= info.rank < info.world_size:
        raise EnvironmentError_(f"{source}: rank {info.rank} outside world size {info.world_size}")
    if not 0 <= info.local_rank < info.local_world_size:
        raise EnvironmentError_(
            f"{source}: local rank {info.local_rank} outside {info.local_world_size}"
        )
    return info
