"""``hpc cost report --live`` against the Slurm test cluster (slurm/testcluster/up).

Skipped with the reason when no cluster answers; HPC_TEST_SLURM=1 makes that a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hpc.cost.cli import main
from hpc.cost.sacct.reader import LIVE_FIELDS, live_command

from slurm_helpers import require_cluster, sbatch, wait_for_job


def test_live_command_shape() -> None:
    start = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    cmd = live_command(start, None)
    assert cmd[:6] == [
        "sacct",
        "--allusers",
        "--parsable2",
        "--noheader",
        "--allocations",
        "--duplicates",
    ]
    assert cmd[6:] == ["--format", LIVE_FIELDS, "-S", "2024-01-02T03:04:05"]
    assert "--allusers" not in live_command(None, start, all_users=False)
    assert live_command(None, start)[-4:] == [
        "-S",
        "1970-01-01T00:00:00",
        "-E",
        "2024-01-02T03:04:05",
    ]


def _sacct(job: int, fields: str) -> list[str]:
    res = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", str(job), "-o", fields],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},
        check=True,
        timeout=30,
    )
    return res.stdout.strip().splitlines()[0].split("|")


@pytest.mark.slurm
def test_live_report_sees_a_finished_gpu_job(capsys: pytest.CaptureFixture[str]) -> None:
    require_cluster()
    begin = datetime.now(UTC) - timedelta(minutes=5)
    job = sbatch(["-J", "hpc-cost-live", "-n", "1", "--gres=gpu:1", "--wrap", "sleep 3"])
    assert wait_for_job(job, timeout=300) == "COMPLETED"
    deadline = time.monotonic() + 60
    while True:  # slurmdbd may take a moment to record the end
        elapsed, tres, state = _sacct(job, "ElapsedRaw,AllocTRES,State")
        if state == "COMPLETED" or time.monotonic() > deadline:
            break
        time.sleep(1)
    gpus = int(dict(p.split("=", 1) for p in tres.split(","))["gres/gpu"])
    assert gpus == 1
    args = [
        "report",
        "--live",
        "--start",
        begin.strftime("%Y-%m-%dT%H:%M:%S"),
        "--format",
        "json",
        "--by",
        "job",
    ]
    for _ in range(5):  # the job's record may reach the time-range query a little later
        rc = main(args)
        out = capsys.readouterr()
        assert rc == 0, out.err
        rows = {r["key"]: r for r in json.loads(out.out)["rows"]}
        if str(job) in rows:
            break
        time.sleep(2)
    if str(job) not in rows:  # say what sacct returned
        cmd = live_command(begin.replace(microsecond=0), None)
        raw = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TZ": "UTC"})
        pytest.fail(
            f"job {job} not in the report; stderr: {out.err}\n{' '.join(cmd)}:\n"
            f"{raw.stdout[-3000:]}{raw.stderr[-500:]}"
        )
    assert rows[str(job)]["jobs"] == 1
    assert rows[str(job)]["gpu_hours"] == pytest.approx(gpus * int(elapsed) / 3600, abs=2e-6)


def test_live_retries_without_allusers_where_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in sacct that refuses --allusers: the report shows the caller's jobs, says so."""
    fake = tmp_path / "bin" / "sacct"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$TZ $*" >> "$(dirname "$0")/calls"\n'
        'case " $* " in *" --allusers "*) echo "sacct: error: Access denied" >&2; exit 1;; esac\n'
        "echo '77|77|me|acct|gpu|COMPLETED|2024-05-01T10:00:00|2024-05-01T10:00:00|"
        "2024-05-01T11:00:00|01:00:00|1|4|cpu=4,gres/gpu=2'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    rc = main(["report", "--live", "--start", "2024-05-01", "--format", "json", "--by", "job"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    doc = json.loads(out.out)
    assert doc["rows"][0]["key"] == "77" and doc["rows"][0]["gpu_hours"] == 2.0
    assert "--allusers refused (sacct: error: Access denied)" in out.err
    calls = (fake.parent / "calls").read_text().splitlines()
    assert len(calls) == 2 and all(c.startswith("UTC ") for c in calls)
    assert "--allusers" in calls[0] and "--allusers" not in calls[1]


def test_live_without_sacct_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["report", "--live"]) == 2
    assert capsys.readouterr().err == "hpc cost: error: --live: sacct not found on PATH\n"
