"""Each helper exists once: free_port, the atomic write, building a RunRecord, the
restarts-without-progress rule and the local GPU check, and each does its one job."""

from __future__ import annotations

import ast
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from hpc.credentials import write_private
from hpc.files import write_atomic
from hpc.rundir import records
from hpc.runtime.preemption import restarts_without_progress
from hpc.spec.jobspec import load_spec

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["hpc", "launchers", "hydra_plugins", "jobs"]
HELPERS = [
    "free_port",
    "write_atomic",
    "restarts_without_progress",
    "local_gpu_count",
    "check_local_gpus",
]


def modules() -> dict[str, ast.Module]:
    """Every source module, by its path in the repository (symlinked folders once)."""
    found: dict[str, ast.Module] = {}
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if any(part in ("launchers", "jobs", "configs") for part in path.parts[-3:-1]) and (
                path.relative_to(ROOT).parts[0] == "hpc"
            ):
                continue  # hpc/launchers, hpc/jobs: symlinks to the top-level folders
            found[str(path.relative_to(ROOT))] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def called_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else "?"
        return f"{owner}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else None


@pytest.mark.parametrize("helper", HELPERS)
def test_each_helper_is_defined_once(helper: str) -> None:
    where = [
        path
        for path, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == helper
    ]
    assert len(where) == 1, f"{helper} defined in {where}"


def test_run_records_are_built_in_one_place() -> None:
    calls = [
        path
        for path, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and called_name(node) in ("RunRecord", "records.RunRecord")
        and path != "hpc/rundir/records.py"
    ]
    assert calls == []


def test_files_are_replaced_only_by_the_atomic_writer() -> None:
    """``os.replace`` of a file happens in hpc/files.py; checkpoints rename directories."""
    calls = sorted(
        path
        for path, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and called_name(node) == "os.replace"
    )
    assert set(calls) <= {"hpc/files.py", "hpc/runtime/checkpoint.py"}, calls


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_with_a_mode_ignores_the_umask_and_leaves_no_temp(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        plain, private = tmp_path / "plain.txt", tmp_path / "secrets.env"
        private.write_text("old")
        private.chmod(0o644)  # an existing world-readable file
        write_atomic(plain, "a")
        write_private(private, "export A='b'\n")
    finally:
        os.umask(old)
    assert mode(plain) == 0o666  # umask 0: the default mode
    assert mode(private) == 0o600 and private.read_text() == "export A='b'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "secrets.env"]
    write_atomic(plain, b"\xffbytes")
    assert plain.read_bytes() == b"\xffbytes"


def test_restarts_without_progress_rule() -> None:
    limit = {"max_restarts_without_progress": 2}
    idle, steps, stops = 0, [3, 3, 3, 5, 5, 5, 5], []
    last = -1
    for step in steps:
        idle, stop = restarts_without_progress(idle, step, last, limit)
        last = step
        stops.append((idle, stop))
    assert [idle for idle, _ in stops] == [0, 1, 2, 0, 1, 2, 3]
    assert [stop for _, stop in stops] == [False] * 6 + [True]
    assert restarts_without_progress(3, 7, 7, {}) == (4, True)  # default limit 3
    assert restarts_without_progress(0, 7, 7, {}) == (1, False)


def test_a_run_record_for_a_spec_redacts_its_tracking_uri(tmp_path: Path) -> None:
    spec = load_spec([f"run_dir={tmp_path}/run", "tracking.uri=http://mlflow.example:5000"])
    spec = replace(spec, tracking_uri="http://alice:s3cret@mlflow.example:5000")  # a password
    rec = records.RunRecord.for_spec(spec, "local", job_id="j1", state="RUNNING", extra={"a": 1})
    assert rec.tracking_uri == "http://alice:***@mlflow.example:5000"
    assert (rec.run_dir, rec.config_file) == (str(spec.run_dir), str(spec.config_file))
    assert (rec.checkpoint_dir, rec.launcher) == (str(spec.checkpoint_dir), "local")
    assert (rec.job_id, rec.state) == ("j1", "RUNNING")
    assert rec.extra == {"project": "hpc-launch", "a": 1}  # tracking.experiment: budgets
