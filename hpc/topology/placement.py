"""Per-node placement of ranks onto GPUs, CPU cores and NICs.

Rule (one task per GPU, every rank sees all GPUs -- no per-rank CUDA_VISIBLE_DEVICES):

* rank ``i`` drives GPU ``i``; more ranks than GPUs is an error;
* its CPUs are the GPU's NUMA-local CPUs intersected with the allowed cpuset, split among
  the ranks sharing that set into disjoint, contiguous blocks of whole physical cores
  (hyperthread siblings stay together). When the intersection is empty (or has fewer
  CPUs than ranks sharing it) the rank gets a share of the allowed CPUs nobody else got
  or, if too few are left, the whole node falls back to an even split of the allowed
  set; both with a warning. Ranks share CPUs only if there are fewer allowed CPUs than
  ranks;
* memory is left to first touch (local to the bound CPUs); ``strict_memory`` only sets a
  flag for the launcher (e.g. ``numactl --membind``);
* NICs are ordered by distance to the GPU (PIX < PXB < PHB < NODE < SYS), keeping only
  active ports of the wanted link layer when known; ranks whose nearest NICs tie get them
  in round-robin order;
* dataloader workers are capped at the rank's number of physical cores.

Without GPUs every rank gets a disjoint block of whole cores of the allowed set.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from hpc.topology.model import Gpu, Nic, Topology, TopologyError, link_distance

__all__ = ["PlacementError", "RankPlacement", "compute_hcas", "eligible_nics", "plan_node"]

log = logging.getLogger(__name__)


class PlacementError(TopologyError, ValueError):
    """The requested placement is impossible (e.g. more ranks than GPUs)."""


@dataclass(frozen=True)
class RankPlacement:
    """Where one local rank runs. ``cpus`` are sorted logical CPU ids.

    ``nics`` are NIC names nearest first with ``nic_links`` their link classes (None when
    unknown); ``num_cores`` counts physical cores in ``cpus``; ``strict_memory`` asks the
    launcher to bind memory to ``numa_node`` instead of relying on first touch.
    """

    local_rank: int
    gpu: int | None
    cpus: tuple[int, ...]
    numa_node: int | None
    nics: tuple[str, ...]
    dataloader_workers: int
    num_cores: int = 0
    nic_links: tuple[str | None, ...] = ()
    strict_memory: bool = False

    @property
    def nearest_nics(self) -> tuple[str, ...]:
        """The NICs at the smallest distance (all of them when distances are unknown)."""
        if not self.nics:
            return ()
        best = min(link_distance(x) for x in self.nic_links) if self.nic_links else None
        return tuple(
            n
            for n, x in zip(self.nics, self.nic_links or [None] * len(self.nics), strict=True)
            if best is None or link_distance(x) == best
        )


def eligible_nics(topology: Topology, link_layer: str | None = None) -> list[Nic]:
    """NICs whose port is active and of ``link_layer``, where those are known."""
    want = link_layer.lower() if link_layer else None
    return [
        n
        for n in topology.nics
        if n.active is not False
        and (want is None or n.link_layer is None or n.link_layer.lower() == want)
    ]


def compute_hcas(topology: Topology, link_layer: str | None = None) -> list[str]:
    """Active compute HCAs: eligible NICs that are the nearest NIC of at least one GPU.

    Without GPUs or GPU-NIC link information, all eligible NICs.
    """
    nics = eligible_nics(topology, link_layer)
    if not topology.gpus or not topology.gpu_nic_links:
        return [n.name for n in nics]
    chosen: set[str] = set()
    for g in topology.gpus:
        dist = {n.name: link_distance(topology.nic_link(g.index, n.name)) for n in nics}
        if dist:
            best = min(dist.values())
            chosen.update(name for name, d in dist.items() if d == best)
    return [n.name for n in nics if n.name in chosen]


def plan_node(
    topology: Topology,
    ranks_per_node: int,
    allowed_cpus: Iterable[int] | None = None,
    link_layer: str | None = None,
    *,
    strict_memory: bool = False,
    dataloader_workers: int | None = None,
) -> list[RankPlacement]:
    """Plan ``ranks_per_node`` local ranks on ``topology`` (see the module docstring).

    ``allowed_cpus`` defaults to ``topology.allowed_cpus`` (or all its CPUs);
    ``dataloader_workers`` is the wanted count (default: one per core), capped per rank.
    """
    if ranks_per_node < 1:
        raise PlacementError(f"ranks_per_node must be at least 1, got {ranks_per_node}")
    gpus = sorted(topology.gpus, key=lambda g: g.index)
    if gpus and ranks_per_node > len(gpus):
        raise PlacementError(
            f"{ranks_per_node} ranks per node but only {len(gpus)} GPUs: one rank per GPU"
        )
    allowed = frozenset(allowed_cpus if allowed_cpus is not None else topology.allowed_cpus)
    if allowed_cpus is None and not allowed:
        allowed = topology.cpus
    if not allowed:
        log.warning("no allowed CPUs known: ranks get no CPU binding")

    if gpus:
        blocks, numas = _gpu_cpu_blocks(topology, gpus[:ranks_per_node], allowed)
    else:
        blocks = _split(topology, allowed, ranks_per_node)
        numas = [topology.numa_of_cpus(b) for b in blocks]

    nics = eligible_nics(topology, link_layer)
    tier_uses: Counter[tuple[int, tuple[str, ...]]] = Counter()
    plan = []
    for rank in range(ranks_per_node):
        gpu = gpus[rank].index if gpus else None
        names, links = _order_nics(topology, gpu, nics, tier_uses)
        cores = len(topology.cores(blocks[rank]))
        want = cores if dataloader_workers is None else dataloader_workers
        plan.append(
            RankPlacement(
                local_rank=rank,
                gpu=gpu,
                cpus=tuple(sorted(blocks[rank])),
                numa_node=numas[rank],
                nics=names,
                dataloader_workers=max(0, min(want, cores)),
                num_cores=cores,
                nic_links=links,
                strict_memory=strict_memory,
            )
        )
    return plan


def _gpu_cpu_blocks(
    topology: Topology, gpus: list[Gpu], allowed: frozenset[int]
) -> tuple[list[frozenset[int]], list[int | None]]:
    n = len(gpus)
    blocks: list[frozenset[int]] = [frozenset()] * n
    numas: list[int | None] = [g.numa_node for g in gpus]
    groups: dict[frozenset[int], list[int]] = {}
    fallback: list[int] = []
    for rank, g in enumerate(gpus):
        local = g.cpu_affinity or topology.numa_cpus.get(
            g.numa_node if g.numa_node is not None else -1, frozenset()
        )
        pool = frozenset(local) & allowed
        if pool:
            groups.setdefault(pool, []).append(rank)
        else:
            fallback.append(rank)
    claimed: set[int] = set()
    for pool, ranks in sorted(groups.items(), key=lambda kv: (len(kv[0]), min(kv[0]))):
        avail = pool - claimed
        fits, rest = ranks[: len(avail)], ranks[len(avail) :]  # at most a CPU each
        fallback.extend(rest)
        if not fits:
            continue
        for rank, block in zip(fits, _split(topology, avail, len(fits)), strict=True):
            blocks[rank] = block
            if numas[rank] is None:
                numas[rank] = topology.numa_of_cpus(block)
        claimed |= avail
    if fallback:
        fallback.sort()
        left = allowed - claimed
        who = ", ".join(f"rank {r} (GPU {gpus[r].index})" for r in fallback)
        if len(left) >= len(fallback):
            log.warning("%s: too few NUMA-local CPUs allowed; using other allowed CPUs", who)
            parts = _split(topology, left, len(fallback))
            for rank, block in zip(fallback, parts, strict=True):
                blocks[rank] = block
                numas[rank] = topology.numa_of_cpus(block)
        else:
            log.warning("%s: too few NUMA-local CPUs allowed; splitting allowed CPUs evenly", who)
            blocks = _split(topology, allowed, n)
            numas = [topology.numa_of_cpus(b) for b in blocks]
    return blocks, numas


def _split(topology: Topology, cpus: frozenset[int], parts: int) -> list[frozenset[int]]:
    """Split ``cpus`` into ``parts`` disjoint contiguous blocks of whole cores.

    With fewer cores than parts, hyperthreads are split; with fewer CPUs than parts,
    CPUs are shared round-robin. Both cases log a warning.
    """
    cores = topology.cores(cpus)
    if len(cores) < parts:
        ordered = sorted(cpus)
        if len(ordered) >= parts:
            log.warning("%d cores for %d ranks: splitting hyperthreads", len(cores), parts)
            cores = [(c,) for c in ordered]
        else:
            log.warning("%d CPUs for %d ranks: ranks share CPUs", len(ordered), parts)
            return [
                frozenset([ordered[i % len(ordered)]]) if ordered else frozenset()
                for i in range(parts)
            ]
    base, extra = divmod(len(cores), parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(frozenset(c for core in cores[start : start + size] for c in core))
        start += size
    return out


def _order_nics(
    topology: Topology,
    gpu: int | None,
    nics: list[Nic],
    tier_uses: Counter[tuple[int, tuple[str, ...]]],
) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """Eligible NICs nearest first; each tie group rotated by how often it was handed out."""
    links = {n.name: topology.nic_link(gpu, n.name) if gpu is not None else None for n in nics}
    tiers: dict[int, list[str]] = {}
    for n in nics:
        tiers.setdefault(link_distance(links[n.name]), []).append(n.name)
    names: list[str] = []
    for dist in sorted(tiers):
        tier = tiers[dist]
        key = (dist, tuple(tier))
        shift = tier_uses[key] % len(tier)
        tier_uses[key] += 1
        names.extend(tier[shift:] + tier[:shift])
    return tuple(names), tuple(links[n] for n in names)
