"""Coordinated, atomic checkpoints written by every rank.

Layout under the checkpoint directory::

    step-000000100/            one directory per checkpoint (renamed into place)
        rank0.pt rank1.pt ...  each rank's state (model, optimizer, RNG, ...)
        manifest.json          written last by rank 0: step, world size, sha256 per file
    LATEST                     name of the newest durable checkpoint (temp file + rename)

A checkpoint becomes visible only after every file and the manifest are fsynced
and the directory is renamed; LATEST moves after that; older ones are pruned
last. On load, a checkpoint whose manifest or checksum does not verify is
skipped with a warning and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc.files import fsync_dir, write_atomic

log = logging.getLogger(__name__)

PREFIX = "step-"
MANIFEST = "manifest.json"
LATEST = "LATEST"


@dataclass(frozen=True)
class LoadedCheckpoint:
    step: int
    path: Path
    state: dict[str, Any]
    manifest: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def latest_step(checkpoint_dir: Path) -> int:
    """The step of the newest committed checkpoint (LATEST), or -1."""
    try:
        name = (Path(checkpoint_dir) / LATEST).read_text().strip()
        return int(name.rsplit("-", 1)[1])
    except (FileNotFoundError, ValueError, IndexError):
        return -1


def committed_dirs(directory: Path) -> list[Path]:
    """Committed checkpoint directories (``step-N``) under ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(f"{PREFIX}*") if p.is_dir())


def publish(
    tmp: Path, final: Path, manifest: dict[str, Any], keep: int, valid: Callable[[Path], bool]
) -> None:
    """The commit, for every format: the manifest into the (fully written, fsynced) temp
    directory, fsync, rename into place, fsync the parent, move LATEST, prune to ``keep``.

    A valid checkpoint already at this step (a run resumed at its last step) is kept: a
    step names one training state, and LATEST may point there.
    """
    directory = final.parent
    write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2))
    fsync_dir(tmp)
    if final.exists() and valid(final):
        shutil.rmtree(tmp)
    else:
        if final.exists():  # a broken one at this step: out of the way first
            os.replace(final, directory / f".{final.name}.broken")
        os.replace(tmp, final)
        shutil.rmtree(directory / f".{final.name}.broken", ignore_errors=True)
    fsync_dir(directory)
    write_atomic(directory / LATEST, final.name + "\n")
    for old in committed_dirs(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += view.nbytes
        return int(self.fh.write(view))

    def flush(self) -> None:
        self.fh.flush()


class CheckpointManager:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        keep: int = 2,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] = lambda: None,
    ) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.rank = rank
        self.world_size = world_size
        self.barrier = barrier

    def step_dir(self, step: int) -> Path:
        return self.directory / f"{PREFIX}{step:09d}"

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
        """Every rank calls this with its own state; returns the committed directory."""
        tmp = self.prepare(step)
        self.write_rank(tmp, state)
        self.barrier()
        final = self.commit(step, tmp, meta) if self.rank == 0 else self.step_dir(step)
        self.barrier()
        return final

    # The phases of save(), also run by hpc.runtime.checkpoint_async (write and commit
    # there in a background thread, with files instead of barriers in between).
    def tmp_dir(self, step: int) -> Path:
        return self.directory / f".{self.step_dir(step).name}.tmp"

    def prepare(self, step: int) -> Path:
        """Rank 0 clears and creates the temp directory of ``step``; all ranks then meet."""
        tmp = self.tmp_dir(step)
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # debris of an interrupted save
            tmp.mkdir()
        self.barrier()
        return tmp

    def write_rank(self, tmp: Path, state: dict[str, Any]) -> None:
        """This rank's file (sha256 while writing, fsync), then its side file (atomic)."""
        import torch  # noqa: PLC0415 (lazy: torch only in the job)

        path = tmp / f"rank{self.rank}.pt"
        with open(path, "wb") as raw:
            writer = _HashingWriter(raw)  # checksum while writing: no read-back pass
            torch.save(state, writer)
            raw.flush()
            os.fsync(raw.fileno())
        write_atomic(
            tmp / f"rank{self.rank}.json",
            json.dumps(
                {
                    "sha256": writer.digest.hexdigest(),
                    "bytes": writer.size,
                    "contents": sorted(state),
                }
            ),
        )

    def commit(self, step: int, tmp: Path, meta: dict[str, Any] | None = None) -> Path:
        """Rank 0, once every rank's side file exists: manifest, rename, LATEST, prune."""
        final = self.step_dir(step)
        files, contents = {}, {}
        for side in sorted(tmp.glob("rank*.json")):
            info = json.loads(side.read_text(encoding="utf-8"))
            name = side.with_suffix(".pt").name
            files[name] = {"sha256": info["sha256"], "bytes": info["bytes"]}
            contents[name] = info["contents"]
            side.unlink()
        manifest = {
            "step": step,
            "world_size": self.world_size,
            "files": files,
            "contents": contents,
            "time": time.time(),
            **(meta or {}),
        }
        publish(tmp, final, manifest, self.keep, lambda path: self._manifest(path) is not None)
        return final

    def checkpoints(self) -> list[Path]:
        """Committed checkpoint directories, oldest first."""
        return committed_dirs(self.directory)

    def _manifest(self, path: Path) -> dict[str, Any] | None:
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            files = manifest["files"]
            for name, info in files.items():
                if (path / name).stat().st_size != info["bytes"]:
                    raise ValueError(f"{name} has the wrong size")
            return manifest
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("checkpoint %s is incomplete or corrupt (%s): skipped", path, exc)
            return None

    def valid_steps(self) -> list[int]:
        """Steps of committed checkpoints whose manifest and sizes check out, newest first."""
        steps = []
        for path in reversed(self.checkpoints()):
            manifest = self._manifest(path)
            if manifest is not None:
                steps.append(int(manifest["step"]))
        return steps

    def load_latest(
        self, map_location: str = "cpu", at_most: int | None = None
    ) -> LoadedCheckpoint | None:
        """The newest checkpoint (at or below ``at_most``) that verifies, or None."""
        import torch  # noqa: PLC0415 (lazy: torch only in the job)

        for path in reversed(self.checkpoints()):
            if at_most is not None and int(path.name[len(PREFIX) :]) > at_most:
                continue
            manifest = self._manifest(path)
            if manifest is None:
                continue
            name = f"rank{self.rank}.pt"
            if name not in manifest["files"]:
                name = "rank0.pt"  # fewer ranks saved than now run: replicated state
            if _sha256(path / name) != manifest["files"][name]["sha256"]:
                log.warning("checkpoint %s: %s fails its checksum: skipped", path, name)
                continue
            with open(path / name, "rb") as fh:
                state = torch.load(fh, map_location=map_location, weights_only=False)
            return LoadedCheckpoint(int(manifest["step"]), path, state, manifest)
        return None
