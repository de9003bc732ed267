"""Schedules on disk: one JSON per name under ``<state dir>/schedules/``.

Every change is a read-modify-write under one lock (``schedules/.lock``, flock)
followed by an atomic rename, so the CLI on a login node and a schedule's own
job on a compute node never lose each other's updates. A new schedule is created
with a hard link, which fails when the name exists: two concurrent
``hpc sweep schedule --name X`` cannot both succeed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hpc.files import file_lock, write_atomic
from hpc.rundir import records
from hpc.spec.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
HISTORY_KEEP = 50
# Environment a schedule's launches get, as it was at schedule time (scrontab jobs
# start from the user's login environment, not the one `hpc sweep schedule` ran in).
ENV_PREFIXES = ("MLFLOW_", "HPC_")
ENV_NAMES = ("PATH", "PYTHONPATH", "VIRTUAL_ENV")


class DuplicateError(ConfigError):
    pass


@dataclass
class Schedule:
    name: str
    cron: str
    zone: str
    overrides: list[str]
    multirun: bool
    workdir: str
    python: str
    state_dir: str
    mechanism: str  # "scrontab" or "resubmit"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    sbatch: dict[str, str] = field(default_factory=dict)  # partition/account/qos/time
    env: dict[str, str] = field(default_factory=dict)
    pending_job_id: str | None = None
    pending_begin: str | None = None  # ISO time with offset, what --begin was given
    created: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def job_name(self) -> str:
        return job_name(self.name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def job_name(name: str) -> str:
    return f"hpc-sched-{name}"


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ConfigError(
            "--name",
            f"{name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def directory(create: bool = True) -> Path:
    path = records.state_dir() / "schedules"
    if create:
        path.mkdir(parents=True, exist_ok=True)
        (path / "logs").mkdir(exist_ok=True)
    return path


def path_for(name: str) -> Path:
    return directory() / f"{check_name(name)}.json"


def env_snapshot() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k in ENV_NAMES or (k.startswith(ENV_PREFIXES) and k != "HPC_STATE_DIR")
    }


def locked() -> contextlib.AbstractContextManager[None]:
    return file_lock(directory() / ".lock")


def exists(name: str) -> bool:
    return path_for(name).exists()


def load(name: str) -> Schedule:
    path = path_for(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LookupError(f"{name}: no such schedule (hpc sweep list shows them)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    return Schedule.from_dict(data)


def create(schedule: Schedule) -> Path:
    """Write a new schedule; DuplicateError when the name is taken (atomically)."""
    path = path_for(schedule.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # env may hold a URI
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(schedule.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise DuplicateError(
            "--name", f"{schedule.name!r}: a schedule with this name exists (hpc sweep list)"
        ) from None
    finally:
        tmp.unlink()
    return path


def save(schedule: Schedule) -> None:
    path = path_for(schedule.name)
    write_atomic(path, schedule.to_json(), mode=0o600)  # env may hold a URI


def delete(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        path_for(name).unlink()


def all_schedules() -> list[Schedule]:
    base = records.state_dir() / "schedules"
    if not base.is_dir():
        return []
    out = []
    for path in sorted(base.glob("*.json")):
        with contextlib.suppress(LookupError, ValueError, TypeError):
            out.append(load(path.stem))
    return out


def add_history(schedule: Schedule, entry: dict[str, Any]) -> None:
    schedule.history.append(entry)
    del schedule.history[:-HISTORY_KEEP]
