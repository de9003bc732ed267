"""A real OCI bundle built from this machine's own files, for ``srun --container``.

Nothing is downloaded and almost nothing copied: the rootfs is an empty directory
(plus the merged-/usr links and a marker file), and ``config.json`` bind-mounts the
host's ``/usr`` and ``/etc``, this Python (the venv and the interpreter it was made
from), the repository, and the directories that must be the same path inside and
outside (the test's scratch root: launch dirs and run dirs). ``python3`` in the
container is this venv's Python, through a small script the bundle mounts on
``/usr/local/bin``, so ``container.python`` keeps its default.

Namespaces: mount only. The ranks share the host's PID and network namespaces (the
host-side sampler sees them; gloo rendezvous on 127.0.0.1 works as outside).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hpc

MARKER = "HPC_OCI_BUNDLE"  # a file at the rootfs's top: only the container sees it at /


def _bind(path: str, *, writable: bool = False) -> dict[str, Any]:
    return {
        "destination": path,
        "source": path,
        "type": "bind",
        "options": ["rbind", "rw" if writable else "ro"],
    }


def python_dirs() -> list[str]:
    """The venv, the interpreter's own prefix, and where ``hpc`` is imported from."""
    repo = str(Path(hpc.__file__).resolve().parent.parent)
    dirs = [sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent.parent), repo]
    return sorted({d for d in dirs if not d.startswith(("/usr/", "/etc/")) and d != "/usr"})


def _under(path: str, dirs: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _outermost(paths: Iterable[str]) -> list[str]:
    kept: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths}, key=len):
        if not _under(path, kept):
            kept.append(path)
    return kept


def build(bundle: Path, same_path: Iterable[str]) -> Path:
    """Write the bundle at ``bundle``; ``same_path`` directories are bound read-write."""
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    for name in ("bin", "lib", "lib64", "sbin"):  # Debian's merged /usr
        if os.path.islink(f"/{name}"):
            (rootfs / name).symlink_to(os.readlink(f"/{name}"))
    (rootfs / MARKER).write_text("the rootfs of tests/oci_bundle.py\n")
    tools = bundle / "bin"
    tools.mkdir()
    python3 = tools / "python3"
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python3.chmod(0o755)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        _bind("/dev", writable=True),
        _bind("/sys"),
        _bind("/usr"),
        _bind("/etc"),
        {
            "destination": "/usr/local/bin",
            "source": str(tools),
            "type": "bind",
            "options": ["rbind", "ro"],
        },
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
    ]
    writable = _outermost(str(Path(p).resolve()) for p in same_path)
    mounts += [_bind(path, writable=True) for path in writable]
    # Nested binds are fine (a checkout's .venv inside it): mounted in this order.
    mounts += [_bind(path) for path in sorted(python_dirs(), key=len) if not _under(path, writable)]
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": os.getuid(), "gid": os.getgid()},
            "args": ["/bin/true"],  # Slurm puts the step's command here
            "env": ["PATH=/usr/local/bin:/usr/bin:/bin"],  # and the step's environment
            "cwd": "/",
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": mounts,
        "linux": {"namespaces": [{"type": "mount"}]},
    }
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle
