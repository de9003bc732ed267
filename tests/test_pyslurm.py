"""pyslurm submission, where a pyslurm built for the installed Slurm can be imported."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc.launchers.slurm import client

from slurm_helpers import require_cluster, wait_for_job


def test_pyslurm_used_only_when_it_matches(tmp_path: Path) -> None:
    try:
        import pyslurm  # noqa: F401
    except Exception as exc:
        pytest.skip(
            "pyslurm cannot be installed here: PyPI has builds for Slurm 25.11 only and "
            f"this machine runs Slurm {client.slurm_version()} ({type(exc).__name__})"
        )
    require_cluster()
    if not client._pyslurm_usable():
        pytest.skip(f"the installed pyslurm does not match Slurm {client.slurm_version()}")
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\n#SBATCH --output={tmp_path}/out.txt\necho via-pyslurm\n")
    job_id = client.submit(str(script))
    assert wait_for_job(job_id, timeout=120) == "COMPLETED"
    assert "via-pyslurm" in (tmp_path / "out.txt").read_text()
