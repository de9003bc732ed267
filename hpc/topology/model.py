"""Node topology model shared by the NVML, sysfs and ``nvidia-smi topo -m`` sources.

Links use the classes printed by ``nvidia-smi topo -m``: ``X`` (self), ``NV#`` (a bonded set
of # NVLinks), ``PIX``, ``PXB``, ``PHB``, ``NODE`` and ``SYS`` (nearest to farthest).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "LINK_ORDER",
    "Gpu",
    "Nic",
    "NoGpuError",
    "Topology",
    "TopologyError",
    "TopologyParseError",
    "format_cpulist",
    "infer_siblings_from_ranges",
    "is_link",
    "link_distance",
    "merge_siblings",
    "parse_cpulist",
]

#: PCIe/host link classes, nearest first. ``NV#`` sorts before all of them.
LINK_ORDER: tuple[str, ...] = ("X", "NV", "PIX", "PXB", "PHB", "NODE", "SYS")
_LINK_RE = re.compile(r"^(X|NV\d+|PIX|PXB|PHB|NODE|SYS)$")


class TopologyError(Exception):
    """Base class of topology errors."""


class TopologyParseError(TopologyError, ValueError):
    """A topology text could not be parsed; the message names the file and line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = path or "<text>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class NoGpuError(TopologyError):
    """No NVIDIA GPU or driver is usable on this machine."""


def is_link(value: str) -> bool:
    """True if ``value`` is a link class (``X``, ``NV12``, ``PIX`` ...)."""
    return bool(_LINK_RE.match(value))


def link_distance(link: str | None) -> int:
    """Sort key for a link class: smaller is nearer; unknown links sort last."""
    if link is None or not is_link(link):
        return len(LINK_ORDER)
    return LINK_ORDER.index("NV" if link.startswith("NV") else link)


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse a Linux cpulist (``0-15,32-47`` or ``4,6,8``; ``0-7:2`` strides too).

    Raises ValueError on anything else. Empty text gives an empty set.
    """
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        return frozenset()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", part)
        if not m:
            raise ValueError(f"bad cpulist {text!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        step = int(m.group(3)) if m.group(3) else 1
        if hi < lo or step < 1:
            raise ValueError(f"bad cpulist {text!r}")
        cpus.update(range(lo, hi + 1, step))
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format CPU ids as a compact cpulist, e.g. ``0-3,8``."""
    ids = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class Gpu:
    """One GPU. ``cpu_affinity`` is the set of CPUs local to it (its NUMA node's CPUs)."""

    index: int
    pci_bus_id: str | None = None
    numa_node: int | None = None
    cpu_affinity: frozenset[int] = frozenset()
    name: str | None = None


@dataclass(frozen=True)
class Nic:
    """One network adapter (an RDMA device such as ``mlx5_0``).

    ``port_state`` (e.g. ``ACTIVE``, ``DOWN``) and ``link_layer`` (``InfiniBand`` or
    ``Ethernet``) are None when the source does not know them (``nvidia-smi topo -m``).
    """

    name: str
    port_state: str | None = None
    link_layer: str | None = None
    pci_bus_id: str | None = None
    numa_node: int | None = None

    @property
    def active(self) -> bool | None:
        """True/False when the port state is known, else None."""
        if self.port_state is None:
            return None
        return self.port_state.upper() == "ACTIVE"


@dataclass
class Topology:
    """GPUs, NICs, the links between them and the CPUs of one node.

    ``gpu_links[(i, j)]`` and ``gpu_nic_links[(i, nic_name)]`` hold link classes.
    ``siblings`` maps a logical CPU to its hyperthread siblings (itself included); a CPU
    missing from it is treated as a core of its own. ``allowed_cpus`` is the cpuset the
    job may use (``os.sched_getaffinity`` for the local machine).
    """

    gpus: list[Gpu] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    gpu_links: dict[tuple[int, int], str] = field(default_factory=dict)
    gpu_nic_links: dict[tuple[int, str], str] = field(default_factory=dict)
    cpus: frozenset[int] = frozenset()
    siblings: dict[int, frozenset[int]] = field(default_factory=dict)
    numa_cpus: dict[int, frozenset[int]] = field(default_factory=dict)
    allowed_cpus: frozenset[int] = frozenset()
    source: str = "unknown"
    notes: list[str] = field(default_factory=list)

    def gpu(self, index: int) -> Gpu:
        """The GPU with this index."""
        for g in self.gpus:
            if g.index == index:
                return g
        raise KeyError(f"no GPU {index} in topology")

    def nic_link(self, gpu_index: int, nic_name: str) -> str | None:
        """Link class between a GPU and a NIC, or None when unknown."""
        return self.gpu_nic_links.get((gpu_index, nic_name))

    def cores(self, cpus: Iterable[int] | None = None) -> list[tuple[int, ...]]:
        """Group ``cpus`` (default: all) into physical cores, ordered by lowest CPU id.

        Each core is the sorted tuple of its hyperthreads that are in ``cpus``.
        """
        pool = frozenset(self.cpus if cpus is None else cpus)
        seen: set[int] = set()
        cores: list[tuple[int, ...]] = []
        for cpu in sorted(pool):
            if cpu in seen:
                continue
            core = tuple(sorted((self.siblings.get(cpu, frozenset()) | {cpu}) & pool))
            seen.update(core)
            cores.append(core)
        return cores

    def numa_of_cpus(self, cpus: Iterable[int]) -> int | None:
        """The NUMA node holding all of ``cpus``, or None if none or several."""
        wanted = frozenset(cpus)
        for node, members in sorted(self.numa_cpus.items()):
            if wanted and wanted <= members:
                return node
        return None


def infer_siblings_from_ranges(
    affinities: Iterable[frozenset[int]],
) -> dict[int, frozenset[int]]:
    """Guess hyperthread pairs from CPU affinity lists when no sibling info exists.

    Linux on x86 numbers the first hyperthread of every core first and the second ones
    after (``0-47,96-143`` / ``48-95,144-191`` on a 96-core, 2-socket machine), so the
    sibling of CPU ``c`` is ``c + T/2`` with ``T`` the total CPU count -- the pairing
    ``thread_siblings_list`` in sysfs reports there. The guess is made only when the
    CPUs are exactly ``0..T-1`` and every affinity list has several ranges (runs of at
    least two CPUs) and is symmetric under ``+T/2`` (low cores plus their high twins).
    Otherwise, e.g. for a single range like ``0-31`` or single CPUs like ``0,2,4``, it
    returns ``{}``: every listed CPU counts as a core.
    """
    sets = [s for s in affinities if s]
    allcpus = frozenset().union(*sets) if sets else frozenset()
    total = len(allcpus)
    if total < 2 or total % 2 or allcpus != frozenset(range(total)):
        return {}
    half = total // 2
    for s in sets:
        low = {c for c in s if c < half}
        ranges = format_cpulist(s).split(",")
        # Only runs of CPUs (``0-47,96-143``): a list of single CPUs such as
        # ``0,2,4,6,8,10`` is some other numbering, and pairing it would be a guess.
        if len(ranges) < 2 or any("-" not in r for r in ranges):
            return {}
        if s != frozenset(low | {c + half for c in low}):
            return {}
    pairs: dict[int, frozenset[int]] = {}
    for c in range(half):
        pair = frozenset((c, c + half))
        pairs[c] = pairs[c + half] = pair
    return pairs


def merge_siblings(
    base: Mapping[int, frozenset[int]], cpus: Iterable[int]
) -> dict[int, frozenset[int]]:
    """Restrict a sibling map to ``cpus`` (used when sysfs data completes a text topology)."""
    pool = frozenset(cpus)
    return {c: frozenset(base[c] & pool) for c in pool if c in base}
