"""Run records: ``job.json`` in every run directory, and an index of recent runs.

``job.json`` is updated by the launcher (state) and by rank 0 inside the job
(MLflow run id), so every update is a locked read-modify-write followed by an
atomic rename: readers never see a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hpc.credentials import redact_uri
from hpc.files import file_lock, write_atomic

if TYPE_CHECKING:
    from hpc.spec.jobspec import JobSpec

RECORD_NAME = "job.json"
FINISHED_MARKER = "FINISHED"  # rank 0 writes it when the job's main() returned normally


@dataclass
class RunRecord:
    name: str
    launcher: str
    run_dir: str
    config_file: str
    tracking_uri: str | None
    checkpoint_dir: str
    job_id: str | None = None
    mlflow_run_id: str | None = None
    accounting_file: str | None = None
    state: str = "PENDING"
    exit_code: int | None = None
    message: str | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_spec(
        cls,
        spec: JobSpec,
        launcher: str,
        *,
        job_id: str | None = None,
        state: str = "PENDING",
        extra: dict[str, Any] | None = None,
    ) -> RunRecord:
        """The record of a new run of ``spec``: its paths, and its tracking URI redacted;
        ``extra.project``: the run's ``tracking.experiment`` (what project budgets count)."""
        project = (spec.config.get("tracking") or {}).get("experiment")
        tags = {"project": str(project)} if project else {}
        return cls(
            name=spec.name,
            launcher=launcher,
            run_dir=str(spec.run_dir),
            config_file=str(spec.config_file),
            tracking_uri=redact_uri(spec.tracking_uri),
            checkpoint_dir=str(spec.checkpoint_dir),
            job_id=job_id,
            state=state,
            extra=tags | dict(extra or {}),
        )


def record_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / RECORD_NAME


def finished(run_dir: str | os.PathLike[str]) -> bool:
    """The run finished: it is COMPLETED, whatever signal or requeue came afterwards."""
    return (Path(run_dir) / FINISHED_MARKER).exists()


def _locked(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    return file_lock(run_dir / ".job.json.lock")


def create(record: RunRecord) -> Path:
    run_dir = Path(record.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir):
        write_atomic(record_path(run_dir), json.dumps(asdict(record), indent=2) + "\n")
    add_to_index(run_dir)
    return record_path(run_dir)


def load(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = record_path(run_dir)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no run record (not a run directory?)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: line 1: expected a JSON object")
    return data


def config_hash(job: dict[str, Any]) -> str:
    """The short hash of a job config that checkpoint manifests record."""
    return hashlib.sha256(yaml.safe_dump(job, sort_keys=True).encode()).hexdigest()[:16]


def read_run_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's config.yaml as a dict; ValueError/OSError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        why = getattr(exc, "problem", None) or exc
        raise ValueError(f"{path}: {where}not valid YAML ({why})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def update(run_dir: str | os.PathLike[str], **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into job.json under a lock; return the new record."""
    run_dir = Path(run_dir)
    with _locked(run_dir):
        data = load(run_dir)
        extra = changes.pop("extra", None)
        data.update(changes)
        if extra:
            data.setdefault("extra", {}).update(extra)
        data["updated"] = time.time()
        write_atomic(record_path(run_dir), json.dumps(data, indent=2) + "\n")
    return data


def state_dir() -> Path:
    """Where the index of runs lives (``HPC_STATE_DIR`` overrides)."""
    base = os.environ.get("HPC_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "hpc-launch"
    )
    return Path(base)


def add_to_index(run_dir: Path) -> None:
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"run_dir": str(Path(run_dir).resolve()), "time": time.time()})
    # O_APPEND writes of one short line are atomic between concurrent launches.
    fd = os.open(directory / "runs.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def recent_runs(limit: int = 20) -> list[dict[str, Any]]:
    """Records of the most recent runs in the index, newest first (missing ones skipped)."""
    index = state_dir() / "runs.jsonl"
    if not index.exists():
        return []
    seen: list[str] = []
    for line in reversed(index.read_text(encoding="utf-8").splitlines()):
        try:
            run_dir = json.loads(line)["run_dir"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if run_dir not in seen:
            seen.append(run_dir)
    records = []
    for run_dir in seen:
        with contextlib.suppress(FileNotFoundError, ValueError):
            records.append(load(run_dir))
        if len(records) >= limit:
            break
    return records
