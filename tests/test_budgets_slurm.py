"""Budgets on the real test cluster: a refused submit, a capped sweep, a skipped schedule."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from hpc.exitcodes import BUDGET_REFUSED

from slurm_helpers import require_cluster, wait_for_job
from support import hpc, hpc_launch

TINY = "import os\nprint('tiny task', os.environ.get('HPC_RUN_DIR'), flush=True)\n"
pytestmark = pytest.mark.slurm


def base(workdir: Path, name: str) -> list[str]:
    script = workdir / "tiny.py"
    script.write_text(TINY)
    return [
        "cluster=slurm",
        f"job.name={name}",
        f"job.entrypoint={script}",
        "tracking.enabled=false",
        "resources.tasks_per_node=1",
        "resources.time=00:05:00",
    ]


def write_budgets(workdir: Path, budgets: str, cpu_hour: float = 1.0) -> dict[str, str]:
    (workdir / "prices.yaml").write_text(f"currency: EUR\ncpu_hour: {cpu_hour}\n")
    (workdir / "budgets.yaml").write_text(f"version: 1\nprices: prices.yaml\nbudgets:\n{budgets}")
    return {"HPC_BUDGETS": str(workdir / "budgets.yaml")}


def queued(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%i|%T|%r"], capture_output=True, text=True
    ).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def test_refused_submit_names_the_budget(workdir: Path) -> None:
    require_cluster()
    name = f"bud-r{uuid.uuid4().hex[:6]}"
    env = write_budgets(workdir, "  - {name: lab-cap, money: 0.01, policy: refuse}\n")
    proc = hpc_launch(base(workdir, name), workdir, **env)
    assert proc.returncode == BUDGET_REFUSED, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line, nothing else
    assert line.startswith("hpc-launch: error: budget lab-cap (every job; month, ")
    assert "+ estimate 0.08 EUR > limit 0.01 EUR; nothing submitted" in line
    assert "consumed " in line
    assert queued(name) == []
    assert not (workdir / "outputs").exists()


def test_capped_sweep_holds_its_pending_tasks(workdir: Path) -> None:
    require_cluster()
    name = f"bud-c{uuid.uuid4().hex[:6]}"
    # 10 EUR per CPU-second: task 0's run alone spends the 5 EUR cap.
    env = write_budgets(
        workdir, f"  - {{name: cap, sweep: {name}, money: 5, period: total, hold: true}}\n", 36000
    )
    args = ["-m", *base(workdir, name), "cluster.array_parallelism=1", "job.seed=1,2,3"]
    proc = hpc_launch(args, workdir, **env)
    array_id = proc.stdout.strip()
    try:
        assert proc.returncode == 0 and array_id.isdigit(), proc.stderr
        assert "estimate for 3 tasks: at most 0 GPU-h, 0.25 CPU-h, 9000.00 EUR" in proc.stderr
        assert "budget cap (sweep=" in proc.stderr and "warning" in proc.stderr
        assert wait_for_job(f"{array_id}_0", timeout=60) == "COMPLETED"
        # Held at the next task's start (or the one after, when slurmdbd had not yet
        # recorded task 0 when task 1 looked): every task left is pending, held.
        deadline = time.monotonic() + 60
        jobs: list[str] = []
        while time.monotonic() < deadline:
            jobs = queued(name)
            if jobs and all("|PENDING|" in j and "held" in j.lower() for j in jobs):
                break
            time.sleep(1)
        assert jobs and all("|PENDING|" in j and "held" in j.lower() for j in jobs), jobs
        status = hpc(["status", array_id, "--json"], workdir, **env)
        data = json.loads(status.stdout)
        assert data["budget_hold"]["budget"] == "cap", status.stdout
        assert data["counts"]["done"] >= 1 and data["counts"]["done"] + len(jobs) == 3
        text = hpc(["status", array_id], workdir, **env).stdout
        assert "held: budget cap (sweep=" in text and "reached: consumed" in text
        assert f"scontrol release {array_id}" in text
    finally:
        if array_id.isdigit():
            subprocess.run(["scancel", array_id], check=False)


def test_schedule_skips_when_the_budget_is_spent(workdir: Path) -> None:
    require_cluster()
    name = f"bud-s{uuid.uuid4().hex[:6]}"
    env = write_budgets(workdir, "  - {name: spent, money: 0.0001, period: total}\n")
    args = [*base(workdir, name), "job.seed=1,2"]
    try:
        proc = hpc(
            ["sweep", "schedule", "--cron", "0 5 * * *", "--name", name,
             "--mechanism", "resubmit", "--", *args],
            workdir, **env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        first = proc.stdout.strip()
        subprocess.run(["scontrol", "update", f"JobId={first}", "StartTime=now"], check=True)
        deadline = time.monotonic() + 90
        entry: dict = {}
        while time.monotonic() < deadline:
            listing = hpc(["sweep", "list", "--json"], workdir, **env)
            entry = json.loads(listing.stdout)["schedules"][0]
            if entry["history"]:
                break
            time.sleep(1)
        (launch,) = entry["history"]
        assert launch["exit_code"] == BUDGET_REFUSED and "arrays" not in launch, launch
        assert launch["skipped"].startswith("budget spent (every job; total, "), launch
        assert queued(name) == []  # no sweep was submitted
        wait_for_job(first, timeout=60)
        table = hpc(["sweep", "list"], workdir, **env).stdout
        assert "skipped: budget spent" in table, table
        assert hpc(["sweep", "remove", name], workdir, **env).returncode == 0
    finally:
        subprocess.run(["scancel", "-n", f"hpc-sched-{name}"], check=False)
        subprocess.run(["scancel", "-n", name], check=False)
