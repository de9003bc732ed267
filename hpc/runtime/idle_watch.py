"""The Session's side of the idle policy (:mod:`hpc.accounting.idle`).

The node's sampler writes ``<run_dir>/accounting/idle-node<N>.json`` when a GPU of its
node has been idle for a whole window. The Session polls those files (local rank 0
only, at most every ``check_s``, from the step calls: a clock read per call otherwise):
rank 0 puts each new event into MLflow (tags ``idle.<node>.<device>`` and the metric
``idle_devices``), and with ``action: stop`` the finding is this rank's stop flag,
which the stop agreement spreads to every rank. At exit every rank reads the files once
to tell an idle stop from a preemption.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

CHECK_S = 2.0


class IdleWatch:
    def __init__(self, run_dir: Path, polls: bool, check_s: float = CHECK_S) -> None:
        self.directory = run_dir / "accounting"
        self.polls = polls
        self.check_s = check_s
        self.stop = False
        self._next = 0.0
        self._seen: dict[str, int] = {}  # file -> events already reported

    def poll(self) -> list[dict[str, Any]]:
        """New idle events since the last poll (throttled; [] when not due)."""
        if not self.polls:
            return []
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.check_s
        return self.read()

    def read(self) -> list[dict[str, Any]]:
        new: list[dict[str, Any]] = []
        for path in sorted(self.directory.glob("idle-*.json")):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            events = doc.get("events") or []
            if doc.get("action") == "stop" and events:
                self.stop = True
            done = self._seen.get(path.name, 0)
            for event in events[done:]:
                new.append({**event, "node": path.stem.removeprefix("idle-")})
            self._seen[path.name] = len(events)
        return new

    def stopped_idle(self) -> bool:
        """Whether an idle stop was found (reads the files now)."""
        self.read()
        return self.stop


def tags(events: list[dict[str, Any]]) -> dict[str, str]:
    return {
        f"idle.{e.get('node', 'node0')}.{e.get('device', '?')}": (
            f"{e.get('reason', 'idle')} for {float(e['end_t']) - float(e['start_t']):.0f}s"
        )
        for e in events
    }
