"""The installed entry points of one group, read without :mod:`importlib.metadata`.

Importing importlib.metadata (with the email parser it brings) and listing every
distribution costs about 20 ms of each ``hpc-launch`` start, a tenth of a dry run.
This reads the same files in the same order: each ``sys.path`` directory's
``*.dist-info`` / ``*.egg-info`` folders (grouped by normalized name, as
importlib.metadata's path finder lists them), and their ``entry_points.txt``.
Where that is not the whole picture (a zip on ``sys.path``, a meta-path finder
that brings its own distributions) importlib.metadata answers instead.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from dataclasses import dataclass
from importlib.machinery import PathFinder
from typing import Any

_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")


@dataclass(frozen=True)
class EntryPoint:
    """``name = module:attr`` of ``group`` (the part of importlib's EntryPoint used here)."""

    name: str
    value: str
    group: str

    def load(self) -> Any:
        """Import the module and return the named object, as importlib.metadata does."""
        match = _VALUE.match(self.value)
        if match is None:
            raise ImportError(f"malformed entry point {self.name} = {self.value!r}")
        obj: Any = importlib.import_module(match["module"])
        for part in (match["attr"] or "").split("."):
            if part:
                obj = getattr(obj, part)
        return obj


def entry_points(group: str) -> list[EntryPoint]:
    """Every distribution's entry points of ``group``, in discovery order (duplicates kept)."""
    if not _plain_paths():
        return _from_importlib(group)
    found: list[EntryPoint] = []
    for folder in _metadata_dirs():
        try:
            with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as fh:
                text = fh.read()
        except OSError:  # no entry points, or not readable: importlib.metadata skips it too
            continue
        if f"[{group}]" in text:
            found += _parse(text, group)
    return found


def _plain_paths() -> bool:
    """Whether sys.path's directories are the only place distributions come from."""
    others = [
        finder
        for finder in sys.meta_path
        if finder is not PathFinder and hasattr(finder, "find_distributions")
    ]
    return not others and not any(os.path.isfile(entry) for entry in sys.path if entry)


def _metadata_dirs() -> list[str]:
    """The metadata folders of sys.path, in importlib.metadata's order."""
    return _metadata_dirs_of(tuple(sys.path), os.getcwd())


@functools.lru_cache(maxsize=4)  # a backend's and a job schema's lookups share one listing
def _metadata_dirs_of(path: tuple[str, ...], _cwd: str) -> list[str]:
    found: list[str] = []
    for root in path:
        try:
            children = os.listdir(root or ".")
        except OSError:
            continue
        groups: dict[str, list[str]] = {}
        for child in children:
            low = child.lower()
            if low.endswith((".dist-info", ".egg-info")):
                name = low.rpartition(".")[0].partition("-")[0]
                normalized = re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")
                groups.setdefault(normalized, []).append(os.path.join(root, child))
        for folders in groups.values():
            found += folders
    return found


def _parse(text: str, group: str) -> list[EntryPoint]:
    """The ``group`` section of an entry_points.txt (the format importlib.metadata reads)."""
    found: list[EntryPoint] = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section == group:
            name, _, value = line.partition("=")
            found.append(EntryPoint(name.strip(), value.strip(), group))
    return found


def _from_importlib(group: str) -> list[EntryPoint]:
    from importlib.metadata import distributions  # noqa: PLC0415 (lazy: the rare fallback)

    return [
        EntryPoint(ep.name, ep.value, group)
        for dist in distributions()
        for ep in dist.entry_points.select(group=group)
    ]
