"""``hpc.runtime.node_ranks``: one task starts a node's ranks (OCI on Slurm 22.05).

Real processes: the ranks are small Python programs that print what they see, wait for a
signal or fail; the starter runs as it does in the container (``python -m``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc.runtime.node_ranks import rank_environments
from hpc.runtime.slurm_env import SlurmEnvironment

RANK = r"""
import json, os, signal, sys, time
mode, out = sys.argv[1], sys.argv[2]
keys = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS", "SLURM_GTIDS")
seen = {k: os.environ.get(k) for k in keys} | {"pid": os.getpid(), "pgid": os.getpgid(0)}
local = int(os.environ["SLURM_LOCALID"])
signal.signal(signal.SIGUSR2, lambda *_: sys.exit(75))
with open(f"{out}/rank{os.environ['SLURM_PROCID']}.json", "w") as fh:
    json.dump(seen, fh)
if mode == "fail" and local == 1:
    sys.exit(3)
if mode in ("fail", "wait"):
    time.sleep(60)
"""


def starter(tmp_path: Path, mode: str, per_node: int = 2, grace: float = 60) -> subprocess.Popen:
    env = os.environ | {"SLURM_NODEID": "1", "SLURM_STEP_NUM_NODES": "3", "SLURM_PROCID": "1"}
    env["SLURM_TASK_PID"] = "12345"
    command = [sys.executable, "-m", "hpc.runtime.node_ranks", str(per_node), f"--grace={grace}"]
    command += ["--", sys.executable, "-c", RANK, mode, str(tmp_path)]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def wait_for_ranks(tmp_path: Path, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("rank*.json"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # the files are written before the ranks wait
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]


def test_each_rank_gets_the_variables_srun_gives_a_task() -> None:
    node_task = {
        "SLURM_NODEID": "1",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NODELIST": "n[1-2]",
        "SLURM_JOB_ID": "7",
        "SLURM_TASK_PID": "99",
        "MASTER_ADDR": "n1",
    }
    envs = rank_environments(node_task, 2)
    infos = [SlurmEnvironment(env).rank_info() for env in envs]
    assert [(i.rank, i.local_rank, i.node_rank) for i in infos] == [(2, 0, 1), (3, 1, 1)]
    assert {(i.world_size, i.local_world_size, i.master_addr) for i in infos} == {(4, 2, "n1")}
    assert all("SLURM_TASK_PID" not in env and env["SLURM_GTIDS"] == "2,3" for env in envs)
    assert (
        rank_environments(node_task | {"SLURM_STEP_NUM_NODES": "1", "SLURM_NODEID": "0"}, 3)[2][
            "SLURM_STEP_TASKS_PER_NODE"
        ]
        == "3"
    )
    with pytest.raises(SystemExit, match="not in a Slurm step"):
        rank_environments({"SLURM_STEP_NUM_NODES": "2"}, 2)


def test_all_ranks_succeed(tmp_path: Path) -> None:
    proc = starter(tmp_path, "ok", per_node=3)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    seen = wait_for_ranks(tmp_path, 3)
    assert [s["SLURM_PROCID"] for s in seen] == ["3", "4", "5"]  # node 1 of 3, 3 per node
    assert {s["SLURM_STEP_NUM_TASKS"] for s in seen} == {"9"}
    assert all(s["pid"] == s["pgid"] for s in seen)  # each rank is its own process group


def test_a_stop_signal_reaches_every_rank_and_sets_the_exit_status(tmp_path: Path) -> None:
    proc = starter(tmp_path, "wait")
    wait_for_ranks(tmp_path, 2)
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=30) == 75  # both ranks took it (they would sleep 60 s)


def test_a_failing_rank_ends_the_others_after_the_grace(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = starter(tmp_path, "fail", grace=1)
    assert proc.wait(timeout=30) == 3  # the failing rank's status, not the killed one's
    assert time.monotonic() - t0 < 20  # the sibling would sleep 60 s
    err = proc.stderr.read() if proc.stderr else ""
    assert "local rank(s) 0 still running 1s after another failed: killed" in err


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    for args in (["2"], ["0", "--", "true"], ["x", "--", "true"]):
        proc = subprocess.run(
            [sys.executable, "-m", "hpc.runtime.node_ranks", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 2, (args, proc.stderr)
