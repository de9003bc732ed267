"""The placement rule on the real topology fixtures and on a sysfs tree."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from hpc.topology.model import Nic, Topology, link_distance, parse_cpulist
from hpc.topology.nvsmi import read_nvsmi
from hpc.topology.placement import PlacementError, RankPlacement, compute_hcas, plan_node
from hpc.topology.sysfs import read_sysfs

TOPOLOGIES = Path(__file__).resolve().parents[1] / "fixtures" / "topologies"
ALL = sorted(p.name for p in TOPOLOGIES.glob("*.txt"))


def check_rule(topo: Topology, plan: list[RankPlacement], allowed: frozenset[int]) -> None:
    """Every property the placement rule promises when no fallback is needed."""
    assert [p.local_rank for p in plan] == list(range(len(plan)))
    seen: set[int] = set()
    nics = {n.name: n for n in topo.nics}
    for p in plan:
        gpu = topo.gpu(p.local_rank)
        assert p.gpu == gpu.index
        assert p.numa_node == gpu.numa_node
        assert p.cpus, f"rank {p.local_rank} has no CPU"
        assert list(p.cpus) == sorted(p.cpus)
        assert set(p.cpus) <= gpu.cpu_affinity & allowed
        assert not seen & set(p.cpus), "CPU blocks overlap"
        seen |= set(p.cpus)
        for cpu in p.cpus:  # whole cores: every allowed sibling comes along
            assert topo.siblings.get(cpu, {cpu}) & allowed <= set(p.cpus)
        dists = [link_distance(topo.nic_link(gpu.index, n)) for n in p.nics]
        assert dists == sorted(dists), "NICs not nearest first"
        assert list(p.nic_links) == [topo.nic_link(gpu.index, n) for n in p.nics]
        for n in p.nics:
            assert nics[n].active is not False
        assert 0 < p.dataloader_workers <= p.num_cores == len(topo.cores(p.cpus))


@pytest.mark.parametrize("name", ALL)
def test_fixture_plan_meets_rule(name: str) -> None:
    topo = read_nvsmi(TOPOLOGIES / name)
    plan = plan_node(topo, len(topo.gpus))
    check_rule(topo, plan, topo.allowed_cpus)
    assert sorted(n for p in plan[:1] for n in p.nics) == sorted(n.name for n in topo.nics)
    # Ranks sharing a NUMA node use all of its CPUs between them.
    for node, cpus in topo.numa_cpus.items():
        used = {c for p in plan if p.numa_node == node for c in p.cpus}
        assert used == cpus


def test_h100_blocks_are_contiguous_whole_cores() -> None:
    topo = read_nvsmi(TOPOLOGIES / "hgx-h100-8gpu-8nic-ib.txt")
    plan = plan_node(topo, 8)
    assert plan[0].cpus == tuple(range(0, 12)) + tuple(range(96, 108))
    assert plan[5].cpus == tuple(range(60, 72)) + tuple(range(156, 168))
    assert [p.nics[0] for p in plan] == [f"mlx5_{i}" for i in range(8)]
    assert plan[0].nearest_nics == ("mlx5_0",)
    assert plan[0].num_cores == 12 and plan[0].dataloader_workers == 12


def test_ties_are_spread_round_robin() -> None:
    topo = read_nvsmi(TOPOLOGIES / "hgx-a100-8gpu-8nic-roce.txt")
    plan = plan_node(topo, 8)
    # GPU0 and GPU1 both reach mlx5_0 and mlx5_1 at PXB.
    assert plan[0].nics[:2] == ("mlx5_0", "mlx5_1")
    assert plan[1].nics[:2] == ("mlx5_1", "mlx5_0")
    assert [p.nics[0] for p in plan] == [f"mlx5_{i}" for i in range(8)]
    assert set(plan[1].nearest_nics) == {"mlx5_0", "mlx5_1"}


def test_fewer_ranks_than_gpus_and_too_many() -> None:
    topo = read_nvsmi(TOPOLOGIES / "pcie-4gpu-2socket-amd-genoa-4nic.txt")
    plan = plan_node(topo, 2)
    assert [p.gpu for p in plan] == [0, 1]
    assert plan[0].cpus == tuple(range(16)) and plan[1].cpus == tuple(range(16, 32))
    with pytest.raises(PlacementError, match="5 ranks per node but only 4 GPUs"):
        plan_node(topo, 5)
    with pytest.raises(PlacementError, match="at least 1"):
        plan_node(topo, 0)


def test_allowed_cpuset_is_respected() -> None:
    topo = read_nvsmi(TOPOLOGIES / "hgx-h100-8gpu-8nic-ib.txt")
    allowed = parse_cpulist("0-23,96-119,48-71,144-167")  # half of each socket
    plan = plan_node(topo, 8, allowed_cpus=allowed)
    check_rule(topo, plan, allowed)
    assert plan[0].cpus == (0, 1, 2, 3, 4, 5, 96, 97, 98, 99, 100, 101)


def test_fallback_uses_unclaimed_allowed_cpus(caplog: pytest.LogCaptureFixture) -> None:
    topo = read_nvsmi(TOPOLOGIES / "pcie-4gpu-2socket-amd-genoa-4nic.txt")
    allowed = parse_cpulist("0-7,40-47")  # a cgroup-limited job: no CPU local to GPU 3?
    plan = plan_node(topo, 4, allowed_cpus=allowed)
    assert plan[0].cpus == (0, 1, 2, 3) and plan[1].cpus == (4, 5, 6, 7)
    assert plan[2].cpus == (40, 41, 42, 43) and plan[3].cpus == (44, 45, 46, 47)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plan = plan_node(topo, 4, allowed_cpus=parse_cpulist("0-5"))
    # No CPU of NUMA 1 allowed: ranks 2 and 3 cannot be local, nothing is left over,
    # so the whole node is split evenly over the allowed set.
    assert [p.cpus for p in plan] == [(0, 1), (2, 3), (4,), (5,)]
    assert "rank 2 (GPU 2), rank 3 (GPU 3)" in caplog.text
    assert "splitting allowed CPUs evenly" in caplog.text


def test_fallback_to_leftover_cpus(caplog: pytest.LogCaptureFixture) -> None:
    topo = read_nvsmi(TOPOLOGIES / "workstation-2gpu-threadripper-2nic.txt")
    topo.gpus[1] = dataclasses.replace(topo.gpus[1], cpu_affinity=parse_cpulist("30-31"))
    with caplog.at_level(logging.WARNING):
        plan = plan_node(topo, 2, allowed_cpus=parse_cpulist("0-23,40-43"))
    assert plan[0].cpus == tuple(range(24))  # GPU0's whole local pool
    assert plan[1].cpus == (40, 41, 42, 43)  # what nobody else got
    assert (
        "rank 1 (GPU 1): too few NUMA-local CPUs allowed; using other allowed CPUs" in caplog.text
    )


def test_memory_flag_and_worker_cap() -> None:
    topo = read_nvsmi(TOPOLOGIES / "workstation-2gpu-threadripper-2nic.txt")
    default = plan_node(topo, 2)
    assert not any(p.strict_memory for p in default)
    strict = plan_node(topo, 2, strict_memory=True, dataloader_workers=64)
    assert all(p.strict_memory for p in strict)
    assert [p.dataloader_workers for p in strict] == [12, 12]
    assert [p.dataloader_workers for p in plan_node(topo, 2, dataloader_workers=3)] == [3, 3]


def test_only_active_nics_of_the_fabric() -> None:
    topo = read_nvsmi(TOPOLOGIES / "hgx-h100-8gpu-8nic-ib.txt")
    states = {"mlx5_0": ("DOWN", "InfiniBand"), "mlx5_5": ("ACTIVE", "Ethernet")}
    topo.nics = [Nic(n.name, *states.get(n.name, ("ACTIVE", "InfiniBand"))) for n in topo.nics]
    plan = plan_node(topo, 8, link_layer="InfiniBand")
    check_rule(topo, plan, topo.allowed_cpus)
    assert all("mlx5_0" not in p.nics and "mlx5_5" not in p.nics for p in plan)
    assert plan[0].nics[0] in ("mlx5_1", "mlx5_2", "mlx5_3")  # NODE, the next nearest
    assert compute_hcas(topo, "InfiniBand") == [
        "mlx5_1",
        "mlx5_2",
        "mlx5_3",
        "mlx5_4",
        "mlx5_6",
        "mlx5_7",
    ]
    assert compute_hcas(topo, "Ethernet") == ["mlx5_5"]


def test_sysfs_plan_keeps_hyperthread_siblings_together(two_socket_sysfs: Path) -> None:
    topo = read_sysfs(two_socket_sysfs)
    plan = plan_node(topo, 3, link_layer="InfiniBand")
    check_rule(topo, plan, topo.allowed_cpus)
    assert plan[0].cpus == (0, 1, 8, 9)
    assert plan[1].cpus == (2, 3, 10, 11)
    assert plan[2].cpus == (4, 5, 6, 7, 12, 13, 14, 15)
    assert plan[0].num_cores == 2
    # mlx5_1 is DOWN and mlx5_2 is Ethernet: only mlx5_0 is left for InfiniBand.
    assert [p.nics for p in plan] == [("mlx5_0",)] * 3
    assert plan[2].nic_links == ("SYS",)
    assert plan_node(topo, 3, link_layer="Ethernet")[2].nics == ("mlx5_2",)


def test_sysfs_hyperthreads_split_only_when_short_of_cores(two_socket_sysfs: Path) -> None:
    topo = read_sysfs(two_socket_sysfs, allowed_cpus=parse_cpulist("0,8,4-7,12-15"))
    plan = plan_node(topo, 3)
    assert plan[0].cpus == (0,) and plan[1].cpus == (8,)  # one core for two ranks
    assert plan[2].cpus == (4, 5, 6, 7, 12, 13, 14, 15)


def test_cpu_only_plan() -> None:
    topo = Topology(
        cpus=frozenset(range(8)),
        siblings={c: frozenset({c % 4, c % 4 + 4}) for c in range(8)},
        numa_cpus={0: frozenset({0, 1, 4, 5}), 1: frozenset({2, 3, 6, 7})},
        allowed_cpus=frozenset(range(8)),
        nics=[Nic("mlx5_0"), Nic("mlx5_1")],
    )
    plan = plan_node(topo, 2)
    assert [p.cpus for p in plan] == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert [p.gpu for p in plan] == [None, None]
    assert [p.numa_node for p in plan] == [0, 1]
    assert [p.nics for p in plan] == [("mlx5_0", "mlx5_1"), ("mlx5_1", "mlx5_0")]
    assert [len(p.cpus) for p in plan_node(topo, 3)] == [4, 2, 2]
