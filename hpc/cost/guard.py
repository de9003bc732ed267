"""The estimate and budget check that ``hpc-launch`` runs before it submits anything.

:func:`before_submit` returns the lines to print (the estimate, budget warnings) and
the budget that refuses the launch, if any: the caller prints its one line and exits
with :data:`hpc.exitcodes.BUDGET_REFUSED` before anything is submitted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hpc.cost.estimate import (
    Estimate,
    Request,
    budget_files,
    current_user,
    estimate,
    find_prices,
    request_of,
)
from hpc.spec.rules import parse_time_limit

if TYPE_CHECKING:  # hpc.cost.budgets imports pyarrow (via hpc.cost.model): only with a file
    from hpc.cost.budgets import Verdict


@dataclass
class Guard:
    estimate: Estimate
    warnings: list[str] = field(default_factory=list)
    refused: Verdict | None = None

    def lines(self) -> list[str]:
        return [self.estimate.line(), *self.estimate.notes, *self.warnings]

    def refusal(self, dry_run: bool) -> str | None:
        """The one line that stops a submit (None: go on; a dry run only notes it)."""
        if self.refused is None or dry_run:
            return None
        return f"{self.refused.line()}; nothing submitted"

    def shown(self) -> list[str]:
        """The lines to show when the launch goes on (a dry run notes a refusal)."""
        if self.refused is None:
            return self.lines()
        return [*self.lines(), f"note: a submit would be refused: {self.refused.line()}"]


def request_for(config: Mapping[str, Any]) -> Request:
    limit = (config.get("resources") or {}).get("time")
    return request_of(config, parse_time_limit(str(limit)) if limit else None)


def job_key(config: Mapping[str, Any], sweep: bool) -> dict[str, str | None]:
    req = request_for(config)
    return {
        "account": req.account,
        "user": current_user(),
        "project": req.project,
        "sweep": req.name if sweep else None,
    }


def before_submit(
    configs: Iterable[tuple[Mapping[str, Any], int]],
    *,
    sweep: bool = False,
    check_budgets: bool = True,
    now: datetime | None = None,
) -> Guard:
    """Estimate ``count`` jobs of each config; check every matching budget.

    Raises CostInputError (naming the file and key) for a bad budgets or prices file.
    """
    items = list(configs)
    files = budget_files() if check_budgets else []
    if files:
        from hpc.cost.budgets import check, gather_usage, load_budgets  # noqa: PLC0415

        budgets = load_budgets(files)
    else:
        budgets = []
    prices = next((b.prices for b in budgets if b.prices is not None), None) or find_prices()
    est = estimate([(request_for(c), n) for c, n in items], prices)
    guard = Guard(est)
    if not budgets or not items:
        return guard
    from hpc.cost.budgets import check, gather_usage  # noqa: PLC0415

    now = now or datetime.now(UTC)
    key = job_key(items[0][0], sweep)
    matching = [b for b in budgets if b.matches(key)]
    usage = gather_usage(matching, now)
    scheduled = bool(os.environ.get("HPC_SCHEDULE"))
    for verdict in check(matching, key, est, usage, now, scheduled=scheduled):
        if verdict.refused and guard.refused is None:
            guard.refused = verdict
        elif not verdict.refused:
            guard.warnings.append(verdict.line())
    return guard
