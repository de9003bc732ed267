"""A third-party backend, registered only by its entry point (group
``hpc_launch.launchers``), runs through the public CLI: plan (dry run), value rules,
submit, ``hpc status``, ``hpc logs`` and ``hpc cancel``; unknown kinds list it."""

from __future__ import annotations

import json
import os

from support import FIXTURES, hpc, hpc_launch

TOY = str(FIXTURES / "toy_backend")


def _env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(p for p in (TOY, os.environ.get("PYTHONPATH")) if p)}


def test_toy_backend_through_the_cli(tmp_path):
    env = _env()
    dry = hpc_launch(["cluster=toy", "cluster.greeting=hi there", "dry_run=true"], tmp_path, **env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == "toy plan: hi there (digits)\n"

    bad = hpc_launch(["cluster=toy", "cluster.sleep_s=0", "dry_run=true"], tmp_path, **env)
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("cluster.sleep_s: must be >= 1"), bad.stderr

    run_dir = tmp_path / "run"
    sub = hpc_launch(["cluster=toy", f"run_dir={run_dir}"], tmp_path, **env)
    assert sub.returncode == 0, sub.stderr
    assert "started" in sub.stderr and "COMPLETED" not in sub.stderr  # not followed

    status = hpc(["status", "--json"], tmp_path, **env)
    assert status.returncode == 0, status.stderr
    (record,) = [r for r in json.loads(status.stdout) if r["run_dir"] == str(run_dir)]
    assert (record["launcher"], record["state"]) == ("toy", "RUNNING")

    logs = hpc(["logs", str(run_dir)], tmp_path, **env)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "toy plan: hello from toy (digits)\n"

    cancel = hpc(["cancel", str(run_dir)], tmp_path, **env)
    assert cancel.returncode == 0, cancel.stderr
    assert f"toy: stopped {record['job_id']}" in cancel.stderr
    for _ in range(50):
        status = hpc(["status", "--json"], tmp_path, **env)
        (record,) = [r for r in json.loads(status.stdout) if r["run_dir"] == str(run_dir)]
        if record["state"] == "CANCELLED":
            break
    assert record["state"] == "CANCELLED"


def test_unknown_kind_lists_installed_backends(tmp_path):
    result = hpc_launch(["cluster.kind=nope", "dry_run=true"], tmp_path, **_env())
    assert result.returncode == 2
    assert "unknown launcher 'nope' (one of k8s, local, mpi, slurm, toy)" in result.stderr


def test_sweep_unsupported_by_a_backend_is_one_line(tmp_path):
    result = hpc_launch(["-m", "cluster=toy", "job.seed=1,2", "dry_run=true"], tmp_path, **_env())
    assert result.returncode == 2
    assert result.stderr.strip() == "hpc-launch: error: cluster: sweeps are not supported on toy"
