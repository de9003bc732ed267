"""Where a job's config comes from: the user's project, profiles, the package.

A :class:`ConfigSource` is what Hydra's own flags say (``--config-dir``/``-cd``,
``--config-path``/``-cp``, ``--config-name``/``-cn``) plus the search path entries of
``hydra.searchpath``. Config groups are looked up, first match wins, in:

1. the user's profiles: ``$XDG_CONFIG_HOME/hpc-launch`` (``~/.config/hpc-launch``);
2. the site's profiles: ``<dir>/hpc-launch`` for each of ``$XDG_CONFIG_DIRS``
   (``/etc/xdg``), then ``/etc/hpc-launch`` (``$HPC_LAUNCH_SITE_DIR`` instead, if set);
3. the project: each ``--config-dir``, then the primary config's dir (``--config-path``);
4. ``hydra.searchpath`` entries, then ``HPC_LAUNCH_CONFIG_PATH`` (``:``-separated; a
   team's shared configs);
5. the package (``pkg://hpc.configs``: the framework's groups and the example job).

The primary config itself is read from the project dirs only (never from a profile).
A source is recorded with a sweep so that each array task composes the same way.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from hpc.spec.errors import ConfigError

PACKAGE_CONFIGS = "hpc.configs"
DEFAULT_CONFIG_NAME = "config"
TEAM_PATH_VARIABLE = "HPC_LAUNCH_CONFIG_PATH"
SITE_DIR = "/etc/hpc-launch"
SITE_DIR_VARIABLE = "HPC_LAUNCH_SITE_DIR"  # another site dir (tests, sites without /etc access)


@dataclass(frozen=True)
class ConfigSource:
    """The flags that choose the primary config and extend the search path.

    ``config_name=None`` composes the framework's sections only (no primary config, no
    job section): a caller adds its own job (the Hydra plugin does).
    """

    config_dirs: tuple[str, ...] = ()  # --config-dir, in the order given
    config_path: str | None = None  # --config-path; default: the package (example job)
    config_name: str | None = DEFAULT_CONFIG_NAME
    search_path: tuple[str, ...] = ()  # hydra.searchpath entries from the command line
    given: bool = field(default=False, compare=False)  # a flag named the project

    def to_record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("given")
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any] | None) -> ConfigSource:
        if not data:
            return cls()
        return cls(
            config_dirs=tuple(data.get("config_dirs") or ()),
            config_path=data.get("config_path"),
            config_name=data.get("config_name", DEFAULT_CONFIG_NAME),
            search_path=tuple(data.get("search_path") or ()),
            given=bool(data.get("config_dirs") or data.get("config_path")),
        )

    def project_dirs(self) -> list[str]:
        """Where the primary config may be: the --config-dirs, then --config-path."""
        return [*self.config_dirs, self.config_path or f"pkg://{PACKAGE_CONFIGS}"]


FRAMEWORK_ONLY = ConfigSource(config_name=None)

_FLAGS = {
    "--config-dir": "config_dirs",
    "-cd": "config_dirs",
    "--config-path": "config_path",
    "-cp": "config_path",
    "--config-name": "config_name",
    "-cn": "config_name",
}


def split_flags(args: list[str]) -> tuple[ConfigSource, list[str]]:
    """Take Hydra's config flags (``-cd DIR``, ``--config-dir=DIR``...) out of ``args``.

    Raises ConfigError naming the flag when its value is missing or its dir does not exist.
    """
    values: dict[str, Any] = {"config_dirs": []}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=")
        if flag not in _FLAGS:
            rest.append(arg)
            i += 1
            continue
        if eq:
            value = inline
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
            value = args[i + 1]
            i += 1
        else:
            raise ConfigError(flag, "needs a value")
        i += 1
        name = _FLAGS[flag]
        if name == "config_name":
            values[name] = value.removesuffix(".yaml")
            continue
        path = absolute_dir(flag, value)
        if name == "config_dirs":
            values["config_dirs"].append(path)
        else:
            values[name] = path
    given = bool(values["config_dirs"]) or "config_path" in values
    source = ConfigSource(
        config_dirs=tuple(values["config_dirs"]),
        config_path=values.get("config_path"),
        config_name=values.get("config_name", DEFAULT_CONFIG_NAME),
        given=given or "config_name" in values,
    )
    return source, rest


def absolute_dir(key: str, value: str) -> str:
    """A config dir as written (``pkg://...`` kept) or as an absolute path that exists."""
    if value.startswith("pkg://"):
        return value
    text = value.removeprefix("file://")
    path = Path(os.path.expanduser(text)).absolute()
    if not path.is_dir():
        raise ConfigError(key, f"config dir {value!r} does not exist")
    return str(path)


def profile_dirs(env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(provider, dir) of the user's then the site's profile dirs, existing or not."""
    env = dict(os.environ) if env is None else env
    home = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    found = [("user", os.path.join(home, "hpc-launch"))]
    for base in (env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":"):
        if base:
            found.append(("site", os.path.join(base, "hpc-launch")))
    found.append(("site", env.get(SITE_DIR_VARIABLE) or SITE_DIR))
    return found


def search_path(
    source: ConfigSource, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """(provider, Hydra URL) in lookup order; ``extra``: the primary's hydra.searchpath."""
    env = dict(os.environ) if env is None else env
    entries = [(provider, _url(path)) for provider, path in profile_dirs(env)]
    project = [*source.config_dirs, *([source.config_path] if source.config_path else [])]
    entries += [("project", _url(path)) for path in project]
    entries += [("hydra.searchpath", _url(p)) for p in (*source.search_path, *extra)]
    team = [p for p in env.get(TEAM_PATH_VARIABLE, "").split(":") if p]
    entries += [(TEAM_PATH_VARIABLE, _url(p)) for p in team]
    entries.append(("hpc-launch", f"pkg://{PACKAGE_CONFIGS}"))
    seen: set[str] = set()
    unique = []
    for provider, url in entries:
        if url not in seen:
            seen.add(url)
            unique.append((provider, url))
    return unique


def available(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The entries Hydra can read: file:// dirs that exist, every other scheme."""
    return [
        (provider, url)
        for provider, url in entries
        if not url.startswith("file://") or os.path.isdir(url.removeprefix("file://"))
    ]


def _url(path: str) -> str:
    if "://" in path:
        return path
    return f"file://{Path(os.path.expanduser(path)).absolute()}"


def find_primary(source: ConfigSource) -> tuple[str, str] | None:
    """(where, YAML text) of the primary config in the project dirs; None when the name
    is not a file there (it may be a ConfigStore node). ConfigError when the flags
    named a project whose dirs do not hold it."""
    name = source.config_name
    assert name is not None
    dirs = list(source.config_dirs) if source.config_dirs else []
    if source.config_path or not source.config_dirs:
        dirs.append(source.config_path or f"pkg://{PACKAGE_CONFIGS}")
    for directory in dirs:
        text = _read(directory, f"{name}.yaml")
        if text is not None:
            return f"{directory}/{name}.yaml", text
    return None


def _read(directory: str, filename: str) -> str | None:
    if directory.startswith("pkg://"):
        module = directory.removeprefix("pkg://").replace("/", ".")
        try:
            resource = files(module) / filename
        except (ModuleNotFoundError, TypeError):
            return None
        return resource.read_text(encoding="utf-8") if resource.is_file() else None
    path = Path(directory) / filename
    return path.read_text(encoding="utf-8") if path.is_file() else None
