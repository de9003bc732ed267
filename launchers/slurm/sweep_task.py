"""The start of one sweep task: ``python -m hpc.launchers.slurm.sweep_task SWEEP_DIR INDEX``.

Composes the task's config from sweep.json (base overrides + the task's own),
writes its config.yaml and job.json into ``SWEEP_DIR/INDEX``. The batch script
then starts the workers on that config. On a requeue the existing record is kept.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hpc.credentials import ENV_FILE, write_env_file
from hpc.exitcodes import BUDGET_REFUSED
from hpc.files import write_atomic
from hpc.launchers.slurm.job_steps import slurm_job_id
from hpc.rundir import records
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import load_spec
from hpc.spec.sources import ConfigSource
from hpc.sweeps.plan import SWEEP_FILE, read_secret_overrides


def prepare(sweep_dir: Path, index: int) -> Path:
    sweep = json.loads((sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))
    task = sweep["tasks"][index]
    run_dir = Path(task["run_dir"])
    secret = read_secret_overrides(sweep_dir, index)
    source = ConfigSource.from_record(sweep.get("config_source"))
    overrides = [*sweep["base_overrides"], *task["overrides"], *secret, f"run_dir={run_dir}"]
    spec = load_spec(overrides, source=source)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    if spec.secrets:  # the batch script sources it before starting the workers
        write_env_file(run_dir / ENV_FILE, spec.secrets)
    write_atomic(spec.config_file, spec.config_yaml())
    job_id = slurm_job_id(os.environ)
    extra = {
        "sweep_dir": str(sweep_dir),
        "sweep_index": index,
        "overrides": task["overrides"],
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    if records.record_path(run_dir).exists():
        records.update(run_dir, job_id=job_id, state="RUNNING", extra=extra)
    else:
        records.create(
            records.RunRecord.for_spec(
                spec, spec.launcher, job_id=job_id, state="RUNNING", extra=extra
            )
        )
    return run_dir


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m hpc.launchers.slurm.sweep_task SWEEP_DIR INDEX", file=sys.stderr)
        return 2
    try:
        run_dir = prepare(Path(args[0]), int(args[1]))
    except (ConfigError, FileNotFoundError, IndexError, KeyError, ValueError) as exc:
        print(f"hpc-launch: sweep task {args[1]}: error: {exc}", file=sys.stderr)
        return 2
    return budget_cap(Path(args[0]), run_dir, args[1])


def budget_cap(sweep_dir: Path, run_dir: Path, index: str) -> int:
    """A spent ``hold: true`` budget holds the sweep (hpc.cost.cap): exit BUDGET_REFUSED."""
    from hpc.cost import cap  # noqa: PLC0415 (lazy: budgets only where a file exists)
    from hpc.cost.model import CostInputError  # noqa: PLC0415

    try:
        hold = cap.reached(records.read_run_config(run_dir / "config.yaml"))
    except CostInputError as exc:  # a bad budgets file must not stop the sweep
        print(f"hpc-launch: sweep task {index}: warning: budgets: {exc}", file=sys.stderr)
        return 0
    if hold is None:
        return 0
    print(f"hpc-launch: sweep task {index}: {hold.line()}; holding the sweep", flush=True)
    for problem in cap.hold_sweep(sweep_dir, hold, os.environ.get("SLURM_JOB_ID")):
        print(f"hpc-launch: sweep task {index}: warning: {problem}", file=sys.stderr)
    records.update(run_dir, state="PENDING", message=hold.line())
    return BUDGET_REFUSED


if __name__ == "__main__":
    sys.exit(main())
