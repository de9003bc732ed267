"""Compose a job config from the shipped Hydra groups plus command-line overrides.

Hydra itself is reached through :mod:`hpc.spec.hydra_internals` only.

Every failure becomes a :class:`ConfigError` with one line that names the key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from hpc import registry
from hpc.spec import hydra_internals
from hpc.spec.errors import ConfigError
from hpc.spec.hydra_internals import override_parser
from hpc.spec.primary import FRAMEWORK_GROUPS, Primary, import_job_schema, load_primary, store_root
from hpc.spec.schema import FRAMEWORK_KEYS, LaunchOptions, register_configs
from hpc.spec.sources import (
    PACKAGE_CONFIGS,
    ConfigSource,
    absolute_dir,
    available,
    search_path,
)

CONFIG_MODULE = PACKAGE_CONFIGS


EMBEDDED = ConfigSource()  # no project named: the package's example job


def compose(overrides: Sequence[str] = (), source: ConfigSource = EMBEDDED) -> DictConfig:
    """Compose the framework's sections, the user's primary config (``source``) and
    ``overrides``; raise ConfigError on any problem."""
    check_override_syntax(overrides)
    path, root, overrides = composition_inputs(overrides, source)
    try:
        cfg = hydra_internals.compose(path, root, overrides)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra and OmegaConf raise many kinds; translate all
        error = translate_error(exc, overrides)
        if "Ambiguous value" in str(error):
            error = ConfigError(error.key, f"{str(error).split(': ', 1)[1]} (a sweep needs -m)")
        raise error from None
    # `+key=value` may add keys a schema does not declare: reject them here.
    check_declared_keys(cfg)
    check_options(cfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


def check_options(cfg: DictConfig) -> None:
    """The framework's top-level keys as their schema types them (the root is the
    user's, so untyped): ``dry_run=maybe`` is an error, ``dry_run=yes`` a bool."""
    typed = OmegaConf.structured(LaunchOptions)
    for option in dataclasses.fields(LaunchOptions):
        if option.name not in cfg:
            continue
        try:
            typed[option.name] = cfg[option.name]
        except Exception as exc:
            raise ConfigError(option.name, _omegaconf_message(exc)) from None
        with open_dict(cfg):
            cfg[option.name] = typed[option.name]


def composition_inputs(
    overrides: Sequence[str], source: ConfigSource = EMBEDDED
) -> tuple[list[tuple[str, str]], str, list[str]]:
    """The search path, the root config's name and the overrides Hydra composes from."""
    overrides, cli_path = take_searchpath(overrides)
    source = replace(source, search_path=(*source.search_path, *cli_path))
    # An override's job.schema is imported first (it may register the primary config
    # itself) and then dropped: a typed job section need not declare the key.
    import_job_schema(None, overrides)
    overrides = [o for o in overrides if o.lstrip("+").partition("=")[0] != "job.schema"]
    primary = load_primary(source)
    import_job_schema(primary, overrides)
    register_configs(cluster_choices(overrides, primary))
    root = store_root(primary)
    path = available(search_path(source, primary.searchpath if primary else ()))
    return path, root, overrides


def take_searchpath(overrides: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """``hydra.searchpath=[a,b]`` out of the overrides (the only hydra.* key used)."""
    rest: list[str] = []
    found: list[str] = []
    for text in overrides:
        key, _, _ = text.lstrip("+").partition("=")
        if key != "hydra.searchpath":
            rest.append(text)
            continue
        value = override_parser().parse_override(text).value()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError("hydra.searchpath", "must be a list of dirs: hydra.searchpath=[a,b]")
        found += [v if "://" in v else absolute_dir("hydra.searchpath", v) for v in value]
    return rest, tuple(found)


def cluster_choices(overrides: Sequence[str], primary: Primary | None = None) -> list[str]:
    """The backends a composition may select: those named by ``cluster=`` overrides
    (comma lists of a sweep too) or the primary config, else the default; every
    installed one when a choice is a pattern or a profile (it may extend any backend).
    Only their schemas (and modules) are loaded."""
    named: list[str] = []
    for text in overrides:
        key, _, value = text.lstrip("+").partition("=")
        if key.split("@")[0] != "cluster":
            continue
        if any(mark in value for mark in "()[]*"):
            return registry.available()
        named.extend(v.strip() for v in value.split(","))
    if not named and primary is not None and "cluster" in primary.choices:
        named = [primary.choices["cluster"]]
    named = named or [FRAMEWORK_GROUPS["cluster"]]
    installed = registry.available()
    return named if all(name in installed for name in named) else installed


def check_declared_keys(node: Any, prefix: str = "") -> None:
    """Every key of a node typed by a dataclass must be one of its fields."""
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    declared = (
        {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    )
    if declared is not None and not prefix:  # a user's schema of the whole config
        declared |= set(FRAMEWORK_KEYS)
    for key in node:
        full = f"{prefix}{key!s}"
        if declared is not None and key not in declared:
            allowed = ", ".join(sorted(declared)) or "none"
            raise ConfigError(full, f"unknown key (allowed here: {allowed})")
        if not OmegaConf.is_missing(node, key):
            check_declared_keys(node._get_node(key), prefix=f"{full}.")


def check_override_syntax(overrides: Sequence[str]) -> None:
    """Reject malformed overrides early, naming the offending text."""

    parser = override_parser()
    for text in overrides:
        key = text.split("=", 1)[0].lstrip("+~")
        if text.startswith("=") or not key:
            raise ConfigError(text, f"override {text!r} has no key (use key=value)")
        if "=" not in text and not text.startswith("~"):
            raise ConfigError(key or text, f"override {text!r} has no '=' (use key=value)")
        try:
            parser.parse_override(text)
        except Exception as exc:
            raise ConfigError(key, f"cannot parse override {text!r}: {_first_line(exc)}") from None


_KEY_PATTERNS = [
    re.compile(r"full_key:\s*(?P<key>[\w.\[\]-]+)"),
    re.compile(r"Could not override '(?P<key>[^']+)'"),
    re.compile(r"Could not append to config\. An item is already at '(?P<key>[^']+)'"),
    re.compile(r"Could not delete from config\. '(?P<key>[^']+)'"),
    re.compile(r"In '(?P<key>[^']+)': Could not find '(?P<missing>[^']+)'"),
    re.compile(r"Could not load '(?P<key>[^']+)'"),
    re.compile(r"Key '(?P<key>[^']+)' not in"),
    re.compile(r"Key '(?P<key>[^']+)' is not in struct"),
]


def translate_error(exc: BaseException, overrides: Sequence[str]) -> ConfigError:
    """Turn a Hydra/OmegaConf exception into a one-line ConfigError naming the key."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    # The innermost OmegaConf error carries the most precise key.
    for err in reversed(chain):
        full_key = getattr(err, "full_key", None)
        if full_key:
            message = _omegaconf_message(err)
            if "is not in struct" in message:  # an untyped node: the key is new
                message = f"no such key (a new key needs +{full_key}=VALUE)"
            return ConfigError(str(full_key), message)
    text = " ".join(str(e) for e in chain)
    key = ""
    for pattern in _KEY_PATTERNS:
        match = pattern.search(text)
        if match:
            key = match.group("key")
            break
    # e.g. "In 'config': Could not find 'cluster/foo'" -> name the group key.
    match = re.search(r"Could not find '(?P<g>[^']+)/(?P<opt>[^'/]+)'", text)
    if match:
        group = match.group("g")
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], re.M)
        choices = f" (one of {', '.join(options)})" if options else ""
        return ConfigError(group, f"unknown choice {match.group('opt')!r}{choices}")
    return ConfigError(key or _guess_key(text, overrides), _first_line(chain[0]))


def _omegaconf_message(err: BaseException) -> str:
    msg = getattr(err, "msg", None) or str(err)
    return _first_line(msg)


def _first_line(value: Any) -> str:
    text = str(value).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("full_key", "object_type", "reference_type")):
            return line
    return text


def _guess_key(text: str, overrides: Sequence[str]) -> str:
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key and key in text:
            return key
    return "config"


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """A plain, resolved dict (raises ConfigError on interpolation problems)."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True)
    except Exception as exc:
        raise translate_error(exc, ()) from None
    assert isinstance(data, dict)
    plain = {str(key): value for key, value in data.items()}
    # job first, then the user's own sections, then the framework's (as config.yaml shows them)
    framework = [key for key in FRAMEWORK_KEYS if key in plain and key != "job"]
    user = [key for key in plain if key not in FRAMEWORK_KEYS]
    order = [*(["job"] if "job" in plain else []), *user, *framework]
    return {key: plain[key] for key in order}
