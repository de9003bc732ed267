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
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    LOST = "LOST"  # a local run whose launcher died without finishing
    UNKNOWN = "UNKNOWN"


# The job has ended and will not change state by itself.
TERMINAL: frozenset[str] = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
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
    }
)


def is_terminal(state: str | None) -> bool:
    return state in TERMINAL


def is_active(state: str | None) -> bool:
    return state in ACTIVE
