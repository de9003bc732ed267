"""Slurm hostlist expressions (``n[01-04,07],gpu[1-2]-ib``) to host names.

Built on python-hostlist with Slurm's semantics where the two differ: duplicates
are kept and input order is preserved (python-hostlist drops duplicates by
default), and a host term with three or more bracket groups expands in
libslurm's order (``_push_range_list``): the last group varies fastest, the one
before it is the outermost loop, and earlier groups recurse inside it.
"""

from __future__ import annotations

import re

import hostlist as _hostlist

_GROUP = re.compile(r"\[([^\[\]]*)\]")


class HostlistError(ValueError):
    """The expression is not a valid hostlist."""


def expand(expression: str) -> list[str]:
    """All host names of ``expression`` in Slurm's order, duplicates kept."""
    hosts: list[str] = []
    for term in _split_terms(expression):
        if term.count("[") >= 3:
            hosts.extend(_expand_many_groups(term))
        else:
            hosts.extend(_expand_plain(term))
    return hosts


def first_host(expression: str) -> str:
    hosts = expand(expression)
    if not hosts:
        raise HostlistError(f"hostlist {expression!r} names no host")
    return hosts[0]


def collect(hosts: list[str]) -> str:
    """The compact form of ``hosts`` (``n1,n2,n3`` → ``n[1-3]``)."""
    return str(_hostlist.collect_hostlist(hosts))


def _expand_plain(term: str) -> list[str]:
    try:
        return list(_hostlist.expand_hostlist(term, allow_duplicates=True))
    except _hostlist.BadHostlist as exc:
        raise HostlistError(f"bad hostlist {term!r}: {exc}") from None


def _split_terms(expression: str) -> list[str]:
    """Split at commas outside brackets; empty terms (leading/trailing commas) vanish."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in expression.strip():
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"bad hostlist {expression!r}: unbalanced ']'")
        if char == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise HostlistError(f"bad hostlist {expression!r}: unbalanced '['")
    terms.append("".join(current).strip())
    return [t for t in terms if t]


def _expand_many_groups(term: str) -> list[str]:
    pieces = _GROUP.split(term)  # text, group, text, group, ..., text
    texts, groups = pieces[0::2], pieces[1::2]
    values = [_expand_plain(f"x[{g}]") for g in groups]
    values = [[v[1:] for v in vs] for vs in values]  # drop the dummy prefix

    def combos(k: int) -> list[list[str]]:
        """Index tuples for the first k groups in libslurm's order."""
        if k == 0:
            return [[]]
        if k == 1:
            return [[v] for v in values[0]]
        return [
            [*inner, mid, last]
            for mid in values[k - 2]
            for inner in combos(k - 2)
            for last in values[k - 1]
        ]

    out = []
    for combo in combos(len(groups)):
        name = texts[0]
        for value, text in zip(combo, texts[1:], strict=True):
            name += value + text
        out.append(name)
    return out
