"""Every collected ``nvidia-smi topo -m`` output parses (tests/fixtures/topologies/SOURCES.md).

The expectations are not computed by the parser: GPU and NIC columns are counted from the
header by a separate, deliberately simple rule (:func:`header_columns`), and the CPU
affinity, NUMA node and a few link cells of every new file were written down here by
reading the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpc.topology.model import TopologyParseError, parse_cpulist
from hpc.topology.nvsmi import parse_nvsmi, read_nvsmi

TOPOLOGIES = Path(__file__).resolve().parents[1] / "fixtures" / "topologies"
ALL = sorted(p.name for p in TOPOLOGIES.glob("*.txt"))
# Checked file by file in test_topo_nvsmi.py.
FIRST_SIX = {
    "hgx-h100-8gpu-8nic-ib.txt",
    "hgx-a100-8gpu-8nic-roce.txt",
    "pcie-4gpu-2socket-amd-genoa-4nic.txt",
    "workstation-2gpu-threadripper-2nic.txt",
    "ibm-power9-4xv100-nvlink-2socket.txt",
    "pcie-5gpu-2socket-uneven.txt",
}


def header_columns(text: str) -> tuple[int, list[str]]:
    """(GPU count, NIC column names) from the header: the words before ``CPU Affinity``."""
    line = next(ln for ln in text.splitlines() if "GPU0" in ln and "CPU" in ln)
    words = line.replace("[4m", " ").replace("[0m", " ").replace("\x1b", " ")
    words = words.split("CPU Affinity")[0].split()
    return sum(w.startswith("GPU") for w in words), [w for w in words if not w.startswith("GPU")]


def legend(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*(NIC\d+):\s*(\S+)\s*$", text, re.M))


def aff(*groups: tuple[int, str, int | None]) -> dict[int, tuple[str, int | None]]:
    """{gpu: (cpu list, numa)} from (count, cpu list, numa) runs of consecutive GPUs."""
    out: dict[int, tuple[str, int | None]] = {}
    for count, cpus, numa in groups:
        for _ in range(count):
            out[len(out)] = (cpus, numa)
    return out


H100_56 = aff((4, "0-55,112-167", 0), (4, "56-111,168-223", 1))
# file -> ({gpu: (CPU Affinity, NUMA Affinity)}, NIC names, {(gpu, gpu or nic): link})
WILD: dict[str, tuple[dict[int, tuple[str, int | None]], list[str], dict]] = {
    "pcie-8x4090-2socket-2nic-no-legend.txt": (
        H100_56,
        ["NIC0", "NIC1"],
        {(6, "NIC0"): "PHB", (6, "NIC1"): "PHB", (7, "NIC0"): "SYS", (0, 1): "SYS"},
    ),
    "pcie-2x5090-phb-legend.txt": (aff((2, "0-63", 0)), [], {(0, 1): "PHB"}),
    "hgx-8gpu-nv18-9nic-bond-ansi-header.txt": (
        aff((4, "0-63,128-191", 0), (4, "64-127,192-255", 1)),
        [f"mlx5_{i}" for i in range(10, 18)] + ["mlx5_bond_0"],
        {
            (0, "mlx5_10"): "PXB",
            (7, "mlx5_17"): "PXB",
            (4, "mlx5_bond_0"): "NODE",
            (0, "mlx5_bond_0"): "SYS",
            (2, 5): "NV18",
        },
    ),
    "pcie-4gpu-sys-indented-markdown.txt": (aff((4, "0-47", 0)), [], {(1, 3): "SYS"}),
    "hgx-8gpu-topo-mp-12nic-comma-affinity.txt": (
        aff((4, "0,2,4,6,8,10", 0), (4, "1,3,5,7,9,11", 1)),
        [f"mlx5_{i}" for i in range(12)],
        {
            (0, "mlx5_2"): "PIX",
            (1, "mlx5_3"): "PIX",
            (7, "mlx5_11"): "PIX",
            (0, 1): "NODE",
            (0, 4): "SYS",
        },
    ),
    "aws-2gpu-pix-topo-excerpt.txt": (aff((2, "0-47", 0)), [], {(0, 1): "PIX"}),
    "pcie-4xa100-nv12-pairs-4numa.txt": (
        {0: ("0-23", 0), 1: ("24-47", 1), 2: ("48-71", 2), 3: ("72-95", 3)},
        [],
        {(0, 1): "NV12", (2, 3): "NV12", (1, 2): "SYS"},
    ),
    "kvm-h100-pcie-1gpu-1nic-spaces.txt": (
        aff((1, "0-251", 0)),
        ["mlx5_0"],
        {(0, "mlx5_0"): "PHB"},
    ),
    "hgx-a100-8gpu-10nic-numa-3-1-7-5.txt": (
        aff(
            (2, "48-63,176-191", 3),
            (2, "16-31,144-159", 1),
            (2, "112-127,240-255", 7),
            (2, "80-95,208-223", 5),
        ),
        [f"mlx5_{i}" for i in range(10)],
        {(0, "mlx5_1"): "PXB", (6, "mlx5_7"): "PXB", (0, "mlx5_8"): "SYS", (3, 4): "NV12"},
    ),
    "hgx-h100-8gpu-8nic-spaces-nic-legend.txt": (
        aff((4, "0-47,96-143", 0), (4, "48-95,144-191", 1)),
        [f"mlx5_{i}" for i in range(8)],
        {**{(i, f"mlx5_{i}"): "PIX" for i in range(8)}, (0, "mlx5_4"): "SYS", (1, 6): "NV18"},
    ),
    "gb10-1gpu-4nic-capped-no-nic-rows.txt": (
        aff((1, "0-19", 0)),
        ["NIC0", "NIC1", "NIC2", "NIC3"],
        {(0, "NIC3"): "NODE", (0, 0): "X"},
    ),
    "dgx-h100-8gpu-12nic-truncated-nic-rows.txt": (
        H100_56,
        [f"NIC{i}" for i in range(12)],
        {
            (0, "NIC0"): "PXB",
            (1, "NIC3"): "PXB",
            (5, "NIC9"): "PXB",
            (7, "NIC11"): "PXB",
            (0, "NIC1"): "NODE",
        },
    ),
    "2gpu-nv1-mlx5-old-driver.txt": (
        aff((2, "0-7", None)),
        ["mlx5_0"],
        {(0, 1): "NV1", (1, "mlx5_0"): "PHB"},
    ),
    "4gpu-nv1-nv2-mlx5-sys-old-driver.txt": (
        aff((4, "0-15", None)),
        ["mlx5_0"],
        {(0, 1): "NV1", (0, 3): "NV2", (1, 2): "NV2", (2, "mlx5_0"): "SYS"},
    ),
    "pcie-4xk40m-2socket-mlx4-soc-2017.txt": (
        aff((2, "0-5", None), (2, "6-11", None)),
        ["mlx4_0"],
        # the pre-2018 spelling SOC is read as SYS
        {(0, 1): "PHB", (0, 2): "SYS", (1, 3): "SYS", (2, "mlx4_0"): "PHB", (0, "mlx4_0"): "SYS"},
    ),
    "pcie-8gpu-node-phb-2numa-no-nics.txt": (
        aff((6, "0-15,32-47", 0), (2, "16-31,48-63", 1)),
        [],
        {(1, 2): "PHB", (3, 4): "PHB", (6, 7): "PHB", (0, 1): "NODE", (5, 6): "SYS"},
    ),
}


def test_every_fixture_is_covered() -> None:
    assert not FIRST_SIX & set(WILD)
    assert sorted(FIRST_SIX | set(WILD)) == ALL
    assert len(WILD) >= 15


@pytest.mark.parametrize("name", ALL)
def test_gpu_and_nic_columns_match_the_header(name: str) -> None:
    text = (TOPOLOGIES / name).read_text(encoding="utf-8")
    ngpus, nic_cols = header_columns(text)
    names = legend(text)
    topo = read_nvsmi(TOPOLOGIES / name)
    assert [g.index for g in topo.gpus] == list(range(ngpus))
    assert [n.name for n in topo.nics] == [names.get(c, c) for c in nic_cols]
    assert len(topo.gpu_links) == ngpus * ngpus
    assert len(topo.gpu_nic_links) == ngpus * len(nic_cols)
    for i in range(ngpus):
        for j in range(ngpus):
            assert (topo.gpu_links[(i, j)] == "X") == (i == j)


@pytest.mark.parametrize("name", sorted(WILD))
def test_affinity_and_cells_as_read_by_hand(name: str) -> None:
    affinity, nics, cells = WILD[name]
    topo = read_nvsmi(TOPOLOGIES / name)
    assert [n.name for n in topo.nics] == nics
    assert {g.index: (g.cpu_affinity, g.numa_node) for g in topo.gpus} == {
        i: (parse_cpulist(cpus), numa) for i, (cpus, numa) in affinity.items()
    }
    for (gpu, other), link in cells.items():
        got = topo.gpu_links[(gpu, other)] if isinstance(other, int) else topo.nic_link(gpu, other)
        assert got == link, (gpu, other)
    numas = {numa for _, numa in affinity.values() if numa is not None}
    assert sorted(topo.numa_cpus) == sorted(numas)


def _same(a, b) -> None:
    assert (a.gpus, a.nics, a.gpu_links, a.gpu_nic_links) == (
        b.gpus,
        b.nics,
        b.gpu_links,
        b.gpu_nic_links,
    )


@pytest.mark.parametrize(
    "name",
    [
        "hgx-8gpu-nv18-9nic-bond-ansi-header.txt",
        "hgx-h100-8gpu-8nic-spaces-nic-legend.txt",
        "pcie-4gpu-sys-indented-markdown.txt",
    ],
)
def test_crlf_trailing_spaces_escape_bytes_and_a_prompt_line(name: str) -> None:
    text = (TOPOLOGIES / name).read_text(encoding="utf-8")
    base = parse_nvsmi(text)
    lines = text.split("\n")
    _same(base, parse_nvsmi("\r\n".join(lines)))
    _same(base, parse_nvsmi("\n".join(ln + "   " for ln in lines)))
    _same(base, parse_nvsmi("$ nvidia-smi topo -m\nNVIDIA Topology: \n" + text))
    _same(base, parse_nvsmi(text.replace("[4m", "\x1b[4m").replace("[0m", "\x1b[0m")))


def test_na_link_cell_is_kept_as_unknown() -> None:
    text = (TOPOLOGIES / "kvm-h100-pcie-1gpu-1nic-spaces.txt").read_text(encoding="utf-8")
    topo = parse_nvsmi(text.replace("GPU0     X      PHB", "GPU0     X      N/A"))
    assert topo.nic_link(0, "mlx5_0") == "N/A"


def _corrupt(tmp_path: Path, name: str, line: int, old: str, new: str) -> Path:
    lines = (TOPOLOGIES / name).read_text(encoding="utf-8").split("\n")
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    out = tmp_path / name
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


@pytest.mark.parametrize(
    ("name", "line", "old", "new", "words"),
    [
        # the doubled tab is padding, a third value is not
        ("pcie-2x5090-phb-legend.txt", 3, "\t0\t\tN/A", "\t0\t\tN/A\t7", "1 more column"),
        ("pcie-8x4090-2socket-2nic-no-legend.txt", 8, "PHB", "PHX", "bad link 'PHX'"),
        ("hgx-h100-8gpu-8nic-spaces-nic-legend.txt", 4, "0-47,96-143", "0-47,9x", "CPU Aff"),
        ("dgx-h100-8gpu-12nic-truncated-nic-rows.txt", 11, "NIC1\t", "NIC12\t", "not a column"),
        ("hgx-a100-8gpu-10nic-numa-3-1-7-5.txt", 5, "\tNV12\t", "\t\t", "link columns"),
        ("hgx-8gpu-topo-mp-12nic-comma-affinity.txt", 37, "NIC3: mlx5_3", "NIC3 = x", "legend"),
        ("kvm-h100-pcie-1gpu-1nic-spaces.txt", 2, "0-251   0", "0-251   zero", "NUMA Aff"),
    ],
)
def test_malformed_file_names_file_and_line(
    tmp_path: Path, name: str, line: int, old: str, new: str, words: str
) -> None:
    path = _corrupt(tmp_path, name, line, old, new)
    with pytest.raises(TopologyParseError) as err:
        read_nvsmi(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_preamble_without_any_header_fails_at_the_first_line(tmp_path: Path) -> None:
    bad = tmp_path / "topo.txt"
    bad.write_text("NVIDIA Topology: \nnvidia-smi: command not found\n", encoding="utf-8")
    with pytest.raises(TopologyParseError, match=rf"^{bad}:1: header row lists no GPU"):
        read_nvsmi(bad)


# `nvidia-smi topo -p2p rw` from the same post as pcie-2x5090-phb-legend.txt (club-3090#1229),
# copied verbatim (up to the legend's second entry): a different matrix, not `topo -m`.
P2P_RW = (
    " \tGPU0\tGPU1\t\n GPU0\tX\tGNS\t\n GPU1\tGNS\tX\t\n"
    "\nLegend:\n\n  X    = Self\n  OK   = Status Ok\n"
)


def test_p2p_matrix_is_not_a_topology(tmp_path: Path) -> None:
    path = tmp_path / "p2p.txt"
    path.write_text(P2P_RW, encoding="utf-8")
    with pytest.raises(TopologyParseError, match=rf"^{path}:2: bad link 'GNS' in column GPU1$"):
        read_nvsmi(path)
