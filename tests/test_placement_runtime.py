"""Placement and NCCL settings really applied inside a local 2-rank run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from hpc.topology.model import parse_cpulist

from support import hpc_launch

pytestmark = pytest.mark.slow

PROBE = """
import os
from hpc.runtime.session import Session, load_config
with Session.from_env(load_config()) as s:
    print(f"probe rank {s.rank} affinity {sorted(os.sched_getaffinity(0))} "
          f"omp {os.environ.get('OMP_NUM_THREADS')} "
          f"async {os.environ.get('TORCH_NCCL_ASYNC_ERROR_HANDLING')} "
          f"ib_timeout {os.environ.get('NCCL_IB_TIMEOUT')} "
          f"user {os.environ.get('NCCL_DEBUG')}", flush=True)
"""


def probe_lines(run_dir: Path) -> dict[int, str]:
    out = {}
    for rank in (0, 1):
        text = (run_dir / "logs" / f"rank{rank}.log").read_text()
        match = re.search(r"probe rank (\d) .*", text)
        assert match, text
        out[int(match.group(1))] = match.group(0)
    return out


def test_ranks_bound_to_disjoint_cpus_with_nccl_env(workdir: Path) -> None:
    script = workdir / "probe.py"
    script.write_text(PROBE)
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            f"job.entrypoint={script}",
            f"run_dir={run_dir}",
            "tracking.enabled=false",
            "nccl=infiniband",
            "+nccl.env.NCCL_IB_TIMEOUT=19",
        ],
        workdir,
        NCCL_DEBUG="WARN",
    )
    assert proc.returncode == 0, proc.stderr
    lines = probe_lines(run_dir)
    sets = {
        r: set(map(int, re.search(r"affinity \[([^\]]*)\]", line).group(1).split(", ")))
        for r, line in lines.items()
    }
    allowed = os.sched_getaffinity(0)
    assert sets[0] and sets[1] and not sets[0] & sets[1], sets
    assert sets[0] | sets[1] <= allowed
    for line in lines.values():
        assert "async 1" in line  # from the profile
        assert "ib_timeout 19" in line  # explicit nccl.env wins over the profile
        assert "user WARN" in line  # the user's own environment is left alone
    banner = (run_dir / "logs" / "rank1.log").read_text()
    cpus = re.search(r"cpus (\S+) numa", banner).group(1)
    assert parse_cpulist(cpus) == frozenset(sets[1])


def test_placement_can_be_switched_off(workdir: Path) -> None:
    script = workdir / "probe.py"
    script.write_text(PROBE)
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            f"job.entrypoint={script}",
            f"run_dir={run_dir}",
            "tracking.enabled=false",
            "placement.enabled=false",
        ],
        workdir,
    )
    assert proc.returncode == 0, proc.stderr
    for line in probe_lines(run_dir).values():
        got = set(map(int, re.search(r"affinity \[([^\]]*)\]", line).group(1).split(", ")))
        assert got == os.sched_getaffinity(0)


def test_dry_run_shows_placement_on_stderr(workdir: Path) -> None:
    topo = Path(__file__).parent / "fixtures" / "topologies" / "hgx-h100-8gpu-8nic-ib.txt"
    proc = hpc_launch(
        ["dry_run=true", "resources.tasks_per_node=8", f"placement.topo_file={topo}"], workdir
    )
    assert proc.returncode == 0, proc.stderr
    assert "placement:" not in proc.stdout  # stdout is the plan alone
    lines = [ln for ln in proc.stderr.splitlines() if "placement: local rank" in ln]
    assert len(lines) == 8 and "gpu 0 cpus 0-11,96-107 numa 0 nics mlx5_0" in lines[0]
