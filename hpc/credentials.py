"""Secrets: one rule for what looks like one, and how they reach the workers.

A value under a secret-looking key (``nccl.env.NCCL_API_TOKEN``,
``cluster.env.DB_PASSWORD``) and the ``user:password@`` of a tracking URI never
enter ``config.yaml``, a plan, a script, a log or MLflow. They travel in the run
directory's mode-0600 ``secrets.env`` (a Kubernetes Secret for k8s) and reach the
workers as environment variables; the URI's credentials become MLflow's own
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from hpc.files import write_atomic

SECRET_KEY = re.compile(r"(token|password|passwd|secret|api[_-]?key|credential)", re.I)
ENV_FILE = "secrets.env"
USERNAME_VAR, PASSWORD_VAR = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
# Config sections whose entries become environment variables of the workers.
ENV_SECTIONS = (("nccl", "env"), ("cluster", "env"))
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")


def looks_secret(key: object) -> bool:
    """The one rule: a key naming a token, password, secret, API key or credential."""
    return bool(SECRET_KEY.search(str(key)))


def split_secrets(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``cfg`` without secret-looking env entries, and those entries (name -> value)."""
    secrets: dict[str, str] = {}
    clean = dict(cfg)
    for section, key in ENV_SECTIONS:
        part = clean.get(section)
        if not isinstance(part, Mapping) or not isinstance(part.get(key), Mapping):
            continue
        env = {str(k): v for k, v in part[key].items()}
        secrets.update({k: str(v) for k, v in env.items() if looks_secret(k)})
        clean[section] = dict(part, **{key: {k: v for k, v in env.items() if not looks_secret(k)}})
    return clean, secrets


def split_uri(uri: str) -> tuple[str, dict[str, str]]:
    """``https://bob:pw@host/x`` -> (``https://host/x``, MLflow's credential variables)."""
    match = _USERINFO.match(uri)
    if not match:
        return uri, {}
    password = uri[match.end("user") + 1 : match.end() - 1]
    bare = match.group("scheme") + uri[match.end() :]
    return bare, {USERNAME_VAR: unquote(match.group("user")), PASSWORD_VAR: unquote(password)}


def redact(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` as ``scheme://user:***@``."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:***@", text)


def redact_uri(uri: str | None) -> str | None:
    return redact(uri) if uri else uri


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path`` (the atomic write), readable by the owner only (0600)."""
    write_atomic(path, text, mode=0o600)


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """``export NAME='value'`` lines (bash-sourceable), readable by the owner only."""
    write_private(
        path, "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in sorted(env.items()))
    )


def read_env_file(path: Path) -> dict[str, str]:
    """What :func:`write_env_file` wrote (empty when the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    words = shlex.split(text)
    pairs = (w.partition("=") for w in words if w != "export")
    return {k: v for k, _, v in pairs}


def load_run_secrets(run_dir: str | os.PathLike[str]) -> None:
    """Put a run's secrets into this process's environment (what the user set wins)."""
    for key, value in read_env_file(Path(run_dir) / ENV_FILE).items():
        os.environ.setdefault(key, value)
