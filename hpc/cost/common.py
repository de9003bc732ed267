"""What the cost modules share without pyarrow: the input error and the job-state sets
(the store's report path imports no pyarrow or numpy: it starts in half the time)."""

from __future__ import annotations


class CostInputError(ValueError):
    """Bad input; the message names the file (and line or key) it comes from."""

    def __init__(self, source: str, message: str, line: int | None = None):
        self.source = source
        self.line = line
        self.message = message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


# States whose allocation is still running: the end is clipped to the window end (or now).
RUNNING_STATES = frozenset({"RUNNING", "SUSPENDED", "COMPLETING", "REQUEUE_HOLD", "RESIZING"})
PENDING_STATES = frozenset({"PENDING", "REQUEUE_FED"})
