"""The user's primary config, and the root every composition starts from.

The root (stored in Hydra's ConfigStore) lists the framework's groups with their
choices, then the user's primary config::

    defaults: [_self_, resources: default, ..., cluster: local, <the user's config>]

so the user's values win over the framework's defaults and profiles, and the command
line wins over both. The primary is read from the project dirs only and stored under
a name of its own: a profile dir can never shadow it. A framework group the primary
picks in its defaults list (``- cluster: slurm``) becomes the root's choice, so it
needs no ``override`` keyword; its ``hydra.searchpath`` extends the search path and
the rest of its ``hydra:`` node (an existing Hydra app's) is not used.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from hpc.spec.errors import ConfigError
from hpc.spec.schema import framework_root
from hpc.spec.sources import ConfigSource, absolute_dir, find_primary

# The framework's config groups, in merge order, with their default option. The cluster
# comes last: a cluster profile may set any framework section (`# @package _global_`).
FRAMEWORK_GROUPS = {
    "resources": "default",
    "preemption": "default",
    "placement": "default",
    "nccl": "default",
    "accounting": "default",
    "fault": "default",
    "container": "default",
    "cluster": "local",
}


@dataclass(frozen=True)
class Primary:
    where: str  # the file (or "ConfigStore:<name>") it came from
    store_name: str  # its name in the ConfigStore
    choices: dict[str, str] = field(default_factory=dict)  # framework groups it picks
    searchpath: tuple[str, ...] = ()
    job_schema: str | None = None


def load_primary(source: ConfigSource) -> Primary | None:
    """The primary config named by ``source`` (None: framework sections only)."""
    name = source.config_name
    if name is None:
        return None
    found = find_primary(source)
    if found is None:
        if f"{name}.yaml" in ConfigStore.instance().repo:  # a structured primary config
            return Primary(where=f"ConfigStore:{name}", store_name=name)
        dirs = ", ".join(source.project_dirs() if not source.config_dirs else source.config_dirs)
        raise ConfigError("--config-name", f"{name}.yaml not found in {dirs}")
    where, text = found
    try:
        loaded = yaml.safe_load(text)
        cfg = OmegaConf.create(loaded if loaded is not None else {})
    except Exception as exc:
        raise ConfigError(where, f"not a YAML config ({_first_line(exc)})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(where, "must be a mapping of keys to values")
    searchpath = _take_hydra(cfg, where)
    choices = _take_framework_choices(cfg, where)
    schema = OmegaConf.select(cfg, "job.schema", default=None)
    digest = hashlib.sha256(f"{where}\n{text}".encode()).hexdigest()[:12]
    store_name = f"hpc_primary_{digest}"
    cs = ConfigStore.instance()
    if f"{store_name}.yaml" not in cs.repo:
        cs.store(name=store_name, node=cfg)
    return Primary(where, store_name, choices, searchpath, str(schema) if schema else None)


def _take_hydra(cfg: DictConfig, where: str) -> tuple[str, ...]:
    hydra = cfg.pop("hydra", None)
    if not isinstance(hydra, DictConfig):
        return ()
    entries = hydra.get("searchpath") or []
    if not isinstance(entries, ListConfig):
        raise ConfigError(f"{where}: hydra.searchpath", "must be a list of dirs")
    return tuple(
        str(e) if "://" in str(e) else absolute_dir("hydra.searchpath", str(e)) for e in entries
    )


def _take_framework_choices(cfg: DictConfig, where: str) -> dict[str, str]:
    defaults = cfg.get("defaults")
    if defaults is None:
        return {}
    if not isinstance(defaults, ListConfig):
        raise ConfigError(f"{where}: defaults", "must be a list")
    choices: dict[str, str] = {}
    kept: list[Any] = []
    for entry in defaults:
        if isinstance(entry, DictConfig) and len(entry) == 1:
            (group, choice), *_ = entry.items()
            group = str(group).lstrip("/")
            if group in FRAMEWORK_GROUPS and isinstance(choice, str):
                choices[group] = choice
                continue
        kept.append(entry)
    cfg["defaults"] = kept
    return choices


def store_root(primary: Primary | None) -> str:
    """Store the root config for this primary; returns its ConfigStore name."""
    choices = {**FRAMEWORK_GROUPS, **(primary.choices if primary else {})}
    defaults: list[Any] = ["_self_", *({group: c} for group, c in choices.items())]
    if primary is not None:
        defaults.append(primary.store_name)
    digest = hashlib.sha256(repr(defaults).encode()).hexdigest()[:12]
    name = f"hpc_root_{digest}"
    cs = ConfigStore.instance()
    if f"{name}.yaml" not in cs.repo:
        cs.store(name=name, node={"defaults": defaults, **framework_root()})
    return name


def import_job_schema(primary: Primary | None, overrides: Sequence[str]) -> None:
    """Import the module ``job.schema`` names (it registers the user's structured configs);
    an override wins over the primary config. Importing twice costs nothing."""
    module = primary.job_schema if primary else None
    for text in overrides:
        key, _, value = text.lstrip("+").partition("=")
        if key == "job.schema":
            module = value.strip("'\"") or None
    if not module:
        return
    try:
        importlib.import_module(module)
    except Exception as exc:
        raise ConfigError("job.schema", f"cannot import {module!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
