"""A real OCI container on the two-node test cluster (issue 16, item 4).

``srun --container=BUNDLE`` through the test cluster's ``oci.conf`` (runc): the bundle is
built here from this machine's own files (tests/oci_bundle.py: bind mounts, nothing
downloaded), once per session. The digits job runs in it on 2 nodes (Slurm 22.05 runs
one task per node in a container step), is preempted with USR2 inside the container,
requeues from the batch shell outside and resumes exactly once, ending bitwise equal to
an uninterrupted local run. The runtime check and the 22.05 rule need no cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import oci_bundle
import pytest

from hpc.launchers.slurm.container import check_slurm, has_runtime
from hpc.spec.errors import ConfigError

from preemption_helpers import assert_bitwise_equal, final_model, loss_history, only_run_dir
from slurm_helpers import job_state, require_cluster, wait_for_job
from support import REPO, cli_env, hpc_launch

# 2 ranks: 23 steps per epoch, only stop and final checkpoints (as test_preemption_slurm).
EPOCHS = 60
SHORT = [f"job.epochs={EPOCHS}", "checkpoint.every_steps=100000", "job.name=oci-digits"]
NAME = "oci-digits"  # the Slurm job name (this suite's prefix) and the outputs dir
# The worktree's code on both sides of the container (the bundle binds REPO read-only).
CODE = {"PYTHONPATH": str(REPO)}


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The OCI bundle; every test's scratch dir (launch and run dirs) is bound at its path."""
    return oci_bundle.build(
        tmp_path_factory.mktemp("oci") / "bundle", [str(tmp_path_factory.getbasetemp())]
    )


def test_runtime_found_through_the_bundles_bind_mounts(bundle: Path, tmp_path: Path) -> None:
    config = json.loads((bundle / "config.json").read_text())
    binds = [(m["destination"], m["source"]) for m in config["mounts"] if m["type"] == "bind"]
    assert not has_runtime(bundle / "rootfs")  # an empty rootfs: the venv is bound into it
    assert has_runtime(bundle / "rootfs", binds)
    # A clean clone: the checkout bound at its path, its .venv in it.
    clone = tmp_path / "clone"
    (clone / ".venv/lib/python3.11/site-packages/hpc_launch-0.1.0.dist-info").mkdir(parents=True)
    assert has_runtime(bundle / "rootfs", [(str(clone), str(clone))])
    assert not has_runtime(bundle / "rootfs", [("/opt/x", str(tmp_path / "nothing"))])


def test_slurm_22_05_takes_one_container_task_per_node() -> None:
    cfg = {"container": {"runtime": "oci"}, "resources": {"tasks_per_node": 2}}
    with pytest.raises(ConfigError, match=r"resources.tasks_per_node: 2: Slurm 22.05 runs one"):
        check_slurm(cfg, lambda: "22.05")
    check_slurm(cfg, lambda: "23.02")
    check_slurm(cfg, lambda: None)
    check_slurm({**cfg, "resources": {"tasks_per_node": 1}}, lambda: "22.05")
    asked: list[int] = []  # a job without a container does not ask for the version
    check_slurm({**cfg, "container": {"runtime": "none"}}, lambda: str(asked.append(1)))
    assert not asked


def ranks_in_container(run_dir: Path, ranks: int, timeout: float = 60) -> set[str]:
    """The nodes whose ``hpc.run`` process of this run sees the bundle's rootfs as its /
    (its marker file, through /proc/PID/root: the path itself reads "/" from here)."""
    config = str(run_dir / "config.yaml")
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline and len(seen) < ranks:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"hpc.run" not in argv or config.encode() not in argv:
                    continue
                root = str(Path(f"/proc/{pid}/root/{oci_bundle.MARKER}").is_file())
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            node = next((e[16:].decode() for e in env if e.startswith(b"SLURMD_NODENAME=")), "")
            seen[pid] = f"{node}:{root}"
        time.sleep(0.2)
    return {v.partition(":")[0] for v in seen.values() if v.endswith(":True")}


@pytest.fixture
def jobs() -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for job_id in ids:
        if job_state(job_id) not in (None, "COMPLETED", "FAILED", "CANCELLED"):
            subprocess.run(["scancel", job_id], capture_output=True, check=False)


def wait_for(path: Path, pattern: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text, re.M):
            return text
        time.sleep(0.25)
    raise AssertionError(f"{pattern!r} not in {path} after {timeout}s:\n{text[-3000:]}")


def squeue(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True, check=False
    ).stdout
    return out.strip()


@pytest.mark.slurm
def test_digits_in_an_oci_container_on_two_nodes_preempted_resumes_once(
    bundle: Path, workdir: Path, tmp_path: Path, jobs: list[str]
) -> None:
    require_cluster(min_nodes=2)
    # The acceptance command as written: 22.05 refuses 2 tasks per node in a container.
    image = ["cluster=slurm", "container.runtime=oci", f"container.image={bundle}"]
    refused = hpc_launch([*image, "resources.nodes=2", f"job.name={NAME}"], workdir, **CODE)
    assert refused.returncode == 2, refused.stderr
    assert "resources.tasks_per_node: 2: Slurm 22.05" in refused.stderr
    assert not (workdir / "outputs").exists() or not any((workdir / "outputs").rglob("job.json"))
    # The uninterrupted local reference (2 processes) runs meanwhile.
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    reference = subprocess.Popen(
        [sys.executable, "-m", "hpc.cli.launch", *SHORT],
        cwd=ref_dir,
        env=cli_env(ref_dir, **CODE),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc = hpc_launch(
        [*image, "resources.nodes=2", "resources.tasks_per_node=1", *SHORT], workdir, **CODE
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(workdir, NAME)
    rec = json.loads((run_dir / "job.json").read_text())
    job_id = str(rec["job_id"])
    jobs.append(job_id)
    log = Path(rec["extra"]["log_file"])
    wait_for(log, r"^epoch 2/")
    # Both ranks, one on n1 and one on n2, run with the bundle's rootfs as their /.
    assert ranks_in_container(run_dir, 2) == {"n1", "n2"}
    assert subprocess.run(["scancel", "-b", "-s", "USR2", job_id], check=False).returncode == 0
    deadline = time.monotonic() + 90
    while squeue(job_id) != "PENDING|BeginTime" and time.monotonic() < deadline:
        time.sleep(0.25)
    assert squeue(job_id) == "PENDING|BeginTime", log.read_text()[-3000:]
    stopped = re.search(r"stopping at step (\d+) \(SIGUSR2\)", log.read_text())
    assert stopped, log.read_text()[-3000:]
    step = f"step-{int(stopped.group(1)):09d}"
    assert (run_dir / "checkpoints" / "LATEST").read_text().strip() == step
    time.sleep(2)  # a new credential must come from a later second (test_preemption_slurm)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    assert wait_for_job(job_id, timeout=150) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert text.count("(restart 0)") == 1 and text.count("(restart 1)") == 1
    assert "(restart 2)" not in text
    assert f"resumed from {step}" in text
    assert "final accuracy" in text and "world size 2" in text
    rec = json.loads((run_dir / "job.json").read_text())
    assert rec["state"] == "COMPLETED" and rec["extra"]["restart_count"] == 1
    assert rec["extra"]["last_interruption"] == "preemption"
    assert reference.wait(timeout=120) == 0, reference.stderr.read() if reference.stderr else ""
    ref_run = only_run_dir(ref_dir, NAME)
    assert_bitwise_equal(final_model(run_dir), final_model(ref_run))
    losses = loss_history(run_dir, f"sqlite:///{workdir / 'mlflow.db'}")
    assert [s for s, _ in losses] == list(range(1, EPOCHS * 23 + 1)), "each step exactly once"
    assert losses == loss_history(ref_run, f"sqlite:///{ref_dir / 'mlflow.db'}")
