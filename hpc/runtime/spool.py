"""A durable, ordered spool of tracking records on local disk.

Rank 0 appends every metric, param and tag here first (a buffered file write:
training never waits on the tracking server). A sender ships records to MLflow
in order and remembers how far it got (``spool.offset``), so an outage or a
restart loses nothing: the rest is replayed when the server is back.

Exactly-once metrics across restarts: a metric counts only once a checkpoint
covering its step is durable (a ``commit`` record, written after the checkpoint
is renamed into place). Only committed records are sent. A run resumed from
step R first drops uncommitted metrics with step > R (they will be produced
again by the resumed run), then commits R.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SPOOL, OFFSET = "spool.jsonl", "spool.offset"


class MetricSpool:
    def __init__(self, directory: str | os.PathLike[str], fsync_every_s: float = 1.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / SPOOL
        self._lock = threading.Lock()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._fsync_every_s = fsync_every_s
        self._last_fsync = time.monotonic()

    # -- writing (training thread) ---------------------------------------------------
    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        with self._lock:
            self._fh.write(data)
            self._fh.flush()
            if time.monotonic() - self._last_fsync > self._fsync_every_s:
                os.fsync(self._fh.fileno())
                self._last_fsync = time.monotonic()

    def commit(self, step: int) -> None:
        """Everything appended so far is covered by a durable checkpoint at ``step``."""
        with self._lock:
            self._fh.write(json.dumps({"k": "c", "s": int(step)}) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._last_fsync = time.monotonic()

    def rewind(self, step: int) -> int:
        """Resuming at ``step``: drop uncommitted metrics past it; return how many."""
        with self._lock:
            self._fh.flush()
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            last_commit = max((i for i, line in enumerate(lines) if '"k":"c"' in line), default=-1)
            kept, dropped = lines[: last_commit + 1], 0
            for line in lines[last_commit + 1 :]:
                record = _parse(line)
                torn = record is None  # a half-written last line from a crash
                if torn or (record.get("k") == "m" and int(record.get("s", 0)) > step):
                    dropped += 1
                else:
                    kept.append(line)
            kept.append(json.dumps({"k": "c", "s": int(step)}) + "\n")
            tmp = self.path.with_name(f".{SPOOL}.tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(kept)
                fh.flush()
                os.fsync(fh.fileno())
            self._fh.close()
            os.replace(tmp, self.path)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            offset = self.sent_offset()
            if offset > self.path.stat().st_size:  # cannot happen: only committed data is sent
                self.set_sent_offset(0)
            return dropped

    def close(self) -> None:
        with self._lock:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    # -- reading (sender thread) ---------------------------------------------------------
    def sent_offset(self) -> int:
        try:
            return int((self.directory / OFFSET).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def set_sent_offset(self, offset: int) -> None:
        tmp = self.directory / f".{OFFSET}.tmp"
        tmp.write_text(str(offset))
        os.replace(tmp, self.directory / OFFSET)

    def pending(self, final: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        """(end offset, record) of sendable records after the sent offset, in order.

        Sendable: everything before the last commit; after it, params and tags up to
        the first uncommitted metric (or everything, when ``final``).
        """
        offset = self.sent_offset()
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        lines: list[tuple[int, dict[str, Any]]] = []
        pos = offset
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # being written
            pos += len(raw)
            record = _parse(raw.decode("utf-8", errors="replace"))
            if record is not None:
                lines.append((pos, record))
        last_commit = max((i for i, (_, r) in enumerate(lines) if r.get("k") == "c"), default=-1)
        for i, (end, record) in enumerate(lines):
            if i > last_commit and not final and record.get("k") == "m":
                return
            yield end, record


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
