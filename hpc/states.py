"""Job states: one enum, one set of terminal states, one set of active ones.

The values are Slurm's state names; job.json stores them as these strings.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    RESIZING = "RESIZING"
    REQUEUE_FED = "REQUEUE_FED"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    STAGE_OUT = "STAGE_OUT"
    SIGNALING = "SIGNALING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    COMPLETED_IDLE = "COMPLETED_IDLE"  # the idle policy stopped it (exit code 77)
    FAILED_HANG = "FAILED_HANG"  # ended by the hang watchdog (exit code 76), not Slurm's
    FAILED_PREFLIGHT = "FAILED_PREFLIGHT"  # a node failed the pre-flight check (exit code 78)
    NODE_LOST = "NODE_LOST"  # a node was lost and no resubmission is left (exit code 79)
    LOST = "LOST"  # a local run whose launcher died without finishing
    UNKNOWN = "UNKNOWN"


# The job has ended and will not change state by itself.
TERMINAL: frozenset[str] = frozenset(
    {
        JobState.COMPLETED,
        JobState.COMPLETED_IDLE,
        JobState.FAILED,
        JobState.FAILED_HANG,
        JobState.FAILED_PREFLIGHT,
        JobState.NODE_LOST,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.PREEMPTED,
        JobState.NODE_FAIL,
        JobState.OUT_OF_MEMORY,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
    }
)
# The job is queued or running: its backend may report a newer state.
ACTIVE: frozenset[str] = frozenset(
    {
        JobState.PENDING,
        JobState.RUNNING,
        JobState.REQUEUED,
        JobState.CONFIGURING,
        JobState.COMPLETING,
        JobState.SUSPENDED,
        JobState.REQUEUE_HOLD,
        JobState.RESIZING,
        JobState.REQUEUE_FED,
        JobState.RESV_DEL_HOLD,
        JobState.SPECIAL_EXIT,
        JobState.STAGE_OUT,
        JobState.SIGNALING,
    }
)


def is_terminal(state: str | None) -> bool:
    return state in TERMINAL


def is_active(state: str | None) -> bool:
    return state in ACTIVE


# Progress categories (``hpc status SWEEP``); Slurm's transient states included.
CATEGORIES = ("done", "running", "failed", "pending")
_UNDER_WAY = frozenset(
    {
        JobState.RUNNING,
        JobState.COMPLETING,
        JobState.STAGE_OUT,
        JobState.SIGNALING,
        JobState.RESIZING,
        JobState.SUSPENDED,
    }
)
_WAITING = (ACTIVE - _UNDER_WAY) | {JobState.UNKNOWN}
_DONE = frozenset({JobState.COMPLETED})


def category(state: str) -> str:
    """How a progress view groups a state: done, running, pending, or failed (the rest)."""
    if state in _DONE:
        return "done"
    if state in _UNDER_WAY:
        return "running"
    if state in _WAITING:
        return "pending"
    return "failed"
