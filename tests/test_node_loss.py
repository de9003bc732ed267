"""The node-loss decision (hpc.launchers.slurm.nodeloss) with stand-ins for srun, sbatch
and scontrol: which nodes are lost, what the successor is submitted with, and when the
run ends NODE_LOST instead. The real fault is in test_node_loss_slurm.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpc.launchers.slurm import nodeloss, reason

# srun fails on the nodes in $LOST, hangs on those in $SILENT; sbatch and scontrol
# record their arguments (and sbatch a few variables of its environment).
SRUN = """#!/bin/bash
for a in "$@"; do case $a in --nodelist=*) node=${a#--nodelist=} ;; esac; done
case ",$LOST," in *",$node,"*)
  echo "srun: error: Task launch failed on node $node: Communication connection failure" >&2
  exit 1 ;; esac
case ",$SILENT," in *",$node,"*) exec sleep 30 ;; esac
exit 0
"""
SBATCH = """#!/bin/bash
echo "sbatch $* count=$HPC_RESUBMIT_COUNT job=${SLURM_JOB_ID:-none} conf=$SLURM_CONF" >>"$REC"
echo "4242;testcluster"
"""
SCONTROL = """#!/bin/bash
echo "scontrol $*" >>"$REC"
if [ "$1 $2" = "show job" ]; then
  echo "JobId=100 JobName=nl-unit JobState=PENDING Reason=BeginTime Restarts=1 Requeue=1"
fi
if [ "$1 $2" = "show node" ]; then
  for n in ${4//,/ }; do case $n in
    n1) echo "NodeName=n1 Arch=x86_64 CPUTot=2 State=IDLE ThreadsPerCore=1" ;;
    n2) echo "NodeName=n2 Arch=x86_64 CPUTot=2 State=DOWN+NOT_RESPONDING ThreadsPerCore=1" ;;
    n3) echo "NodeName=n3 Arch=x86_64 CPUTot=2 State=MIXED* ThreadsPerCore=1" ;;
    n4) echo "NodeName=n4 Arch=x86_64 CPUTot=2 State=ALLOCATED ThreadsPerCore=1" ;;
  esac; done
fi
"""


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("srun", SRUN), ("sbatch", SBATCH), ("scontrol", SCONTROL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{Path('/usr/bin')}:{Path('/bin')}")
    monkeypatch.setenv("REC", str(tmp_path / "calls"))
    monkeypatch.setenv("SLURM_JOB_ID", "100")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-2]")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    monkeypatch.setenv("HPC_RESTART_COUNT", "0")
    for name in ("LOST", "SILENT", "SLURM_ARRAY_JOB_ID", "HPC_SUCCESSOR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run_dir_with(root: Path, fault: dict[str, Any], mode: str = "requeue", **extra: Any) -> Path:
    run_dir = root / "run"
    (run_dir / "checkpoints" / "step-40").mkdir(parents=True)
    (run_dir / "checkpoints" / "LATEST").write_text("step-40\n")
    config = run_dir / "config.yaml"
    config.write_text(yaml.safe_dump({"fault": fault, "preemption": {"mode": mode}}))
    record = {
        "name": "nl-unit",
        "run_dir": str(run_dir),
        "config_file": str(config),
        "checkpoint_dir": str(run_dir / "checkpoints"),
        "job_id": "100",
        "state": "RUNNING",
        "extra": {"log_file": str(run_dir / "logs" / "slurm-100.out"), **extra},
    }
    (run_dir / "job.json").write_text(json.dumps(record))
    return run_dir


def calls(root: Path) -> list[str]:
    path = root / "calls"
    return path.read_text().splitlines() if path.exists() else []


def record(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "job.json").read_text()))


def test_a_lost_node_is_excluded_and_a_successor_resumes(
    cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = run_dir_with(cluster, {}, excluded_nodes=["n9"])
    monkeypatch.setenv("LOST", "n2")
    assert nodeloss.decide(run_dir, 5) == nodeloss.RESUBMITTED
    assert calls(cluster) == [
        f"sbatch --parsable --exclude=n2,n9 --dependency=afterany:100 {run_dir}/job.sbatch"
        " count=1 job=none conf=/etc/slurm/slurm.conf",
        "scontrol update JobId=100 Requeue=0",
    ]
    rec = record(run_dir)
    assert rec["state"] == "REQUEUED" and rec["job_id"] == "4242"
    assert rec["extra"]["excluded_nodes"] == ["n2", "n9"] and rec["extra"]["lost_nodes"] == ["n2"]
    assert rec["extra"]["node_resubmits"] == 1 and rec["extra"]["resubmitted_from"] == "100"
    assert rec["extra"]["last_interruption"] == "node_lost"
    assert rec["extra"]["log_file"].endswith("slurm-4242.out")
    assert "Communication connection failure" in rec["message"]
    assert "resuming from step 40" in rec["message"]


def test_a_silent_node_is_lost_after_the_probe_limit(
    cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SILENT", "n1")
    started = time.monotonic()
    lost = nodeloss.probe(["n1", "n2"], 1)
    assert time.monotonic() - started < 5
    assert lost == {"n1": "no task started within 1s"}


@pytest.mark.parametrize("lost", ["", "n1,n2"])
def test_no_node_or_every_node_failing_is_no_node_loss(
    lost: str, cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = run_dir_with(cluster, {})
    monkeypatch.setenv("LOST", lost)
    assert nodeloss.decide(run_dir, 5) == nodeloss.NOT_LOST
    assert calls(cluster) == [] and record(run_dir)["state"] == "RUNNING"


@pytest.mark.parametrize(
    ("fault", "extra", "array", "why"),
    [
        ({"node_resubmits": 1}, {"node_resubmits": 1}, False, "fault.node_resubmits=1 used"),
        ({"node_resubmits": 0}, {}, False, "fault.node_resubmits=0 used"),
        ({}, {}, True, "an array task"),
    ],
)
def test_without_a_resubmission_left_the_run_ends_node_lost(
    fault: dict[str, Any],
    extra: dict[str, Any],
    array: bool,
    why: str,
    cluster: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = run_dir_with(cluster, fault, **extra)
    monkeypatch.setenv("LOST", "n2")
    if array:
        monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "99")
    assert nodeloss.decide(run_dir, 5) == nodeloss.ENDED
    assert calls(cluster) == []
    rec = record(run_dir)
    assert rec["state"] == "NODE_LOST" and rec["job_id"] == "100"
    assert rec["extra"]["excluded_nodes"] == ["n2"]
    assert rec["message"].endswith(f"not resubmitted ({why})")


def test_resubmit_mode_tells_the_queued_successor(
    cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = run_dir_with(cluster, {}, mode="resubmit")
    monkeypatch.setenv("LOST", "n1")
    monkeypatch.setenv("HPC_SUCCESSOR", "555")
    assert nodeloss.decide(run_dir, 5) == nodeloss.RESUBMITTED
    assert calls(cluster) == ["scontrol update JobId=555 ExcNodeList=n1"]
    rec = record(run_dir)
    assert rec["state"] == "REQUEUED" and rec["job_id"] == "555"
    assert rec["extra"]["excluded_nodes"] == ["n1"]


def test_resubmit_mode_without_a_successor_ends_the_run(
    cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = run_dir_with(cluster, {}, mode="resubmit")
    monkeypatch.setenv("LOST", "n1")
    assert nodeloss.decide(run_dir, 5) == nodeloss.ENDED
    assert record(run_dir)["state"] == "NODE_LOST"


def test_nodes_slurm_reports_down_or_not_responding(cluster: Path) -> None:
    assert reason.nodes_down(["n1", "n2", "n3", "n4"]) == ["n2", "n3"]
    assert reason.nodes_down([]) == []


def test_a_requeue_by_slurm_with_a_node_down_is_a_node_failure(cluster: Path) -> None:
    # While Slurm requeues a job for a node failure, the job is pending (no NODE_FAIL).
    assert reason.requeued_by_slurm("100", 0, nodes=["n1", "n2"]) == "node_fail"
    assert reason.requeued_by_slurm("100", 0, nodes=["n1", "n4"]) == reason.MANUAL_REQUEUE
    assert reason.requeued_by_slurm("100", 1, nodes=["n1", "n2"]) is None  # not past this attempt
