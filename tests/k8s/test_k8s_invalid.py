"""Bad k8s specs fail before anything is rendered or sent: exit 2, one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from k8s_helpers import hpc_launch

# (overrides, the key the error must name); all with cluster=k8s
CASES: list[tuple[list[str], str]] = [
    (["cluster.namespace=Team_A"], "cluster.namespace"),
    (["cluster.namespace="], "cluster.namespace"),
    (["cluster.namespace=" + "a" * 64], "cluster.namespace"),
    (["cluster.image="], "cluster.image"),
    (["cluster.image='repo/img with space'"], "cluster.image"),
    (["cluster.image_pull_policy=Sometimes"], "cluster.image_pull_policy"),
    (["cluster.checkpoint_pvc=Shared_PVC"], "cluster.checkpoint_pvc"),
    (["cluster.checkpoint_mount=relative/dir"], "cluster.checkpoint_mount"),
    (["cluster.checkpoint_mount=/"], "cluster.checkpoint_mount"),
    (["cluster.checkpoint_mount=/etc/hpc-launch"], "cluster.checkpoint_mount"),
    (["cluster.service_account=Bad!"], "cluster.service_account"),
    (["cluster.command=[]"], "cluster.command"),
    (["cluster.backoff_limit=-1"], "cluster.backoff_limit"),
    (["cluster.backoff_limit=many"], "cluster.backoff_limit"),
    (["cluster.ttl_seconds_after_finished=-5"], "cluster.ttl_seconds_after_finished"),
    (["cluster.grace_period_s=0"], "cluster.grace_period_s"),
    (["cluster.grace_period_s=30", "preemption.lead_s=120"], "cluster.grace_period_s"),
    (["cluster.master_port=80"], "cluster.master_port"),
    (["+cluster.env.1BAD=x"], "cluster.env.1BAD"),
    (["+cluster.env.HPC_RUN_DIR=/elsewhere"], "cluster.env.HPC_RUN_DIR"),
    (["+cluster.bogus=1"], "cluster.bogus"),
    (["resources.nodes=2"], "cluster.checkpoint_pvc"),  # several workers need a shared volume
    # rules of the MPI operator (not in the CRD schema), found in the rendered manifest
    (["cluster.clean_pod_policy=Sometimes"], "cluster.clean_pod_policy"),
    # the CRD's openAPIV3Schema (enum), found in the rendered manifest
    (["cluster.mpi_implementation=LAM"], "cluster.mpi_implementation"),
    # general rules still apply
    (["resources.mem=12Q"], "resources.mem"),
    (["resources.time=forever"], "resources.time"),
    (["resources.tasks_per_node=2", "resources.gpus_per_node=4"], "resources.tasks_per_node"),
]


@pytest.mark.parametrize(("overrides", "key"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_k8s_spec_names_key(overrides: list[str], key: str, workdir: Path) -> None:
    proc = hpc_launch(["cluster=k8s", *overrides], workdir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"error: {key}:" in lines[0], lines[0]
    assert proc.stdout == ""
    assert not (workdir / "outputs").exists(), "nothing may be created"
    assert not (workdir / ".state").exists(), "no run may be recorded"


def test_schema_and_operator_errors_say_which_manifest_field(workdir: Path) -> None:
    proc = hpc_launch(["cluster=k8s", "cluster.clean_pod_policy=Sometimes"], workdir)
    assert "MPIJob field spec.runPolicy.cleanPodPolicy" in proc.stderr
    proc = hpc_launch(["cluster=k8s", "cluster.mpi_implementation=LAM"], workdir)
    assert "MPIJob field spec.mpiImplementation" in proc.stderr
