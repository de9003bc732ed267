"""Rank discovery inside an ``srun`` step.

Rank, world size and local rank come from SLURM_PROCID, SLURM_NTASKS (the step's
SLURM_STEP_NUM_TASKS where set) and SLURM_LOCALID; the node from SLURM_NODEID;
the rendezvous host is the first node of the step's node list. MASTER_PORT is
derived from the job id (10000-29999, below Linux's ephemeral range) unless the
batch script set one.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Mapping

from hpc.hostlist import first_host
from hpc.ports import port_for_job
from hpc.runtime.environment import ClusterEnvironment, EnvironmentError_, RankInfo, checked


def tasks_on_node(spec: str, node_id: int) -> int:
    """SLURM_STEP_TASKS_PER_NODE like ``2(x3),1`` → tasks on node ``node_id``."""
    counts: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise EnvironmentError_(f"slurm: cannot parse tasks per node {spec!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if node_id >= len(counts):
        raise EnvironmentError_(f"slurm: node {node_id} not in tasks per node {spec!r}")
    return counts[node_id]


def resolve_node_address(node: str) -> str:
    """The node's address: DNS first, else Slurm's NodeAddr (``scontrol show node``)."""
    try:
        socket.getaddrinfo(node, None)
        return node
    except socket.gaierror:
        pass
    try:
        out = subprocess.run(
            ["scontrol", "show", "node", node], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentError_(
            f"slurm: {node!r} does not resolve and scontrol failed: {exc}"
        ) from None
    match = re.search(r"\bNodeAddr=(\S+)", out)
    if not match:
        raise EnvironmentError_(f"slurm: {node!r} does not resolve and has no NodeAddr")
    return match.group(1)


class SlurmEnvironment(ClusterEnvironment):
    name = "slurm"

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        # Inside a step (srun) only: the batch shell itself is not a rank.
        return "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ

    def node_name(self) -> str:
        return self.environ.get("SLURMD_NODENAME") or super().node_name()

    def rank_info(self) -> RankInfo:
        env = self.environ
        world = self._int(
            "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        )
        node_id = self._int("SLURM_NODEID")
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1"
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise EnvironmentError_("slurm: SLURM_STEP_NODELIST/SLURM_JOB_NODELIST not set")
        addr = env.get("MASTER_ADDR") or resolve_node_address(first_host(nodelist))
        port = (
            int(env["MASTER_PORT"])
            if env.get("MASTER_PORT")
            else port_for_job(env.get("SLURM_JOB_ID", "0"))
        )
        return checked(
            RankInfo(
                rank=self._int("SLURM_PROCID"),
                world_size=world,
                local_rank=self._int("SLURM_LOCALID"),
                local_world_size=tasks_on_node(per_node, node_id),
                node_rank=node_id,
                master_addr=addr,
                master_port=port,
            ),
            self.name,
        )
