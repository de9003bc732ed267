"""``hpc cost estimate`` and ``hpc cost budgets``.

    hpc cost estimate [-m] [-cd DIR] [-cp DIR] [-cn NAME] [--prices FILE] [--json] [key=value ...]
    hpc cost budgets [--json] [--store PATH]

``estimate`` composes the job (a sweep with ``-m``: every task) exactly as ``hpc-launch``
would, prints its upper bound and typical figure and what the matching budgets would
say, and submits nothing. ``budgets`` shows each budget's state this period.
Exit status: 0, or 2 on bad input (one line naming the file and key, or the argument).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from hpc.cost.model import CostInputError
from hpc.spec.errors import ConfigError

USAGE_ESTIMATE = (
    "usage: hpc cost estimate [-m] [-cd DIR] [-cp DIR] [-cn NAME] [--prices FILE] [--json] "
    "[key=value ...]"
)
USAGE_BUDGETS = "usage: hpc cost budgets [--json] [--store PATH]"


def err(message: str) -> None:
    print(f"hpc cost: {message}", file=sys.stderr)


def _take(args: list[str], flag: str) -> str | None:
    if flag not in args:
        return None
    i = args.index(flag)
    if i + 1 >= len(args):
        raise ConfigError(flag, "needs a value")
    value = args[i + 1]
    del args[i : i + 2]
    return value


def _configs(overrides: list[str], multirun: bool) -> tuple[list[tuple[dict[str, Any], int]], bool]:
    from hpc.spec.jobspec import load_spec  # noqa: PLC0415 (lazy: hydra)
    from hpc.spec.sources import split_flags  # noqa: PLC0415
    from hpc.sweeps.plan import plan_sweep  # noqa: PLC0415

    source, rest = split_flags(overrides)
    bad = next((a for a in rest if a.startswith("-")), None)
    if bad:
        raise ConfigError(bad, f"unknown option ({USAGE_ESTIMATE})")
    if multirun:
        plan = plan_sweep(rest, source=source)
        counts: dict[tuple[str, ...], int] = {}
        for t in plan.tasks:
            counts[t.shape] = counts.get(t.shape, 0) + 1
        return [(s.config, counts.get(k, 0)) for k, s in plan.shapes.items()], True
    return [(load_spec(rest, source=source).config, 1)], False


def cmd_estimate(argv: list[str]) -> int:
    from hpc.cost.estimate import find_prices  # noqa: PLC0415
    from hpc.cost.guard import before_submit  # noqa: PLC0415

    args = list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE_ESTIMATE)
        print(__doc__.split("\n\n")[2].strip())
        return 0
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    multirun = any(a in ("-m", "--multirun") for a in args)
    args = [a for a in args if a not in ("-m", "--multirun")]
    prices_file = _take(args, "--prices")
    if prices_file:
        find_prices(prices_file)  # a bad file fails here, naming itself
        os.environ["HPC_COST_PRICES"] = prices_file
    configs, sweep = _configs(args, multirun)
    guard = before_submit(configs, sweep=sweep)
    if as_json:
        e = guard.estimate
        print(
            json.dumps(
                {
                    "jobs": e.jobs,
                    "currency": e.currency,
                    "upper": None if e.upper is None else vars(e.upper),
                    "typical": None if e.typical is None else vars(e.typical),
                    "typical_runs": e.typical_runs,
                    "budget_warnings": guard.warnings,
                    "refused_by": None if guard.refused is None else guard.refused.line(),
                    "notes": e.notes,
                },
                indent=2,
            )
        )
        return 0
    for line in guard.lines():
        print(line)
    if guard.refused is not None:
        print(f"a submit would be refused: {guard.refused.line()}")
    return 0


def cmd_budgets(argv: list[str]) -> int:
    from hpc.cost.budgets import gather_usage, load_budgets, state_lines  # noqa: PLC0415

    args = list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE_BUDGETS)
        return 0
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    store = _take(args, "--store")
    if args:
        raise ConfigError(args[0], f"unknown argument ({USAGE_BUDGETS})")
    from hpc.cost.estimate import budget_files  # noqa: PLC0415

    files = budget_files()
    budgets = load_budgets(files)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = state_lines(budgets, gather_usage(budgets, now, store), now)
    if as_json:
        print(json.dumps({"files": [str(f) for f in files], "budgets": rows}, indent=2))
        return 0
    if not rows:
        print("no budgets (budgets.yaml in the profile dirs, or $HPC_BUDGETS)")
        return 0
    from rich.console import Console  # noqa: PLC0415 (lazy: rich only for the table)
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"budgets at {now:%Y-%m-%d %H:%M} UTC")
    for column in ("budget", "applies to", "consumed", "used", "policy", "state", "file"):
        table.add_column(column, overflow="fold")
    for r in rows:
        policy = r["policy"] + (" + hold sweeps" if r["hold"] else "")
        state = "[red]spent[/red]" if r["state"] == "spent" else "ok"
        table.add_row(
            r["name"], r["scope"], r["shown"], f"{r['percent']:.1f}%", policy, state, r["file"]
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return 0


def main(argv: Sequence[str]) -> int:
    """``argv``: the subcommand (estimate or budgets) and its arguments."""
    command, rest = argv[0], list(argv[1:])
    try:
        return cmd_estimate(rest) if command == "estimate" else cmd_budgets(rest)
    except (ConfigError, CostInputError) as exc:
        err(f"error: {exc}")
        return 2
    except KeyError as exc:
        err(f"error: cluster: {exc.args[0]}")
        return 2
