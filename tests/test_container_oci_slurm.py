"""A real OCI container on the two-node test cluster (issue 16, item 4).

``srun --container=BUNDLE`` through the test cluster's ``oci.conf`` (runc): the bundle is
built here from this machine's own files (tests/oci_bundle.py: bind mounts, nothing
downloaded), once per session. The digits job runs in it on 2 nodes with 2 ranks each
(Slurm 22.05 runs one task per node in a container step: hpc.runtime.node_ranks starts
the node's ranks in it), is preempted with USR2 inside the container, requeues from the
batch shell outside and resumes exactly once, ending bitwise equal to an uninterrupted
local run. The runtime check needs no cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import oci_bundle
import pytest

from hpc.launchers.slurm.container import has_runtime

from preemption_helpers import assert_bitwise_equal, final_model, loss_history, only_run_dir
from slurm_helpers import job_state, require_cluster, wait_for_job
from support import REPO, cli_env, hpc_launch

# Only stop and final checkpoints (as test_preemption_slurm).
EPOCHS = 60
SHORT = [f"job.epochs={EPOCHS}", "checkpoint.every_steps=100000", "job.name=oci-digits"]
RANKS = 4  # resources.nodes=2 and the default 2 tasks per node
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


def ranks_in_container(run_dir: Path, ranks: int, timeout: float = 60) -> dict[str, int]:
    """Per node, the ranks of this run (``hpc.run`` processes) that see the bundle's rootfs
    as their / (its marker file, through /proc/PID/root: the path itself reads "/" here)."""
    config = str(run_dir / "config.yaml")
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline and len(seen) < ranks:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if argv[1:3] != [b"-m", b"hpc.run"] or config.encode() not in argv:
                    continue  # not a rank (hpc.runtime.node_ranks names hpc.run too)
                root = str(Path(f"/proc/{pid}/root/{oci_bundle.MARKER}").is_file())
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            node = next((e[16:].decode() for e in env if e.startswith(b"SLURMD_NODENAME=")), "")
            seen[pid] = f"{node}:{root}"
        time.sleep(0.2)
    return dict(Counter(v.partition(":")[0] for v in seen.values() if v.endswith(":True")))


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
        if "hpc-launch: step exited" in text:
            break  # the step is over: the pattern will not come
        time.sleep(0.25)
    raise AssertionError(f"{pattern!r} not in {path}:\n{text[-3000:]}")


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
    # The uninterrupted local reference (4 processes) runs meanwhile.
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    reference = subprocess.Popen(
        [sys.executable, "-m", "hpc.cli.launch", *SHORT, f"resources.tasks_per_node={RANKS}"],
        cwd=ref_dir,
        env=cli_env(ref_dir, **CODE),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The acceptance command as written (2 ranks per node: Slurm 22.05 runs one container
    # task per node, which starts the node's ranks, hpc.runtime.node_ranks).
    image = ["cluster=slurm", "container.runtime=oci", f"container.image={bundle}"]
    proc = hpc_launch([*image, "resources.nodes=2", *SHORT], workdir, **CODE)
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(workdir, NAME)
    rec = json.loads((run_dir / "job.json").read_text())
    job_id = str(rec["job_id"])
    jobs.append(job_id)
    log = Path(rec["extra"]["log_file"])
    wait_for(log, r"^epoch 2/")
    # The 4 ranks, two on n1 and two on n2, run with the bundle's rootfs as their /.
    assert ranks_in_container(run_dir, RANKS) == {"n1": 2, "n2": 2}
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
    assert "final accuracy" in text and f"world size {RANKS}" in text
    rec = json.loads((run_dir / "job.json").read_text())
    assert rec["state"] == "COMPLETED" and rec["extra"]["restart_count"] == 1
    assert rec["extra"]["last_interruption"] == "preemption"
    assert reference.wait(timeout=120) == 0, reference.stderr.read() if reference.stderr else ""
    ref_run = only_run_dir(ref_dir, NAME)
    assert_bitwise_equal(final_model(run_dir), final_model(ref_run))
    losses = loss_history(run_dir, f"sqlite:///{workdir / 'mlflow.db'}")
    steps = [s for s, _ in losses]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > EPOCHS, "each step once"
    assert losses == loss_history(ref_run, f"sqlite:///{ref_dir / 'mlflow.db'}")
