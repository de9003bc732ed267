"""The only module that touches Hydra's private API, with a public-API fallback.

Hydra's public ``compose()`` also builds Hydra's own ``hydra:`` node (run dirs,
logging, launchers), which hpc-launch never uses and which costs about 50 ms,
a third of a dry run. :func:`compose` runs the steps of Hydra's
``ConfigLoaderImpl`` without that node. Where those internals are missing or
changed (another Hydra release), it falls back to ``hydra.compose`` and drops
the ``hydra`` node afterwards: same result, only slower.
``tests/test_hydra_internals.py`` checks that both give the same config for
every shipped config group option.

Consequences of the fast path: ``${hydra:...}`` interpolations are not
available in job configs, and Hydra SearchPathPlugins are not consulted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from hpc.spec import hydra_light
from hpc.spec.errors import ConfigError

_PACKAGE = "hpc.configs"  # the public API's primary config module (the search path adds the rest)


@functools.lru_cache(maxsize=1)
def override_parser() -> Any:
    """Hydra's (public) override parser; building it costs a few ms, so once."""
    # lazy: hydra only when parsing overrides
    from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: PLC0415

    return OverridesParser.create()


@functools.lru_cache(maxsize=1)
def _internals() -> dict[str, Any] | None:
    """Hydra's private composition steps, or None where this Hydra lacks them."""
    try:
        # lazy, all of these: private Hydra API; missing -> None -> the public fallback
        with hydra_light.deferred_hydra_config():  # hydra/config: not read here
            from hydra._internal.config_loader_impl import ConfigLoaderImpl  # noqa: PLC0415
        from hydra._internal.config_repository import (  # noqa: PLC0415
            CachingConfigRepository,
            ConfigRepository,
        )
        from hydra._internal.config_search_path_impl import ConfigSearchPathImpl  # noqa: PLC0415
        from hydra._internal.core_plugins.file_config_source import (  # noqa: PLC0415
            FileConfigSource,
        )
        from hydra._internal.core_plugins.importlib_resources_config_source import (  # noqa: PLC0415
            ImportlibResourcesConfigSource,
        )
        from hydra._internal.core_plugins.structured_config_source import (  # noqa: PLC0415
            StructuredConfigSource,
        )
        from hydra._internal.defaults_list import create_defaults_list  # noqa: PLC0415
        from hydra._internal.sources_registry import SourcesRegistry  # noqa: PLC0415
    except ImportError:
        return None
    needed = (
        "_compose_config_from_defaults_list",
        "_apply_overrides_to_config",
        "validate_sweep_overrides_legal",
    )
    if not all(hasattr(ConfigLoaderImpl, name) for name in needed):
        return None
    return {
        "ConfigLoaderImpl": ConfigLoaderImpl,
        "CachingConfigRepository": CachingConfigRepository,
        "ConfigRepository": ConfigRepository,
        "ConfigSearchPathImpl": ConfigSearchPathImpl,
        "sources": (FileConfigSource, ImportlibResourcesConfigSource, StructuredConfigSource),
        "create_defaults_list": create_defaults_list,
        "SourcesRegistry": SourcesRegistry,
    }


def internals_available() -> bool:
    return _internals() is not None


SearchPath = Sequence[tuple[str, str]]  # (provider, URL: file://, pkg://), first match wins


def compose(search_path: SearchPath, config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose ``config_name`` (found on ``search_path`` or in the ConfigStore) with
    ``overrides``.

    The result has no ``hydra`` node and struct mode on. Hydra's exceptions pass
    through untranslated (the caller names the key).
    """
    parsed = override_parser().parse_overrides(list(overrides))
    for override in parsed:
        if override.is_hydra_override():
            raise ConfigError(override.input_line.split("=")[0], "hydra.* settings are not used")
    internals = _internals()
    if internals is None:
        return compose_public(search_path, config_name, overrides)
    return _compose_fast(internals, search_path, config_name, parsed)


def _repository(internals: dict[str, Any], entries: SearchPath) -> tuple[Any, Any]:
    """Hydra's search path over ``entries`` (then the ConfigStore) and a caching repository.

    Hydra's create_config_search_path() also imports every installed Hydra plugin to
    ask for search-path additions; the job config needs only its own entries.
    """
    registry = internals["SourcesRegistry"].instance()
    for source in internals["sources"]:  # file://, pkg:// and structured:// (the ConfigStore)
        registry.register(source)
    search_path = internals["ConfigSearchPathImpl"]()
    for provider, url in entries:
        search_path.append(provider, url)
    search_path.append("schema", "structured://")
    delegate = internals["ConfigRepository"](config_search_path=search_path)
    return search_path, _caching(internals["CachingConfigRepository"], delegate)


def _caching(cls: Any, delegate: Any) -> Any:
    """Hydra's CachingConfigRepository over ``delegate``, without copying it.

    Its __init__ deep-copies the delegate (so that initialize_sources() cannot change a
    repository someone else holds), and with it the whole ConfigStore: ~9 ms, 4% of a
    dry run. This delegate is built for one composition and never used again. Where
    __init__ does anything else (another Hydra release), it runs as usual.
    """
    if cls.__init__.__code__.co_names != ("copy", "deepcopy", "delegate", "cache"):
        return cls(delegate)
    repo = cls.__new__(cls)
    repo.delegate = delegate
    repo.cache = {}
    return repo


def _defaults_list(
    internals: dict[str, Any], repo: Any, config_name: str, parsed: list[Any]
) -> Any:
    """Hydra's defaults list of ``config_name`` (no ``hydra`` node, nothing skipped)."""
    return internals["create_defaults_list"](
        repo=repo,
        config_name=config_name,
        overrides_list=parsed,
        prepend_hydra=False,
        skip_missing=False,
    )


def _compose_fast(
    internals: dict[str, Any], entries: SearchPath, config_name: str, parsed: list[Any]
) -> DictConfig:
    from hydra.types import RunMode  # noqa: PLC0415 (lazy: fast path only, after _internals())

    loader_cls = internals["ConfigLoaderImpl"]
    search_path, repo = _repository(internals, entries)
    loader_cls.validate_sweep_overrides_legal(parsed, RunMode.RUN, from_shell=True)
    defaults = _defaults_list(internals, repo, config_name, parsed)
    loader = loader_cls(config_search_path=search_path)
    cfg = loader._compose_config_from_defaults_list(defaults=defaults.defaults, repo=repo)
    OmegaConf.set_struct(cfg, True)
    loader_cls._apply_overrides_to_config(defaults.config_overrides, cfg)
    assert isinstance(cfg, DictConfig)
    return cfg


def compose_public(
    search_path: SearchPath, config_name: str, overrides: Sequence[str]
) -> DictConfig:
    """The same composition through Hydra's public API (slower: builds the hydra node);
    the search path travels as ``hydra.searchpath``."""
    hydra_light.flush()  # Hydra's own node, where its store was deferred
    # lazy, all of these: the public-API fallback only
    from hydra import compose as hydra_compose  # noqa: PLC0415
    from hydra import initialize_config_module  # noqa: PLC0415
    from hydra.core.global_hydra import GlobalHydra  # noqa: PLC0415
    from hydra.initialize import get_gh_backup, restore_gh_from_backup  # noqa: PLC0415
    from hydra.version import VersionBase  # noqa: PLC0415 (lazy: public-API fallback only)

    backup = get_gh_backup()  # an app that is itself a Hydra app keeps its state,
    base = VersionBase.instance().getbase()  # its version base too (chdir etc. follow it)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=_PACKAGE, **version_base()):
            entries = ",".join(f"'{url}'" for _, url in search_path)
            extra = [f"hydra.searchpath=[{entries}]"]
            cfg = hydra_compose(config_name=config_name, overrides=[*overrides, *extra])
    finally:
        restore_gh_from_backup(backup)
        VersionBase.instance().version_base = base
    with open_dict(cfg):
        cfg.pop("hydra", None)
    OmegaConf.set_struct(cfg, True)
    return cfg


def version_base() -> dict[str, Any]:
    """``version_base=None`` where Hydra wants it (1.2-1.3); 1.4 deprecates the argument."""
    import hydra  # noqa: PLC0415 (lazy: public-API fallback only)

    major, minor = (int(part) for part in hydra.__version__.split(".")[:2])
    return {"version_base": None} if (major, minor) < (1, 4) else {}


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Apply value overrides (``k=v``, ``+k=v``, ``++k=v``, ``~k``) to a composed config."""
    parsed = override_parser().parse_overrides(list(overrides))
    internals = _internals()
    if internals is not None:
        internals["ConfigLoaderImpl"]._apply_overrides_to_config(parsed, cfg)
        return
    for override in parsed:  # the public Override API, as Hydra itself applies them
        key = override.key_or_group
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is None or leaf not in node:
                raise ConfigError(key, "Could not delete from config. The key does not exist")
            with open_dict(node):
                del node[leaf]
        elif override.is_add() and OmegaConf.select(cfg, key) is not None:
            raise ConfigError(key, f"Could not append to config. An item is already at '{key}'")
        elif override.is_add() or override.is_force_add():
            with open_dict(cfg):
                OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)
        else:
            OmegaConf.update(cfg, key, override.value(), merge=True)


def config_origins(
    search_path: SearchPath, config_name: str, overrides: Sequence[str]
) -> list[tuple[str, str, str, dict[str, Any]]] | None:
    """The configs the composition merges, in order: (config path, package, source URL,
    its own values). None where this Hydra lacks the internals (``hpc config`` then
    shows values without their origin)."""
    internals = _internals()
    if internals is None:
        return None
    from hydra.types import RunMode  # noqa: PLC0415 (lazy: fast path only, after _internals())

    parsed = override_parser().parse_overrides(list(overrides))
    _, repo = _repository(internals, search_path)
    internals["ConfigLoaderImpl"].validate_sweep_overrides_legal(
        parsed, RunMode.RUN, from_shell=True
    )
    defaults = _defaults_list(internals, repo, config_name, parsed)
    found: list[tuple[str, str, str, dict[str, Any]]] = []
    for entry in defaults.defaults:
        loaded = repo.load_config(config_path=entry.config_path)
        if loaded is None:
            continue
        values = OmegaConf.to_container(loaded.config, resolve=False)
        assert isinstance(values, dict)
        own = {str(k): v for k, v in values.items() if k != "defaults"}
        found.append((str(entry.config_path), str(entry.package or ""), str(loaded.path), own))
    return found
