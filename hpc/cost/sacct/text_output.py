"""Reader for sacct's text output: ``--parsable2`` / ``--parsable``, with or without header.

The file is streamed through pyarrow's CSV reader (quoting off, every column a string)
batch by batch; each batch is reduced at once to typed allocation columns
(:mod:`hpc.cost.derive`), so memory stays near the size of the result, not the input.

* Header: taken from the first line when it is a list of field names; otherwise the
  fields come from ``--sacct-format`` (``fields``), and neither is an error.
* Delimiter: as given, or taken from the header, or the one candidate that splits the
  first line into the right number of fields. Multi-byte delimiters (``☃``, ``^|^``)
  are mapped to a control byte first.
* ``--parsable`` ends every line with the delimiter: the extra empty column is dropped.
* sacct's default fixed-width table (no ``--parsable2``) is refused with a clear error:
  it truncates values to the column width (``JobName%30``), so it cannot be trusted.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from hpc.cost import fold
from hpc.cost.model import SCHEMA, AllocationSet, CostInputError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
CHUNK = 1 << 21  # bytes of whole lines parsed at a time
CANDIDATES = ("^|^", "|", "☃", "\t", ";", ",")
# sacct field names -> our column; the first present one wins.
WANTED = {
    "jobid": ("jobid",),
    "jobidraw": ("jobidraw",),
    "user": ("user",),
    "account": ("account",),
    "partition": ("partition",),
    "state": ("state",),
    "submit": ("submit",),
    "start": ("start",),
    "end": ("end",),
    "elapsed": ("elapsed",),
    "ncpus": ("alloccpus", "ncpus"),
    "alloctres": ("alloctres",),
    "allocgres": ("allocgres",),
    "nnodes": ("nnodes", "allocnodes"),
}


@dataclass
class Layout:
    """How a text file is laid out."""

    fields: list[str]  # lower-case sacct field names, in column order
    delimiter: str
    header: bool
    trailing: bool  # --parsable: one empty column after the last field
    first_line: str


def parse_format(text: str) -> list[str]:
    """``--format``/``--sacct-format`` text -> field names (``JobName%30`` -> ``jobname``)."""
    names = [f.strip().split("%")[0].lower() for f in re.split(r"[,\s]+", text) if f.strip()]
    for name in names:
        if not NAME_RE.match(name):
            raise ValueError(f"not a sacct field name: {name!r}")
    return names


def detect_layout(
    first_line: str, source: str, fields: list[str] | None, delimiter: str | None
) -> Layout:
    line = first_line.rstrip("\r\n")
    if delimiter is None:
        m = re.match(r"^[A-Za-z][A-Za-z0-9_]*([^A-Za-z0-9_]+)[A-Za-z]", line)
        if m and _is_header(line, m.group(1)):
            delimiter = m.group(1)
    if delimiter is not None and _is_header(line, delimiter):
        names = [n.lower() for n in line.split(delimiter)]
        trailing = names[-1] == "" and len(names) > 1
        if trailing:
            names.pop()
        return Layout(names, delimiter, True, trailing, line)
    if delimiter is None and _is_fixed_width_header(line):
        raise CostInputError(
            source,
            "fixed-width sacct output (no --parsable2): its columns are cut to width, "
            "so it cannot be read; rerun sacct with --parsable2 (-P)",
            1,
        )
    if not fields:
        raise CostInputError(
            source,
            "no header line and no field list: pass the sacct --format fields (--sacct-format)",
            1,
        )
    n = len(fields)
    if delimiter is None:
        for cand in CANDIDATES:
            if line.count(cand) in (n - 1, n):
                delimiter = cand
                break
        else:
            raise CostInputError(
                source, f"cannot tell the delimiter: pass --delimiter ({n} fields expected)", 1
            )
    count = len(line.split(delimiter))
    if count not in (n, n + 1):
        raise CostInputError(
            source, f"expected {n} fields (--sacct-format), found {count} with {delimiter!r}", 1
        )
    trailing = count == n + 1 and line.endswith(delimiter)
    return Layout(list(fields), delimiter, False, trailing, line)


def _is_fixed_width_header(line: str) -> bool:
    """sacct's default table header: field names padded with runs of spaces."""
    names = line.split()
    return (
        len(names) > 1
        and "  " in line.strip()
        and all(NAME_RE.match(n) for n in names)
        and any(n.lower() in ("jobid", "jobidraw") for n in names)
    )


def _is_header(line: str, delimiter: str) -> bool:
    names = line.split(delimiter)
    if names and names[-1] == "":
        names = names[:-1]
    return (
        bool(names)
        and all(NAME_RE.match(n) for n in names)
        and any(n.lower() in ("jobid", "jobidraw") for n in names)
    )


def read_text(
    data: Path | bytes,
    source: str,
    fields: list[str] | None = None,
    delimiter: str | None = None,
) -> AllocationSet:
    """Read one sacct text output (a file path or its bytes)."""
    scan = scan_text(data, source, fields, delimiter)
    if scan is None:
        return AllocationSet(
            SCHEMA.empty_table(), Counter({"blank line": _first_line(data)[1]}), [source]
        )
    acc, steps_again = scan
    allocs = acc.finish(steps_again)
    return AllocationSet(allocs, +acc.skipped, [source])


StepsAgain = Callable[[set[str]], list[dict[str, Any]]]


def scan_text(
    data: Path | bytes,
    source: str,
    fields: list[str] | None = None,
    delimiter: str | None = None,
    sink: Callable[[pa.Table], None] | None = None,
) -> tuple[fold.Accumulator, StepsAgain] | None:
    """Stream ``data`` chunk by chunk into an accumulator (None: only blank lines).

    Each chunk's allocation rows go to ``sink`` when given (so nothing is kept: the store's
    streaming ingest), else they stay in the accumulator for :meth:`fold.Accumulator.finish`.
    The second value reads the file again for the step rows of the allocations named.
    """
    first, first_no = _first_line(data)
    if first is None:
        return None
    layout = detect_layout(first, source, fields, delimiter)
    if layout.header and not first.endswith("\n"):
        raise CostInputError(source, "the header line is cut off (a truncated file?)", first_no)
    if "jobid" not in layout.fields:
        raise CostInputError(source, "no JobID field in the header / field list", first_no)
    columns = {
        ours: next((n for n in names if n in layout.fields), None) for ours, names in WANTED.items()
    }
    skip = first_no if layout.header else first_no - 1  # leading blank lines (+ header)
    parser = _ChunkParser(source, layout, [c for c in columns.values() if c])
    acc = fold.Accumulator(source, columns, header_first=layout.fields[0], sink=sink)
    acc.skipped["blank line"] += first_no - 1

    def work(chunk: bytes) -> tuple[int, fold.Piece]:
        batch = parser.parse(chunk)
        return batch.num_rows, acc.piece(batch, 1)

    line = skip + 1
    workers = _workers()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[tuple[int, fold.Piece]]] = deque()
        try:
            for chunk in _chunks(data, skip):
                pending.append(pool.submit(work, chunk))
                while len(pending) > workers:
                    line = _merge(acc, pending.popleft(), line)
            while pending:
                line = _merge(acc, pending.popleft(), line)
        finally:
            for fut in pending:
                fut.cancel()

    def steps_again(wanted: set[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        at = skip + 1
        for chunk in _chunks(data, skip):
            batch = parser.parse(chunk)
            out.extend(fold.step_rows(batch, columns, wanted, at, source))
            at += batch.num_rows
        return out

    return acc, steps_again


def _workers() -> int:
    """Threads for parsing (pyarrow releases the GIL); HPC_COST_THREADS overrides."""
    env = os.environ.get("HPC_COST_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _merge(acc: fold.Accumulator, fut: Future[tuple[int, fold.Piece]], line: int) -> int:
    """Fold one parsed chunk into ``acc``; its line numbers start at ``line``."""
    try:
        rows, piece = fut.result()
    except CostInputError as exc:  # line numbers in a chunk count from 1
        where = None if exc.line is None else exc.line + line - 1
        raise CostInputError(exc.source, exc.message, where) from None
    acc.merge(piece, line - 1)
    return line + rows


def _first_line(data: Path | bytes) -> tuple[str | None, int]:
    """The first non-blank line and its number (or None and the count of blank lines)."""
    fh = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")  # noqa: SIM115
    with fh:
        n = 0
        for n, raw in enumerate(fh, 1):
            if raw.strip():
                return raw.decode("utf-8", errors="replace"), n
    return None, n


def _chunks(data: Path | bytes, skip: int) -> Iterator[bytes]:
    """Whole lines, about CHUNK bytes at a time, after ``skip`` leading lines."""
    fh = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")  # noqa: SIM115
    with fh:
        for _ in range(skip):
            fh.readline()
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                return
            if not chunk.endswith(b"\n"):
                chunk += fh.readline()  # complete the last line
            yield chunk


class _ChunkParser:
    """Parses a chunk of whole lines into one record batch of string columns."""

    def __init__(self, source: str, layout: Layout, include: list[str]):
        names = list(layout.fields) + (["_trailing"] if layout.trailing else [])
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise CostInputError(source, f"field named twice: {', '.join(dup)}", 1)
        self.source, self.layout, self.names = source, layout, names
        self.delim = layout.delimiter.encode()
        self.read_options = pacsv.ReadOptions(
            column_names=names, block_size=2 * CHUNK, use_threads=False
        )
        self.convert = pacsv.ConvertOptions(
            include_columns=include,
            column_types={n: pa.string() for n in include},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )

    def parse(self, chunk: bytes) -> pa.RecordBatch:
        text, sep = chunk, self.delim
        if len(sep) > 1:  # map a multi-byte delimiter to a control byte absent here
            sub = next((c for c in b"\x1f\x1e\x1d\x1c" if bytes([c]) not in chunk), None)
            if sub is None:
                raise CostInputError(self.source, "cannot split on the delimiter", 1)
            text, sep = chunk.replace(sep, bytes([sub])), bytes([sub])
        try:
            table = pacsv.read_csv(
                io.BytesIO(text),
                read_options=self.read_options,
                parse_options=pacsv.ParseOptions(
                    delimiter=sep.decode(),
                    quote_char=False,
                    double_quote=False,
                    ignore_empty_lines=False,
                ),
                convert_options=self.convert,
            )
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            offset, why = _locate_bad_line(chunk, self.layout)
            raise CostInputError(self.source, why or f"unreadable: {exc}", offset) from None
        return (
            table.combine_chunks().to_batches()[0]
            if table.num_rows
            else (pa.RecordBatch.from_pylist([], schema=table.schema))
        )


def _locate_bad_line(chunk: bytes, layout: Layout) -> tuple[int | None, str | None]:
    """The first line of ``chunk`` that pyarrow refused: wrong field count or bad UTF-8."""
    want = len(layout.fields) + (1 if layout.trailing else 0)
    delim = layout.delimiter.encode()
    with io.BytesIO(chunk) as fh:
        for lineno, raw in enumerate(fh, 1):
            body = raw.rstrip(b"\r\n")
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                return lineno, f"not UTF-8 at byte {exc.start}"
            if not body:
                continue
            got = body.count(delim) + 1
            if got != want:
                return lineno, f"expected {want} fields, found {got}"
    return None, None
