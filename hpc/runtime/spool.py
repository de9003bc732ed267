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

from hpc.files import file_lock, write_atomic

SPOOL, OFFSET, LOCK = "spool.jsonl", "spool.offset", "spool.lock"


class MetricSpool:
    """The spool of one run; ``writer=False``: a reader only (the sidecar's sender),
    which never opens the file for writing nor repairs its tail (the producer does)."""

    def __init__(
        self, directory: str | os.PathLike[str], fsync_every_s: float = 1.0, writer: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / SPOOL
        self.writer = writer
        self._lock = threading.Lock()
        self._fh: Any = None
        if writer:
            _repair_torn_tail(self.path)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._fsync_every_s = fsync_every_s
        self._last_fsync = time.monotonic()

    def sending(self) -> Any:
        """Held by a sender for a whole read-send-advance cycle and by :meth:`rewind`
        (an ``flock``: it also orders a sender in another process, the sidecar)."""
        return file_lock(self.directory / LOCK)

    # -- writing (training thread) ---------------------------------------------------
    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = "".join(_line(r) for r in records)
        with self._lock:
            self._fh.write(data)
            self._fh.flush()
            if time.monotonic() - self._last_fsync > self._fsync_every_s:
                os.fsync(self._fh.fileno())
                self._last_fsync = time.monotonic()

    def commit(self, step: int) -> None:
        """Metrics appended so far with a step up to ``step`` are covered by a durable
        checkpoint at ``step``."""
        with self._lock:
            self._fh.write(_line({"k": "c", "s": int(step)}))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._last_fsync = time.monotonic()

    def rewind(self, step: int) -> int:
        """Resuming at ``step``: drop unsent metrics past it; return how many.

        Records already sent are left byte for byte (the sent offset stays valid); among
        the rest, metrics with a step past ``step`` (and a torn line) go, so the resumed
        run logs those steps once. Then ``step`` is committed.
        """
        with self.sending(), self._lock:
            self._fh.flush()
            data = self.path.read_bytes()
            offset = min(self.sent_offset(), len(data))
            kept, dropped = [data[:offset].decode("utf-8")], 0
            for line in data[offset:].decode("utf-8", errors="replace").splitlines(True):
                record = _parse(line) if line.endswith("\n") else None
                if record is None:  # a half-written line from a crash
                    dropped += 1
                elif record.get("k") in ("m", "c") and int(record.get("s", 0)) > step:
                    dropped += record.get("k") == "m"
                else:
                    kept.append(line)
            kept.append(_line({"k": "c", "s": int(step)}))
            write_atomic(self.path, "".join(kept))
            self._fh.close()  # the replaced file's handle (flushed above)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            return dropped

    def close(self) -> None:
        if self._fh is None or self._fh.closed:
            return
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
        write_atomic(self.directory / OFFSET, str(offset))

    def pending(self, final: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        """(end offset, record) of sendable records after the sent offset, in order.

        Sendable: params, tags, and metrics whose step a later commit covers, up to the
        first metric that is not covered yet (everything, when ``final``).
        """
        offset = self.sent_offset()
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:  # a reader started before the producer's first record
            return
        lines: list[tuple[int, dict[str, Any]]] = []
        pos = offset
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # being written
            pos += len(raw)
            record = _parse(raw.decode("utf-8", errors="replace"))
            if record is not None:
                lines.append((pos, record))
        # A metric counts once a later commit covers its step: the largest commit step
        # at or after each position.
        covered, best = [0] * len(lines), -1
        for i in range(len(lines) - 1, -1, -1):
            record = lines[i][1]
            if record.get("k") == "c":
                best = max(best, int(record.get("s", 0)))
            covered[i] = best
        for i, (end, record) in enumerate(lines):
            if record.get("k") == "m" and not final and int(record.get("s", 0)) > covered[i]:
                return  # not committed yet: stop here to keep the order
            yield end, record


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def _repair_torn_tail(path: Path) -> None:
    """Cut a half-written last line (a crash mid-append) so the next record starts clean.

    Such a line was never committed (a commit is fsynced whole, after its records), so
    nothing that counts is lost.
    """
    try:
        with open(path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
                fh.flush()
                os.fsync(fh.fileno())
    except FileNotFoundError:
        pass


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
