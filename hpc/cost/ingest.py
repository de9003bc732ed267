"""``hpc cost ingest``: sacct output and run records into the accounting store.

Text output is streamed: each chunk's allocation rows go straight into a staging table
(the same parser and per-batch fold as ``hpc cost report --sacct``), then, in the store,
duplicates (same JobID and Submit) are dropped, allocations that lack resources or times
are completed from their steps (a second pass over the file, for those only), and the
result is upserted. Standard input and ``--live`` are spooled to a temporary file first,
so memory does not grow with the input. JSON is read whole (``sacct --json`` documents are
parsed in one piece; they are small next to text dumps).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from hpc.cost import fold
from hpc.cost.model import CostInputError
from hpc.cost.run_usage import AccountingSet
from hpc.cost.sacct.json_output import read_json
from hpc.cost.sacct.reader import LIVE_FIELDS, live_command
from hpc.cost.sacct.text_output import StepsAgain, parse_format, scan_text
from hpc.cost.store import Counts, Store


@dataclass
class IngestResult:
    source: str
    counts: Counts
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def ingest_sacct(
    store: Store,
    path: Path,
    source: str,
    cluster: str,
    fields: list[str] | None = None,
    delimiter: str | None = None,
) -> IngestResult:
    """Stream one sacct output file (text or JSON) into ``store``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise CostInputError(source, exc.strerror or str(exc)) from None
    if not head.strip() and len(head) < 4096:
        raise CostInputError(source, "empty: no sacct output in this file")
    store.begin_stage()
    skipped: Counter[str] = Counter()
    if head.lstrip()[:1] == b"{":
        allocs = read_json(path, source)
        store.stage(allocs.table)
        skipped.update(allocs.skipped)
    else:
        scan = scan_text(path, source, fields, delimiter, sink=store.stage)
        if scan is not None:
            acc, steps_again = scan
            _fold_in_store(store, acc, steps_again)
            skipped.update(acc.skipped)
    counts = store.commit_stage(cluster, source)
    return IngestResult(source, counts, +skipped)


def _fold_in_store(store: Store, acc: fold.Accumulator, steps_again: StepsAgain) -> None:
    """What :meth:`fold.Accumulator.finish` does in memory, done on the staging table."""
    wanted = set(acc.wanted)
    if acc.away:
        away = pc.unique(pa.chunked_array(acc.away, pa.string())).to_pylist()
        found = store.staged_ids(away)
        n_away = sum(len(a) for a in acc.away)
        hit = pc.is_in(pa.chunked_array(acc.away, pa.string()), value_set=found["job_id"])
        orphan = n_away - pc.sum(hit).as_py() if n_away else 0
        if orphan:
            acc.skipped["step without its allocation row"] += orphan
        wanted.update(pc.filter(found["job_id"], fold.lacking(found)).to_pylist())
    dropped = store.dedupe_stage()
    if dropped:
        acc.skipped["duplicate row (same JobID and Submit)"] += dropped
    if not wanted:
        return
    rows = store.staged_ids(sorted(wanted))
    lack = fold.lacking(rows)
    if not pc.any(lack).as_py():
        return
    filled = fold.fill_from_steps(rows, lack, steps_again(wanted))
    store.replace_staged(rows["line"], filled)


@contextmanager
def spooled_stdin() -> Iterator[Path]:
    """Standard input copied to a temporary file (streamed, not read into memory)."""
    with tempfile.TemporaryDirectory(prefix="hpc-cost-") as tmp:
        path = Path(tmp) / "stdin"
        with open(path, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        yield path


@contextmanager
def spooled_live(
    start: datetime | None, end: datetime | None, timeout_s: float = 600.0
) -> Iterator[tuple[Path, list[str]]]:
    """Run the ``--live`` sacct command with its output going to a temporary file."""
    if shutil.which("sacct") is None:
        raise CostInputError("--live", "sacct not found on PATH")
    env = {**os.environ, "TZ": "UTC"}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hpc-cost-") as tmp:
        path = Path(tmp) / "sacct.psv"
        for all_users in (True, False):
            cmd = live_command(start, end, LIVE_FIELDS, all_users)
            with open(path, "wb") as out:
                try:
                    proc = subprocess.run(
                        cmd, stdout=out, stderr=subprocess.PIPE, env=env, timeout=timeout_s
                    )
                except subprocess.TimeoutExpired:
                    raise CostInputError(
                        "--live", f"sacct did not answer in {timeout_s:.0f} s"
                    ) from None
            if proc.returncode == 0:
                break
            why = _first_line(proc.stderr) or f"exit status {proc.returncode}"
            if not all_users:
                raise CostInputError("--live", f"{' '.join(cmd)}: {why}")
            notes.append(f"sacct --allusers refused ({why}); ingesting the caller's jobs only")
        yield path, notes


def ingest_live(
    store: Store, cluster: str, start: datetime | None, end: datetime | None
) -> IngestResult:
    with spooled_live(start, end) as (path, notes):
        if path.stat().st_size == 0:  # no jobs in the window
            return IngestResult("sacct --live", Counts(), notes=notes)
        result = ingest_sacct(store, path, "sacct --live", cluster, parse_format(LIVE_FIELDS), "|")
    result.notes.extend(notes)
    return result


def ingest_accounting(store: Store, cluster: str, accounting: AccountingSet) -> IngestResult:
    return IngestResult(
        "accounting records", store.put_runs(cluster, accounting), accounting.skipped
    )


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text.splitlines()[0] if text else ""
