"""Worker entry point: ``python -m hpc.run CONFIG_FILE``.

Loads the resolved config a launcher wrote into the run directory and runs the job's
entry point (:mod:`hpc.entrypoints`), with HPC_CONFIG_FILE set:

- ``package.module:function``: called with the composed config, as an OmegaConf
  ``DictConfig`` (read-only structure, as Hydra passes it) when its first parameter is
  annotated ``DictConfig``, else as a plain ``dict`` (unannotated too, as the digits
  job expects); a function without parameters is called without one. An ``int``
  result is the exit code.
- ``script.py`` and ``-m package.module``: run as ``__main__`` with ``job.args`` as
  ``sys.argv[1:]``, after :class:`hpc.runtime.program.ProgramRun` set up torchrun's
  variables, placement, NCCL, accounting and the stop-signal contract.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import inspect
import logging
import os
import re
import runpy
import signal
import sys
import traceback
import typing
from collections.abc import Callable
from typing import Any, NoReturn

import yaml

from hpc import entrypoints
from hpc.defaults import PREEMPTION_SIGNAL
from hpc.exitcodes import PREEMPTED
from hpc.runtime.preemption import install_early
from hpc.runtime.program import ProgramRun


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config_file = argv[0] if argv else os.environ.get("HPC_CONFIG_FILE")
    if not config_file:
        print("usage: python -m hpc.run CONFIG_FILE", file=sys.stderr)
        return 2
    os.environ["HPC_CONFIG_FILE"] = os.path.abspath(config_file)
    with open(config_file, encoding="utf-8") as fh:  # not the Session's module: see program_starts
        cfg = yaml.safe_load(fh)
    install_early(str((cfg.get("preemption") or {}).get("signal", PREEMPTION_SIGNAL)))
    entry = entrypoints.parse(str(cfg["job"]["entrypoint"]))
    if entry.is_program:
        return run_program(entry, cfg)
    func = getattr(importlib.import_module(entry.target), entry.function)
    result = func(*config_arguments(func, cfg))
    return int(result) if isinstance(result, int) else 0


def config_arguments(func: Callable[..., Any], cfg: dict[str, Any]) -> list[Any]:
    """What ``func`` is called with: the config as its first parameter's annotation asks."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # a builtin or C function: no signature to read
        return [cfg]
    if not params or params[0].kind in (params[0].VAR_KEYWORD, params[0].KEYWORD_ONLY):
        return []
    return [as_dictconfig(cfg) if wants_dictconfig(func, params[0]) else cfg]


def wants_dictconfig(func: Callable[..., Any], param: inspect.Parameter) -> bool:
    """True when ``param`` is annotated ``DictConfig`` (also ``DictConfig | None``, or as a
    string resolved with :func:`typing.get_type_hints`)."""
    annotation: Any = param.annotation
    if annotation is inspect.Parameter.empty:
        return False
    try:
        annotation = typing.get_type_hints(func).get(param.name, annotation)
    except Exception:  # a name the module cannot resolve: judge the text
        if isinstance(annotation, str):
            words = re.split(r"[\s\[\]|,'\"]+", annotation)
            return any(word.rsplit(".", 1)[-1] == "DictConfig" for word in words)
    from omegaconf import DictConfig  # noqa: PLC0415 (lazy: only for such functions)

    candidates = typing.get_args(annotation) or (annotation,)
    return any(isinstance(c, type) and issubclass(c, DictConfig) for c in candidates)


def as_dictconfig(cfg: dict[str, Any]) -> Any:
    from omegaconf import OmegaConf  # noqa: PLC0415 (lazy: only for such functions)

    conf = OmegaConf.create(cfg)
    OmegaConf.set_struct(conf, True)  # unknown keys raise, as in a Hydra app
    return conf


def run_program(entry: entrypoints.EntryPoint, cfg: dict[str, Any]) -> int:
    """A script or ``-m`` module as ``__main__``, ``job.args`` as its arguments."""
    problem = entrypoints.args_problem(cfg["job"].get("args"))
    if problem:
        raise SystemExit(f"hpc-launch: job.args: {problem}")
    args = [str(a) for a in (cfg["job"].get("args") or [])]
    label = f"-m {entry.target}" if entry.kind == "module" else os.path.basename(entry.target)
    with ProgramRun(cfg, label) as program:
        if program.stopped_before_start is not None:  # nothing ran: nothing to checkpoint
            name = signal.Signals(program.stopped_before_start).name
            print(f"hpc-launch: {name} before {label} started: exiting {PREEMPTED}", flush=True)
            return PREEMPTED
        if entry.kind == "module":
            sys.argv = [entry.target, *args]  # runpy sets argv[0] to the module's file
            runpy.run_module(entry.target, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [entry.target, *args]
            sys.path.insert(0, os.path.dirname(os.path.abspath(entry.target)))  # as python does
            runpy.run_path(entry.target, run_name="__main__")
    return 0


def exit_without_teardown(code: int) -> NoReturn:
    """Run atexit handlers, flush, then ``os._exit``: skip the interpreter's teardown.

    Teardown frees torch.distributed process groups that user code or torch still
    references; ``~ProcessGroupGloo`` then joins gloo threads that wait for the GIL
    the finalizer holds, and the rank never exits (seen 1 in 10 resumes). The job's
    own work, the session's flush and the records are all done by now.
    """
    atexit._run_exitfuncs()
    mpi = sys.modules.get("mpi4py.MPI")  # mpi4py finalizes at interpreter teardown, skipped here
    if mpi is not None:
        with contextlib.suppress(Exception):
            if mpi.Is_initialized() and not mpi.Is_finalized():
                mpi.Finalize()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def run_and_exit(argv: list[str] | None = None) -> NoReturn:
    try:
        code = main(argv)
    except SystemExit as exc:  # the session's PREEMPTED exit, a script's sys.exit()
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_without_teardown(code)


if __name__ == "__main__":
    run_and_exit()
