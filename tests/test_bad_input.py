"""Every bad input fails before anything runs: exit 2, one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import hpc_launch

# (overrides, the key the error must name)
CASES: list[tuple[list[str], str]] = [
    (["resources.nodes=abc"], "resources.nodes"),
    (["resources.nodes=0"], "resources.nodes"),
    (["resources.nodes=-2"], "resources.nodes"),
    (["resources.tasks_per_node=0"], "resources.tasks_per_node"),
    (["resources.tasks_per_node=two"], "resources.tasks_per_node"),
    (["resources.cpus_per_task=0"], "resources.cpus_per_task"),
    (["resources.gpus_per_node=-1"], "resources.gpus_per_node"),
    (["resources.gpus_per_node=2"], "resources.gpus_per_node"),  # this machine has none
    (["resources.time=forever"], "resources.time"),
    (["resources.time=1:99:00"], "resources.time"),
    (["resources.time=0"], "resources.time"),
    (["resources.mem=12Q"], "resources.mem"),
    (["resources.partition=gpu$(id)"], "resources.partition"),
    (["resources.foo=1"], "resources.foo"),
    (["+resources.foo=1"], "resources.foo"),
    (["+job.foo=1"], "job.foo"),
    (["+cluster.bogus=1"], "cluster.bogus"),
    (["bogus=1"], "bogus"),
    (["job.epochs=0"], "job.epochs"),
    (["job.epochs=1.5"], "job.epochs"),
    (["job.lr=-0.1"], "job.lr"),
    (["job.lr=abc"], "job.lr"),
    (["job.batch_size=0"], "job.batch_size"),
    (["job.hidden=0"], "job.hidden"),
    (["job.seed=-1"], "job.seed"),
    (["job.entrypoint=does.not.exist:main"], "job.entrypoint"),
    (["job.entrypoint=missing_script.py"], "job.entrypoint"),
    (["job.entrypoint="], "job.entrypoint"),
    (["job.name=bad name"], "job.name"),
    (["cluster=nope"], "cluster"),
    (["job=nope"], "job"),
    (["checkpoint.every_steps=0"], "checkpoint.every_steps"),
    (["checkpoint.keep=0"], "checkpoint.keep"),
    (["tracking.experiment="], "tracking.experiment"),
    (["dry_run=maybe"], "dry_run"),
    (["resume=/nonexistent/run"], "resume"),
    (["resources"], "resources"),
    (["resources.nodes=2"], "resources.nodes"),  # local runs one node
    (["resources.nodes=[1,2"], "resources.nodes"),
    (["preemption.signal=NOPE"], "preemption.signal"),
    (["preemption.signal=KILL"], "preemption.signal"),
    (["preemption.lead_s=-5"], "preemption.lead_s"),
    (["resources.time=00:01:00", "preemption.lead_s=60"], "preemption.lead_s"),
    (["nccl.profile=bogus"], "nccl.profile"),
    (["nccl=bogus"], "nccl"),
    (["+nccl.env.bad-name=1"], "nccl.env.bad-name"),
    (["placement.topo_file=/no/such/topo.txt"], "placement.topo_file"),
    (["placement.link_layer=Token-Ring"], "placement.link_layer"),
    (["accounting.interval_s=0"], "accounting.interval_s"),
    (["cluster.exit_grace_s=0"], "cluster.exit_grace_s"),
    (["cluster.exit_grace_s=inf"], "cluster.exit_grace_s"),
    (["job.lr=0.1,0.2"], "job.lr"),
]


@pytest.mark.parametrize(("overrides", "key"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_names_key_and_launches_nothing(
    overrides: list[str], key: str, workdir: Path
) -> None:
    proc = hpc_launch(overrides, workdir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"error: {key}:" in lines[0], lines[0]
    assert proc.stdout == ""
    assert not (workdir / "outputs").exists(), "nothing may be created"
    assert not (workdir / ".state").exists(), "no run may be recorded"
    assert not (workdir / "mlflow.db").exists()


def test_unknown_option(workdir: Path) -> None:
    proc = hpc_launch(["--bogus"], workdir)
    assert proc.returncode == 2 and "--bogus" in proc.stderr
