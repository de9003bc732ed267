"""The Hydra launcher plugin: an unmodified third-party Hydra app sweeps through hpc-launch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_helpers import require_cluster, wait_for_job
from support import cli_env

APP = """\
import json, os, sys

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base=None, config_path=None)
def main(cfg):
    hc = HydraConfig.get()
    if cfg.get("fail_on") is not None and cfg.x == cfg.fail_on:
        sys.exit(3)
    with open(os.path.join(hc.runtime.output_dir, "result.json"), "w") as fh:
        json.dump(
            {
                "x": cfg.x,
                "cwd": os.getcwd(),
                "argv0": sys.argv[0],
                "python": sys.executable,
                "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
                "job_num": hc.job.num,
                "job_id": hc.job.id,
                "mode": str(hc.mode),
            },
            fh,
        )


if __name__ == "__main__":
    main()
"""


def run_app(
    app_dir: Path, args: list[str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "app.py", "-m", *args],
        cwd=app_dir,
        env=cli_env(app_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def sweep_dir_of(app_dir: Path) -> Path:
    (found,) = list(app_dir.glob("multirun/*/*/sweep.json"))
    return found.parent


@pytest.mark.slurm
def test_hydra_app_sweeps_as_one_slurm_array(app_dir: Path) -> None:
    require_cluster()
    start = time.monotonic()
    proc = run_app(app_dir, ["hydra/launcher=hpc_slurm", "+x=1,2,3"])
    returned_after = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert returned_after < 30, f"the launcher blocked for {returned_after:.0f}s"
    sweep_dir = sweep_dir_of(app_dir)
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    (array,) = sweep["arrays"]
    array_id = array["array_id"]
    assert f"queued as Slurm array {array_id}" in proc.stdout + proc.stderr
    assert [t["array_id"] for t in sweep["tasks"]] == [array_id] * 3
    assert [t["overrides"] for t in sweep["tasks"]] == [["+x=1"], ["+x=2"], ["+x=3"]]
    for index in range(3):
        assert wait_for_job(f"{array_id}_{index}", timeout=180) == "COMPLETED"
    for index, x in enumerate((1, 2, 3)):
        result = json.loads((sweep_dir / str(index) / "result.json").read_text())
        assert result["x"] == x and result["array_task"] == str(index)
        assert result["cwd"] == str(app_dir) and result["python"] == sys.executable
        assert result["argv0"] == str(app_dir / "app.py")
        assert result["job_num"] == index and result["job_id"] == f"{array_id}_{index}"
        assert result["mode"] == "RunMode.RUN"
        assert (sweep_dir / str(index) / ".hydra" / "overrides.yaml").exists()
    assert (sweep_dir / "multirun.yaml").exists()
    status = subprocess.run(
        [sys.executable, "-m", "hpc.cli.main", "status", str(sweep_dir)],
        cwd=app_dir,
        env=cli_env(app_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert "3/3 done" in status.stdout and f"{array_id}_2" in status.stdout


def test_hydra_app_local_returns_at_once_and_waits_when_asked(app_dir: Path) -> None:
    proc = run_app(app_dir, ["hydra/launcher=hpc_local", "+x=1,2"])
    assert proc.returncode == 0, proc.stderr
    sweep_dir = sweep_dir_of(app_dir)
    deadline = time.monotonic() + 120
    results = [sweep_dir / str(i) / "result.json" for i in range(2)]
    while not all(p.exists() for p in results) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [json.loads(p.read_text())["x"] for p in results] == [1, 2]
    assert json.loads(results[1].read_text())["job_id"] == "local_1"

    # wait=true: blocks, and a failing point fails the multirun with its overrides named.
    for path in app_dir.glob("multirun"):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    proc = run_app(
        app_dir, ["hydra/launcher=hpc_local", "hydra.launcher.wait=true", "+x=1,2", "+fail_on=2"]
    )
    assert proc.returncode != 0
    assert "task 1 (+x=2 +fail_on=2): FAILED (exit code 3)" in proc.stderr
    sweep_dir = sweep_dir_of(app_dir)
    assert json.loads((sweep_dir / "0" / "result.json").read_text())["x"] == 1
    assert not (sweep_dir / "1" / "result.json").exists()
    state = json.loads((sweep_dir / ".hpc_tasks" / "1.json").read_text())
    assert state["state"] == "FAILED" and state["exit_code"] == 3
