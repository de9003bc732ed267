"""The batch shell's reading of the pre-flight step (:mod:`hpc.runtime.preflight`).

``python -m hpc.launchers.slurm.preflight RUN_DIR OUTPUT_FILE STEP_RC TIMEOUT_S`` reads
what the one-task-per-node step printed, names every node that failed or did not
answer within ``TIMEOUT_S``, records them in job.json (``extra.preflight``, and the
run's exclusion list ``extra.excluded_nodes``, which a resume or a node-loss
resubmission passes to ``--exclude``), and exits 0 when every node passed, else 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hpc.exitcodes import PREFLIGHT_FAILED
from hpc.hostlist import expand
from hpc.rundir import records
from hpc.runtime.preflight import FAILED_PREFIX, OK_PREFIX
from hpc.states import JobState

EXCLUDED = "excluded_nodes"


def read_results(text: str) -> tuple[set[str], dict[str, str]]:
    """(nodes that passed, failure detail by node) from the step's output."""
    passed: set[str] = set()
    failed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith(OK_PREFIX):
            passed.add(line.removeprefix(OK_PREFIX).strip())
        elif line.startswith(FAILED_PREFIX):
            node, _, detail = line.removeprefix(FAILED_PREFIX).partition(": ")
            failed[node.strip()] = detail.strip()
    return passed, failed


def verdict(nodes: list[str], text: str, step_rc: int, timeout_s: float) -> dict[str, str]:
    """Failure detail by node; empty when every node passed."""
    passed, failed = read_results(text)
    silent = f"no answer within {timeout_s:g}s (fault.preflight_timeout_s)"
    if step_rc != 124:
        silent = f"no answer (the pre-flight step exited {step_rc})"
    for node in nodes:
        if node not in passed and node not in failed:
            failed[node] = silent
    return failed


def excluded_after(record: dict[str, Any], nodes: list[str]) -> list[str]:
    """The run's exclusion list with ``nodes`` added."""
    before = (record.get("extra") or {}).get(EXCLUDED) or []
    return sorted({*map(str, before), *nodes})


def decide(run_dir: Path, output: Path, step_rc: int, timeout_s: float) -> bool:
    nodes = expand(os.environ.get("SLURM_JOB_NODELIST", "")) or []
    try:
        text = output.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    failed = verdict(nodes, text, step_rc, timeout_s)
    if not failed:
        return True
    summary = "; ".join(f"{node}: {detail}" for node, detail in sorted(failed.items()))
    message = f"pre-flight check failed on {','.join(sorted(failed))} ({summary})"
    print(f"hpc-launch: {message}", flush=True)
    try:
        record = records.load(run_dir)
        records.update(
            run_dir,
            state=JobState.FAILED_PREFLIGHT,
            exit_code=PREFLIGHT_FAILED,
            message=message,
            extra={"preflight": failed, EXCLUDED: excluded_after(record, list(failed))},
        )
    except (OSError, ValueError) as exc:  # an unwritable run dir is one such failure
        print(f"hpc-launch: could not record the pre-flight result: {exc}", file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        print(
            "usage: python -m hpc.launchers.slurm.preflight RUN_DIR OUTPUT STEP_RC TIMEOUT_S",
            file=sys.stderr,
        )
        return 2
    ok = decide(Path(args[0]), Path(args[1]), int(args[2]), float(args[3]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
