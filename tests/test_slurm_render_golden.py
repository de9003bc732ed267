"""Golden text of the other Slurm routes through the one renderer (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import check_golden

FIXED = "/fixed"  # paths in the goldens


def test_hpc_sbatch_wrapper_golden() -> None:
    from hpc.cli import sbatch

    user = b"#!/bin/bash\n#SBATCH --time=00:05:00\nsrun hostname\n"
    text = sbatch.wrap(user, ["a b"], "job.sh").decode()
    start = text.index("HPC_SBATCH_ORIGINAL_")
    delimiter = text[start : start + len("HPC_SBATCH_ORIGINAL_") + 16]
    check_golden("hpc_sbatch_wrapper.sh", text.replace(delimiter, "HPC_SBATCH_ORIGINAL_X"))


def test_schedule_job_golden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hpc.slurm_schedules import resubmit
    from hpc.slurm_schedules.store import Schedule

    monkeypatch.setenv("HPC_STATE_DIR", str(tmp_path))
    schedule = Schedule(
        name="nightly",
        cron="0 3 * * *",
        zone="UTC",
        overrides=["job=digits", "lr=0.1,0.2"],
        multirun=True,
        workdir=FIXED,
        python="/usr/bin/python3",
        state_dir=str(tmp_path),
        mechanism="resubmit",
        sbatch={"time": "00:07:00"},
        id="s0",
    )
    text = resubmit.script_text(schedule).replace(str(tmp_path), f"{FIXED}/state")
    check_golden("schedule_resubmit.sbatch", text)
