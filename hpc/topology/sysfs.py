"""Read the node topology from Linux sysfs (no NVIDIA driver needed).

Files read, all below a configurable ``root`` (``/`` normally, a test tree otherwise):

* ``sys/devices/system/cpu/online`` and ``cpu*/topology/thread_siblings_list``
* ``sys/devices/system/node/node*/cpulist``
* ``sys/bus/pci/devices/*/{vendor,class,numa_node,local_cpulist}`` (``numa_node`` -1,
  i.e. "not reported", is taken as node 0)
* ``sys/class/infiniband/*/device`` and ``*/ports/*/{state,link_layer}``

GPU-GPU and GPU-NIC link classes come from the PCI hierarchy (the resolved
``sys/bus/pci/devices/<bdf>`` link): different NUMA nodes -> ``SYS``, different host
bridges -> ``NODE``, only the host bridge in common -> ``PHB``, a common PCIe switch ->
``PIX`` when both hang off the same switch level, else ``PXB``. This approximates what
NVML reports; NVLink is not visible here. GPUs are numbered in PCI bus order, which is
NVML's order.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hpc.topology.model import Gpu, Nic, Topology, parse_cpulist

__all__ = [
    "CpuInfo",
    "PciDevice",
    "normalize_bus_id",
    "pci_device",
    "pci_link",
    "read_cpu_info",
    "read_nics",
    "read_sysfs",
]

_NVIDIA_VENDOR = "0x10de"
_GPU_CLASSES = ("0x0300", "0x0302")  # VGA / 3D controller
_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_ROOT_BUS = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}$")


@dataclass(frozen=True)
class CpuInfo:
    """Logical CPUs, hyperthread siblings and NUMA node CPU lists."""

    cpus: frozenset[int]
    siblings: dict[int, frozenset[int]]
    numa_cpus: dict[int, frozenset[int]]


@dataclass(frozen=True)
class PciDevice:
    """A PCI device: its bus id, host bridge, bridge chain (root port first), NUMA node."""

    bus_id: str
    host_bridge: str | None
    bridges: tuple[str, ...]
    numa_node: int
    local_cpus: frozenset[int]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def normalize_bus_id(bus_id: str) -> str:
    """``00000000:18:00.0`` (NVML) -> ``0000:18:00.0`` (sysfs), lower case."""
    bus_id = bus_id.strip().lower()
    domain, _, rest = bus_id.partition(":")
    return f"{int(domain, 16):04x}:{rest}" if rest else bus_id


def read_cpu_info(root: str | Path = "/") -> CpuInfo:
    """Logical CPUs (online), their hyperthread siblings and the NUMA nodes' CPUs."""
    base = Path(root, "sys/devices/system")
    siblings: dict[int, frozenset[int]] = {}
    cpus: set[int] = set()
    for d in base.glob("cpu/cpu[0-9]*"):
        cpu = int(d.name[3:])
        text = _read(d / "topology/thread_siblings_list")
        if text is None:
            continue
        cpus.add(cpu)
        siblings[cpu] = parse_cpulist(text) | {cpu}
    online = _read(base / "cpu/online")
    if online:
        cpus = set(parse_cpulist(online)) if not cpus else cpus & parse_cpulist(online)
    numa: dict[int, frozenset[int]] = {}
    for d in base.glob("node/node[0-9]*"):
        text = _read(d / "cpulist")
        if text is not None:
            numa[int(d.name[4:])] = parse_cpulist(text)
    if not cpus and Path(root).resolve() == Path("/"):
        cpus = set(os.sched_getaffinity(0))
    return CpuInfo(frozenset(cpus), {c: s for c, s in siblings.items() if c in cpus}, numa)


def pci_device(root: str | Path, bus_id: str) -> PciDevice | None:
    """Describe one PCI device from ``sys/bus/pci/devices/<bus_id>``; None if absent."""
    bus_id = normalize_bus_id(bus_id)
    link = Path(root, "sys/bus/pci/devices", bus_id)
    if not link.exists():
        return None
    parts = Path(os.path.realpath(link)).parts
    host = next((p for p in parts if _ROOT_BUS.match(p)), None)
    chain = tuple(p for p in parts[parts.index(host) + 1 :] if _BDF.match(p)) if host else ()
    numa_text = _read(link / "numa_node")
    numa = int(numa_text) if numa_text and numa_text.lstrip("-").isdigit() else -1
    local = _read(link / "local_cpulist")
    return PciDevice(
        bus_id=bus_id,
        host_bridge=host,
        bridges=chain[:-1],
        numa_node=max(numa, 0),  # -1: the platform does not report it (one node)
        local_cpus=parse_cpulist(local) if local else frozenset(),
    )


def pci_link(a: PciDevice, b: PciDevice) -> str:
    """Link class between two PCI devices (see the module docstring)."""
    if a.bus_id == b.bus_id:
        return "X"
    if a.numa_node != b.numa_node:
        return "SYS"
    if a.host_bridge is None or a.host_bridge != b.host_bridge:
        return "NODE"
    common = 0
    for x, y in zip(a.bridges, b.bridges, strict=False):
        if x != y:
            break
        common += 1
    if common == 0:
        return "PHB"
    return "PIX" if max(len(a.bridges), len(b.bridges)) - common <= 1 else "PXB"


def read_nics(root: str | Path = "/") -> list[Nic]:
    """RDMA devices from ``sys/class/infiniband`` with their best port's state.

    A device counts as ``ACTIVE`` when any of its ports is; the link layer is that port's.
    """
    nics: list[Nic] = []
    for dev in sorted(Path(root, "sys/class/infiniband").glob("*")):
        ports = []
        for port in sorted(dev.glob("ports/*")):
            state = _read(port / "state")  # e.g. "4: ACTIVE"
            layer = _read(port / "link_layer")  # "InfiniBand" / "Ethernet"
            name = state.split(":", 1)[-1].strip() if state else None
            ports.append((name, layer))
        best = next((p for p in ports if p[0] == "ACTIVE"), ports[0] if ports else (None, None))
        device = dev / "device"
        bus = os.path.basename(os.path.realpath(device)) if device.exists() else None
        pci = pci_device(root, bus) if bus and _BDF.match(bus) else None
        nics.append(
            Nic(
                name=dev.name,
                port_state=best[0],
                link_layer=best[1],
                pci_bus_id=pci.bus_id if pci else None,
                numa_node=pci.numa_node if pci else None,
            )
        )
    return nics


def _nvidia_gpus(root: str | Path) -> list[str]:
    found = []
    for d in Path(root, "sys/bus/pci/devices").glob("*"):
        cls = _read(d / "class") or ""
        if _read(d / "vendor") == _NVIDIA_VENDOR and cls.startswith(_GPU_CLASSES):
            found.append(d.name)
    return sorted(found)


def read_sysfs(
    root: str | Path = "/",
    allowed_cpus: frozenset[int] | set[int] | None = None,
    gpu_bus_ids: list[str] | None = None,
) -> Topology:
    """Build a :class:`Topology` from sysfs below ``root``.

    ``allowed_cpus`` defaults to ``os.sched_getaffinity(0)`` when ``root`` is ``/`` and to
    all CPUs otherwise. ``gpu_bus_ids`` (NVML order) replaces the PCI scan for NVIDIA GPUs.
    """
    info = read_cpu_info(root)
    topo = Topology(
        cpus=info.cpus, siblings=info.siblings, numa_cpus=info.numa_cpus, source="sysfs"
    )
    if allowed_cpus is not None:
        topo.allowed_cpus = frozenset(allowed_cpus)
    elif Path(root).resolve() == Path("/"):
        topo.allowed_cpus = frozenset(os.sched_getaffinity(0))
    else:
        topo.allowed_cpus = info.cpus
    topo.nics = read_nics(root)
    bus_ids = gpu_bus_ids if gpu_bus_ids is not None else _nvidia_gpus(root)
    devs = [pci_device(root, b) for b in bus_ids]
    for i, (bus, dev) in enumerate(zip(bus_ids, devs, strict=True)):
        numa = dev.numa_node if dev else None
        local = dev.local_cpus if dev else frozenset()
        if not local:
            local = info.numa_cpus.get(numa, info.cpus) if numa is not None else info.cpus
        topo.gpus.append(Gpu(i, normalize_bus_id(bus), numa, frozenset(local)))
    nic_devs = {n.name: pci_device(root, n.pci_bus_id) if n.pci_bus_id else None for n in topo.nics}
    for i, a in enumerate(devs):
        for j, b in enumerate(devs):
            if a and b:
                topo.gpu_links[(i, j)] = pci_link(a, b)
        for name, nd in nic_devs.items():
            if a and nd:
                topo.gpu_nic_links[(i, name)] = pci_link(a, nd)
    if not topo.gpus:
        topo.notes.append("no NVIDIA GPUs found in sysfs")
    return topo
