"""``hpc config [-cd DIR] [-cp DIR] [-cn NAME] [key=value ...]``: where the config comes from.

Prints the search path (first match wins; missing dirs marked), the primary config,
then every framework value with the config that set it last: a profile, a group
option, the user's config, the command line, or the framework's default. Composes
exactly as ``hpc-launch`` would, so a bad override fails the same way (exit 2).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from hpc.spec import hydra_internals
from hpc.spec.compose import compose, composition_inputs, to_container
from hpc.spec.errors import ConfigError
from hpc.spec.primary import load_primary
from hpc.spec.rules import flat_items
from hpc.spec.sources import search_path, split_flags

FRAMEWORK_SECTIONS = (
    "resources",
    "cluster",
    "tracking",
    "checkpoint",
    "preemption",
    "placement",
    "nccl",
    "accounting",
    "fault",
    "container",
)

USAGE = "usage: hpc config [-cd DIR] [-cp DIR] [-cn NAME] [key=value ...]"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        print(__doc__.split("\n\n", 1)[1].strip())
        return 0
    if os.getcwd() not in sys.path:  # job.schema modules of the project, as hpc-launch
        sys.path.insert(0, os.getcwd())
    try:
        source, overrides = split_flags(args)
        bad = next((a for a in overrides if a.startswith("-")), None)
        if bad:
            raise ConfigError(bad, f"unknown option (see {USAGE})")
        cfg = to_container(compose(overrides, source))
        primary = load_primary(source)
        path, root, rest = composition_inputs(overrides, source)
    except ConfigError as exc:
        print(f"hpc config: error: {exc}", file=sys.stderr)
        return 2
    print("search path (first match wins):")
    readable = {url for _, url in path}
    for provider, url in search_path(source, primary.searchpath if primary else ()):
        print(f"  {provider:<24} {url}{'' if url in readable else '   (missing)'}")
    print(f"primary config: {primary.where if primary else '(none: framework sections only)'}")
    origins = value_origins(path, root, rest, primary.store_name if primary else None)
    names = {primary.store_name: primary.where} if primary else {}
    print("framework values (and where each was set last):")
    values = flat_items({k: cfg[k] for k in FRAMEWORK_SECTIONS if k in cfg})
    width = max((len(k) for k in values), default=0)
    for key, value in values.items():
        origin = command_line_origin(key, rest) or origins.get(key, "framework default")
        for store_name, where in names.items():
            origin = origin.replace(store_name, where)
        print(f"  {key:<{width}} = {value!r:<20} # {origin}")
    return 0


def value_origins(
    path: list[tuple[str, str]], root: str, overrides: list[str], primary: str | None
) -> dict[str, str]:
    """Leaf key -> the config that set it last (None-safe: {} without Hydra internals)."""
    merged = hydra_internals.config_origins(path, root, overrides)
    if merged is None:
        return {}
    origins: dict[str, str] = {}
    for config_path, package, url, values in merged:
        if config_path == root or config_path.startswith("schema/"):
            label = "framework default"
        elif config_path == primary:
            label = config_path
        else:
            label = f"{config_path}.yaml ({_where(url)})"
        prefix = f"{package}." if package else ""
        for key in flat_items(values):
            origins[f"{prefix}{key}"] = label
    return origins


def command_line_origin(key: str, overrides: list[str]) -> str | None:
    for text in reversed(overrides):
        name = text.lstrip("+~").partition("=")[0]
        if "." not in name:  # a group choice: the option's file is the origin
            continue
        if name == key or key.startswith(f"{name}."):
            return f"command line ({text})"
    return None


def _where(url: str) -> str:
    return url.removeprefix("file://")
