"""Each rank's progress report for the hang watchdog (:mod:`hpc.runtime.watchdog`).

A rank's :class:`Heartbeat` holds its latest step (set by the Session's
``should_checkpoint``, ``log_metrics`` and ``save_checkpoint`` through
:meth:`Heartbeat.progress`: a compare and an attribute store, no system call, no clock
read; only the first step also wakes the thread, so that a rank stopped right after
its first steps is not mistaken for one that never reached a step) and a daemon thread that writes
``<run_dir>/heartbeat/rank<N>.json`` every ``interval_s``: rank, node, pid, step,
and a beat counter. The thread goes on while the training thread waits in a
collective, so a rank that is alive but waiting keeps beating with an unchanged
step; a stopped (SIGSTOP), dead or GIL-locked process stops beating. Each write is a
small file renamed into place, without fsync: a reader on another node sees a whole
report (close-to-open), and nothing waits on the disk.

The rank also registers :mod:`faulthandler` on :data:`~hpc.defaults.STACK_DUMP_SIGNAL`
into ``<run_dir>/heartbeat/rank<N>.stack``: the watchdog sends it that signal to
have every thread's Python stack written there (faulthandler writes from its C
signal handler, so a thread stuck in C code does not prevent it).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

from hpc.defaults import STACK_DUMP_SIGNAL, STALL_TIMEOUT_S
from hpc.files import write_atomic
from hpc.runtime.preemption import signal_number

DIRECTORY = "heartbeat"


def interval_for(stall_timeout_s: float) -> float:
    """How often a rank beats: a fifth of the stall timeout, 0.5 to 5 s."""
    return min(5.0, max(0.5, stall_timeout_s / 5))


def beat_path(run_dir: Path, rank: int) -> Path:
    return run_dir / DIRECTORY / f"rank{rank}.json"


def stack_path(run_dir: Path, rank: int) -> Path:
    return run_dir / DIRECTORY / f"rank{rank}.stack"


class Heartbeat:
    """One rank's reporter; a no-op until :meth:`start` (and with the watchdog off)."""

    def __init__(
        self, run_dir: Path, rank: int, world_size: int, node: str, fault: dict[str, Any]
    ) -> None:
        self.run_dir = run_dir
        self.rank = rank
        self.world_size = world_size
        self.node = node
        self.enabled = bool(fault.get("watchdog", True))
        self.interval_s = interval_for(float(fault.get("stall_timeout_s", STALL_TIMEOUT_S)))
        self.step: int | None = None  # the training thread's latest step
        self._beats = 0
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by the first step and by stop()
        self._thread: threading.Thread | None = None
        self._stacks: IO[str] | None = None
        self._signum = signal_number(STACK_DUMP_SIGNAL)

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        directory = self.run_dir / DIRECTORY
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._stacks = open(stack_path(self.run_dir, self.rank), "a", encoding="utf-8")  # noqa: SIM115 - open while the handler may write
            faulthandler.register(self._signum, file=self._stacks, all_threads=True, chain=False)
        except (OSError, RuntimeError, ValueError):
            self._stacks = None  # no stacks; the beats still go
        self._write("running")
        self._thread = threading.Thread(target=self._run, name="hpc-heartbeat", daemon=True)
        self._thread.start()

    def progress(self, step: int) -> None:
        """The training thread's latest step; the first one is reported at once."""
        if self.step is None:
            self.step = step
            self._wake.set()
        else:
            self.step = step

    def stop(self, state: str = "done") -> None:
        """The last report (``done``: the watchdog stops watching this job)."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._thread = None
        self._write(state)
        if self._stacks is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                faulthandler.unregister(self._signum)
            self._stacks.close()
            self._stacks = None

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._write("running")

    def _write(self, state: str) -> None:
        self._beats += 1
        report = {
            "rank": self.rank,
            "world_size": self.world_size,
            "node": self.node,
            "pid": os.getpid(),
            "step": self.step,
            "beat": self._beats,
            "time": time.time(),
            "state": state,
        }
        with contextlib.suppress(OSError):  # a full disk must not stop training
            write_atomic(beat_path(self.run_dir, self.rank), json.dumps(report), durable=False)


def read_beats(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Every rank's latest report, by rank (a report being replaced is skipped)."""
    beats: dict[int, dict[str, Any]] = {}
    directory = run_dir / DIRECTORY
    with contextlib.suppress(FileNotFoundError):
        for path in directory.glob("rank*.json"):
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
                beats[int(report["rank"])] = report
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return beats


def clear(run_dir: Path) -> None:
    """Forget the previous attempt's reports and stacks (before an attempt starts)."""
    directory = run_dir / DIRECTORY
    with contextlib.suppress(FileNotFoundError):
        for path in directory.iterdir():
            with contextlib.suppress(OSError):
                path.unlink()
