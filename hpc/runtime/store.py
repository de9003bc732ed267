"""First contact with a SQLite MLflow store, done once.

MLflow creates and migrates a new SQLite database on first use; several jobs doing
that at once leave a broken schema, so first contact is serialised with a file lock.
Once the store is complete a ``<db>.ready`` marker (naming the database's inode)
lets every later job skip the lock: concurrent runs then never queue behind each
other. The launcher prepares the store before the workers start, in a subprocess
(``python -m hpc.runtime.store URI EXPERIMENT``), so submitting never imports mlflow.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from hpc.files import file_lock

SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> str | None:
    return uri[len(SQLITE) :].split("?", 1)[0] if uri.startswith(SQLITE) else None


def store_ready(path: str) -> bool:
    """The database exists and was completed by a first contact (not replaced since)."""
    try:
        with open(f"{path}.ready", encoding="utf-8") as fh:
            return fh.read().strip() == str(os.stat(path).st_ino)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def store_init_lock(uri: str) -> Iterator[None]:
    """Serialise first contact with a new SQLite store across processes; a no-op after."""
    path = sqlite_path(uri)
    if path is None or store_ready(path):
        yield
        return

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with file_lock(f"{path}.init-lock"):
        yield
        if os.path.exists(path) and not store_ready(path):
            with open(f"{path}.ready", "w", encoding="utf-8") as fh:
                fh.write(f"{os.stat(path).st_ino}\n")


def prepare_store(uri: str, experiment: str, timeout_s: float = 300.0) -> str | None:
    """Create a new SQLite store and its experiment before the workers start.

    Returns None when done (or nothing to do), else why it could not (the workers
    then retry on their own).
    """
    import subprocess  # noqa: PLC0415 (lazy: a dry run imports this module, never runs it)

    path = sqlite_path(uri)
    if path is None or store_ready(path):
        return None
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hpc.runtime.store", uri, experiment],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout or "").strip().splitlines()
        return lines[-1] if lines else f"exit code {done.returncode}"
    return None


def ensure_experiment(client: Any, experiment: str) -> str:
    """The experiment's id, creating it if needed (tolerates a concurrent creator)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(experiment))
    except Exception:  # created concurrently by another job
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return str(exp.experiment_id)


def main(argv: list[str] | None = None) -> int:
    uri, experiment = (argv if argv is not None else sys.argv[1:])[:2]
    path = sqlite_path(uri)
    with store_init_lock(uri):
        if path is not None and store_ready(path):  # another launcher got there first
            return 0
        from mlflow.tracking import MlflowClient  # noqa: PLC0415 (lazy: mlflow only when tracking)

        ensure_experiment(MlflowClient(tracking_uri=uri), experiment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
