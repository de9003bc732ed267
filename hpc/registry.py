"""Backends by name, from the entry points of group ``hpc_launch.launchers``.

A backend installed as a separate package declares
``[project.entry-points."hpc_launch.launchers"] name = "module:LauncherClass"``.
Only the backend asked for is imported, so the submit path stays light.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib.resources import files

from hydra.core.config_store import ConfigStore

from hpc.backend import Launcher
from hpc.entry_points import EntryPoint, entry_points

GROUP = "hpc_launch.launchers"
JOB_SCHEMA_GROUP = "hpc_launch.job_schemas"  # name -> "module:SCHEMAS" (dict of JobConfigs)


@functools.cache
def _entry_points(group: str = GROUP) -> dict[str, EntryPoint]:
    # Every distribution, not entry_points()'s first one per name: a stale
    # hpc_launch.egg-info in a checkout (on sys.path as the cwd) must not hide the
    # installed metadata's backends.
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group):
        found.setdefault(ep.name, ep)
    return found


def job_schema_entries() -> list[EntryPoint]:
    """The installed job schemas' entry points (the example digits job's among them)."""
    return [
        _entry_points(JOB_SCHEMA_GROUP)[name] for name in sorted(_entry_points(JOB_SCHEMA_GROUP))
    ]


def available() -> list[str]:
    """The names of every installed backend."""
    return sorted(_entry_points())


@functools.cache
def launcher_class(name: str) -> type[Launcher]:
    try:
        entry = _entry_points()[name]
    except KeyError:
        raise KeyError(f"unknown launcher {name!r} (one of {', '.join(available())})") from None
    try:
        cls = entry.load()
    except ImportError as exc:
        raise KeyError(f"launcher {name!r} cannot be loaded ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Launcher)):
        raise KeyError(f"launcher {name!r}: {entry.value} is not an hpc.backend.Launcher")
    return cls


def get_launcher(name: str) -> Launcher:
    return launcher_class(name)()


def register_schemas(names: Iterable[str]) -> None:
    """Store the cluster schemas of these backends as schema/cluster/<name> (once each).

    A backend without a YAML file under configs/cluster/ also becomes the option
    ``cluster=<name>``. Unknown names are skipped: composition then names the missing
    config group option."""
    cs = ConfigStore.instance()
    for name in names:
        if f"{name}.yaml" in cs.repo.get("schema", {}).get("cluster", {}):
            continue
        try:
            schema = launcher_class(name).schema
        except KeyError:
            continue
        cs.store(group="schema/cluster", name=name, node=schema)
        if not (files("hpc.configs") / "cluster" / f"{name}.yaml").is_file():
            # A backend from another package: its schema is the option `cluster=<name>`.
            cs.store(group="cluster", name=name, node=schema)
