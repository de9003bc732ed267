"""A node lost while the job ran: find it, and go on without it.

``python -m hpc.launchers.slurm.nodeloss RUN_DIR PROBE_TIMEOUT_S`` runs in the batch
shell after a step that failed for no reason of its own (not a checkpointed stop, not
a hang, not the pre-flight check). It probes every node of the allocation with a tiny
step (``srun -w NODE true``), all at once, each bounded by ``PROBE_TIMEOUT_S`` (+2 s); a
node whose slurmd is gone or that cannot start a task does not pass. Then:

* no node lost: exit 1 (an ordinary failure; the batch shell goes on as before); so
  too when no node answers (the job is being ended, or the controller is away: a
  job's last node cannot be lost with the batch shell still running on it);
* lost nodes: they join the run's exclusion list (``extra.excluded_nodes``), and the
  run continues in a successor job that excludes them and starts once this one has
  ended (``--dependency=afterany``), resuming the run dir from its last durable
  checkpoint. In ``preemption.mode=resubmit`` the successor is already queued: it is
  told to exclude them (``scontrol update ExcNodeList``, which Slurm allows while it
  is pending). Exit 0.
* lost nodes and ``fault.node_resubmits`` used up (or an array task, whose requeue
  Slurm places itself): the run ends NODE_LOST (exit 3).

When Slurm itself noticed first (NODE_FAIL) and requeued the job, the next attempt
adds the previous attempt's unresponsive nodes to the list
(:func:`hpc.launchers.slurm.reason.nodes_down`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpc.hostlist import expand
from hpc.launchers.slurm.preflight import EXCLUDED, excluded_after
from hpc.launchers.slurm.requeue import hand_over, restart_count
from hpc.launchers.slurm.script import SCRIPT_NAME
from hpc.rundir import records
from hpc.runtime.checkpoint import latest_step
from hpc.states import JobState

NOT_LOST, RESUBMITTED, ENDED = 1, 0, 3


def probe(nodes: list[str], timeout_s: float) -> dict[str, str]:
    """Why each node that could not run a one-task step within ``timeout_s`` failed."""
    procs = {
        node: subprocess.Popen(
            [
                "timeout",
                "-k",
                "2",
                f"{timeout_s:g}",
                "srun",
                "--nodes=1",
                "--ntasks=1",
                f"--nodelist={node}",
                "--overlap",  # what the failed step may still hold on a node is no obstacle
                "--kill-on-bad-exit=0",
                "true",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in nodes
    }
    lost: dict[str, str] = {}
    for node, proc in procs.items():
        _, err = proc.communicate()
        if proc.returncode in (124, 137):  # ended by timeout: TERM, then KILL 2 s later
            lost[node] = f"no task started within {timeout_s:g}s"
        elif proc.returncode != 0:
            last = (err.strip().splitlines() or ["no message"])[-1]
            lost[node] = f"a probe step failed (exit {proc.returncode}: {last})"
    return lost


def clean_environment(env: Mapping[str, str], count: int) -> dict[str, str]:
    """The submitting environment for a successor: none of this job's SLURM_* settings
    (SLURM_CONF stays), and the attempt number it starts with."""
    kept = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    return kept | {"HPC_RESUBMIT_COUNT": str(count)}


def queue_successor(run_dir: Path, excluded: list[str], count: int) -> str:
    """A successor that excludes the lost nodes and starts once this job has ended; then
    this job is no longer Slurm's to requeue (the lost node going DOWN while this shell
    still runs would requeue it as NODE_FAIL). Should Slurm requeue it first all the
    same, the successor waits for its end (afterany) and finds the run finished."""
    job_id = os.environ.get("SLURM_JOB_ID", "")
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--exclude={','.join(excluded)}",
         f"--dependency=afterany:{job_id}", str(run_dir / SCRIPT_NAME)],
        capture_output=True, text=True, timeout=60, check=False,
        env=clean_environment(os.environ, count),
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch: {proc.stderr.strip() or proc.returncode}")
    no_requeue = subprocess.run(
        ["scontrol", "update", f"JobId={job_id}", "Requeue=0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if no_requeue.returncode != 0:
        print(f"hpc-launch: warning: scontrol update Requeue=0: {no_requeue.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def exclude_from_successor(successor: str, excluded: list[str]) -> None:
    proc = subprocess.run(
        ["scontrol", "update", f"JobId={successor}", f"ExcNodeList={','.join(excluded)}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"scontrol update: {proc.stderr.strip() or proc.returncode}")


def decide(run_dir: Path, timeout_s: float) -> int:
    nodes = expand(os.environ.get("SLURM_JOB_NODELIST", "")) or []
    lost = probe(nodes, timeout_s)
    if not lost:
        print("hpc-launch: every node answers: not a node loss", flush=True)
        return NOT_LOST
    if len(lost) == len(nodes):  # the job is being ended, or the controller is away
        print("hpc-launch: no node answers: not taken for a node loss", flush=True)
        return NOT_LOST
    record = records.load(run_dir)
    cfg = records.read_run_config(record["config_file"])
    extra: dict[str, Any] = record.get("extra") or {}
    excluded = excluded_after(record, list(lost))
    names = ",".join(sorted(lost))
    what = f"node {names} lost ({'; '.join(f'{n}: {why}' for n, why in sorted(lost.items()))})"
    print(f"hpc-launch: {what}", flush=True)
    used = int(extra.get("node_resubmits", 0))
    cap = int((cfg.get("fault") or {}).get("node_resubmits", 2))
    pre = cfg.get("preemption") or {}
    successor = os.environ.get("HPC_SUCCESSOR", "")
    resubmit_mode = pre.get("mode", "requeue") == "resubmit"
    why = ""
    if used >= cap:
        why = f"fault.node_resubmits={cap} used"
    elif os.environ.get("SLURM_ARRAY_JOB_ID"):
        why = "an array task"
    elif resubmit_mode and not successor:
        why = "no successor was queued"
    attempt = restart_count(os.environ)
    if not why:
        try:
            if resubmit_mode:
                exclude_from_successor(successor, excluded)
            else:
                successor = queue_successor(run_dir, excluded, attempt + 1)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            why = f"no successor ({exc})"
    if why:
        records.update(
            run_dir,
            state=JobState.NODE_LOST,
            extra={EXCLUDED: excluded, "lost_nodes": sorted(lost)},
            message=f"{what}; not resubmitted ({why})",
        )
        print(f"hpc-launch: not resubmitted ({why})", flush=True)
        return ENDED
    step = latest_step(Path(record["checkpoint_dir"]))
    resumes = f"resuming from {f'step {step}' if step >= 0 else 'the start'}"
    new_extra = {
        EXCLUDED: excluded,
        "lost_nodes": sorted(lost),
        "node_resubmits": used + 1,
        "restart_count": int(extra.get("restart_count", 0)) + 1,
        "last_interruption": "node_lost",
        "interrupted_attempt": attempt,
        "requeued_by": "job",
    }
    hand_over(run_dir, record, new_extra, f"{what}; {resumes} without it", successor)
    print(f"hpc-launch: job {successor} goes on without {names} ({resumes})", flush=True)
    return RESUBMITTED


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m hpc.launchers.slurm.nodeloss RUN_DIR PROBE_TIMEOUT_S",
              file=sys.stderr)  # fmt: skip
        return 2
    # Slurm may end this job meanwhile (the lost node marked DOWN): SIGTERM, and SIGKILL
    # KillWait later. The decision, a few seconds, is finished in between (a handler, not
    # SIG_IGN: the probes and sbatch keep the default).
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        return decide(Path(args[0]), float(args[1]))
    except (OSError, ValueError, KeyError) as exc:
        print(f"hpc-launch: node-loss check failed: {exc}", file=sys.stderr)
        return NOT_LOST


if __name__ == "__main__":
    sys.exit(main())
