"""Helpers for the topology tests: fixture paths, golden files and a sysfs tree builder.

Golden files live in ``tests/golden/`` (``nccl/<profile>.env``, ``topo/*.json``).
Regenerate them with ``UPDATE_GOLDEN=1 pytest tests/topology`` and review the diff.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
TOPOLOGIES = TESTS / "fixtures" / "topologies"
GOLDEN = TESTS / "golden"


@pytest.fixture
def topologies() -> Path:
    return TOPOLOGIES


@pytest.fixture
def golden() -> Callable[[str, str], None]:
    """``golden(relative_name, text)``: compare with tests/golden/<name>."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if os.environ.get("UPDATE_GOLDEN") == "1":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"golden file {path} missing: rerun with UPDATE_GOLDEN=1"
        assert text == path.read_text(), f"output differs from {path} (UPDATE_GOLDEN=1 to accept)"

    return check


class SysfsTree:
    """Builds the real sysfs layout (files, formats and symlinks) below a root folder."""

    def __init__(self, root: Path):
        self.root = root

    def _write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    def cpus(self, siblings: dict[int, str], nodes: dict[int, str]) -> None:
        """``siblings``: cpu -> thread_siblings_list text; ``nodes``: node -> cpulist."""
        base = "sys/devices/system"
        for cpu, text in siblings.items():
            self._write(f"{base}/cpu/cpu{cpu}/topology/thread_siblings_list", text)
            self._write(f"{base}/cpu/cpu{cpu}/topology/core_id", str(cpu))
        self._write(f"{base}/cpu/online", f"0-{max(siblings)}")
        for node, cpulist in nodes.items():
            self._write(f"{base}/node/node{node}/cpulist", cpulist)

    def pci(
        self,
        path: str,
        vendor: str,
        cls: str,
        numa_node: str,
        local_cpulist: str,
    ) -> Path:
        """Add a PCI function; ``path`` is below sys/devices, e.g. ``pci0000:17/.../bdf``."""
        dev = self.root / "sys/devices" / path
        dev.mkdir(parents=True, exist_ok=True)
        for name, text in (
            ("vendor", vendor),
            ("class", cls),
            ("numa_node", numa_node),
            ("local_cpulist", local_cpulist),
        ):
            (dev / name).write_text(text + "\n")
        bus = self.root / "sys/bus/pci/devices"
        bus.mkdir(parents=True, exist_ok=True)
        (bus / dev.name).symlink_to(os.path.relpath(dev, bus))
        return dev

    def ib(self, pci_dev: Path, name: str, ports: dict[int, tuple[str, str]]) -> None:
        """RDMA device under ``pci_dev``; ports: number -> (state text, link_layer)."""
        dev = pci_dev / "infiniband" / name
        dev.mkdir(parents=True)
        (dev / "device").symlink_to(os.path.relpath(pci_dev, dev))
        for port, (state, layer) in ports.items():
            pdir = dev / "ports" / str(port)
            pdir.mkdir(parents=True)
            (pdir / "state").write_text(state + "\n")
            (pdir / "link_layer").write_text(layer + "\n")
        cls = self.root / "sys/class/infiniband"
        cls.mkdir(parents=True, exist_ok=True)
        (cls / name).symlink_to(os.path.relpath(dev, cls))


NV_GPU = ("0x10de", "0x030200")  # NVIDIA 3D controller
NV_AUDIO = ("0x10de", "0x040300")  # HDMI audio function of a GPU board
NV_SWITCH = ("0x10de", "0x068000")  # NVSwitch (bridge class)
MLX_IB = ("0x15b3", "0x020700")  # Mellanox InfiniBand controller
MLX_ETH = ("0x15b3", "0x020000")  # Mellanox Ethernet controller


def build_two_socket(root: Path) -> SysfsTree:
    """A 2-socket node, 8 cores x 2 threads (siblings ``c`` and ``c+8``), 3 GPUs, 3 NICs.

    NUMA 0 = cores 0-3 (CPUs 0-3,8-11); NUMA 1 = cores 4-7 (CPUs 4-7,12-15).
    GPU0 0000:1b:00.0 and mlx5_0 share a PCIe switch (PIX); GPU1 0000:3d:00.0 is on
    another host bridge of NUMA 0, mlx5_1 (port DOWN) on another root port of that bridge
    (PHB); GPU2 0000:9c:00.0 on NUMA 1 behind two switch levels, mlx5_2 (RoCE, Ethernet)
    on the first level (PXB).
    """
    t = SysfsTree(root)
    t.cpus(
        {c: f"{c % 8},{c % 8 + 8}" for c in range(16)},
        {0: "0-3,8-11", 1: "4-7,12-15"},
    )
    n0, n1 = ("0", "0-3,8-11"), ("1", "4-7,12-15")
    sw0 = "pci0000:17/0000:17:00.0/0000:18:00.0"
    t.pci(f"{sw0}/0000:19:00.0/0000:1b:00.0", *NV_GPU, *n0)
    t.pci(f"{sw0}/0000:19:00.0/0000:1b:00.1", *NV_AUDIO, *n0)
    nic0 = t.pci(f"{sw0}/0000:19:04.0/0000:1a:00.0", *MLX_IB, *n0)
    t.ib(nic0, "mlx5_0", {1: ("4: ACTIVE", "InfiniBand")})
    t.pci("pci0000:3a/0000:3a:00.0/0000:3b:00.0/0000:3c:00.0/0000:3d:00.0", *NV_GPU, *n0)
    nic1 = t.pci("pci0000:3a/0000:3a:02.0/0000:3e:00.0", *MLX_IB, *n0)
    t.ib(nic1, "mlx5_1", {1: ("1: DOWN", "InfiniBand")})
    sw2 = "pci0000:97/0000:97:00.0/0000:98:00.0"
    t.pci(f"{sw2}/0000:99:00.0/0000:9a:00.0/0000:9b:00.0/0000:9c:00.0", *NV_GPU, *n1)
    t.pci(f"{sw2}/0000:99:08.0/0000:9f:00.0", *NV_SWITCH, *n1)
    nic2 = t.pci(f"{sw2}/0000:99:04.0/0000:9d:00.0", *MLX_ETH, *n1)
    t.ib(nic2, "mlx5_2", {1: ("4: ACTIVE", "Ethernet")})
    return t


@pytest.fixture
def two_socket_sysfs(tmp_path: Path) -> Path:
    build_two_socket(tmp_path / "root")
    return tmp_path / "root"


@pytest.fixture
def sysfs_tree(tmp_path: Path) -> SysfsTree:
    return SysfsTree(tmp_path / "root")
