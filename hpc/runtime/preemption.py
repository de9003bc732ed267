"""Stop signals inside a job: remember them; the training loop acts at a step boundary.

The preemption signal (``preemption.signal``, SIGUSR2 by default: NCCL owns
SIGUSR1, NVIDIA/nccl#704), SIGTERM (time limit, preemption with GraceTime,
Kubernetes eviction) and SIGINT (Ctrl-C forwarded by the local launcher) all
take the same path: the handler only sets a flag. At the next step boundary the
ranks agree (an all-reduce of the flag), all of them take part in one
checkpoint, and the job exits with :data:`hpc.exitcodes.PREEMPTED`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping
from types import FrameType
from typing import Any

from hpc.defaults import PREEMPTION_SIGNAL


def signal_number(name: str) -> int:
    """``USR2``/``SIGUSR2``/``12`` → the signal number; ValueError if unknown."""
    text = str(name).strip().upper()
    if text.isdigit():
        return int(text)
    try:
        return int(signal.Signals[text if text.startswith("SIG") else f"SIG{text}"])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


_early: dict[str, int | None] = {"received": None, "program": 0}
# Imported by a script that opens a Session later: its stop signals are then remembered.
SESSION_MODULE = "hpc.runtime.session"


def restarts_without_progress(
    idle: int, step: int, last_step: int, preemption: Mapping[str, Any]
) -> tuple[int, bool]:
    """The one rule against restart loops, for local restarts and Slurm requeues alike.

    ``idle`` restarts in a row have not moved the newest checkpoint forward; this
    interruption came at checkpoint ``step`` (``last_step`` at the previous one).
    Returns the new count (0 after progress) and whether to stop restarting: more than
    ``preemption.max_restarts_without_progress`` in a row.
    """
    idle = 0 if step > last_step else idle + 1
    return idle, idle > int(preemption.get("max_restarts_without_progress", 3))


def install_early(preemption_signal: str = PREEMPTION_SIGNAL) -> None:
    """Catch stop signals from process start (before torch is even imported).

    A signal that arrives before the session exists is kept and handed to it, so
    an early preemption still ends in a checkpoint rather than a dead process.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def remember(signum: int, frame: FrameType | None) -> None:
        if _early["received"] is None:
            _early["received"] = signum
        if _early["program"] and SESSION_MODULE not in sys.modules:
            _default_action(signum, frame)

    for signum in {signal_number(preemption_signal), signal.SIGTERM, signal.SIGINT}:
        signal.signal(signum, remember)


def program_starts() -> int | None:
    """A script or ``-m`` module is about to run as ``__main__``: the contract for it.

    From now on a stop signal the program has no handler of its own for takes Python's
    default action (SIGINT raises KeyboardInterrupt, SIGTERM and the preemption signal
    end the process), as under ``srun`` or ``torchrun`` without hpc-launch, unless the
    program has imported the Session (it is then remembered for the Session). A program
    may install its own handler at any time. Returns a stop signal that arrived before
    the program started (the caller then exits PREEMPTED without running it), or None.
    """
    _early["program"] = 1
    return _early["received"]


def _default_action(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGINT:
        signal.default_int_handler(signum, frame)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class StopSignals:
    def __init__(self, preemption_signal: str = PREEMPTION_SIGNAL) -> None:
        self.preemption = signal_number(preemption_signal)
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be set from the main thread
        self.received = self.received or _early["received"]
        for signum in {self.preemption, signal.SIGTERM, signal.SIGINT}:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def ignore(self) -> None:
        """Ignore stop signals from now until the process exits (the job is done).

        Restoring the previous handlers is not enough: Python resets its own handlers
        to the default action while the interpreter shuts down, so a signal arriving
        then (a requeue or preemption just after FINISHED) would kill the process.
        Only SIG_IGN survives shutdown.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in {self.preemption, signal.SIGTERM, signal.SIGINT}:
            signal.signal(signum, signal.SIG_IGN)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    @property
    def name(self) -> str | None:
        """The received signal's name (``SIGUSR2``); the launcher classifies the reason."""
        return signal.Signals(self.received).name if self.received else None
