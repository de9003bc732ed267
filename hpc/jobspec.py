"""A validated job spec: the resolved config plus the paths every launcher needs."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpc.config import compose, to_container
from hpc.validate import validate

CONFIG_FILE_NAME = "config.yaml"


@dataclass(frozen=True)
class JobSpec:
    config: dict[str, Any]
    run_dir: Path
    tracking_uri: str | None
    checkpoint_dir: Path
    workdir: Path  # the directory hpc-launch ran in; jobs start there

    @property
    def name(self) -> str:
        return str(self.config["job"]["name"])

    @property
    def launcher(self) -> str:
        return str(self.config["cluster"]["kind"])

    @property
    def resources(self) -> dict[str, Any]:
        return self.config["resources"]

    @property
    def world_size(self) -> int:
        return int(self.resources["nodes"]) * int(self.resources["tasks_per_node"])

    @property
    def config_file(self) -> Path:
        return self.run_dir / CONFIG_FILE_NAME

    def config_yaml(self) -> str:
        """The resolved config as written into the run directory."""
        data = dict(self.config)
        data["run_dir"] = str(self.run_dir)
        data["tracking"] = dict(data["tracking"], uri=redact_uri(self.tracking_uri))
        data["checkpoint"] = dict(data["checkpoint"], dir=str(self.checkpoint_dir))
        return yaml.safe_dump(data, sort_keys=False)


def load_spec(overrides: Sequence[str] = (), *, now: _dt.datetime | None = None) -> JobSpec:
    """Compose, validate and resolve paths. Raises ConfigError naming the key."""
    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if resume and resume[-1]:
        return resume_spec(resume[-1], [o for o in overrides if not o.startswith("resume=")])
    cfg = to_container(compose(overrides))
    validate(cfg)
    return spec_from_config(cfg, now=now)


RESUME_OVERRIDABLE = ("dry_run", "wait")


def resume_spec(run_dir: str, overrides: Sequence[str]) -> JobSpec:
    """A run continues with the config it was started with (its config.yaml)."""
    from hpc.config import ConfigError

    path = _path(run_dir).resolve()
    config_file = path / CONFIG_FILE_NAME
    if not (path / "job.json").is_file() or not config_file.is_file():
        raise ConfigError("resume", f"{run_dir!r} is not a run directory (no job.json/config.yaml)")
    try:
        cfg = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError("resume", f"{config_file}: {exc}") from None
    for override in overrides:
        key, _, value = override.partition("=")
        if key not in RESUME_OVERRIDABLE:
            raise ConfigError(key, "a resumed run keeps its config; only dry_run/wait may change")
        cfg[key] = value.lower() == "true"
    cfg["resume"] = str(path)
    validate(cfg)
    return spec_from_config(cfg)


def spec_from_config(cfg: dict[str, Any], *, now: _dt.datetime | None = None) -> JobSpec:
    run_dir = _run_dir(cfg, now)
    entrypoint = str(cfg["job"]["entrypoint"])
    if entrypoint.endswith(".py") and ":" not in entrypoint:  # scripts: absolute for the nodes
        cfg["job"]["entrypoint"] = str(_path(entrypoint).resolve())
    ckpt = cfg["checkpoint"].get("dir")
    checkpoint_dir = _path(ckpt).resolve() if ckpt else run_dir / "checkpoints"
    return JobSpec(
        config=cfg,
        run_dir=run_dir,
        tracking_uri=default_tracking_uri(cfg["tracking"]),
        checkpoint_dir=checkpoint_dir,
        workdir=Path.cwd(),
    )


def _run_dir(cfg: dict[str, Any], now: _dt.datetime | None) -> Path:
    if cfg.get("resume"):
        return _path(cfg["resume"]).resolve()
    if cfg.get("run_dir"):
        return _path(cfg["run_dir"]).resolve()
    now = now or _dt.datetime.now()
    stamp = now.strftime("%Y-%m-%d_%H-%M-%S") + "-" + os.urandom(2).hex()
    return (_path(cfg["output_root"]) / cfg["job"]["name"] / stamp).resolve()


def _path(value: str | os.PathLike[str]) -> Path:
    """``~`` expanded where it names a home (``~nosuchuser`` stays as written)."""
    return Path(os.path.expanduser(value))


def default_tracking_uri(tracking: dict[str, Any]) -> str | None:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the cwd."""
    if not tracking.get("enabled", True):
        return None
    uri = tracking.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if "://" not in uri and not uri.startswith(("file:", "databricks")):
            return str(_path(uri).resolve())  # a local path: a file store
        return str(uri)
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def redact_uri(uri: str | None) -> str | None:
    """Hide a password embedded in a URI (``https://user:pw@host`` → ``https://user:***@host``)."""
    if not uri or "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    creds, _, host = rest.rpartition("@")
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"
