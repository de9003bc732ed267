"""The Slurm launcher on the real two-node test cluster (slurm/testcluster/up)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slurm_helpers import require_cluster, sacct_fields, wait_for_job
from support import cli_env, hpc, hpc_launch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _cluster() -> None:
    require_cluster(min_nodes=2)


def test_two_node_digits_run(workdir: Path) -> None:
    proc = hpc_launch(
        ["cluster=slurm", "resources.nodes=2", "resources.tasks_per_node=1", "wait=true"],
        workdir,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = next((workdir / "outputs" / "digits").iterdir())
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "COMPLETED" and record["launcher"] == "slurm"
    assert record["extra"]["accuracy"] >= 0.9
    log = Path(record["extra"]["log_file"]).read_text()
    assert "hpc-launch: rank 0/2 local_rank 0 node_rank 0 host n1 via slurm" in log
    assert "hpc-launch: rank 1/2 local_rank 0 node_rank 1 host n2 via slurm" in log
    assert "world size 2" in log
    acct = sacct_fields(record["job_id"], ["State", "NNodes", "NodeList"])
    assert acct["State"] == "COMPLETED" and acct["NNodes"] == "2"
    assert acct["NodeList"] == "n[1-2]"
    status = hpc(["status", "--json"], workdir)
    assert json.loads(status.stdout)[0]["state"] == "COMPLETED"
    logs = hpc(["logs", record["job_id"]], workdir)
    assert logs.returncode == 0 and "final accuracy" in logs.stdout


def test_sweep_is_one_array_with_child_runs(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    start = time.monotonic()
    proc = hpc_launch(
        [
            "-m",
            "cluster=slurm",
            "job.lr=0.02,0.05,0.1",
            "job.hidden=16,32,48,64",
            "job.epochs=1",
            "resources.tasks_per_node=1",
        ],
        workdir,
    )
    returned_after = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    array_id = proc.stdout.strip()
    assert array_id.isdigit(), "one array id expected"
    queued = subprocess.run(
        ["squeue", "-h", "-r", "-j", array_id, "-o", "%i"], capture_output=True, text=True
    ).stdout.split()
    assert len(queued) >= 6, f"returned only after the tasks ran ({returned_after:.1f}s)"
    sweep_file = next((workdir / "outputs" / "digits").glob("sweep-*/sweep.json"))
    sweep = json.loads(sweep_file.read_text())
    assert len(sweep["tasks"]) == 12 and sweep["arrays"][0]["array_id"] == array_id
    assert {t["array_id"] for t in sweep["tasks"]} == {array_id}
    assert sorted(t["array_index"] for t in sweep["tasks"]) == list(range(12))
    for index in range(12):
        assert wait_for_job(f"{array_id}_{index}", timeout=600) == "COMPLETED"
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    parent = json.loads((sweep_file.parent / "mlflow_parent.json").read_text())["run_id"]
    exp = client.get_experiment_by_name("hpc-launch")
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert len({c.info.run_id for c in children}) == 12
    combos = {(c.data.params["job.lr"], c.data.params["job.hidden"]) for c in children}
    assert len(combos) == 12
    task0 = json.loads((Path(sweep["tasks"][0]["run_dir"]) / "job.json").read_text())
    assert task0["job_id"] == f"{array_id}_0" and task0["state"] == "COMPLETED"


def slurm_state(job_id: str) -> str:
    """The controller's view of the job ('' once it has left the queue)."""
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
    ).stdout
    return out.strip()


@pytest.mark.parametrize("when", ["at_start", "in_step"])
def test_cancel_is_not_taken_for_a_preemption(workdir: Path, when: str) -> None:
    """scancel sends the SIGTERM a preemption sends too: the job must not requeue itself.

    ``at_start`` cancels as soon as the job runs (before or during the pre-flight step,
    where a stop skips the step); ``in_step`` while the rank runs (it checkpoints and
    exits as for a preemption)."""
    script = workdir / "sleepy.py"
    script.write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n")
    proc = hpc_launch(
        [
            "cluster=slurm",
            f"job.entrypoint={script}",
            "tracking.enabled=false",
            "resources.tasks_per_node=1",
        ],
        workdir,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = next((workdir / "outputs" / "digits").iterdir())
    record = json.loads((run_dir / "job.json").read_text())
    job_id, log = record["job_id"], Path(record["extra"]["log_file"])
    deadline = time.monotonic() + 60
    while not (
        slurm_state(job_id) == "RUNNING"
        if when == "at_start"
        else (log.exists() and "sleeping" in log.read_text())
    ):
        assert time.monotonic() < deadline, f"job {job_id} did not get to {when}"
        time.sleep(0.2)
    cancelled = hpc(["cancel", job_id], workdir)
    assert cancelled.returncode == 0, cancelled.stderr
    assert wait_for_job(job_id, timeout=120) == "CANCELLED"
    deadline = time.monotonic() + 60  # the batch shell handles the SIGTERM, then ends
    while (state := slurm_state(job_id)) and state != "PENDING":
        assert time.monotonic() < deadline, f"job {job_id} still {state}"
        time.sleep(0.5)
    log_text = log.read_text() if log.exists() else ""
    attempts = subprocess.run(
        ["sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-o", "State"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if state == "PENDING":  # requeued: do not leave it for the next test
        subprocess.run(["scancel", job_id])
    assert state == "" and attempts[0] == "CANCELLED", (state, attempts, log_text)
    assert "REQUEUED" not in attempts, (attempts, log_text)
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] not in ("REQUEUED", "FAILED_PREFLIGHT"), (record, log_text)
    # A stop during the pre-flight step blames no node.
    assert not record["extra"].get("excluded_nodes"), (record, log_text)


def test_sbatch_rejection_is_shown(workdir: Path) -> None:
    proc = hpc_launch(["cluster=slurm", "resources.partition=nosuchpartition"], workdir)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid partition specified: nosuchpartition" in lines[0]


def test_controller_restart_during_submission(workdir: Path) -> None:
    """slurmctld goes away mid-submission and comes back: one job, no duplicate."""
    name = f"restart{int(time.time())}"
    up = Path(__file__).resolve().parents[1] / "slurm" / "testcluster" / "up"
    subprocess.run(["pkill", "-x", "slurmctld"], check=True)
    result: dict[str, subprocess.CompletedProcess[str]] = {}

    def submit() -> None:
        result["proc"] = hpc_launch(
            [
                "cluster=slurm",
                f"job.name={name}",
                "job.epochs=1",
                "resources.tasks_per_node=1",
                "cluster.submit_retries=8",
            ],
            workdir,
            timeout=300,
        )

    started = time.monotonic()
    thread = threading.Thread(target=submit)
    thread.start()
    time.sleep(4)  # the submission is now waiting on the missing controller
    subprocess.run([str(up)], check=True, capture_output=True, timeout=300)
    thread.join(timeout=300)
    proc = result["proc"]
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started > 4, "the submission did not span the outage"
    assert_one_job(name)


def assert_one_job(name: str) -> None:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--name", name, "-o", "JobID", "-S", "now-1hours"],
        capture_output=True,
        text=True,
    ).stdout.split()
    queued = subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True
    ).stdout.split()
    assert len(set(out) | set(queued)) == 1, f"expected one job, got {out} {queued}"


def test_lost_sbatch_answer_is_not_resubmitted(workdir: Path) -> None:
    """sbatch submits but its answer is lost (socket timeout): the retry finds the job."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True).stdout.strip()
    bindir = workdir / "bin"
    bindir.mkdir()
    calls = workdir / "calls"
    (bindir / "sbatch").write_text(
        "#!/bin/sh\n"
        f"n=$(cat {calls} 2>/dev/null || echo 0); echo $((n + 1)) > {calls}\n"
        'if [ "$n" = 0 ]; then\n'
        f'  {real} "$@" >/dev/null\n'
        '  echo "sbatch: error: Socket timed out on send/recv operation" >&2; exit 1\n'
        "fi\n"
        f'exec {real} "$@"\n'
    )
    (bindir / "sbatch").chmod(0o755)
    name = f"lost{int(time.time())}"
    import os

    proc = hpc_launch(
        ["cluster=slurm", f"job.name={name}", "job.epochs=1", "resources.tasks_per_node=1"],
        workdir,
        PATH=f"{bindir}:{os.environ['PATH']}",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Socket timed out" in proc.stderr and "retrying" in proc.stderr
    assert calls.read_text().strip() == "1", "sbatch must not be called again"
    assert_one_job(name)


def test_hpc_sbatch_wraps_plain_script(workdir: Path) -> None:
    script = workdir / "plain.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --job-name=plain\n"
        'printf "arg:%s\\n" "$@"\nsrun hostname\necho "nodes=$SLURM_NNODES master=$MASTER_ADDR"\n'
    )
    payload = f"$(touch {workdir}/pwned); `touch {workdir}/pwned2`"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpc.cli.sbatch",
            "--parsable",
            "-o",
            f"{workdir}/out-%j.txt",
            str(script),
            "two words",
            payload,
        ],
        cwd=workdir,
        env=cli_env(workdir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert wait_for_job(job_id, timeout=120) == "COMPLETED"
    out = (workdir / f"out-{job_id}.txt").read_text()
    assert "arg:two words\n" in out and f"arg:{payload}\n" in out
    assert "nodes=2 master=n1" in out
    assert not (workdir / "pwned").exists() and not (workdir / "pwned2").exists()


def test_sweep_larger_than_max_array_size_is_split(workdir: Path) -> None:
    max_size = int(
        subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
        .stdout.split("MaxArraySize")[1]
        .split("=")[1]
        .split()[0]
    )
    points = max_size + 1
    proc = hpc_launch(
        [
            "-m",
            "cluster=slurm",
            "job.name=bigsweep",
            f"job.lr=range(1,{points + 1})",
            "tracking.enabled=false",
        ],
        workdir,
        timeout=300,
    )
    try:
        assert proc.returncode == 0, proc.stderr
        sweep = json.loads(
            next((workdir / "outputs").glob("bigsweep/sweep-*/sweep.json")).read_text()
        )
        assert [a["count"] for a in sweep["arrays"]] == [max_size, 1]
        assert [a["offset"] for a in sweep["arrays"]] == [0, max_size]
        last = sweep["tasks"][-1]
        assert last["array_id"] == sweep["arrays"][1]["array_id"] and last["array_index"] == 0
    finally:
        subprocess.run(["scancel", "-n", "bigsweep"], check=False)
