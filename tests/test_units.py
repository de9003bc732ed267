"""Small pure pieces: time limits, rank environments, run records, params."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from hpc.rundir import records
from hpc.runtime.environment import (
    EnvironmentError_,
    SingleProcessEnvironment,
    TorchrunEnvironment,
)
from hpc.runtime.rank_discovery import from_env
from hpc.runtime.tracking import flatten
from hpc.spec.jobspec import redact_uri
from hpc.spec.rules import parse_time_limit


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("30:15", 1815),
        ("01:00:00", 3600),
        ("2-00", 172800),
        ("1-02:03", 93780),
        ("1-02:03:04", 93784),
        ("100:00:00", 360000),
    ],
)
def test_time_limits(text: str, seconds: int) -> None:
    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1:60", "1-24", "0", "00:00:00", "1:2:3:4", "-1"])
def test_bad_time_limits(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time_limit(text)


def test_torchrun_environment() -> None:
    env = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "29400",
    }
    found = from_env(env)
    assert isinstance(found, TorchrunEnvironment)
    info = found.rank_info()
    assert (info.rank, info.world_size, info.local_rank, info.node_rank) == (3, 4, 1, 1)
    assert (info.master_addr, info.master_port) == ("n1", 29400)


def test_environment_errors_and_fallback() -> None:
    bad = {"RANK": "5", "WORLD_SIZE": "4", "MASTER_ADDR": "x", "MASTER_PORT": "1"}
    with pytest.raises(EnvironmentError_, match="rank 5 outside world size 4"):
        from_env(bad).rank_info()
    with pytest.raises(EnvironmentError_, match="MASTER_PORT"):
        from_env({**bad, "RANK": "0", "MASTER_PORT": "x"}).rank_info()
    assert isinstance(from_env({}), SingleProcessEnvironment)


def test_record_updates_are_atomic_and_merged(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HPC_STATE_DIR", str(tmp_path / "state"))
    run = tmp_path / "run"
    records.create(
        records.RunRecord(
            name="x",
            launcher="local",
            run_dir=str(run),
            config_file="c",
            tracking_uri=None,
            checkpoint_dir="k",
        )
    )

    def bump(i: int) -> None:
        records.update(run, extra={f"k{i}": i})

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads((run / "job.json").read_text())
    assert data["extra"] == {f"k{i}": i for i in range(20)}  # no lost update
    assert [r["run_dir"] for r in records.recent_runs()] == [str(run)]


def test_flatten_drops_secrets() -> None:
    flat = flatten({"job": {"lr": 0.1}, "tracking": {"api_token": "x", "uri": "u"}})
    assert flat == {"job.lr": "0.1", "tracking.uri": "u"}


def test_redact_uri() -> None:
    assert redact_uri("https://u:p@h:5000/x") == "https://u:***@h:5000/x"
    assert redact_uri("sqlite:///a/b.db") == "sqlite:///a/b.db"
