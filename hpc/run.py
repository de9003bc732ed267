"""Worker entry point: ``python -m hpc.run CONFIG_FILE``.

Loads the resolved config a launcher wrote into the run directory and calls the
job's entry point: ``package.module:function`` gets the config dict;
``script.py`` runs as ``__main__`` with HPC_CONFIG_FILE set.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import runpy
import signal
import sys
import traceback
from typing import NoReturn

from hpc.defaults import PREEMPTION_SIGNAL
from hpc.runtime.preemption import install_early
from hpc.runtime.session import load_config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config_file = argv[0] if argv else os.environ.get("HPC_CONFIG_FILE")
    if not config_file:
        print("usage: python -m hpc.run CONFIG_FILE", file=sys.stderr)
        return 2
    os.environ["HPC_CONFIG_FILE"] = os.path.abspath(config_file)
    cfg = load_config(config_file)
    install_early(str((cfg.get("preemption") or {}).get("signal", PREEMPTION_SIGNAL)))
    entrypoint = str(cfg["job"]["entrypoint"])
    if entrypoint.endswith(".py") and ":" not in entrypoint:
        sys.argv = [entrypoint]
        runpy.run_path(entrypoint, run_name="__main__")
        return 0
    module_name, _, func_name = entrypoint.partition(":")
    module = importlib.import_module(module_name)
    result = getattr(module, func_name or "main")(cfg)
    return int(result) if isinstance(result, int) else 0


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
