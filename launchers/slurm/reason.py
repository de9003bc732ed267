"""Why Slurm interrupted a job: its own words, for ``last_interruption``.

Two views, both read the same way on Slurm 22.05 and 24.11:

- while the batch shell handles a stop signal, ``scontrol show job -o`` tells
  whether Slurm itself is already requeueing the job (``Restarts`` is past this
  run's ``SLURM_RESTART_COUNT``: ``scontrol requeue`` by hand, or a node failure
  when one of the job's nodes is down, ``scontrol show node -o``);
- when a requeued job starts again, ``sacct --duplicates`` holds the state the
  previous attempt ended in (``NODE_FAIL``, ``PREEMPTED``, ``TIMEOUT``, or
  ``REQUEUED`` for a requeue by the job itself or by hand).
"""

from __future__ import annotations

import subprocess
import time

# Slurm job states that name their cause → the value recorded in last_interruption.
STATE_REASONS = {
    "NODE_FAIL": "node_fail",
    "BOOT_FAIL": "node_fail",
    "PREEMPTED": "preemption",
    "TIMEOUT": "time_limit",
    "DEADLINE": "time_limit",
}
MANUAL_REQUEUE = "manual_requeue"  # requeued by someone, not by the job's own batch shell
# scontrol's state flags of a node that cannot run jobs (``*``: not responding).
_BAD_STATES = ("DOWN", "FAIL", "DRAIN", "NOT_RESPONDING", "POWER_DOWN", "POWERED_DOWN")
_UNFINISHED = frozenset({"RUNNING", "PENDING", "REQUEUED_HOLD", "REQUEUE_FED", "SUSPENDED"})


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def parse_scontrol_job(text: str) -> dict[str, str]:
    """``Key=Value`` fields of ``scontrol show job [-o]`` output (first job only)."""
    fields: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def parse_attempt_states(text: str, sep: str = "|", column: int = 0) -> list[str]:
    """The state column of ``sacct -D -X -n -P`` lines, oldest first (``CANCELLED by 0``
    → ``CANCELLED``; a ``+`` suffix dropped)."""
    states = []
    for line in text.splitlines():
        fields = line.split(sep)
        if len(fields) > column and fields[column].strip():
            states.append(fields[column].split()[0].rstrip("+"))
    return states


def previous_attempt_state(states: list[str]) -> str | None:
    """The end state of the attempt before the current one (which is still unfinished)."""
    ended = list(states)
    while ended and ended[-1] in _UNFINISHED:
        ended.pop()
    return ended[-1] if ended else None


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job -o JOB`` as fields (empty when Slurm does not answer)."""
    return parse_scontrol_job(_run(["scontrol", "show", "job", "-o", job_id]) or "")


def cancelled(job_id: str, fields: dict[str, str], settle_s: float = 5.0) -> bool:
    """Slurm ends the job as CANCELLED: ``scancel`` by its user or an admin.

    ``scontrol`` shows a job that is being cancelled as COMPLETING, like one at its time
    limit (which is to requeue); the accounting record names the cause at once
    (``CANCELLED by UID``), so a COMPLETING job is looked up there, for up to
    ``settle_s`` while slurmdbd catches up. Preemption by cancellation
    (``PreemptMode=CANCEL``) keeps the job RUNNING through its GraceTime."""
    state = fields.get("JobState", "")
    if state == "CANCELLED":
        return True
    if state != "COMPLETING":
        return False
    deadline = time.monotonic() + settle_s
    while True:
        out = _run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"]) or ""
        states = parse_attempt_states(out)
        if states and states[-1] not in _UNFINISHED:
            return states[-1] == "CANCELLED"
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def requeued_by_slurm(
    job_id: str,
    restart_count: int,
    fields: dict[str, str] | None = None,
    nodes: list[str] | None = None,
) -> str | None:
    """While handling a stop: the reason when Slurm is already requeueing this job. The
    job's state then no longer names a node failure (it is pending again): one of its
    ``nodes`` down says it."""
    if fields is None:
        fields = job_fields(job_id)
    restarts = fields.get("Restarts", "")
    if not restarts.isdigit() or int(restarts) <= restart_count:
        return None
    reason = STATE_REASONS.get(fields.get("JobState", ""), MANUAL_REQUEUE)
    if reason == MANUAL_REQUEUE and nodes and nodes_down(nodes):
        return STATE_REASONS["NODE_FAIL"]
    return reason


def nodes_down(nodes: list[str]) -> list[str]:
    """Those of ``nodes`` that Slurm reports down, failing, drained or not responding."""
    if not nodes:
        return []
    bad = []
    for line in (_run(["scontrol", "show", "node", "-o", ",".join(nodes)]) or "").splitlines():
        fields = dict(t.partition("=")[::2] for t in line.split() if "=" in t)
        state = fields.get("State", "")
        if state.endswith("*") or any(flag in state for flag in _BAD_STATES):
            bad.append(fields.get("NodeName", ""))
    return sorted(n for n in bad if n)


def restart_reason(job_id: str, recorded: str | None) -> str | None:
    """On a restart: why the previous attempt ended, from sacct (``recorded`` is what the
    batch shell wrote for that attempt, if it got to; Slurm's own cause wins)."""
    out = _run(["sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-o", "State"])
    return reason_for(previous_attempt_state(parse_attempt_states(out or "")), recorded)


def reason_for(state: str | None, recorded: str | None) -> str | None:
    """The previous attempt's end state (None: unknown) and the batch shell's own record
    → ``last_interruption``."""
    if state in STATE_REASONS:
        return STATE_REASONS[state]
    if state == "REQUEUED":
        return recorded or MANUAL_REQUEUE
    return recorded
