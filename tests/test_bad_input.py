"""Every bad input fails before anything runs: exit 2, one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import hpc, hpc_launch

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
    (["fault.stall_timeout_s=0"], "fault.stall_timeout_s"),
    (["fault.stall_timeout_s=abc"], "fault.stall_timeout_s"),
    (["fault.first_step_timeout_s=10", "fault.stall_timeout_s=20"], "fault.first_step_timeout_s"),
    (["fault.straggler_steps=-1"], "fault.straggler_steps"),
    (["fault.hang_requeues=-1"], "fault.hang_requeues"),
    (["fault.node_probe_timeout_s=0"], "fault.node_probe_timeout_s"),
    (["fault.node_resubmits=-1"], "fault.node_resubmits"),
    (["fault.watchdog=maybe"], "fault.watchdog"),
    (["nccl.profile=bogus"], "nccl.profile"),
    (["nccl=bogus"], "nccl"),
    (["+nccl.env.bad-name=1"], "nccl.env.bad-name"),
    (["placement.topo_file=/no/such/topo.txt"], "placement.topo_file"),
    (["placement.link_layer=Token-Ring"], "placement.link_layer"),
    (["accounting.interval_s=0"], "accounting.interval_s"),
    (["cluster.exit_grace_s=0"], "cluster.exit_grace_s"),
    (["cluster.exit_grace_s=inf"], "cluster.exit_grace_s"),
    (["job.lr=0.1,0.2"], "job.lr"),
    # Directory keys: each must be, or be creatable as, a directory.
    (["run_dir=/dev/null"], "run_dir"),
    (["run_dir=/proc/self/x"], "run_dir"),
    (["run_dir=/dev/null/run"], "run_dir"),
    (["output_root=/proc/self/out"], "output_root"),
    (["checkpoint.dir=/dev/null"], "checkpoint.dir"),
    # Numbers: integers within 32 bits (seeds within numpy's 0..2**32-1), floats finite,
    # framework numbers non-negative.
    (["job.seed=4294967296"], "job.seed"),
    (["job.lr=inf"], "job.lr"),
    (["job.lr=nan"], "job.lr"),
    (["job.epochs=99999999999"], "job.epochs"),
    (["resources.cpus_per_task=2147483648"], "resources.cpus_per_task"),
    (["resources.nodes=99999999999999999999"], "resources.nodes"),
    (["cluster=slurm", "resources.nodes=99999999999999999999"], "resources.nodes"),
    (["cluster.kill_grace_s=-5"], "cluster.kill_grace_s"),
    (["cluster.kill_grace_s=inf"], "cluster.kill_grace_s"),
    (["tracking.flush_timeout_s=nan"], "tracking.flush_timeout_s"),
    (["checkpoint.every_steps=4294967296"], "checkpoint.every_steps"),
    (["cluster=slurm", "cluster.submit_retries=-1"], "cluster.submit_retries"),
    (["cluster=k8s", "cluster.backoff_limit=2147483648"], "cluster.backoff_limit"),
    (["cluster=slurm", "resources.time=99999999-00"], "resources.time"),
    (["cluster=slurm", "output_root=sp ace"], "output_root"),
    (["cluster=slurm", "run_dir=sp ace/run"], "run_dir"),
    (["resume_allow_changes=[job.nope]"], "resume_allow_changes[0]"),
    (["resume_allow_changes=[run_dir]"], "resume_allow_changes[0]"),
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
    assert_nothing_created(workdir)


def assert_nothing_created(workdir: Path, keep: frozenset[str] = frozenset()) -> None:
    assert not (workdir / "outputs").exists(), "nothing may be created"
    assert not (workdir / ".state").exists(), "no run may be recorded"
    assert not (workdir / "mlflow.db").exists()
    assert sorted(p.name for p in workdir.iterdir() if p.name not in keep) == []


def _symlink_loop(d: Path) -> None:
    d.symlink_to(d.with_name("other"))
    d.with_name("other").symlink_to(d)


def _truncated_job_json(d: Path) -> None:
    d.mkdir()
    (d / "job.json").write_text('{"name": "digits", "state": "COMPL')
    (d / "config.yaml").write_text("job: {name: digits}\n")


def _config_is_a_list(d: Path) -> None:
    d.mkdir()
    (d / "job.json").write_text(
        json.dumps({"name": "digits", "config_file": str(d / "config.yaml")})
    )
    (d / "config.yaml").write_text("- job\n- resources\n")


BROKEN_RUNS = {
    "symlink loop": _symlink_loop,
    "truncated job.json": _truncated_job_json,
    "config.yaml a list": _config_is_a_list,
}


@pytest.mark.parametrize("how", ["resume", "run_dir"])
@pytest.mark.parametrize("broken", list(BROKEN_RUNS))
def test_broken_run_directory_is_named(how: str, broken: str, workdir: Path) -> None:
    base = workdir / "broken"
    base.mkdir()
    target = base / "run"
    BROKEN_RUNS[broken](target)
    before = sorted(str(p) for p in base.rglob("*"))
    proc = hpc_launch([f"{how}={target}"], workdir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"error: {how}:" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert_nothing_created(workdir, keep=frozenset({"broken"}))
    assert sorted(str(p) for p in base.rglob("*")) == before


def test_sync_on_a_config_that_is_a_list(workdir: Path) -> None:
    run = workdir / "run"
    _config_is_a_list(run)
    proc = hpc(["sync", str(run)], workdir, MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/m.db")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(run / "config.yaml") in lines[0], proc.stderr
    assert not (workdir / "m.db").exists()


HEADER = (
    "JobID|JobIDRaw|User|Account|Partition|State|Submit|Start|End|Elapsed|NNodes|AllocCPUS"
    "|AllocTRES"
)
T0, T1 = "2026-01-01T00:00:00", "2026-01-01T01:00:00"
HUGE = "123456789012345678901234"


def _sacct(cpus: str, tres: str) -> str:
    return f"{HEADER}\n7|7|bob|acc|gpu|COMPLETED|{T0}|{T0}|{T1}|01:00:00|1|{cpus}|{tres}\n"


SACCT_FILES = {
    "24-digit gres/gpu": (_sacct("4", f"cpu=4,gres/gpu={HUGE},node=1"), ":2: alloctres:"),
    "24-digit cpu count": (_sacct(HUGE, "cpu=4,node=1"), ":2: alloccpus:"),
    "empty": ("", ": empty"),
    "blank lines only": ("\n\n", ": empty"),
    "header cut off": ("JobID|JobIDRaw|Us", ":1: the header line is cut off"),
}


@pytest.mark.parametrize("case", list(SACCT_FILES))
def test_bad_sacct_file_is_named(case: str, workdir: Path) -> None:
    text, expected = SACCT_FILES[case]
    path = workdir / "sacct.txt"
    path.write_text(text)
    proc = hpc(["cost", "report", "--sacct", str(path)], workdir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}{expected}" in lines[0], proc.stderr
    assert proc.stdout == ""


def test_unknown_option(workdir: Path) -> None:
    proc = hpc_launch(["--bogus"], workdir)
    assert proc.returncode == 2 and "--bogus" in proc.stderr
