"""sysfs discovery against trees with the real sysfs layout, NVML absence, discover()."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpc.topology.discover import discover
from hpc.topology.model import NoGpuError, parse_cpulist
from hpc.topology.nvml import read_nvml
from hpc.topology.sysfs import normalize_bus_id, read_cpu_info, read_nics, read_sysfs


def test_two_socket_tree(two_socket_sysfs: Path) -> None:
    topo = read_sysfs(two_socket_sysfs)
    assert topo.source == "sysfs"
    assert [(g.index, g.pci_bus_id, g.numa_node) for g in topo.gpus] == [
        (0, "0000:1b:00.0", 0),
        (1, "0000:3d:00.0", 0),
        (2, "0000:9c:00.0", 1),
    ]  # audio function and NVSwitch are not GPUs; PCI bus order
    assert topo.gpus[2].cpu_affinity == parse_cpulist("4-7,12-15")
    assert topo.cpus == frozenset(range(16)) == topo.allowed_cpus
    assert topo.siblings[3] == frozenset({3, 11})
    assert topo.numa_cpus == {0: parse_cpulist("0-3,8-11"), 1: parse_cpulist("4-7,12-15")}
    assert topo.gpu_links == {
        (0, 0): "X", (0, 1): "NODE", (0, 2): "SYS",
        (1, 0): "NODE", (1, 1): "X", (1, 2): "SYS",
        (2, 0): "SYS", (2, 1): "SYS", (2, 2): "X",
    }  # fmt: skip
    links = {(g, n): x for (g, n), x in topo.gpu_nic_links.items()}
    assert links[(0, "mlx5_0")] == "PIX"  # same PCIe switch
    assert links[(1, "mlx5_1")] == "PHB"  # same host bridge, different root ports
    assert links[(1, "mlx5_0")] == "NODE"  # same socket, other host bridge
    assert links[(2, "mlx5_2")] == "PXB"  # two switch levels apart
    assert links[(0, "mlx5_2")] == "SYS"


def test_nic_ports(two_socket_sysfs: Path) -> None:
    nics = {n.name: n for n in read_nics(two_socket_sysfs)}
    assert (nics["mlx5_0"].port_state, nics["mlx5_0"].link_layer) == ("ACTIVE", "InfiniBand")
    assert nics["mlx5_0"].active is True and nics["mlx5_0"].pci_bus_id == "0000:1a:00.0"
    assert (nics["mlx5_1"].port_state, nics["mlx5_1"].active) == ("DOWN", False)
    assert nics["mlx5_2"].link_layer == "Ethernet" and nics["mlx5_2"].numa_node == 1


def test_numa_minus_one_means_node_zero_and_multi_port_nic(sysfs_tree) -> None:
    # A single-socket VM: the platform reports no NUMA information (numa_node = -1).
    sysfs_tree.cpus({c: f"{c}-{c + 1}" if c % 2 == 0 else f"{c - 1}-{c}" for c in range(8)},
                    {0: "0-7"})  # fmt: skip
    sysfs_tree.pci("pci0000:00/0000:00:04.0", "0x10de", "0x030200", "-1", "0-7")
    nic = sysfs_tree.pci("pci0000:00/0000:00:05.0", "0x15b3", "0x020700", "-1", "0-7")
    sysfs_tree.ib(nic, "mlx5_0", {1: ("1: DOWN", "InfiniBand"), 2: ("4: ACTIVE", "InfiniBand")})
    topo = read_sysfs(sysfs_tree.root)
    assert topo.gpus[0].numa_node == 0
    assert topo.gpus[0].cpu_affinity == frozenset(range(8))
    assert topo.gpu_nic_links[(0, "mlx5_0")] == "PHB"  # both directly on the host bridge
    assert topo.nics[0].port_state == "ACTIVE"  # the active port counts
    assert [c for c in topo.cores()] == [(0, 1), (2, 3), (4, 5), (6, 7)]


def test_cpu_only_tree(sysfs_tree) -> None:
    sysfs_tree.cpus({0: "0", 1: "1"}, {0: "0-1"})
    topo = read_sysfs(sysfs_tree.root, allowed_cpus={1})
    assert topo.gpus == [] and topo.nics == []
    assert topo.allowed_cpus == {1}
    assert "no NVIDIA GPUs found in sysfs" in topo.notes


def test_bus_id_normalization() -> None:
    assert normalize_bus_id("00000000:1B:00.0") == "0000:1b:00.0"
    assert normalize_bus_id("0000:1b:00.0") == "0000:1b:00.0"


def test_this_machine_cpu_info() -> None:
    info = read_cpu_info("/")
    assert os.sched_getaffinity(0) <= info.cpus
    topo = read_sysfs("/")
    assert topo.allowed_cpus == frozenset(os.sched_getaffinity(0))


def _has_nvml_gpu() -> bool:
    try:
        read_nvml()
    except NoGpuError:
        return False
    return True


HAS_GPU = _has_nvml_gpu()


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU and driver")
def test_no_gpu_error_is_clear() -> None:
    with pytest.raises(NoGpuError, match=r"^no NVIDIA GPU/driver found: \S"):
        read_nvml()


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU and driver")
def test_discover_without_gpu_is_cpu_only() -> None:
    topo = discover()
    assert topo.gpus == []
    assert topo.notes[0].startswith("no GPUs (no NVIDIA GPU/driver found")
    assert "CPU-only topology" in topo.notes[0]
    assert topo.allowed_cpus == frozenset(os.sched_getaffinity(0))
    assert topo.cpus >= topo.allowed_cpus


@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU and driver")
def test_nvml_topology_on_gpu_machine() -> None:  # pragma: no cover - GPU machines only
    topo = read_nvml()
    assert topo.source == "nvml" and topo.gpus
    for g in topo.gpus:
        assert g.pci_bus_id and g.cpu_affinity
        assert topo.gpu_links[(g.index, g.index)] == "X"
