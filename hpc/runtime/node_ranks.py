"""One node's ranks from one task: ``python -m hpc.runtime.node_ranks N [--grace S] -- CMD...``.

Slurm 22.05 runs one task per node in a ``--container`` step (slurmstepd refuses more),
so an OCI job's step has one task per node, one container, and this, inside it, starts
the node's ``N`` ranks with the variables srun gives each task (``SLURM_PROCID``,
``SLURM_LOCALID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_STEP_TASKS_PER_NODE`` ...). The
node's index is the step task's ``SLURM_NODEID``.

It behaves like srun to the ranks and to the batch shell:

* each rank is its own process group, and a stop signal (USR1, USR2, TERM, INT, HUP)
  that reaches this process is passed to every rank's group;
* once a rank exits non-zero (``srun --kill-on-bad-exit``), the others get ``--grace``
  seconds to end, then their groups are killed; the exit status is the first failing
  rank's (0 when all succeed; 128+N for a rank ended by signal N);
* it reaps every child, orphans included: in a container it may be PID 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from types import FrameType

FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Variables srun sets per task that say something else for the node's one task.
PER_TASK = ("SLURM_TASK_PID", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")


class _GraceOver(Exception):
    """The failing rank's siblings had their ``--grace`` seconds."""


def rank_environments(environ: Mapping[str, str], per_node: int) -> list[dict[str, str]]:
    """Each of this node's ranks' environment (the node task's, re-shaped to ``per_node``
    tasks per node)."""
    try:
        node = int(environ["SLURM_NODEID"])
        nodes = int(
            environ.get("SLURM_STEP_NUM_NODES")
            or environ.get("SLURM_JOB_NUM_NODES")
            or environ["SLURM_NNODES"]
        )
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"hpc.runtime.node_ranks: not in a Slurm step ({exc})") from None
    world = nodes * per_node
    ranks = [node * per_node + local for local in range(per_node)]
    layout = f"{per_node}(x{nodes})" if nodes > 1 else str(per_node)
    shared = {k: v for k, v in environ.items() if k not in PER_TASK}
    shared |= {
        "SLURM_STEP_NUM_TASKS": str(world),
        "SLURM_NTASKS": str(world),
        "SLURM_NPROCS": str(world),
        "SLURM_STEP_TASKS_PER_NODE": layout,
        "SLURM_TASKS_PER_NODE": layout,
        "SLURM_NTASKS_PER_NODE": str(per_node),
        "SLURM_GTIDS": ",".join(map(str, ranks)),
    }
    return [
        shared | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local)}
        for local, rank in enumerate(ranks)
    ]


def _status(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def _signal_all(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)


def _reap_one(running: list[int]) -> int:
    """Wait for one child: a rank's exit status, 0 for an orphan's."""
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:
        running.clear()
        return 0
    if pid not in running:
        return 0  # an orphan this process inherited (it may be the container's init)
    running.remove(pid)
    return _status(status)


def run(command: Sequence[str], per_node: int, grace_s: float) -> int:
    """Start the ranks, wait for all of them; the exit status as described above."""
    envs = rank_environments(os.environ, per_node)
    running: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        _signal_all(running, signum)

    def grace_over(_signum: int, _frame: FrameType | None) -> None:
        raise _GraceOver

    for signum in FORWARDED:
        signal.signal(signum, forward)
    signal.signal(signal.SIGALRM, grace_over)
    for env in envs:
        try:
            child = subprocess.Popen(list(command), env=env, start_new_session=True)
        except OSError as exc:
            print(f"hpc.runtime.node_ranks: cannot start {command[0]!r}: {exc}", file=sys.stderr)
            _signal_all(running, signal.SIGKILL)
            return 127
        running.append(child.pid)
    ranks = list(running)
    result = 0
    while running:
        try:
            code = _reap_one(running)
            if code and not result:  # the first failure: the others get grace_s
                result = code
                signal.setitimer(signal.ITIMER_REAL, max(grace_s, 0.001))
        except _GraceOver:
            rank_list = ", ".join(str(ranks.index(p)) for p in running)
            print(
                f"hpc.runtime.node_ranks: local rank(s) {rank_list} still running "
                f"{grace_s:g}s after another failed: killed",
                file=sys.stderr,
            )
            _signal_all(running, signal.SIGKILL)
    signal.setitimer(signal.ITIMER_REAL, 0)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    cut = words.index("--") if "--" in words else len(words)
    parser = argparse.ArgumentParser(prog="python -m hpc.runtime.node_ranks")
    parser.add_argument("per_node", type=int, help="ranks on this node")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds after a failure")
    args = parser.parse_args(words[:cut])
    command = words[cut + 1 :]
    if args.per_node < 1 or not command:
        parser.error("needs ranks per node >= 1 and the rank's command after --")
    return run(command, args.per_node, args.grace)


if __name__ == "__main__":
    sys.exit(main())
