"""The hang watchdog of a Slurm job: ``python -m hpc.launchers.slurm.watchdog RUN_DIR``.

The batch shell starts it in the background next to the step and stops it when the
step has exited. It runs on the batch node only: every rank's heartbeat is in the
run directory, which every node shares already (checkpoints live there), so no
process per node is needed; and signals reach the ranks on every node through
Slurm (``scancel --signal`` to the job's steps, never the batch shell), which also
reaches a stopped process (SIGCONT) where no remote ``kill`` could.

On a hang (:mod:`hpc.runtime.watchdog`) it has the stacks dumped and the hang
recorded, writes ``<run_dir>/HUNG`` for the batch shell, and kills the job's steps
(SIGKILL to each numbered step): srun returns, and the batch shell ends the job
FAILED_HANG (exit code 76) or requeues it (:func:`hpc.launchers.slurm.requeue.decide_hang`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpc.defaults import PREEMPTION_SIGNAL
from hpc.files import write_atomic
from hpc.rundir import records
from hpc.runtime import heartbeat
from hpc.runtime.preemption import signal_number
from hpc.runtime.watchdog import Watchdog, dump_and_record

HUNG_MARKER = "HUNG"
POLL_S = 1.0


def _scancel(job_id: str, signum: int, target: str | None = None) -> None:
    name = signal.Signals(signum).name.removeprefix("SIG")
    subprocess.run(
        ["scancel", f"--signal={name}", target or job_id],
        capture_output=True,
        timeout=30,
        check=False,
    )


def steps(job_id: str) -> list[str]:
    """The job's numbered steps (``123.0``), not ``batch`` or ``extern``."""
    out = subprocess.run(
        ["squeue", "-h", "-s", "-j", job_id, "-o", "%i"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout.split()
    return [s for s in out if s.rpartition(".")[2].isdigit()]


def watch(run_dir: Path, job_id: str) -> int:
    record = records.load(run_dir)
    cfg = records.read_run_config(record["config_file"])
    fault = cfg.get("fault") or {}
    if not fault.get("watchdog", True):
        return 0
    for name in {
        "USR1",
        "USR2",
        str((cfg.get("preemption") or {}).get("signal", PREEMPTION_SIGNAL)),
    }:
        signal.signal(signal_number(name), signal.SIG_IGN)  # the stop signals are the step's
    dog = Watchdog(run_dir, fault)
    while True:
        time.sleep(POLL_S)
        hang = dog.check()
        if dog.ended:
            return 0
        if hang is None:
            continue

        def send(signum: int, ranks: list[int]) -> None:
            _scancel(job_id, signum)  # every task of every step: the others ignore it

        message = dump_and_record(run_dir, hang, send)
        write_atomic(run_dir / HUNG_MARKER, message + "\n")
        print(f"hpc-launch: {message}", flush=True)
        for step in steps(job_id):
            _scancel(job_id, signal.SIGKILL, step)
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hpc.launchers.slurm.watchdog RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(args[0])
    (run_dir / HUNG_MARKER).unlink(missing_ok=True)
    heartbeat.clear(run_dir)  # before the step starts: this attempt's reports only
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return watch(run_dir, os.environ.get("SLURM_JOB_ID", ""))
    except (OSError, ValueError, KeyError) as exc:
        print(f"hpc-launch: hang watchdog stopped: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
