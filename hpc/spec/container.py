"""The ``container`` section: its value rules and the mounts every container run needs.

Shared by every launcher (each renders the section its own way: Slurm through Pyxis,
Apptainer or OCI flags, Kubernetes as the pod image). Pure except :func:`check`'s look
at local image files. Every failure is a one-line ConfigError naming the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from hpc import __version__
from hpc.spec.errors import ConfigError

RUNTIMES = ("none", "pyxis", "apptainer", "oci")
INSTALLS = ("none", "pip", "host")
GPU_FLAGS = {"nvidia": "--nv", "rocm": "--rocm", "none": ""}
MOUNT_OPTIONS = ("ro", "rw")
# Where install=pip puts the framework's runtime (under the run dir, seen by every node).
SITE_DIR = ".container-site"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_IMAGE_FILE_SUFFIXES = (".sqsh", ".squashfs", ".sif", ".simg")
_SCHEMES = ("docker://", "oras://", "library://", "docker-archive://", "oci-archive://")


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    options: str = ""  # "", "ro" or "rw"

    def spec(self) -> str:
        """``SRC:DST[:OPTS]``, as Pyxis and Apptainer both take it."""
        return ":".join(p for p in (self.source, self.target, self.options) if p)


def runtime(cfg: dict[str, Any]) -> str:
    return str((cfg.get("container") or {}).get("runtime") or "none")


def enabled(cfg: dict[str, Any]) -> bool:
    return runtime(cfg) != "none"


def is_image_file(image: str) -> bool:
    """A local file or directory (a path), not a registry reference."""
    return image.startswith(("/", "./", "../", "~")) or image.endswith(_IMAGE_FILE_SUFFIXES)


def parse_mount(key: str, text: object) -> Mount:
    """``SRC:DST[:ro|rw]`` with absolute paths, or ConfigError naming ``key``."""
    value = str(text)
    parts = value.split(":")
    if len(parts) < 2 or not parts[1]:
        raise ConfigError(key, f"{value!r} has no target (write SRC:DST or SRC:DST:ro)")
    if len(parts) > 3:
        raise ConfigError(key, f"{value!r} has too many ':' (SRC:DST[:ro|rw])")
    source, target = os.path.expanduser(parts[0]), parts[1]
    options = parts[2] if len(parts) == 3 else ""
    for what, path in (("source", source), ("target", target)):
        if not path.startswith("/"):
            raise ConfigError(key, f"{value!r}: the {what} {path!r} must be an absolute path")
        if "," in path or any(ord(c) < 32 for c in path):
            raise ConfigError(key, f"{value!r}: the {what} holds a ',' or a control character")
    if options not in ("", *MOUNT_OPTIONS):
        raise ConfigError(key, f"{value!r}: option {options!r} is not ro or rw")
    return Mount(_norm(source), _norm(target), options)


def mounts(cfg: dict[str, Any]) -> list[Mount]:
    items = (cfg.get("container") or {}).get("mounts") or []
    return [parse_mount(f"container.mounts[{i}]", m) for i, m in enumerate(items)]


def check(cfg: dict[str, Any]) -> None:
    """The section's own rules (any launcher); raise ConfigError naming the key."""
    box = cfg.get("container") or {}
    kind = runtime(cfg)
    if kind not in RUNTIMES:
        raise ConfigError("container.runtime", f"{kind!r} is not one of {', '.join(RUNTIMES)}")
    image = box.get("image")
    if kind != "none" and not str(image or "").strip():
        raise ConfigError("container.image", f"is missing (container.runtime={kind} needs one)")
    if image is not None and (not str(image).strip() or re.search(r"[\s,]", str(image))):
        raise ConfigError("container.image", f"{image!r} is not an image reference or path")
    mounts(cfg)
    for i, name in enumerate(box.get("env") or []):
        if not _ENV_NAME.match(str(name)):
            raise ConfigError(f"container.env[{i}]", f"{name!r} is not a variable name")
    workdir = box.get("workdir")
    if workdir is not None and not str(workdir).startswith("/"):
        raise ConfigError("container.workdir", f"{workdir!r} must be an absolute path")
    install = str(box.get("install") or "none")
    if install not in INSTALLS:
        raise ConfigError("container.install", f"{install!r} is not one of {', '.join(INSTALLS)}")
    gpu = str(box.get("gpu") or "nvidia")
    if gpu not in GPU_FLAGS:
        raise ConfigError("container.gpu", f"{gpu!r} is not one of {', '.join(GPU_FLAGS)}")
    if not str(box.get("python") or "").strip():
        raise ConfigError("container.python", "must name the interpreter in the image")
    if kind != "none" and is_image_file(str(image)) and not str(image).startswith("/"):
        raise ConfigError("container.image", f"{image!r}: a local image must be an absolute path")


def wheel(cfg: dict[str, Any]) -> str:
    """What ``install=pip`` installs: ``container.wheel``, else this version from the index."""
    return str((cfg.get("container") or {}).get("wheel") or f"hpc-launch=={__version__}")


def required_mounts(
    needed: Sequence[tuple[str, str]], user: Iterable[Mount]
) -> tuple[list[Mount], list[str]]:
    """The same-path mounts to add for ``needed`` ``(config key, absolute path)`` pairs
    (the launch dir, run dir, checkpoints ...), and what each covers, for the plan.

    A path must be the same inside and outside: a user mount whose target holds it
    from another source is a ConfigError naming the path's key.
    """
    user = list(user)
    added: list[Mount] = []
    shown: list[str] = []
    for key, raw in needed:
        path = _norm(raw)
        covering = [m for m in user if _under(path, m.target)]
        if covering:
            best = max(covering, key=lambda m: len(m.target))
            inside = best.source + path[len(best.target) :]
            if _norm(inside) != path:
                raise ConfigError(
                    key,
                    f"{path!r} is not mounted at the same path in the container "
                    f"({best.spec()} shows {_norm(inside)!r} there); the run dir, checkpoints "
                    "and logs must be the same path inside and outside",
                )
            shown.append(f"{path} ({key.strip('()')}: by container.mounts {best.spec()})")
            continue
        if any(_under(path, m.target) for m in added):
            shown.append(f"{path} ({key.strip('()')})")
            continue
        added = [m for m in added if not _under(m.target, path)]
        added.append(Mount(path, path))
        shown.append(f"{path} ({key.strip('()')})")
    return added, shown


def covered(path: str, targets: Iterable[str]) -> bool:
    return any(_under(_norm(path), _norm(t)) for t in targets)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _norm(path: str) -> str:
    return str(PurePosixPath(os.path.normpath(path))) if path else path
