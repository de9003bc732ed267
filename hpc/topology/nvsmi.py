"""Parse the text printed by ``nvidia-smi topo -m`` into a :class:`Topology`.

Handled variants (all seen in real outputs, see tests/fixtures/topologies/SOURCES.md):
tab-separated or tab-expanded (spaces), indented (pasted into Markdown); empty cells and
doubled tabs (drivers pad ``NUMA Affinity`` with a second tab before ``GPU NUMA ID``); NIC
columns named ``NIC0``.. with a ``NIC Legend`` (``NIC1: mlx5_3``, ``NIC8: mlx5_bond_0``)
or named after the device (``mlx5_0``, ``mlx4_0``) without legend; with or without the
``NUMA Affinity`` and ``GPU NUMA ID`` columns; NIC rows missing (output cut short);
empty or ``N/A`` cells; ANSI underline codes around the header (with or without the ESC
byte); CRLF line ends and trailing spaces; lines before the header (a prompt, "NVIDIA
Topology:"); the old ``SOC`` spelling of ``SYS``. A link cell ``N/A`` is kept as is
(an unknown link, sorted last by :func:`hpc.topology.model.link_distance`).

``GPU NUMA ID`` is the NUMA node of the GPU's own memory (coherent systems) and is not
used; a GPU's NUMA node is the ``NUMA Affinity`` column (the CPU side).

The text has no hyperthread information. Unless ``siblings`` (e.g. from sysfs on the
same machine) is given, siblings are guessed only for the ``0-47,96-143`` layout, see
:func:`hpc.topology.model.infer_siblings_from_ranges`; otherwise every listed CPU is
treated as a core.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpc.topology.model import (
    Gpu,
    Nic,
    Topology,
    TopologyParseError,
    infer_siblings_from_ranges,
    is_link,
    merge_siblings,
    parse_cpulist,
)

__all__ = ["parse_nvsmi", "read_nvsmi"]

_ANSI = re.compile(r"\x1b?\[[0-9;]*m")
_ATTR_COLUMNS = ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID")
_HEADER_TOKEN = re.compile("|".join(re.escape(c) for c in _ATTR_COLUMNS) + r"|\S+")
_GPU_NAME = re.compile(r"^GPU(\d+)$")
_LEGEND_LINE = re.compile(r"^\s*(\S+)\s*:\s*(\S+)\s*$")
_EMPTY = ("", "N/A", "n/a")
_UNKNOWN_LINK = "N/A"


@dataclass
class _Row:
    line: int
    label: str
    links: list[str]
    attrs: dict[str, str]


def read_nvsmi(path: str | Path, siblings: Mapping[int, frozenset[int]] | None = None) -> Topology:
    """Read and parse a saved ``nvidia-smi topo -m`` output file."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise TopologyParseError(f"cannot read file: {e.strerror or e}", str(path)) from e
    return parse_nvsmi(text, path=str(path), siblings=siblings)


def parse_nvsmi(
    text: str,
    path: str | None = None,
    siblings: Mapping[int, frozenset[int]] | None = None,
) -> Topology:
    """Parse ``nvidia-smi topo -m`` text. Errors name ``path`` and the line number."""
    lines = [_ANSI.sub("", ln).rstrip() for ln in text.splitlines()]

    def fail(msg: str, line: int | None = None) -> TopologyParseError:
        return TopologyParseError(msg, path, line)

    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise fail("empty topology text")
    # The header is the first line whose first cell is GPU0 (lines before it are a
    # prompt or a caption); without one, the first non-blank line is reported.
    start = next((i for i in range(first, len(lines)) if _is_header(lines[i])), first)
    devices, attrs = _parse_header(lines[start])
    gpu_cols = [d for d in devices if _GPU_NAME.match(d)]
    if not gpu_cols:
        raise fail("header row lists no GPU columns (expected 'GPU0 ...')", start + 1)

    rows: dict[str, _Row] = {}
    end = start + 1
    while end < len(lines) and lines[end].strip() and lines[end].split()[0] != "Legend:":
        row = _parse_row(lines[end], end + 1, devices, attrs, fail)
        if row.label in rows:
            raise fail(f"duplicate row {row.label!r}", row.line)
        rows[row.label] = row
        end += 1
    for col in gpu_cols:
        if col not in rows:
            raise fail(f"no row for {col} in the matrix", end if end < len(lines) else None)

    legend = _parse_nic_legend(lines, end, fail)
    return _build(rows, devices, legend, siblings, fail)


def _is_header(line: str) -> bool:
    cells = line.split()
    return bool(cells) and cells[0] == "GPU0"


def _parse_header(line: str) -> tuple[list[str], list[str]]:
    if "\t" in line:
        cells = [c.strip() for c in line.split("\t")]
        cells = [c for c in cells if c]
    else:
        cells = _HEADER_TOKEN.findall(line)
    first_attr = next((i for i, c in enumerate(cells) if c in _ATTR_COLUMNS), len(cells))
    return cells[:first_attr], cells[first_attr:]


def _parse_row(line: str, lineno: int, devices: list[str], attrs: list[str], fail) -> _Row:
    tabbed = "\t" in line
    cells = [c.strip() for c in line.split("\t")] if tabbed else line.split()
    label = cells[0]
    if label not in devices:
        raise fail(f"row label {label!r} is not a column of the header", lineno)
    links = cells[1 : 1 + len(devices)]
    if len(links) < len(devices) or (tabbed and "" in links):
        found = len([v for v in links if v])
        raise fail(f"expected {len(devices)} link columns, found {found}", lineno)
    rest = _attr_cells(cells[1 + len(devices) :], len(attrs))
    if len(rest) > len(attrs):
        raise fail(f"{len(rest) - len(attrs)} more column(s) than the header has", lineno)
    for col, value in zip(devices, links, strict=True):
        if value == "SOC":  # pre-2018 drivers
            value = "SYS"
        if value != _UNKNOWN_LINK and not is_link(value):
            raise fail(f"bad link {value!r} in column {col}", lineno)
        if (col == label) != (value == "X"):
            raise fail(f"'X' must be exactly on the diagonal (column {col})", lineno)
    links = ["SYS" if v == "SOC" else v for v in links]
    return _Row(lineno, label, links, dict(zip(attrs, rest, strict=False)))


def _attr_cells(rest: list[str], wanted: int) -> list[str]:
    """The attribute cells of a row, one per attribute column of the header.

    Trailing empty cells are dropped (NIC rows). When the row still has more cells than
    the header (drivers print ``0\\t\\tN/A``: a doubled tab after ``NUMA Affinity``), the
    empty cells are padding and only the others count, in order.
    """
    while rest and not rest[-1]:
        rest = rest[:-1]
    if len(rest) > wanted:
        rest = [c for c in rest if c]
    return rest


def _parse_nic_legend(lines: list[str], start: int, fail) -> dict[str, str]:
    legend: dict[str, str] = {}
    idx = next((i for i in range(start, len(lines)) if lines[i].strip() == "NIC Legend:"), None)
    if idx is None:
        return legend
    for i in range(idx + 1, len(lines)):
        ln = lines[i]
        if not ln.strip():
            if legend:
                break
            continue
        m = _LEGEND_LINE.match(ln)
        if not m:
            raise fail(f"bad NIC legend entry {ln.strip()!r} (expected 'NIC0: mlx5_0')", i + 1)
        legend[m.group(1)] = m.group(2)
    return legend


def _build(
    rows: dict[str, _Row],
    devices: list[str],
    legend: dict[str, str],
    siblings: Mapping[int, frozenset[int]] | None,
    fail,
) -> Topology:
    gpu_cols = [d for d in devices if _GPU_NAME.match(d)]
    nic_cols = [d for d in devices if d not in gpu_cols]
    col_index = {name: i for i, name in enumerate(devices)}  # link cells follow the header
    gpus: list[Gpu] = []
    topo = Topology(source="nvidia-smi topo -m")
    for col in gpu_cols:
        row = rows[col]
        idx = int(_GPU_NAME.match(col).group(1))  # type: ignore[union-attr]
        cpu_cell = row.attrs.get("CPU Affinity", "")
        numa_cell = row.attrs.get("NUMA Affinity", "")
        try:
            affinity = frozenset() if cpu_cell in _EMPTY else parse_cpulist(cpu_cell)
        except ValueError:
            raise fail(f"bad CPU Affinity {cpu_cell!r}", row.line) from None
        numa = _parse_numa(numa_cell, row.line, fail)
        gpus.append(Gpu(index=idx, numa_node=numa, cpu_affinity=affinity))
        for other in gpu_cols:
            j = int(other[3:])
            topo.gpu_links[(idx, j)] = row.links[col_index[other]]
        for nic in nic_cols:
            topo.gpu_nic_links[(idx, legend.get(nic, nic))] = row.links[col_index[nic]]
    topo.gpus = sorted(gpus, key=lambda g: g.index)
    topo.nics = [Nic(name=legend.get(n, n)) for n in nic_cols]
    affinities = [g.cpu_affinity for g in topo.gpus]
    topo.cpus = frozenset().union(*affinities)
    for g in topo.gpus:
        if g.numa_node is not None:
            prev = topo.numa_cpus.get(g.numa_node, frozenset())
            topo.numa_cpus[g.numa_node] = prev | g.cpu_affinity
    topo.allowed_cpus = topo.cpus
    if siblings is not None:
        topo.siblings = merge_siblings(siblings, topo.cpus)
    else:
        topo.siblings = infer_siblings_from_ranges(affinities)
        if topo.siblings:
            topo.notes.append("hyperthread pairs inferred from the CPU affinity ranges")
    return topo


def _parse_numa(cell: str, line: int, fail) -> int | None:
    if cell in _EMPTY:
        return None
    try:
        nodes = parse_cpulist(cell)
    except ValueError:
        raise fail(f"bad NUMA Affinity {cell!r}", line) from None
    return next(iter(nodes)) if len(nodes) == 1 else None
