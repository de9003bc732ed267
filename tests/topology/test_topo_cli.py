"""``hpc topo`` CLI functions (called in-process through ``main(argv)``).

Golden: tests/golden/topo/plan-hgx-h100-infiniband.json (``UPDATE_GOLDEN=1`` rewrites it).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from hpc.topology.cli import _show, main
from hpc.topology.model import NoGpuError
from hpc.topology.nvml import read_nvml
from hpc.topology.sysfs import read_sysfs

TOPOLOGIES = Path(__file__).resolve().parents[1] / "fixtures" / "topologies"
H100 = TOPOLOGIES / "hgx-h100-8gpu-8nic-ib.txt"


@pytest.fixture(autouse=True)
def _clean_nccl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("NCCL_", "TORCH_NCCL_")):
            monkeypatch.delenv(name)


def test_plan_json_golden(capsys: pytest.CaptureFixture[str], golden) -> None:
    argv = ["plan", "--topo-file", str(H100), "--ranks-per-node", "8"]
    assert main([*argv, "--nccl-profile", "infiniband", "--format", "json"]) == 0
    out = capsys.readouterr().out
    golden("topo/plan-hgx-h100-infiniband.json", out)
    doc = json.loads(out)
    assert list(doc) == ["ranks", "nccl_env"]
    assert len(doc["ranks"]) == 8
    for i, rank in enumerate(doc["ranks"]):
        assert list(rank) == ["local_rank", "gpu", "cpus", "numa_node", "nics"]
        assert rank["local_rank"] == i and rank["gpu"] == i
        assert all(isinstance(c, int) for c in rank["cpus"])
        assert rank["nics"][0] == f"mlx5_{i}"  # legend names, nearest (PIX) first
    assert doc["ranks"][4]["numa_node"] == 1
    assert doc["nccl_env"]["NCCL_IB_HCA"] == "=" + ",".join(f"mlx5_{i}" for i in range(8))


def test_plan_json_user_env_wins(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NCCL_IB_HCA", "=mlx5_0")
    argv = ["plan", "--topo-file", str(H100), "--ranks-per-node", "2", "--format", "json"]
    assert main([*argv, "--nccl-profile", "infiniband"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "NCCL_IB_HCA" not in doc["nccl_env"]
    assert [r["gpu"] for r in doc["ranks"]] == [0, 1]


def test_plan_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--topo-file", str(TOPOLOGIES / "hgx-a100-8gpu-8nic-roce.txt")]
    assert main([*argv, "--ranks-per-node", "8", "--nccl-profile", "roce"]) == 0
    out = capsys.readouterr().out
    assert "0-7,64-71" in out and "NCCL_IB_GID_INDEX" in out


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hpc topo: error: ")
    return lines[0]


def test_malformed_file_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "topo.txt"
    lines = H100.read_text().split("\n")
    lines[5] = lines[5].replace("PIX", "PCI")
    bad.write_text("\n".join(lines))
    assert main(["plan", "--topo-file", str(bad), "--ranks-per-node", "8"]) == 2
    assert f"{bad}:6: bad link 'PCI'" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["plan", "--topo-file", str(H100), "--ranks-per-node", "9"],
         "--ranks-per-node: 9 ranks per node but only 8 GPUs"),
        (["plan", "--topo-file", str(H100), "--ranks-per-node", "x"], "--ranks-per-node"),
        (["plan", "--topo-file", str(H100), "--ranks-per-node", "0"], "--ranks-per-node"),
        (["plan", "--topo-file", str(H100)], "--ranks-per-node"),
        (["plan", "--ranks-per-node", "1", "--nccl-profile", "ib"], "--nccl-profile"),
        (["plan", "--ranks-per-node", "1", "--format", "yaml"], "--format"),
        (["plan", "--topo-file", "/nonexistent/t.txt", "--ranks-per-node", "1"],
         "/nonexistent/t.txt"),
        (["frobnicate"], "invalid choice"),
        ([], "command"),
    ],
)  # fmt: skip
def test_errors_are_one_line_exit_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert words in _one_error_line(capsys)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--help"]) == 0
    assert "hpc topo plan" in capsys.readouterr().out


def _has_gpu() -> bool:
    try:
        read_nvml()
    except NoGpuError:
        return False
    return True


@pytest.mark.skipif(_has_gpu(), reason="this machine has an NVIDIA GPU and driver")
def test_show_without_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show"]) == 0
    out = capsys.readouterr().out
    assert "No GPUs found on this machine" in out and "CPU-only" in out
    assert "NUMA node" in out  # the CPU table


@pytest.mark.skipif(_has_gpu(), reason="this machine has an NVIDIA GPU and driver")
def test_plan_this_machine_without_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    n = min(2, len(os.sched_getaffinity(0)))
    assert main(["plan", "--ranks-per-node", str(n), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["gpu"] for r in doc["ranks"]] == [None] * n
    cpus = [set(r["cpus"]) for r in doc["ranks"]]
    assert all(cpus) and set().union(*cpus) <= os.sched_getaffinity(0)


def test_show_renders_gpus_and_nics(two_socket_sysfs: Path) -> None:
    buf = io.StringIO()
    _show(read_sysfs(two_socket_sysfs), Console(file=buf, width=200))
    out = buf.getvalue()
    assert "No GPUs" not in out
    assert "0000:9c:00.0" in out and "mlx5_2 (PXB)" in out
    assert "DOWN" in out and "Ethernet" in out
    assert "4-7,12-15" in out
