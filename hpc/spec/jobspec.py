"""A validated job spec: the resolved config plus the paths every launcher needs."""

from __future__ import annotations

import copy
import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hpc.credentials import ENV_FILE, read_env_file, redact_uri, split_secrets, split_uri
from hpc.rundir import records
from hpc.spec.compose import (
    EMBEDDED,
    ConfigError,
    check_override_syntax,
    compose,
    override_parser,
    to_container,
)
from hpc.spec.rules import flat_items, is_config_key, validate
from hpc.spec.sources import ConfigSource

CONFIG_FILE_NAME = "config.yaml"


@dataclass(frozen=True)
class JobSpec:
    config: dict[str, Any]
    run_dir: Path
    tracking_uri: str | None
    checkpoint_dir: Path
    workdir: Path  # the directory hpc-launch ran in; jobs start there
    # On a resume: the keys whose values changed (``resume_allow_changes``): [old, new].
    resume_changes: dict[str, list[Any]] = field(default_factory=dict)
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
    def run_dir_key(self) -> str:
        """The config key the run directory comes from (for error messages)."""
        if self.config.get("resume"):
            return "resume"
        return "run_dir" if self.config.get("run_dir") else "output_root"

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


def load_spec(
    overrides: Sequence[str] = (),
    *,
    now: _dt.datetime | None = None,
    source: ConfigSource = EMBEDDED,
) -> JobSpec:
    """Compose, validate and resolve paths. Raises ConfigError naming the key.

    ``run_dir=<an existing run>`` resumes it: like ``resume=``, under the config it was
    started with unless ``resume_allow_changes`` lists what may differ.
    """
    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if resume and resume[-1]:
        return resume_spec(resume[-1], [o for o in overrides if not o.startswith("resume=")])
    cfg = to_container(compose(overrides, source))
    validate(cfg)
    spec = spec_from_config(cfg, now=now)
    if records.record_path(spec.run_dir).exists():
        stored = read_stored_config("run_dir", spec.run_dir)
        spec = replace(spec, resume_changes=checked_changes("run_dir", spec, stored))
    return spec


RESUME_OVERRIDABLE = ("dry_run", "wait")


def resume_spec(run_dir: str, overrides: Sequence[str]) -> JobSpec:
    """A run continues with the config it was started with (its config.yaml), changed only
    where an override names a key that ``resume_allow_changes`` lists."""
    try:
        path = _path(run_dir).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ConfigError("resume", f"{run_dir!r} cannot be resolved ({exc})") from None
    if not (path / "job.json").is_file() or not (path / CONFIG_FILE_NAME).is_file():
        raise ConfigError("resume", f"{run_dir!r} is not a run directory (no job.json/config.yaml)")
    cfg = read_stored_config("resume", path)
    stored = copy.deepcopy(cfg)
    cfg["resume_allow_changes"] = []  # an earlier resume's list allows nothing now
    apply_resume_overrides(cfg, overrides)
    cfg["resume"] = str(path)
    try:
        validate(cfg)
    except (KeyError, TypeError, AttributeError) as exc:
        config_file = path / CONFIG_FILE_NAME
        raise ConfigError("resume", f"{config_file}: not a job config ({exc!r})") from None
    spec = spec_from_config(cfg)
    return replace(spec, resume_changes=checked_changes("resume", spec, stored))


def read_stored_config(key: str, run_dir: Path) -> dict[str, Any]:
    """The config.yaml of an existing run (its job.json must read too), or ConfigError."""
    try:
        records.load(run_dir)
        return records.read_run_config(run_dir / CONFIG_FILE_NAME)
    except (OSError, ValueError) as exc:
        raise ConfigError(key, str(exc)) from None


def apply_resume_overrides(cfg: dict[str, Any], overrides: Sequence[str]) -> None:
    """``key=value`` overrides onto a stored config: existing keys only, each keeping its type."""
    check_override_syntax(overrides)
    for text in overrides:
        parsed = override_parser().parse_override(text)
        key = parsed.key_or_group
        if key in RESUME_OVERRIDABLE:
            cfg[key] = str(parsed.value()).lower() == "true"
            continue
        if parsed.is_add() or parsed.is_delete() or parsed.is_sweep_override():
            raise ConfigError(key, "a resumed run can only change existing keys (key=value)")
        parent, leaf = _parent(cfg, key)
        old, new = parent.get(leaf), parsed.value()
        parent[leaf] = _same_type(key, old, new)


def _parent(cfg: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    *path, leaf = key.split(".")
    node: Any = cfg
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    known = isinstance(node, dict) and (leaf in node or key == "resume_allow_changes")
    if not known or isinstance(node.get(leaf), dict):
        raise ConfigError(key, "is not a key of the run's config (a resumed run keeps its keys)")
    return node, leaf


def _same_type(key: str, old: Any, new: Any) -> Any:
    """``new`` as the type ``old`` had (an int for a float is fine), or ConfigError."""
    if old is None or new is None:
        return new
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    if isinstance(old, str) and isinstance(new, int | float) and not isinstance(new, bool):
        return str(new)
    if type(old) is not type(new):
        raise ConfigError(key, f"must be a {type(old).__name__} (like {old!r}), got {new!r}")
    return new


def checked_changes(how: str, spec: JobSpec, stored: dict[str, Any]) -> dict[str, list[Any]]:
    """The config keys a resume changes, or ConfigError naming those not allowed.

    Compared as written to config.yaml; keys in NON_CONFIG_KEYS are not compared.
    """
    old = flat_items(stored)
    new = flat_items(yaml.safe_load(spec.config_yaml()))
    changed = {
        k: [old.get(k), new.get(k)]
        for k in sorted(set(old) | set(new))
        if is_config_key(k) and old.get(k, _UNSET) != new.get(k, _UNSET)
    }
    allowed = spec.config.get("resume_allow_changes") or []
    refused = [k for k in changed if not any(k == a or k.startswith(f"{a}.") for a in allowed)]
    if refused:
        diffs = ", ".join(f"{changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise ConfigError(
            ", ".join(refused),
            f"differ{'s' if len(refused) == 1 else ''} from the config the run in "
            f"{how}={str(spec.run_dir)!r} was started with ({diffs}); to resume with "
            f"{'this change' if len(refused) == 1 else 'these changes'} pass "
            f"resume_allow_changes=[{','.join(refused)}]",
        )
    return changed


_UNSET = object()


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
