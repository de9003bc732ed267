"""The one atomic file write (a temp file, fsync, rename, then fsync of the directory)
and the one exclusive file lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def write_atomic(
    path: Path, text: str | bytes, mode: int | None = None, durable: bool = True
) -> None:
    """Write ``text`` (UTF-8, or bytes as they are) to ``path`` via a temp file, fsync, rename.

    With ``mode`` (e.g. ``0o600`` for secrets) the file has exactly that mode from its
    creation on, whatever the umask; without it, the umask's default. ``durable=False``
    skips both fsyncs: readers still never see a torn file, but a crash of the node may
    lose the write (for frequent, disposable reports such as heartbeats)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with os.fdopen(fd, "wb") as fh:
        if mode is not None:
            os.fchmod(fh.fileno(), mode)
        fh.write(text if isinstance(text, bytes) else text.encode("utf-8"))
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
