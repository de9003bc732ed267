"""Import Hydra's submodules without running ``hydra/__init__.py`` first.

Hydra's package ``__init__`` imports its whole public API (``hydra.utils`` with
instantiate, ``hydra.main``, ``hydra.compose`` with the global Hydra app), about
25 ms that composing a job config never uses: hpc-launch only needs
``hydra.core`` and ``hydra._internal``'s config loading. :func:`install` puts a
``hydra`` package module in ``sys.modules`` whose public names are the same
objects, each imported on first access (PEP 562), so ``from hydra import compose``
and ``hydra.__version__`` keep working for any later caller.

It is installed only where it is safe: Hydra not imported yet, and its
``__init__.py`` made only of ``from ... import ...`` lines, ``__version__`` and
``__all__`` (Hydra 1.1-1.3). Anything else there, and Hydra is imported as usual.
Only the command-line front ends call it (:mod:`hpc.cli`); job processes do not.

With the lazy package, :func:`deferred_hydra_config` also defers ``hydra.conf``'s store
of Hydra's own node (``hydra/config``: 6.5 ms, 3% of a dry run; composing without
the ``hydra`` node never reads it) until Hydra's public API is first used.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

_FROM = re.compile(r"^from\s+(?P<module>[\w.]+)\s+import\s+(?P<names>[\w\s,]+)$")
_VERSION = re.compile(r"^__version__\s*=\s*[\"'](?P<version>[^\"']+)[\"']$")


def install() -> bool:
    """Put the lazy ``hydra`` package in ``sys.modules``; False where it was not safe."""
    if "hydra" in sys.modules:
        return False
    spec = importlib.util.find_spec("hydra")
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        return False
    try:
        with open(spec.origin, encoding="utf-8") as fh:
            parsed = _parse(fh.read())
    except (OSError, UnicodeDecodeError):
        return False
    if parsed is None:
        return False
    version, names, public = parsed
    module = importlib.util.module_from_spec(spec)
    module.__version__ = version  # type: ignore[attr-defined]
    module.__all__ = public  # type: ignore[attr-defined]
    module._hpc_lazy_names = names  # type: ignore[attr-defined]
    module.__class__ = _LazyPackage
    sys.modules["hydra"] = module
    return True


_deferred: list[Callable[[], None]] = []  # stores waiting for the public API's first use


@contextlib.contextmanager
def deferred_hydra_config() -> Iterator[None]:
    """Around the first import of Hydra's config loader: ``hydra.conf``'s store of
    ``hydra/config`` is kept back until :func:`flush` (the lazy package's first public
    name calls it). A no-op where the lazy package is not installed or hydra.conf is
    already imported."""
    module = sys.modules.get("hydra")
    if module is None or not is_lazy(module) or "hydra.conf" in sys.modules:
        yield
        return
    from hydra.core.config_store import ConfigStore  # noqa: PLC0415 (lazy: only here)

    real = ConfigStore.store

    def store(self: Any, name: str, node: Any, group: str | None = None, **kw: Any) -> None:
        if (group, name, kw.get("provider")) == ("hydra", "config", "hydra"):
            _deferred.append(lambda: real(self, name=name, node=node, group=group, **kw))
            return
        real(self, name=name, node=node, group=group, **kw)

    ConfigStore.store = store  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        ConfigStore.store = real  # type: ignore[method-assign]


def flush() -> None:
    """Make the stores :func:`deferred_hydra_config` kept back (once)."""
    while _deferred:
        _deferred.pop(0)()


class _LazyPackage(types.ModuleType):
    """The ``hydra`` package whose public names load on first access."""

    _hpc_lazy_names: dict[str, tuple[str, str | None]]

    def __getattr__(self, name: str) -> Any:
        names = self.__dict__.get("_hpc_lazy_names", {})
        if name not in names:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        flush()  # Hydra's public API reads hydra/config
        source, attr = names[name]
        value = importlib.import_module(source)
        if attr is not None:
            value = getattr(value, attr)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule hydra.compose binds it as the package's `compose`;
        # the real __init__ then rebinds the name to the function: so does this.
        names = self.__dict__.get("_hpc_lazy_names", {})
        source, attr = names.get(name, ("", None))
        if attr is not None and isinstance(value, types.ModuleType) and value.__name__ == source:
            value = getattr(value, attr)
        types.ModuleType.__setattr__(self, name, value)
        if name in names:  # a public module (hydra.compose, hydra.initialize) was imported
            flush()

    def __dir__(self) -> list[str]:
        return sorted({*self.__dict__, *self.__dict__.get("_hpc_lazy_names", {})})


def _parse(text: str) -> tuple[str, dict[str, tuple[str, str | None]], list[str]] | None:
    """(version, {name: (module, attribute or None for a submodule)}, __all__) of a
    package __init__ of the expected shape; None for anything else."""
    version = None
    names: dict[str, tuple[str, str | None]] = {}
    body, _, tail = text.partition("__all__ = [")
    public_text, closed, rest = tail.partition("]")
    if not closed or rest.strip():
        return None
    public = re.findall(r"[\"'](\w+)[\"']", public_text)
    for raw in body.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if match := _VERSION.match(line):
            version = match["version"]
            continue
        match = _FROM.match(line)
        if match is None:
            return None
        source = match["module"]
        source = f"hydra{source}" if source.startswith(".") else source
        for name in (n.strip() for n in match["names"].split(",")):
            if source == "hydra":
                names[name] = (f"hydra.{name}", None)  # a submodule
            else:
                names[name] = (source, name)
    if version is None or not set(public) <= {*names, "__version__"}:
        return None
    return version, names, public


def is_lazy(module: types.ModuleType) -> bool:
    """Whether ``module`` is the lazy package (its __init__ never ran)."""
    return isinstance(module, _LazyPackage)
