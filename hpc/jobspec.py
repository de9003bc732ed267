"""A validated job spec: the resolved config plus the paths every launcher needs."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpc.config import compose, to_container
from hpc.credentials import ENV_FILE, read_env_file, redact_uri, split_secrets, split_uri
from hpc.validate import validate

CONFIG_FILE_NAME = "config.yaml"


@dataclass(frozen=True)
class JobSpec:
    config: dict[str, Any]
    run_dir: Path
    tracking_uri: str | None
    checkpoint_dir: Path
    workdir: Path  # the directory hpc-launch ran in; jobs start there
    # Environment variables for the workers that must never be written down in clear
    # (hpc.credentials): they go into the run's mode-0600 secrets.env instead.
    secrets: dict[str, str] = field(default_factory=dict)

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
    cfg, secrets = split_secrets(cfg)
    run_dir = _run_dir(cfg, now)
    if cfg.get("resume"):  # the secrets a run was started with
        secrets = {**read_env_file(run_dir / ENV_FILE), **secrets}
    uri, credentials = split_uri(default_tracking_uri(cfg["tracking"]) or "")
    secrets.update(credentials)
    if isinstance(cfg["tracking"].get("uri"), str):  # never keep a password in the config
        cfg["tracking"] = dict(cfg["tracking"], uri=split_uri(cfg["tracking"]["uri"])[0])
    entrypoint = str(cfg["job"]["entrypoint"])
    if entrypoint.endswith(".py") and ":" not in entrypoint:  # scripts: absolute for the nodes
        cfg["job"]["entrypoint"] = str(_path(entrypoint).resolve())
    ckpt = cfg["checkpoint"].get("dir")
    checkpoint_dir = _path(ckpt).resolve() if ckpt else run_dir / "checkpoints"
    return JobSpec(
        config=cfg,
        run_dir=run_dir,
        tracking_uri=uri or None,
        checkpoint_dir=checkpoint_dir,
        workdir=Path.cwd(),
        secrets=secrets,
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


__all__ = ["JobSpec", "load_spec", "redact_uri", "spec_from_config"]
