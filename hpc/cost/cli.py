"""``hpc cost``: cost reports from sacct output and the framework's accounting records.

    hpc cost report [--sacct FILE ...] [--sacct-format FIELDS] [--delimiter D]
                    [--accounting DIR ...] [--live] [--prices FILE] [--start T] [--end T]
                    [--by user|account|partition|day|job] [--format table|csv|json|html]
                    [--out PATH] [--store [PATH]] [--cluster NAME]
    hpc cost estimate [-m] [key=value ...]      (hpc.cost.budget_cli)
    hpc cost budgets [--json]                   (hpc.cost.budget_cli)
    hpc cost ingest [--sacct FILE ...] [--live [--lookback DAYS | --start T --end T]]
                    [--accounting DIR ...] [--store PATH] [--cluster NAME]

Exit status: 0 on success, 2 on bad arguments or input (one line on standard error that
names the file and line, or the argument).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hpc.cost.common import CostInputError
from hpc.cost.html import to_html
from hpc.cost.prices import PriceTable, load_prices
from hpc.cost.render import side_notes, to_csv, to_json, to_table
from hpc.cost.report_rows import Report
from hpc.cost.run_usage import as_allocations, load_accounting

# pyarrow, numpy and the sacct readers are imported where rows are read as a table (a
# file, --live, ingest): a report over the store runs in SQL and starts in half the time.

FORMATS = ("table", "csv", "json", "html")
GROUPS = ("user", "account", "partition", "day", "job")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?(?:Z|[+-]\d{2}:?\d{2})?$")


class UsageError(Exception):
    """A bad command line; the message names the argument."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def parse_time(text: str, name: str) -> datetime:
    """``YYYY-MM-DD[THH:MM[:SS]][Z|+HH:MM]`` or ``now``; no zone means UTC."""
    if text == "now":
        return datetime.now(UTC).replace(microsecond=0)
    if not TIME_RE.match(text):
        raise UsageError(
            f"argument {name}: not a time: {text!r} (use YYYY-MM-DD[THH:MM[:SS]][Z|+HH:MM] or now)"
        )
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"argument {name}: {exc}: {text!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hpc cost",
        description="GPU/CPU cost reports from Slurm accounting "
        "(sacct) and hpc-launch's own accounting records.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, text in (("estimate", "estimate a job's cost"), ("budgets", "budget states")):
        sub.add_parser(name, help=f"{text} (hpc cost {name} --help)", add_help=False)
    rep = sub.add_parser(
        "report",
        help="aggregate and price allocations",
        description="Aggregate and price allocations over a time window.",
    )
    rep.add_argument(
        "--sacct",
        action="append",
        default=[],
        metavar="FILE",
        help="sacct output: --parsable2/--parsable (header or not) or --json; "
        "repeatable; - reads standard input",
    )
    rep.add_argument(
        "--sacct-format", metavar="FIELDS", help="the --format field list of headerless sacct files"
    )
    rep.add_argument(
        "--delimiter",
        metavar="D",
        help="the sacct --delimiter (default: from the header or first line)",
    )
    rep.add_argument(
        "--accounting",
        action="append",
        default=[],
        metavar="DIR",
        help="run directories (job.json + accounting JSONL) or their parent",
    )
    rep.add_argument(
        "--live", action="store_true", help="run sacct now (TZ=UTC, --allusers where permitted)"
    )
    rep.add_argument("--prices", metavar="FILE", help="price table (YAML)")
    rep.add_argument("--start", metavar="T", help="window start (UTC unless a zone is given)")
    rep.add_argument(
        "--end", metavar="T", help="window end (default: open; running jobs are counted up to now)"
    )
    rep.add_argument("--by", choices=GROUPS, default="account", help="group rows by")
    rep.add_argument("--format", choices=FORMATS, default="table", help="output format")
    rep.add_argument("--out", metavar="PATH", help="write here instead of standard output")
    rep.add_argument(
        "--store",
        nargs="?",
        const="",
        metavar="PATH",
        help="read the accounting store (hpc cost ingest) instead of sacct files; "
        "PATH defaults to $HPC_COST_STORE, else $HPC_STATE_DIR/cost.duckdb",
    )
    rep.add_argument("--cluster", metavar="NAME", help="with --store: this cluster's rows only")

    ing = sub.add_parser(
        "ingest",
        help="add sacct output and run records to the accounting store",
        description="Append sacct output (files, standard input or --live) and the "
        "framework's run records to the accounting store. Idempotent: rows already stored "
        "unchanged are left alone; a job seen again with a new state is updated.",
    )
    ing.add_argument(
        "--sacct", action="append", default=[], metavar="FILE", help="as for report; - is stdin"
    )
    ing.add_argument("--sacct-format", metavar="FIELDS", help="fields of headerless files")
    ing.add_argument("--delimiter", metavar="D", help="the sacct --delimiter")
    ing.add_argument(
        "--accounting", action="append", default=[], metavar="DIR", help="run directories"
    )
    ing.add_argument("--live", action="store_true", help="run sacct now (TZ=UTC, --duplicates)")
    ing.add_argument(
        "--lookback",
        type=float,
        metavar="DAYS",
        help="with --live: jobs from the last DAYS days (default: --start, else all history)",
    )
    ing.add_argument("--start", metavar="T", help="with --live: window start")
    ing.add_argument("--end", metavar="T", help="with --live: window end")
    ing.add_argument("--store", metavar="PATH", help="store file (default as for report)")
    ing.add_argument(
        "--cluster",
        metavar="NAME",
        help="cluster the rows belong to (default: $HPC_COST_CLUSTER, else 'default')",
    )
    return parser


def _delimiter(text: str | None) -> str | None:
    if text is None:
        return None
    text = {"\\t": "\t", "tab": "\t"}.get(text, text)
    if not text or "\n" in text or "\r" in text:
        raise UsageError(f"argument --delimiter: unusable delimiter {text!r}")
    return text


def run_report(args: argparse.Namespace) -> int:
    start = parse_time(args.start, "--start") if args.start else None
    end = parse_time(args.end, "--end") if args.end else None
    if start and end and start >= end:
        raise UsageError("argument --end: must be after --start")
    if args.store is not None and (args.sacct or args.live):
        raise UsageError("argument --store: reads the store; not with --sacct or --live")
    if args.cluster is not None and args.store is None:
        raise UsageError("argument --cluster: only with --store")
    if not (args.sacct or args.live or args.accounting or args.store is not None):
        raise UsageError(
            "nothing to report: give --sacct FILE, --live, --accounting DIR or --store"
        )
    if args.store is None:
        _arrow_ready()
    fields = _sacct_format(args.sacct_format)
    delimiter = _delimiter(args.delimiter)

    prices = None
    if args.prices:
        prices = load_prices(args.prices)
    if args.store is not None:
        report = _report_from_store(args, prices, start, end)
    else:
        from hpc.cost.model import AllocationSet  # noqa: PLC0415 (lazy: pyarrow)
        from hpc.cost.report import build_report  # noqa: PLC0415
        from hpc.cost.sacct.reader import live_sacct, read_sacct  # noqa: PLC0415

        sets = [read_sacct(path, fields, delimiter) for path in args.sacct]
        if args.live:
            sets.append(live_sacct(start, end))
        accounting = None
        if args.accounting:
            accounting = load_accounting(args.accounting)
        if sets:
            allocs = AllocationSet.concat(sets)
        else:
            assert accounting is not None
            allocs = as_allocations(accounting)
        if accounting is not None:
            allocs.skipped.update(accounting.skipped)
        report = build_report(
            allocs, prices, start, end, args.by, accounting, details=args.format == "html"
        )

    if args.format == "json":
        text = to_json(report)
    elif args.format == "csv":
        text = to_csv(report)
    elif args.format == "html":
        try:
            text = to_html(report)
        except ImportError as exc:
            raise UsageError(f"argument --format html needs plotly ({exc})") from None
    else:
        text = to_table(report)
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"argument --out: {args.out}: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if args.format in ("json", "csv") or args.out:
        for line in side_notes(report) if args.format in ("json", "csv") else []:
            print(line, file=sys.stderr)
        if args.out:
            print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _report_from_store(
    args: argparse.Namespace,
    prices: PriceTable | None,
    start: datetime | None,
    end: datetime | None,
) -> Report:
    """The report over the store: in SQL where it can be, else over the loaded rows."""
    from hpc.cost.store import Store  # noqa: PLC0415 (lazy: duckdb only for the store)
    from hpc.cost.store_report import SQL_GROUPS, build_store_report  # noqa: PLC0415

    html = args.format == "html"
    with Store(args.store or None, read_only=True) as store:
        accounting = store.load_runs(args.cluster)
        if args.accounting:
            loaded = load_accounting(args.accounting)
            loaded.runs = {**accounting.runs, **loaded.runs}
            accounting = loaded
        joined = accounting if accounting.runs else None
        if not store.count(args.cluster):  # only run records (if any) are stored
            allocs = as_allocations(accounting)
        elif args.by in SQL_GROUPS and not html:
            report = build_store_report(
                store, prices, start, end, args.by, joined, cluster=args.cluster
            )
            report.skipped = +(report.skipped + accounting.skipped)
            return report
        else:  # rows surely outside the window stay in the store (unless joined: the
            # accounting note counts matches over all rows)
            _arrow_ready()
            allocs = store.load(start, end, args.cluster, prune=joined is None)
    from hpc.cost.report import build_report  # noqa: PLC0415 (lazy: pyarrow, numpy)

    allocs.skipped.update(accounting.skipped)
    return build_report(allocs, prices, start, end, args.by, joined, details=html)


def run_ingest(args: argparse.Namespace) -> int:
    from hpc.cost.ingest import (  # noqa: PLC0415 (lazy: duckdb only for the store)
        IngestResult,
        ingest_accounting,
        ingest_live,
        ingest_sacct,
        spooled_stdin,
    )
    from hpc.cost.store import Store  # noqa: PLC0415

    if not (args.sacct or args.live or args.accounting):
        raise UsageError("nothing to ingest: give --sacct FILE, --live or --accounting DIR")
    if not args.live and (args.lookback is not None or args.start or args.end):
        raise UsageError("arguments --lookback/--start/--end: only with --live")
    if args.lookback is not None and (args.start or args.lookback <= 0):
        raise UsageError("argument --lookback: a positive number of days, not with --start")
    start = parse_time(args.start, "--start") if args.start else None
    end = parse_time(args.end, "--end") if args.end else None
    if args.lookback is not None:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=args.lookback)
    if start and end and start >= end:
        raise UsageError("argument --end: must be after --start")
    fields = _sacct_format(args.sacct_format)
    delimiter = _delimiter(args.delimiter)
    cluster = args.cluster or os.environ.get("HPC_COST_CLUSTER") or "default"
    accounting = load_accounting(args.accounting) if args.accounting else None
    results: list[IngestResult] = []
    with Store(args.store) as store:
        for path in args.sacct:
            if path == "-":
                with spooled_stdin() as spool:
                    results.append(
                        ingest_sacct(store, spool, "<stdin>", cluster, fields, delimiter)
                    )
            else:
                results.append(ingest_sacct(store, Path(path), path, cluster, fields, delimiter))
        if args.live:
            results.append(ingest_live(store, cluster, start, end))
        if accounting is not None:
            results.append(ingest_accounting(store, cluster, accounting))
        total = store.count()
        where = store.path
    for r in results:
        c = r.counts
        line = f"{r.source}: {c.new} new, {c.updated} updated, {c.unchanged} unchanged"
        if r.skipped:
            line += "; skipped " + ", ".join(f"{n} {why}" for why, n in sorted(r.skipped.items()))
        print(line, file=sys.stderr)
        for note in r.notes:
            print(f"note: {note}", file=sys.stderr)
    print(f"store {where}: {total} allocation(s) [cluster {cluster}]", file=sys.stderr)
    return 0


def _sacct_format(text: str | None) -> list[str] | None:
    """``--sacct-format``'s fields (None: the reader's default)."""
    if not text:
        return None
    from hpc.cost.sacct.reader import parse_format  # noqa: PLC0415 (lazy: pyarrow)

    try:
        return parse_format(text)
    except ValueError as exc:
        raise UsageError(f"argument --sacct-format: {exc}") from None


def _arrow_ready() -> None:
    """Before rows are read as an Arrow table: no pandas, memory given back at once."""
    _without_pandas()
    _tune_arrow()


def _without_pandas() -> None:
    """Keep pyarrow from importing pandas (0.5 s and ~60 MiB) in this CLI process.

    pyarrow imports pandas, when installed, on its first Python-to-Arrow conversion; this
    command never converts to or from pandas. Only done when nothing imported pandas yet;
    a later ``import pandas`` still works (pyarrow's pandas interop stays off).
    """
    if "pandas" in sys.modules:
        return

    class _NoPandas:
        @staticmethod
        def find_spec(name: str, path: object = None, target: object = None) -> None:
            if name == "pandas":
                raise ImportError("pandas not needed by hpc cost")

    import pyarrow as pa  # noqa: PLC0415 (lazy: the store's SQL report needs none)

    blocker = _NoPandas()
    sys.meta_path.insert(0, blocker)
    try:
        pa.scalar(0)  # pyarrow now records "no pandas"
    except ImportError:
        pass
    finally:
        sys.meta_path.remove(blocker)


def _tune_arrow() -> None:
    """Give freed memory back at once (jemalloc, decay 0): peak RSS stays near live data."""
    import pyarrow as pa  # noqa: PLC0415

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except (NotImplementedError, pa.ArrowNotImplementedError):
        pass  # a pyarrow built without jemalloc: keep its default pool


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``main(["report", "--sacct", "f.psv", "--format", "json"])``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("estimate", "budgets"):  # their own module (hpc.cost.budget_cli)
        from hpc.cost.budget_cli import main as budget_main  # noqa: PLC0415

        return budget_main(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "report":
            return run_report(args)
        if args.command == "ingest":
            _arrow_ready()
            return run_ingest(args)
        raise UsageError(f"unknown command {args.command!r}")
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (UsageError, CostInputError) as exc:
        print(f"hpc cost: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
