"""Cron expressions (``MIN HOUR DOM MON DOW``) and their next times in the cluster's zone.

Parsing and iteration are croniter's. Only the five standard fields are accepted
(numbers, ``*``, ranges, lists, steps, and month/day names), because ``scrontab``
understands exactly those; croniter's extensions (seconds, years, ``L``, ``#``,
``H``, ``@daily`` ...) are rejected with a one-line message.

Times are wall-clock times in the cluster's local zone: the zone this host runs
in (``TZ``, else ``/etc/timezone``, else the ``/etc/localtime`` link), which is
what ``sbatch --begin`` and slurmctld's scrontab use.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
from pathlib import Path
from zoneinfo import ZoneInfo

from hpc.spec.errors import ConfigError

_NAMES = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|sun|mon|tue|wed|thu|fri|sat"
_VALUE = rf"(?:\d+|{_NAMES})"
_TERM = re.compile(rf"^(?:\*|{_VALUE}(?:-{_VALUE})?)(?:/\d+)?$", re.I)
FIELDS = ("minute", "hour", "day of month", "month", "day of week")
RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def parse(expr: str) -> str:
    """The expression with single spaces; ConfigError (key ``--cron``) when it is not valid."""
    from croniter import croniter  # noqa: PLC0415 (lazy: croniter only to parse and step cron)

    fields = str(expr).split()
    if len(fields) != 5:
        raise ConfigError(
            "--cron",
            f"{expr!r}: expected 5 fields (MIN HOUR DOM MON DOW), got {len(fields)}",
        )
    for name, (low, high), field in zip(FIELDS, RANGES, fields, strict=True):
        for term in field.split(","):
            if not _TERM.match(term):
                raise ConfigError("--cron", f"{expr!r}: {name} field {field!r} is not valid")
            for number in re.findall(r"\d+", term.split("/")[0]):
                if not low <= int(number) <= high:
                    raise ConfigError(
                        "--cron", f"{expr!r}: {name} {number} is out of range ({low}-{high})"
                    )
            step = term.partition("/")[2]
            if step and int(step) == 0:
                raise ConfigError("--cron", f"{expr!r}: {name} step 0 is not valid")
    text = " ".join(fields)
    try:
        it = croniter(text, _dt.datetime.now())
    except Exception as exc:  # croniter's own error types, all one line
        message = re.sub(r"^\[[^]]*\]\s*", "", str(exc))
        raise ConfigError("--cron", f"{expr!r} is not valid: {message}") from None
    try:
        it.get_next(_dt.datetime)
    except Exception:  # 30 Feb, 31 Apr ...
        raise ConfigError("--cron", f"{expr!r} never matches a real date") from None
    return text


def zone_name() -> str:
    """The IANA name of this host's local zone (the cluster's), ``UTC`` when unknown."""
    candidates: list[str] = []
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        candidates.append(tz)
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    try:
        link = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in link:
            candidates.append(link.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for name in candidates:
        if not name:
            continue
        try:
            ZoneInfo(name)
        except Exception:
            continue
        return name
    return "UTC"


def zone(name: str) -> _dt.tzinfo:
    return ZoneInfo(name)


def next_time(expr: str, zone_name_: str, after: _dt.datetime | None = None) -> _dt.datetime:
    """The first time after ``after`` (default now) matching ``expr``, aware, in the zone.

    A wall-clock time that repeats when clocks go back (DST) is returned once: the
    result's wall-clock time is always later than ``after``'s.
    """
    from croniter import croniter  # noqa: PLC0415 (lazy: croniter only to parse and step cron)

    tz = zone(zone_name_)
    start = (after or _dt.datetime.now(tz)).astimezone(tz)
    it = croniter(expr, start)
    for _ in range(3):
        candidate = it.get_next(_dt.datetime).astimezone(tz)
        if candidate.replace(tzinfo=None) > start.replace(tzinfo=None):
            return candidate
    return candidate


def next_times(
    expr: str, zone_name_: str, count: int, after: _dt.datetime | None = None
) -> list[_dt.datetime]:
    out: list[_dt.datetime] = []
    current = after
    for _ in range(count):
        current = next_time(expr, zone_name_, current)
        out.append(current)
    return out


def wall_clock(when: _dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS``: the form ``sbatch --begin`` reads as local time."""
    return when.strftime("%Y-%m-%dT%H:%M:%S")
