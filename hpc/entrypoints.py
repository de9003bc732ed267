"""The spellings of ``job.entrypoint``, parsed in one place (submit side and nodes alike).

- ``package.module:function``: the function is called with the composed config;
- ``path/to/script.py``: run as ``__main__``, ``job.args`` as its ``sys.argv[1:]``;
- ``-m package.module``: as ``python -m package.module``, ``job.args`` likewise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from typing import Literal

Kind = Literal["function", "script", "module"]

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_FUNCTION_RE = re.compile(rf"^(?P<module>{_DOTTED})(?::(?P<func>[A-Za-z_]\w*))?\Z")
_MODULE_RE = re.compile(r"^-m\s+(?P<module>\S+)\s*\Z")
FORMS = "'package.module:function', 'script.py' or '-m package.module'"


@dataclass(frozen=True)
class EntryPoint:
    kind: Kind
    target: str  # the module (function, module kinds) or the script path
    function: str = "main"  # function kind only

    @property
    def is_program(self) -> bool:
        """A script or ``-m`` module: runs as ``__main__`` and reads its own argv."""
        return self.kind != "function"


def parse(entrypoint: str) -> EntryPoint:
    """``job.entrypoint`` → :class:`EntryPoint`; ValueError (a one-line reason) if malformed."""
    text = str(entrypoint).strip()
    if text.startswith("-m"):
        match = _MODULE_RE.match(text)
        if not match or not re.fullmatch(_DOTTED, match["module"]):
            raise ValueError(f"{entrypoint!r}: '-m' takes one module name ('-m package.module')")
        return EntryPoint("module", match["module"])
    if text.endswith(".py") and ":" not in text:
        return EntryPoint("script", text)
    match = _FUNCTION_RE.match(text)
    if not match:
        raise ValueError(f"{entrypoint!r} is not {FORMS}")
    return EntryPoint("function", match["module"], match["func"] or "main")


@contextlib.contextmanager
def _workdir_on_path(workdir: str | None) -> Iterator[None]:
    path = os.path.abspath(workdir or os.getcwd())
    added = path not in sys.path
    if added:
        sys.path.insert(0, path)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(path)


def find_module(module: str, workdir: str | None = None) -> ModuleSpec | None:
    """``module``'s spec as seen from ``workdir`` (the job's working directory), or None.

    ``python -m hpc.run`` on the nodes puts its working directory first on ``sys.path``,
    so a user's package next to their config is found there as well as installed ones.
    Parent packages are imported to look inside them (as ``importlib`` does).
    """
    with _workdir_on_path(workdir):
        try:
            return importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None


def module_problem(module: str, workdir: str | None = None) -> str | None:
    """Why ``python -m module`` would not start (not found, a package without
    ``__main__``), or None."""
    spec = find_module(module, workdir)
    if spec is None:
        return f"module {module!r} cannot be found"
    if spec.submodule_search_locations is not None and not find_module(
        f"{module}.__main__", workdir
    ):
        return f"package {module!r} has no __main__ module to run with -m"
    return None


def args_problem(args: object) -> str | None:
    """Why ``job.args`` is not a program's argument list (a list of scalars), or None."""
    if args is None:
        return None
    if not isinstance(args, list | tuple):
        return f"must be a list of strings, got {type(args).__name__} {args!r}"
    bad = [a for a in args if isinstance(a, dict | list | tuple) or a is None]
    return f"must be a list of strings, got {bad[0]!r} in it" if bad else None
