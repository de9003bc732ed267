"""The hang and stall watchdog: it reads the ranks' heartbeats, and acts on a hang.

It runs outside the ranks (a stopped or stuck rank cannot report on itself): in the
local launcher's supervising process (:class:`hpc.launchers.local.LocalJob`), and on
Slurm in a small process the batch shell starts next to the step
(:mod:`hpc.launchers.slurm.watchdog`), which reads every node's reports from the
shared run directory. Ranks are watched from the moment their Session opens
(:mod:`hpc.runtime.heartbeat`); a job none of whose ranks opens one is not watched.

A hang is either

- a **stall**: no rank's step moved for ``fault.stall_timeout_s``; until every rank
  has reported its first step of this attempt, ``fault.first_step_timeout_s``
  (start-up, rendezvous, loading a checkpoint);
- a **straggler**: one rank ``fault.straggler_steps`` or more behind the furthest one
  (0: off), on three heartbeats of its own in a row.

The stuck ranks named are those whose heartbeat stopped (a stopped, dead or
GIL-locked process), else those at the lowest step (alive, waiting). Then
:func:`dump_and_record` has every rank's Python stacks written (faulthandler on
:data:`~hpc.defaults.STACK_DUMP_SIGNAL`; a rank that does not answer is continued with
SIGCONT and asked again; one that still does not is named as not dumped) into
``<run_dir>/hangs/hang<N>.txt``, and records the hang in job.json (``extra.hang``)
and as MLflow tags (``hang.*``). The caller then kills the ranks and ends the job
FAILED_HANG (:data:`hpc.exitcodes.FAILED_HANG`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc.credentials import load_run_secrets
from hpc.defaults import FIRST_STEP_TIMEOUT_S, STACK_DUMP_SIGNAL, STALL_TIMEOUT_S
from hpc.rundir import records
from hpc.runtime.heartbeat import interval_for, read_beats, stack_path
from hpc.runtime.preemption import signal_number

log = logging.getLogger(__name__)
DUMP_WAIT_S = 5.0  # for the stacks, before and again after SIGCONT
STRAGGLER_BEATS = 3
MLFLOW_TIMEOUT_S = 30.0
# send(signum, ranks): deliver a signal to these ranks' processes
Sender = Callable[[int, list[int]], None]


@dataclass
class Hang:
    kind: str  # stall | first step | straggler
    ranks: list[int]  # the stuck ones
    nodes: list[str]
    step: int | None  # the furthest step any rank reached
    detail: str  # one line: why, and who
    beats: dict[int, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        ranks = ", ".join(map(str, self.ranks))
        nodes = ", ".join(self.nodes) or "?"
        plural = "s" if len(self.ranks) > 1 else ""
        return f"hang ({self.kind}): rank{plural} {ranks} on {nodes}: {self.detail}"


@dataclass
class _Seen:
    step: int | None
    beat: int
    step_at: float
    beat_at: float
    behind_beats: int = 0
    counted_beat: int = -1


class Watchdog:
    """Call :meth:`check` now and then (every second or so); it returns the hang."""

    def __init__(
        self, run_dir: Path, fault: dict[str, Any], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.run_dir = run_dir
        self.enabled = bool(fault.get("watchdog", True))
        self.stall_s = float(fault.get("stall_timeout_s", STALL_TIMEOUT_S))
        self.first_s = float(fault.get("first_step_timeout_s", FIRST_STEP_TIMEOUT_S))
        self.straggler = int(fault.get("straggler_steps", 0) or 0)
        self.silent_s = 3 * interval_for(self.stall_s) + 1.0  # no beat for this long: silent
        self.clock = clock
        self.started = clock()
        self.progress_at = self.started
        self.seen: dict[int, _Seen] = {}
        self.ended = False  # a rank finished or failed: exit handling is the launcher's

    def check(self) -> Hang | None:
        if not self.enabled or self.ended:
            return None
        beats = read_beats(self.run_dir)
        if not beats:
            return None  # no Session (yet): not watched
        if any(b.get("state") != "running" for b in beats.values()):
            self.ended = True
            return None
        now = self.clock()
        for rank, beat in beats.items():
            seen = self.seen.get(rank)
            step, count = beat.get("step"), int(beat.get("beat") or 0)
            if seen is None:
                self.seen[rank] = _Seen(step, count, now, now)
                if step is not None:
                    self.progress_at = now
                continue
            if count != seen.beat:
                seen.beat, seen.beat_at = count, now
            if step != seen.step:
                seen.step, seen.step_at = step, now
                self.progress_at = now
        world = max(int(b.get("world_size") or 1) for b in beats.values())
        started = len(beats) >= world and all(b.get("step") is not None for b in beats.values())
        limit = self.stall_s if started else self.first_s
        if now - self.progress_at >= limit:
            return self._stall(beats, world, now, started, limit)
        if self.straggler and started:
            return self._straggler(beats)
        return None

    def _stall(
        self, beats: dict[int, dict[str, Any]], world: int, now: float, started: bool, limit: float
    ) -> Hang:
        missing = [r for r in range(world) if r not in beats]
        silent = [r for r in beats if now - self.seen[r].beat_at >= self.silent_s]
        steps = [b["step"] for b in beats.values() if b.get("step") is not None]
        top = max(steps) if steps else None
        kind = "stall" if started else "first step"
        what = f"no step progress for {limit:g}s" + (
            "" if started else " (fault.first_step_timeout_s: not every rank reached a step)"
        )
        if missing or silent:
            stuck = sorted({*missing, *silent})
            parts = []
            if missing:
                parts.append(f"rank(s) {', '.join(map(str, missing))} never reported")
            if silent:
                age = max(now - self.seen[r].beat_at for r in silent)
                parts.append(
                    f"rank(s) {', '.join(map(str, sorted(silent)))} silent for {age:.0f}s "
                    "(stopped, dead, or holding the GIL)"
                )
            detail = f"{what}; {'; '.join(parts)}"
        else:
            low = min(steps) if steps else None
            stuck = sorted(r for r, b in beats.items() if b.get("step") == low)
            detail = f"{what}; every rank alive, waiting (lowest step {low})"
        return Hang(kind, stuck, _nodes(beats, stuck), top, detail, beats)

    def _straggler(self, beats: dict[int, dict[str, Any]]) -> Hang | None:
        top = max(int(b["step"]) for b in beats.values())
        late: list[int] = []
        for rank, beat in beats.items():
            seen = self.seen[rank]
            if top - int(beat["step"]) >= self.straggler:
                if seen.beat != seen.counted_beat:
                    seen.behind_beats += 1
                    seen.counted_beat = seen.beat
                if seen.behind_beats >= STRAGGLER_BEATS:
                    late.append(rank)
            else:
                seen.behind_beats = 0
        if not late:
            return None
        low = min(int(beats[r]["step"]) for r in late)
        detail = (
            f"{top - low} steps behind the furthest rank (step {top}; "
            f"fault.straggler_steps={self.straggler})"
        )
        return Hang("straggler", sorted(late), _nodes(beats, late), top, detail, beats)


def _nodes(beats: dict[int, dict[str, Any]], ranks: list[int]) -> list[str]:
    return sorted({str(beats[r].get("node")) for r in ranks if r in beats}) or ["?"]


# -- acting on a hang ----------------------------------------------------------------------
def dump_stacks(run_dir: Path, ranks: list[int], send: Sender) -> dict[int, tuple[str, str]]:
    """Every rank's stacks: ``{rank: (how, text)}``, how = dumped | after SIGCONT | not dumped."""
    signum = signal_number(STACK_DUMP_SIGNAL)
    sizes = {r: _size(stack_path(run_dir, r)) for r in ranks}
    send(signum, ranks)
    got = _wait_for_growth(run_dir, sizes, ranks)
    late = [r for r in ranks if r not in got]
    if late:
        send(signal.SIGCONT, late)  # a stopped process takes the pending signal once continued
        got.update({r: "after SIGCONT" for r in _wait_for_growth(run_dir, sizes, late)})
    out: dict[int, tuple[str, str]] = {}
    for rank in ranks:
        if rank not in got:
            out[rank] = ("not dumped", "(no stack: the process did not answer the dump signal)")
            continue
        with open(stack_path(run_dir, rank), "rb") as fh:
            fh.seek(sizes[rank])
            out[rank] = (got[rank], fh.read().decode(errors="replace").rstrip())
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _wait_for_growth(run_dir: Path, sizes: dict[int, int], ranks: list[int]) -> dict[int, str]:
    deadline = time.monotonic() + DUMP_WAIT_S
    grown: dict[int, str] = {}
    while True:
        for rank in ranks:
            if rank not in grown and _size(stack_path(run_dir, rank)) > sizes[rank]:
                grown[rank] = "dumped"
        if len(grown) == len(ranks) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if grown:
        time.sleep(0.3)  # faulthandler writes thread after thread: let it finish
    return grown


def dump_and_record(run_dir: Path, hang: Hang, send: Sender) -> str:
    """Stacks into ``hangs/hang<N>.txt``, the hang into job.json and MLflow; the message."""
    world = max([int(b.get("world_size") or 1) for b in hang.beats.values()] or [1])
    ranks = [r for r in range(world) if r in hang.beats]
    stacks = dump_stacks(run_dir, ranks, send)
    directory = run_dir / "hangs"
    directory.mkdir(parents=True, exist_ok=True)
    number = len(list(directory.glob("hang*.txt"))) + 1
    path = directory / f"hang{number}.txt"
    lines = [f"hpc-launch: {hang.summary()}", ""]
    for rank in range(world):
        beat = hang.beats.get(rank) or {}
        how = stacks.get(rank, ("not dumped", ""))[0] if rank in hang.beats else "never reported"
        mark = " STUCK" if rank in hang.ranks else ""
        lines.append(
            f"rank {rank}{mark}: node {beat.get('node', '?')} pid {beat.get('pid', '?')} "
            f"step {beat.get('step')} stacks {how}"
        )
    for rank, (how, text) in sorted(stacks.items()):
        beat = hang.beats[rank]
        lines += ["", f"--- rank {rank} (node {beat.get('node')}, pid {beat.get('pid')}): {how}"]
        lines.append(text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    undumped = [r for r, (how, _) in stacks.items() if how == "not dumped"]
    message = f"{hang.summary()}; stacks in {path}"
    if undumped:
        message += f" (rank(s) {', '.join(map(str, undumped))} could not dump)"
    note = {
        "kind": hang.kind,
        "ranks": hang.ranks,
        "nodes": hang.nodes,
        "step": hang.step,
        "detail": hang.detail,
        "stacks": str(path),
        "not_dumped": undumped,
        "time": time.time(),
    }
    with contextlib.suppress(FileNotFoundError, ValueError):
        record = records.update(run_dir, extra={"hang": note, "hang_count": number})
        tag_run(
            run_dir,
            record,
            {
                "hang.kind": hang.kind,
                "hang.ranks": ",".join(map(str, hang.ranks)),
                "hang.nodes": ",".join(hang.nodes),
                "hang.step": str(hang.step),
                "hang.detail": hang.detail[:5000],
                "hang.stacks": str(path),
                "last_interruption": "hang",
            },
        )
    return message


def tag_run(run_dir: Path, record: dict[str, Any], tags: dict[str, str]) -> bool:
    """Set ``tags`` on the run's MLflow run (bounded wait; False when not done)."""
    run_id = record.get("mlflow_run_id")
    uri = record.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if not run_id or not uri:
        return False
    load_run_secrets(run_dir)
    done = threading.Event()

    def send() -> None:
        try:
            from mlflow.tracking import MlflowClient  # noqa: PLC0415 (lazy: only on a hang)

            client = MlflowClient(tracking_uri=uri)
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            done.set()
        except Exception as exc:  # tracking never decides a job's end
            log.warning("hpc-launch: could not tag the MLflow run with the hang: %s", exc)

    thread = threading.Thread(target=send, name="hang-tags", daemon=True)
    thread.start()
    thread.join(MLFLOW_TIMEOUT_S)
    return done.is_set()
