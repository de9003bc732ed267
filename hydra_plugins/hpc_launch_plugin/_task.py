"""Run sweep points of a Hydra app (named ``_task``: Hydra's plugin scan skips it).

``python -m hydra_plugins.hpc_launch_plugin._task SWEEP_DIR INDEX``
    one point (a Slurm array task: INDEX is offset + ``SLURM_ARRAY_TASK_ID``);
``python -m hydra_plugins.hpc_launch_plugin._task SWEEP_DIR --local 0,1,2 [--parallel N]``
    the listed points on this machine, N at a time (``hpc_local``).

A point re-runs the app as a normal Hydra run: ``PYTHON APP ARGS OVERRIDES
hydra.run.dir=... hydra.job.num=I hydra.mode=RUN hydra.job.id=...`` in the
working directory of the sweep. Its state goes to ``SWEEP_DIR/.hpc_tasks/I.json``.
SIGTERM/SIGINT/SIGUSR1/SIGUSR2 are passed on to the app.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hpc.exitcodes import shell_code
from hpc.files import write_atomic

SWEEP_FILE = "sweep.json"
STATUS_DIR = ".hpc_tasks"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def _write_status(sweep_dir: Path, index: int, **fields: Any) -> None:
    if os.environ.get("SLURM_PROCID", "0") != "0":
        return  # one record per point, from the first rank
    path = sweep_dir / STATUS_DIR / f"{index}.json"
    path.parent.mkdir(exist_ok=True)
    write_atomic(path, json.dumps({"index": index, "time": time.time(), **fields}) + "\n")


def command(record: dict[str, Any], task: dict[str, Any], job_id: str) -> list[str]:
    return [
        record["python"],
        *record["app"],
        *record["args"],
        *task["overrides"],
        *task["hydra"],
        f"hydra.job.id='{job_id}'",  # quoted: 12_3 would read as the number 123
    ]


def run_point(sweep_dir: Path, index: int, job_id: str | None = None) -> int:
    record = json.loads((sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))
    task = next(t for t in record["tasks"] if int(t["index"]) == index)
    if job_id is None:
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = (
            f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
            if array
            else os.environ.get("SLURM_JOB_ID", f"local_{index}")
        )
    _write_status(sweep_dir, index, state="RUNNING", job_id=job_id, host=os.uname().nodename)
    proc = subprocess.Popen(command(record, task, job_id), cwd=record["cwd"])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    if threading.current_thread() is threading.main_thread():  # handlers live there only
        for sig in FORWARDED:
            signal.signal(sig, forward)
    code = shell_code(proc.wait())
    _write_status(
        sweep_dir,
        index,
        state="COMPLETED" if code == 0 else "FAILED",
        exit_code=code,
        job_id=job_id,
    )
    print(f"hpc-launch: hydra sweep point {index} exited with code {code}", flush=True)
    return code


def run_local(sweep_dir: Path, indices: list[int], parallel: int) -> int:
    for index in indices:
        _write_status(sweep_dir, index, state="PENDING", job_id=f"local_{index}")
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        codes = list(pool.map(lambda i: run_point(sweep_dir, i, f"local_{i}"), indices))
    return next((c for c in codes if c), 0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        sweep_dir = Path(args[0])
        if len(args) >= 3 and args[1] == "--local":
            parallel = int(args[4]) if len(args) >= 5 and args[3] == "--parallel" else 1
            return run_local(sweep_dir, [int(i) for i in args[2].split(",")], parallel)
        return run_point(sweep_dir, int(args[1]))
    except (IndexError, ValueError, StopIteration, OSError) as exc:
        print(
            "usage: python -m hydra_plugins.hpc_launch_plugin._task SWEEP_DIR INDEX|--local I,J "
            f"[--parallel N] ({exc!r})",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
