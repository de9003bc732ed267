"""Dry runs print the plan alone and import nothing heavy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import check_golden, hpc_launch


def normalise(text: str, workdir: Path) -> str:
    return text.replace(sys.executable, "PYTHON").replace(str(workdir), "WORKDIR")


def test_local_plan_golden(workdir: Path) -> None:
    proc = hpc_launch(
        ["dry_run=true", f"run_dir={workdir}/run", "resources.tasks_per_node=3"], workdir
    )
    assert proc.returncode == 0, proc.stderr
    check_golden("local_plan.txt", normalise(proc.stdout, workdir))
    assert not (workdir / "run").exists(), "a dry run must not create the run directory"
    assert not (workdir / ".state").exists(), "a dry run must not record a run"


def test_cfg_prints_resolved_config(workdir: Path) -> None:
    proc = hpc_launch(["--cfg", "job.epochs=3", f"run_dir={workdir}/r"], workdir)
    assert proc.returncode == 0, proc.stderr
    assert "epochs: 3" in proc.stdout and f"run_dir: {workdir}/r" in proc.stdout


def test_dry_run_imports_nothing_heavy(workdir: Path) -> None:
    code = (
        "import sys, io, contextlib\n"
        "from hpc.cli.launch import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    rc = main(['dry_run=true'])\n"
        "assert rc == 0 and 'hpc.run' in buf.getvalue()\n"
        "heavy = [m for m in ('torch', 'mlflow', 'sklearn', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"heavy modules imported: {proc.stdout.strip()}"


def test_secret_in_tracking_uri_is_not_printed(workdir: Path) -> None:
    proc = hpc_launch(
        ["dry_run=true", "tracking.uri=https://alice:s3cret@mlflow.example/"], workdir
    )
    assert proc.returncode == 0, proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr
    # The URI without its userinfo; the credentials come from the run's secrets.env.
    assert "MLFLOW_TRACKING_URI=https://mlflow.example/" in proc.stdout
    assert "secrets.env (mode 0600) adds: MLFLOW_TRACKING_PASSWORD" in proc.stdout
