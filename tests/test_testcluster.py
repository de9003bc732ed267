"""Tests against the real Slurm test cluster (slurm/testcluster/up).

Skipped when the cluster is not running, unless HPC_TEST_SLURM=1 (CI), where
they fail instead. Jobs run on this machine, so pytest's tmp_path is visible
to them; outputs are written there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from slurm_helpers import require_cluster, sacct_fields, sbatch, wait_for_job
except ImportError:  # tests/ imported as a package
    from tests.slurm_helpers import require_cluster, sacct_fields, sbatch, wait_for_job

pytestmark = pytest.mark.slurm

JOB_TIMEOUT = 120.0


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster(min_nodes=2)


@pytest.fixture
def submit(tmp_path: Path) -> Iterator:
    """sbatch with output in tmp_path; cancels the job if a test leaves it."""
    submitted: list[int] = []

    def _submit(*args: str) -> tuple[int, Path]:
        job_id = sbatch(
            ["--chdir", str(tmp_path), "--output", str(tmp_path / "%j.out"), "--time", "5", *args]
        )
        submitted.append(job_id)
        return job_id, tmp_path / f"{job_id}.out"

    yield _submit
    for job_id in submitted:
        subprocess.run(["scancel", str(job_id)], capture_output=True, check=False)


def test_two_node_job_completes(submit) -> None:
    job_id, out = submit(
        "-N2", "--ntasks-per-node=1", "--wrap", "srun bash -c 'echo node=$SLURMD_NODENAME'"
    )
    assert wait_for_job(job_id, JOB_TIMEOUT) == "COMPLETED", out.read_text() if out.exists() else ""

    acct = sacct_fields(job_id, ["State", "NNodes", "NodeList", "Account"])
    assert acct["State"] == "COMPLETED"
    assert acct["NNodes"] == "2"
    assert sorted(re.findall(r"node=(\S+)", out.read_text())) == ["n1", "n2"]
    if os.geteuid() == 0:  # `up` registers root with default account research
        assert acct["Account"] == "research"


def test_gpus_per_node_sets_cuda_visible_devices(submit) -> None:
    script = (
        'echo "batch cvd=$CUDA_VISIBLE_DEVICES"; '
        "srun bash -c 'echo step node=$SLURMD_NODENAME cvd=$CUDA_VISIBLE_DEVICES'"
    )
    job_id, out = submit("-N2", "--ntasks-per-node=1", "--gpus-per-node=2", "--wrap", script)
    assert wait_for_job(job_id, JOB_TIMEOUT) == "COMPLETED", out.read_text() if out.exists() else ""

    text = out.read_text()
    batch = re.search(r"^batch cvd=(\S*)$", text, re.M)
    assert batch, text
    assert len(batch.group(1).split(",")) == 2, text
    steps = dict(re.findall(r"^step node=(\S+) cvd=(\S*)$", text, re.M))
    assert sorted(steps) == ["n1", "n2"], text
    assert all(len(cvd.split(",")) == 2 for cvd in steps.values()), text

    alloc = sacct_fields(job_id, ["AllocTRES"])["AllocTRES"]
    assert "gres/gpu=4" in alloc.split(","), alloc


def test_sacct_json(submit) -> None:
    job_id, _ = submit("--wrap", "true")
    assert wait_for_job(job_id, JOB_TIMEOUT) == "COMPLETED"

    res = subprocess.run(
        ["sacct", "--json", "-j", str(job_id)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [job["job_id"] for job in data["jobs"]] == [job_id]
