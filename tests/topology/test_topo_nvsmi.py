"""Parsing real ``nvidia-smi topo -m`` outputs (tests/fixtures/topologies, see SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc.topology.model import TopologyParseError, format_cpulist, parse_cpulist
from hpc.topology.nvsmi import parse_nvsmi, read_nvsmi

TOPOLOGIES = Path(__file__).resolve().parents[1] / "fixtures" / "topologies"
ALL = sorted(p.name for p in TOPOLOGIES.glob("*.txt"))

# file -> (GPUs, NIC names, {gpu: (numa node, cpu affinity)} for a few GPUs)
EXPECTED = {
    "hgx-h100-8gpu-8nic-ib.txt": (
        8,
        [f"mlx5_{i}" for i in range(8)],
        {0: (0, "0-47,96-143"), 7: (1, "48-95,144-191")},
    ),
    "hgx-a100-8gpu-8nic-roce.txt": (
        8,
        [f"mlx5_{i}" for i in range(8)],
        {1: (0, "0-31,64-95"), 4: (1, "32-63,96-127")},
    ),
    "pcie-4gpu-2socket-amd-genoa-4nic.txt": (
        4,
        [f"mlx5_{i}" for i in range(4)],
        {1: (0, "0-31"), 2: (1, "32-63")},
    ),
    "workstation-2gpu-threadripper-2nic.txt": (2, ["mlx5_0", "mlx5_1"], {1: (0, "0-23")}),
    "ibm-power9-4xv100-nvlink-2socket.txt": (
        4,
        [f"mlx5_{i}" for i in range(4)],
        {0: (0, "0-63"), 3: (8, "64-127")},
    ),
    "pcie-5gpu-2socket-uneven.txt": (5, [], {0: (1, "8-15,24-31"), 1: (0, "0-7,16-23")}),
}


def test_every_fixture_is_covered() -> None:
    # The others are checked in test_topo_wild.py (which checks that all are covered).
    assert set(EXPECTED) <= set(ALL)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses(name: str) -> None:
    topo = read_nvsmi(TOPOLOGIES / name)
    ngpus, nics, samples = EXPECTED[name]
    assert [g.index for g in topo.gpus] == list(range(ngpus))
    assert [n.name for n in topo.nics] == nics
    for idx, (numa, cpus) in samples.items():
        assert topo.gpu(idx).numa_node == numa
        assert format_cpulist(topo.gpu(idx).cpu_affinity) == cpus
    # Every GPU pair and GPU-NIC pair has a link class; X only on the diagonal.
    for i in range(ngpus):
        for j in range(ngpus):
            assert (topo.gpu_links[(i, j)] == "X") == (i == j)
        for n in nics:
            assert topo.gpu_nic_links[(i, n)] in ("PIX", "PXB", "PHB", "NODE", "SYS")
    assert topo.allowed_cpus == topo.cpus
    assert topo.cpus == frozenset().union(*(g.cpu_affinity for g in topo.gpus))


def test_h100_links_and_gpu_numa_id_column_ignored() -> None:
    topo = read_nvsmi(TOPOLOGIES / "hgx-h100-8gpu-8nic-ib.txt")
    assert topo.gpu_links[(0, 5)] == "NV18"
    assert topo.gpu_nic_links[(3, "mlx5_3")] == "PIX"
    assert topo.gpu_nic_links[(3, "mlx5_4")] == "SYS"
    # "GPU NUMA ID" is N/A everywhere; the CPU NUMA node comes from "NUMA Affinity".
    assert [g.numa_node for g in topo.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_power9_tab_separated_old_header() -> None:
    path = TOPOLOGIES / "ibm-power9-4xv100-nvlink-2socket.txt"
    assert "\t" in path.read_text()
    topo = read_nvsmi(path)
    assert topo.gpu_links[(0, 1)] == "NV3"
    assert topo.gpu_links[(1, 2)] == "SYS"
    assert topo.gpu_nic_links[(2, "mlx5_3")] == "NODE"
    assert topo.numa_cpus == {0: parse_cpulist("0-63"), 8: parse_cpulist("64-127")}
    assert topo.siblings == {}  # one range per socket: each CPU is its own core


def test_tabs_and_expanded_tabs_give_the_same_topology() -> None:
    text = (TOPOLOGIES / "ibm-power9-4xv100-nvlink-2socket.txt").read_text()
    a, b = parse_nvsmi(text), parse_nvsmi(text.expandtabs())
    assert (a.gpus, a.nics, a.gpu_links, a.gpu_nic_links) == (
        b.gpus,
        b.nics,
        b.gpu_links,
        b.gpu_nic_links,
    )


def test_ansi_underlined_header_is_accepted() -> None:
    # Newer drivers underline the header row on a terminal (ESC[4m ... ESC[0m).
    lines = (TOPOLOGIES / "pcie-4gpu-2socket-amd-genoa-4nic.txt").read_text().splitlines()
    lines[0] = "\x1b[4m" + lines[0] + "\x1b[0m"
    topo = parse_nvsmi("\n".join(lines))
    assert len(topo.gpus) == 4 and topo.gpu(3).numa_node == 1


def test_hyperthread_pairs_inferred_only_for_split_ranges() -> None:
    h100 = read_nvsmi(TOPOLOGIES / "hgx-h100-8gpu-8nic-ib.txt")
    assert h100.siblings[0] == frozenset({0, 96})
    assert h100.siblings[191] == frozenset({95, 191})
    assert len(h100.cores()) == 96
    uneven = read_nvsmi(TOPOLOGIES / "pcie-5gpu-2socket-uneven.txt")
    assert uneven.siblings[8] == frozenset({8, 24})
    for single in (
        "workstation-2gpu-threadripper-2nic.txt",
        "pcie-4gpu-2socket-amd-genoa-4nic.txt",
    ):
        assert read_nvsmi(TOPOLOGIES / single).siblings == {}


def test_explicit_siblings_override_the_guess() -> None:
    sib = {c: frozenset({c - c % 2, c - c % 2 + 1}) for c in range(24)}
    topo = read_nvsmi(TOPOLOGIES / "workstation-2gpu-threadripper-2nic.txt", siblings=sib)
    assert topo.cores()[:2] == [(0, 1), (2, 3)]


def test_empty_and_na_affinity_cells() -> None:
    text = (TOPOLOGIES / "pcie-5gpu-2socket-uneven.txt").read_text()
    text = text.replace("8-15,24-31      1", "N/A             N/A")
    topo = parse_nvsmi(text)
    assert topo.gpu(0).cpu_affinity == frozenset() and topo.gpu(0).numa_node is None
    assert topo.gpu(1).numa_node == 0


def test_cpulist_forms() -> None:
    assert parse_cpulist("4,6,8,10,12") == {4, 6, 8, 10, 12}
    assert parse_cpulist("0-15,32-47") == set(range(16)) | set(range(32, 48))
    assert format_cpulist([5, 0, 1, 2, 7, 6]) == "0-2,5-7"
    with pytest.raises(ValueError):
        parse_cpulist("0-x")


def _corrupt(tmp_path: Path, name: str, line: int, old: str, new: str) -> Path:
    lines = (TOPOLOGIES / name).read_text().split("\n")
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    out = tmp_path / name
    out.write_text("\n".join(lines))
    return out


@pytest.mark.parametrize(
    ("name", "line", "old", "new", "words"),
    [
        ("hgx-h100-8gpu-8nic-ib.txt", 4, "NV18", "NVX", "bad link 'NVX'"),
        ("hgx-a100-8gpu-8nic-roce.txt", 7, "32-63,96-127", "32-63,x", "bad CPU Affinity"),
        ("pcie-4gpu-2socket-amd-genoa-4nic.txt", 7, "X      SYS     SYS", "X", "link columns"),
        ("ibm-power9-4xv100-nvlink-2socket.txt", 5, "\t8", "\tnode8", "bad NUMA Affinity"),
        ("ibm-power9-4xv100-nvlink-2socket.txt", 6, "mlx5_0", "mlx5_9", "not a column"),
        ("workstation-2gpu-threadripper-2nic.txt", 3, "PHB", "X", "diagonal"),
        ("workstation-2gpu-threadripper-2nic.txt", 19, "NIC0: mlx5_0", "NIC0 mlx5_0", "legend"),
        ("pcie-5gpu-2socket-uneven.txt", 6, "N/A", "N/A  0  1", "more column"),
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
    assert err.value.line == line


def test_not_a_topology(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("\n\nSat Jun  1 12:00:00 2024\n+-----------------------+\n")
    with pytest.raises(TopologyParseError, match=rf"^{bad}:3: header row lists no GPU"):
        read_nvsmi(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(TopologyParseError, match=rf"^{empty}: empty"):
        read_nvsmi(empty)
    with pytest.raises(TopologyParseError, match="cannot read file"):
        read_nvsmi(tmp_path / "missing.txt")


def test_missing_gpu_row(tmp_path: Path) -> None:
    lines = (TOPOLOGIES / "workstation-2gpu-threadripper-2nic.txt").read_text().split("\n")
    del lines[2]  # GPU1's row
    path = tmp_path / "t.txt"
    path.write_text("\n".join(lines))
    with pytest.raises(TopologyParseError, match=r"no row for GPU1"):
        read_nvsmi(path)
