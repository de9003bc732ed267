"""Shared test helpers: run the real CLIs in a scratch directory (imported by tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"


def cli_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["HPC_STATE_DIR"] = str(workdir / ".state")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(
    module: str, args: list[str], cwd: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> args`` as users run the console script."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(cwd, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def hpc_launch(args: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return run_cli("hpc.cli.launch", args, cwd, **kw)  # type: ignore[arg-type]


def hpc(args: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return run_cli("hpc.cli.main", args, cwd, **kw)  # type: ignore[arg-type]


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"golden file {path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"output differs from {path} (UPDATE_GOLDEN=1 to accept)"
