"""sacct readers: every output shape -> :class:`~hpc.cost.model.AllocationSet`.

* ``read_sacct(path)``: ``--json`` (any Slurm from 21.08) or text (``--parsable2`` /
  ``--parsable``, with or without header, any delimiter); see :mod:`hpc.cost.sacct.text_output`
  and :mod:`hpc.cost.sacct.json_output`.
* ``live_sacct(start, end)``: runs ``TZ=UTC sacct --allusers --parsable2 --noheader
  --allocations --duplicates --format ... -S ... [-E ...]`` and reads its output.

What the readers agree on (the rules are in :mod:`hpc.cost.derive`): one record per
allocation (job, array task, het component, requeued run keyed by JobID + Submit); steps
only fill what the allocation lacks; GPU count from AllocTRES ``gres/gpu`` (typed entries
only without a generic one; never ``gres/gpumem``/``gres/gpuutil``), else AllocGRES.
Malformed input raises :class:`~hpc.cost.model.CostInputError` naming file and line;
rows skipped for a reason are counted in ``AllocationSet.skipped``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from hpc.cost.model import AllocationSet, CostInputError
from hpc.cost.sacct.json_output import read_json
from hpc.cost.sacct.text_output import parse_format, read_text

# What --live asks for (and a sensible --format for files meant for `hpc cost`).
LIVE_FIELDS = (
    "JobID,JobIDRaw,User,Account,Partition,State,Submit,Start,End,Elapsed,NNodes,"
    "AllocCPUS,AllocTRES"
)
SACCT_TIME = "%Y-%m-%dT%H:%M:%S"

__all__ = ["LIVE_FIELDS", "live_command", "live_sacct", "parse_format", "read_sacct"]


def read_sacct(
    path: str | os.PathLike[str],
    fields: list[str] | str | None = None,
    delimiter: str | None = None,
) -> AllocationSet:
    """Read one sacct output file (``-`` reads standard input).

    ``fields`` is the ``--format`` field list of a headerless text file (a list or the
    comma-separated text); ``delimiter`` the ``--delimiter`` it was written with (found
    from the header or the first line when not given).
    """
    if isinstance(fields, str):
        fields = parse_format(fields)
    if str(path) == "-":
        data = sys.stdin.buffer.read()
        if not data.strip():
            raise CostInputError("<stdin>", "empty: no sacct output on standard input")
        return read_sacct_bytes(data, "<stdin>", fields, delimiter)
    p = Path(path)
    source = str(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise CostInputError(source, exc.strerror or str(exc)) from None
    if not head.strip() and len(head) < 4096:
        raise CostInputError(source, "empty: no sacct output in this file")
    if head.lstrip()[:1] == b"{":
        return read_json(p, source)
    return read_text(p, source, fields, delimiter)


def read_sacct_bytes(
    data: bytes, source: str, fields: list[str] | None = None, delimiter: str | None = None
) -> AllocationSet:
    """Like :func:`read_sacct` on bytes already in memory (``source`` names them)."""
    if data.lstrip()[:1] == b"{":
        return read_json(data, source)
    return read_text(data, source, fields, delimiter)


def live_command(
    start: datetime | None,
    end: datetime | None,
    fields: str = LIVE_FIELDS,
    all_users: bool = True,
) -> list[str]:
    """The sacct command line that ``--live`` runs (with ``TZ=UTC`` in its environment)."""
    cmd = ["sacct"] + (["--allusers"] if all_users else [])
    cmd += ["--parsable2", "--noheader", "--allocations", "--duplicates", "--format", fields]
    # No start: all history (sacct's own default would be midnight today).
    cmd += ["-S", start.strftime(SACCT_TIME) if start else "1970-01-01T00:00:00"]
    if end is not None:
        cmd += ["-E", end.strftime(SACCT_TIME)]
    return cmd


def live_sacct(
    start: datetime | None,
    end: datetime | None,
    fields: str = LIVE_FIELDS,
    timeout_s: float = 600.0,
) -> AllocationSet:
    """Run sacct now and read what it prints (``--allusers`` first, then without it)."""
    if shutil.which("sacct") is None:
        raise CostInputError("--live", "sacct not found on PATH")
    env = {**os.environ, "TZ": "UTC"}
    notes: list[str] = []
    proc = None
    for all_users in (True, False):
        cmd = live_command(start, end, fields, all_users)
        try:
            proc = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise CostInputError("--live", f"sacct did not answer in {timeout_s:.0f} s") from None
        if proc.returncode == 0:
            break
        if all_users:
            why = _first_line(proc.stderr) or f"exit {proc.returncode}"
            notes.append(f"sacct --allusers refused ({why}); showing the caller's jobs only")
    assert proc is not None
    if proc.returncode != 0:
        why = _first_line(proc.stderr) or f"exit status {proc.returncode}"
        raise CostInputError("--live", f"{' '.join(cmd)}: {why}")
    result = read_text(proc.stdout, "sacct --live", parse_format(fields), "|")
    result.notes.extend(notes)
    return result


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text.splitlines()[0] if text else ""
