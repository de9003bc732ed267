"""apply_placement really pins processes: two subprocesses, one CPU block each."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpc.topology.apply import apply_placement
from hpc.topology.discover import discover
from hpc.topology.model import format_cpulist
from hpc.topology.placement import RankPlacement, plan_node

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from hpc.topology.apply import apply_placement
    from hpc.topology.placement import RankPlacement

    d = json.loads(sys.argv[1])
    for key in ("cpus", "nics", "nic_links"):
        d[key] = tuple(d[key])
    env = apply_placement(RankPlacement(**d), environ={})
    print(json.dumps({"affinity": sorted(os.sched_getaffinity(0)), "env": env}))
    """
)


def _run_ranks(plan: list[RankPlacement]) -> list[dict]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(dataclasses.asdict(p))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for p in plan
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 allowed CPUs")
def test_two_ranks_get_their_own_cpus() -> None:
    topo = discover()
    plan = plan_node(topo, 2)
    results = _run_ranks(plan)
    got = [set(r["affinity"]) for r in results]
    assert got == [set(p.cpus) for p in plan]
    assert got[0] and got[1] and not got[0] & got[1]
    allowed = os.sched_getaffinity(0)
    assert got[0] | got[1] <= allowed
    if len(allowed) == 2:  # this 2-CPU machine: each rank gets one CPU
        assert sorted(len(g) for g in got) == [1, 1]
    for p, r in zip(plan, results, strict=True):
        assert r["env"]["OMP_NUM_THREADS"] == str(p.num_cores)
        assert r["env"]["HPC_PLACEMENT_CPUS"] == format_cpulist(p.cpus)


def test_cpus_outside_the_allowed_set_are_ignored() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    outside = max(allowed) + 1000
    p = RankPlacement(0, None, (allowed[0], outside), None, (), 1, num_cores=2)
    [r] = _run_ranks([p])
    assert r["affinity"] == [allowed[0]]
    assert r["env"]["OMP_NUM_THREADS"] == "1"


def test_nothing_allowed_leaves_affinity_alone(caplog: pytest.LogCaptureFixture) -> None:
    before = os.sched_getaffinity(0)
    p = RankPlacement(3, 0, (max(before) + 1000,), 0, ("mlx5_0",), 1, 1, ("PIX",))
    env = apply_placement(p, environ={})
    assert os.sched_getaffinity(0) == before
    assert "outside this process's allowed CPUs" in caplog.text
    assert env["HPC_PLACEMENT_GPU"] == "0" and env["NCCL_IB_HCA"] == "=mlx5_0"


def test_env_for_a_gpu_rank() -> None:
    allowed = tuple(sorted(os.sched_getaffinity(0)))
    p = RankPlacement(
        local_rank=1,
        gpu=1,
        cpus=allowed,  # binding to the current set keeps this test process unchanged
        numa_node=0,
        nics=("mlx5_1", "mlx5_0", "mlx5_2"),
        dataloader_workers=4,
        num_cores=len(allowed),
        nic_links=("PXB", "PXB", "NODE"),
        strict_memory=True,
    )
    env = apply_placement(p, environ={})
    assert env == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "HPC_PLACEMENT_CPUS": env["HPC_PLACEMENT_CPUS"],
        "HPC_PLACEMENT_DATALOADER_WORKERS": "4",
        "HPC_PLACEMENT_GPU": "1",
        "HPC_PLACEMENT_MEMBIND": "0",
        "HPC_PLACEMENT_NUMA_NODE": "0",
        "NCCL_IB_HCA": "=mlx5_1,mlx5_0",
        "OMP_NUM_THREADS": str(len(allowed)),
    }
    assert "CUDA_VISIBLE_DEVICES" not in env
    user = apply_placement(p, environ={"NCCL_IB_HCA": "=mlx5_7", "CUDA_DEVICE_ORDER": "X"})
    assert "NCCL_IB_HCA" not in user and "CUDA_DEVICE_ORDER" not in user
    loose = apply_placement(dataclasses.replace(p, strict_memory=False), environ={})
    assert "HPC_PLACEMENT_MEMBIND" not in loose
