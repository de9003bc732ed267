"""Property: for random synthetic nodes the plan is disjoint and within affinity."""

from __future__ import annotations

import logging
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from hpc.topology.model import Gpu, Nic, Topology, link_distance
from hpc.topology.placement import plan_node

LINKS = ("PIX", "PXB", "PHB", "NODE", "SYS")


@st.composite
def nodes(draw: st.DrawFn) -> tuple[Topology, int]:
    n_numa = draw(st.integers(1, 4))
    cores_per_numa = draw(st.integers(1, 6))
    smt = draw(st.sampled_from([1, 2]))
    split_numbering = draw(st.booleans())  # x86 "c, c+ncores" vs adjacent "2c, 2c+1"
    ncores = n_numa * cores_per_numa
    numa_cpus: dict[int, set[int]] = {n: set() for n in range(n_numa)}
    siblings: dict[int, frozenset[int]] = {}
    for core in range(ncores):
        threads = [core + t * ncores if split_numbering else core * smt + t for t in range(smt)]
        numa_cpus[core // cores_per_numa].update(threads)
        for cpu in threads:
            siblings[cpu] = frozenset(threads)
    cpus = frozenset(siblings)
    n_gpus = draw(st.integers(0, 8))
    gpu_numa = [draw(st.integers(0, n_numa - 1)) for _ in range(n_gpus)]
    nics = [
        Nic(f"mlx5_{i}", draw(st.sampled_from([None, "ACTIVE", "DOWN"])))
        for i in range(draw(st.integers(0, 4)))
    ]
    topo = Topology(
        gpus=[
            Gpu(i, numa_node=n, cpu_affinity=frozenset(numa_cpus[n]))
            for i, n in enumerate(gpu_numa)
        ],
        nics=nics,
        gpu_nic_links={
            (g, n.name): draw(st.sampled_from(LINKS)) for g in range(n_gpus) for n in nics
        },
        cpus=cpus,
        siblings=siblings,
        numa_cpus={n: frozenset(c) for n, c in numa_cpus.items()},
        allowed_cpus=cpus,
    )
    if draw(st.booleans()):
        topo.allowed_cpus = frozenset(draw(st.sets(st.sampled_from(sorted(cpus)), min_size=1)))
    ranks = draw(st.integers(1, n_gpus if n_gpus else 6))
    return topo, ranks


@settings(max_examples=300, deadline=None)
@given(nodes())
def test_plan_is_disjoint_and_within_affinity(node: tuple[Topology, int]) -> None:
    topo, ranks = node
    logging.disable(logging.WARNING)  # fallbacks warn; that is covered elsewhere
    try:
        plan = plan_node(topo, ranks)
    finally:
        logging.disable(logging.NOTSET)
    allowed = topo.allowed_cpus
    assert len(plan) == ranks
    blocks = [set(p.cpus) for p in plan]
    for b in blocks:
        assert b <= allowed
    if len(allowed) >= ranks:  # enough CPUs: non-empty and pairwise disjoint
        assert all(blocks)
        assert sum(len(b) for b in blocks) == len(set().union(*blocks))

    if topo.gpus:
        pools = {i: topo.gpus[i].cpu_affinity & allowed for i in range(ranks)}
        sharing = Counter(pools.values())
        if all(len(pool) >= sharing[pool] for pool in pools.values()):
            for p in plan:  # no fallback needed: inside the GPU's affinity, on its node
                assert set(p.cpus) <= pools[p.local_rank]
                assert p.numa_node == topo.gpus[p.local_rank].numa_node
                cores = len(topo.cores(pools[p.local_rank]))
                if cores >= sharing[pools[p.local_rank]]:  # whole cores kept together
                    for cpu in p.cpus:
                        assert topo.siblings[cpu] & allowed <= set(p.cpus)
        for p in plan:
            dists = [link_distance(x) for x in p.nic_links]
            assert dists == sorted(dists)
            assert all(topo.nics[int(n[5:])].port_state != "DOWN" for n in p.nics)
    for p in plan:
        assert 0 <= p.dataloader_workers <= max(p.num_cores, 0)
