"""Worker entry point: ``python -m hpc.run CONFIG_FILE``.

Loads the resolved config a launcher wrote into the run directory and calls the
job's entry point: ``package.module:function`` gets the config dict;
``script.py`` runs as ``__main__`` with HPC_CONFIG_FILE set.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys

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
    install_early(str((cfg.get("preemption") or {}).get("signal", "USR2")))
    entrypoint = str(cfg["job"]["entrypoint"])
    if entrypoint.endswith(".py") and ":" not in entrypoint:
        sys.argv = [entrypoint]
        runpy.run_path(entrypoint, run_name="__main__")
        return 0
    module_name, _, func_name = entrypoint.partition(":")
    module = importlib.import_module(module_name)
    result = getattr(module, func_name or "main")(cfg)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
