"""Sharded checkpoints with ``torch.distributed.checkpoint`` (``checkpoint.format=dcp``).

Layout: the torch format's (``step-N/``, ``manifest.json``, ``LATEST``), with DCP's files::

    step-000000100/
        __0_0.distcp __1_0.distcp ...   each rank's shards (DCP FileSystemWriter)
        .metadata                       DCP's global index (rank 0)
        rank0.extra.pt rank1.extra.pt   each rank's non-tensor extras (step, RNG, data position)
        manifest.json                   written last by rank 0: format "dcp", sha256 per file

The state passed to :meth:`DcpCheckpointManager.save` (and the template passed to
:meth:`~DcpCheckpointManager.load_latest`) is a dict:

* ``"model"``: an ``nn.Module`` (FSDP2 ``fully_shard``, DTensor or plain) and, optionally,
  ``"optimizer"``: its ``Optimizer``. Their state goes through
  ``torch.distributed.checkpoint.state_dict.get_state_dict`` / ``set_state_dict``, so sharded
  parameters and optimizer state are saved as shards and resharded on load.
* any other ``DTensor`` value, or a dict/list holding DTensors (a sharded state dict):
  saved through DCP and loaded in place (resharded).
* everything else (ints, RNG state, plain tensors, ...): the rank's extras, one
  ``torch.save`` file per rank. (Plain tensors stay here on purpose: DCP would take them
  as replicated and keep one rank's copy.)

Resume on another world size: model and optimizer state reshard; every rank takes rank 0's
extras (they must be global: step, epoch, a global data position) and the ``"rng"`` extra is
dropped (the session re-seeds each rank, see ``Session.resume``). Optimizer state reshards
between any world sizes; a checkpoint whose optimizer state does not fit this run's optimizer
(another class, other parameters or shapes) fails with one-line :class:`CheckpointError`.

Commit protocol as in :mod:`hpc.runtime.checkpoint`: write into ``.step-N.tmp``, fsync every
file, each rank hashes its own files, rank 0 writes the manifest, renames, moves LATEST,
prunes. Load: the ranks agree on the newest step every rank verifies (manifest, every
file's size, and a 1/world_size share of the checksums each), then load it collectively.

Asynchronous saves (``asynchronous=True`` or ``save(..., blocking=False)``): the call returns
once ``dcp.async_save`` has staged the shards in host memory (a copy of the rank's shards:
the staged bytes per rank equal its ``.distcp`` file); the writes run on a dedicated gloo
group; each rank's thread then fsyncs and hashes its files and rank 0's thread commits (the
same protocol) once every rank's file list exists: files, no collectives. ``wait()`` joins
the save in flight (every save, load and ``close()`` does first).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc.files import write_atomic
from hpc.runtime.checkpoint import (
    LATEST,
    MANIFEST,
    PREFIX,
    CheckpointManager,
    LoadedCheckpoint,
    _sha256,
    committed_dirs,
    latest_step,
    publish,
)

log = logging.getLogger(__name__)

FORMAT = "dcp"
SHARDED_KEYS = ("model", "optimizer")
__all__ = [
    "LATEST",
    "CheckpointError",
    "DcpCheckpointManager",
    "latest_step",
    "make_checkpoints",
]


class CheckpointError(RuntimeError):
    """A checkpoint that verifies but cannot be loaded into this run (one line)."""


def _extra_name(rank: int) -> str:
    return f"rank{rank}.extra.pt"


def _distributed() -> bool:
    import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Silence DCP's warning that a save/load without a process group is a local one."""
    with warnings.catch_warnings():
        if not _distributed():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _default_barrier() -> None:
    import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

    if _distributed():
        dist.barrier()


def _default_all_reduce(value: int, op: str) -> int:
    """MIN/MAX over the default group with a CPU tensor (gloo); identity without one."""
    import torch  # noqa: PLC0415 (lazy: torch only in the job)
    import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
    return int(tensor.item())


@dataclass(frozen=True)
class _Summary:
    """What the manifest says about the state (no tensors: kept by a background commit)."""

    step: int
    sharded: list[str]
    extras: list[str]
    optimizer: dict[str, Any] | None


@dataclass
class _Pending:
    final: Path
    thread: threading.Thread


@dataclass(frozen=True)
class _Split:
    sharded: dict[str, Any]  # what DCP saves/loads
    extras: dict[str, Any]  # the rank's torch.save file
    optimizer: dict[str, Any] | None  # the optimizer's description for the manifest


def _split(state: dict[str, Any]) -> _Split:
    import torch  # noqa: PLC0415 (lazy: torch only in the job)
    from torch.distributed.checkpoint.state_dict import get_state_dict  # noqa: PLC0415
    from torch.distributed.tensor import DTensor  # noqa: PLC0415

    model, optimizer = state.get("model"), state.get("optimizer")
    sharded: dict[str, Any] = {}
    described = None
    if isinstance(model, torch.nn.Module):
        optimizers = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else []
        model_sd, optim_sd = get_state_dict(model, optimizers)
        sharded["model"] = model_sd
        if optimizers:
            sharded["optimizer"] = optim_sd
            described = {
                "class": type(optimizer).__name__,
                "param_groups": len(optimizer.param_groups),  # type: ignore[union-attr]
            }
    elif isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError("checkpoint.format=dcp: an 'optimizer' needs its 'model' in the state")
    extras = {}
    for key, value in state.items():
        if key in sharded:
            continue
        if _has_dtensor(value, DTensor):
            sharded[key] = value
        else:
            extras[key] = value
    return _Split(sharded, extras, described)


def _has_dtensor(tree: Any, dtensor: type) -> bool:
    """A DTensor, or a dict/list holding one (a sharded state dict the caller made)."""
    if isinstance(tree, dtensor):
        return True
    if isinstance(tree, dict):
        return any(_has_dtensor(v, dtensor) for v in tree.values())
    if isinstance(tree, list | tuple):
        return any(_has_dtensor(v, dtensor) for v in tree)
    return False


class DcpCheckpointManager:
    """Sharded, reshardable checkpoints; the public surface of ``CheckpointManager``.

    ``barrier`` and ``all_reduce(value, "min"|"max")`` default to the default process group
    (CPU tensors: gloo); ``process_group`` is the group DCP uses (default: the default one).
    """

    format = FORMAT

    def __init__(
        self,
        directory: str | os.PathLike[str],
        keep: int = 2,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
        all_reduce: Callable[[int, str], int] | None = None,
        process_group: Any = None,
        thread_count: int = 1,
        asynchronous: bool = False,
        commit_timeout_s: float = 1800.0,
    ) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.rank = rank
        self.world_size = world_size
        self.barrier = barrier or _default_barrier
        self.all_reduce = all_reduce or _default_all_reduce
        self.process_group = process_group
        self.thread_count = thread_count
        self.asynchronous = asynchronous
        self.commit_timeout_s = commit_timeout_s
        self._group: Any = None
        self._pending: _Pending | None = None
        self._error: BaseException | None = None

    def step_dir(self, step: int) -> Path:
        return self.directory / f"{PREFIX}{step:09d}"

    # -- save --------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        state: dict[str, Any],
        meta: dict[str, Any] | None = None,
        *,
        blocking: bool | None = None,
    ) -> Path:
        """Every rank calls this (collective); returns the (to be) committed directory.

        Asynchronous (``asynchronous=True`` or ``blocking=False``): returns once the state
        is staged (copied to host memory by ``dcp.async_save``); DCP writes on a dedicated
        gloo group in the background, then each rank's thread fsyncs and hashes its files
        and rank 0's commits once every rank's file list exists (files, no collectives).
        A new save, :meth:`wait` and :meth:`close` wait for the one in flight.
        """
        import torch  # noqa: PLC0415 (lazy: torch only in the job)
        import torch.distributed.checkpoint as dcp  # noqa: PLC0415

        background = self.asynchronous if blocking is None else not blocking
        self.wait()  # one save at a time
        split = _split(state)
        final = self.step_dir(step)
        tmp = self.directory / f".{final.name}.tmp"
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # debris of an interrupted save
            tmp.mkdir()
        self.barrier()
        with open(tmp / _extra_name(self.rank), "wb") as fh:
            torch.save(split.extras, fh)
            fh.flush()
            os.fsync(fh.fileno())
        writer = dcp.FileSystemWriter(tmp, sync_files=True, thread_count=self.thread_count)
        summary = _Summary(step, sorted(split.sharded), sorted(split.extras), split.optimizer)
        if background and _distributed():
            future = dcp.async_save(
                split.sharded, storage_writer=writer, process_group=self._async_group()
            )
            done = getattr(future, "upload_completion", future)  # a Future or a response
            thread = threading.Thread(
                target=self._finish_in_background,
                args=(done, tmp, final, summary, meta),
                name=f"dcp-commit-{step}",
            )
            self._pending = _Pending(final, thread)
            thread.start()
            return final
        with _single_process_quiet():
            dcp.save(
                split.sharded,
                storage_writer=writer,
                process_group=self.process_group,
                no_dist=not _distributed(),
            )
        self._list_files(tmp)
        self.barrier()
        if self.rank == 0:
            self._commit(tmp, final, summary, meta)
        self.barrier()
        return final

    def _async_group(self) -> Any:
        """A gloo group for the background writes (created once, by every rank together)."""
        import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

        if self._group is None:
            self._group = dist.new_group(backend="gloo")
        return self._group

    def _list_files(self, tmp: Path) -> None:
        """fsync and hash this rank's files; its list, written last, says it is done."""
        mine = [_extra_name(self.rank), *(p.name for p in tmp.glob(f"__{self.rank}_*.distcp"))]
        if self.rank == 0:
            mine.append(".metadata")
        files = {}
        for name in sorted(mine):
            path = tmp / name
            with open(path, "rb") as fh:  # DCP fsyncs its shards; this covers .metadata too
                os.fsync(fh.fileno())
            files[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
        write_atomic(tmp / f"rank{self.rank}.files.json", json.dumps(files))

    def _finish_in_background(
        self, done: Any, tmp: Path, final: Path, summary: _Summary, meta: dict[str, Any] | None
    ) -> None:
        try:
            done.result()  # DCP's writes (and its collectives on the dedicated group)
            self._list_files(tmp)
            if self.rank != 0:
                return
            deadline = time.monotonic() + self.commit_timeout_s
            lists = [tmp / f"rank{r}.files.json" for r in range(self.world_size)]
            while not all(p.exists() for p in lists):  # the other ranks' threads, via files
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not every rank listed its files in {tmp}")
                time.sleep(0.01)
            self._commit(tmp, final, summary, meta)
        except BaseException as exc:
            log.error("asynchronous checkpoint %s failed: %s", final.name, exc)
            self._error = exc

    def wait(self) -> Path | None:
        """Wait for the save in flight (if any); its directory, or an error it raised.

        On rank 0 the checkpoint is committed (LATEST moved) when this returns; on other
        ranks their part is durable and listed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        pending.thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise CheckpointError(f"asynchronous checkpoint {pending.final.name}: {error}")
        return pending.final

    def close(self) -> None:
        """Wait for the save in flight; call before the process group is destroyed."""
        self.wait()

    def _commit(
        self, tmp: Path, final: Path, summary: _Summary, meta: dict[str, Any] | None
    ) -> None:
        files: dict[str, Any] = {}
        for side in sorted(tmp.glob("rank*.files.json")):
            files.update(json.loads(side.read_text(encoding="utf-8")))
            side.unlink()
        manifest = {
            "step": summary.step,
            "world_size": self.world_size,
            "format": FORMAT,
            "files": dict(sorted(files.items())),
            "contents": {"sharded": summary.sharded, "extras": summary.extras},
            "optimizer": summary.optimizer,
            "time": time.time(),
            **(meta or {}),
        }
        publish(tmp, final, manifest, self.keep, lambda path: self._manifest(path) is not None)

    # -- inspect -----------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Committed checkpoint directories, oldest first."""
        return committed_dirs(self.directory)

    def _manifest(self, path: Path) -> dict[str, Any] | None:
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT:
                raise ValueError(f"format {manifest.get('format', 'torch')!r}, not 'dcp'")
            files = manifest["files"]
            expected = [".metadata", *map(_extra_name, range(int(manifest["world_size"])))]
            if missing := [name for name in expected if name not in files]:
                raise ValueError(f"the manifest lists no {missing[0]}")
            for name, info in files.items():
                if (path / name).stat().st_size != info["bytes"]:
                    raise ValueError(f"{name} has the wrong size")
            return manifest
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("checkpoint %s is incomplete or corrupt (%s): skipped", path, exc)
            return None

    def valid_steps(self) -> list[int]:
        """Steps of committed checkpoints whose manifest and sizes check out, newest first."""
        return [int(m["step"]) for p in reversed(self.checkpoints()) if (m := self._manifest(p))]

    def _extras_file(self, manifest: dict[str, Any]) -> str:
        same = int(manifest["world_size"]) == self.world_size
        return _extra_name(self.rank if same else 0)

    def verify_newest(self, at_most: int | None = None) -> tuple[Path, dict[str, Any]] | None:
        """This rank's check (no collectives): the newest checkpoint whose manifest and sizes
        verify, and whose checksums of this rank's share of the files (and its extras) match."""
        for path in reversed(self.checkpoints()):
            if at_most is not None and int(path.name[len(PREFIX) :]) > at_most:
                continue
            manifest = self._manifest(path)
            if manifest is None:
                continue
            names = sorted(manifest["files"])
            share = set(names[self.rank :: self.world_size]) | {self._extras_file(manifest)}
            files = manifest["files"]
            bad = [
                n
                for n in sorted(share)
                if n not in files or _sha256(path / n) != files[n]["sha256"]
            ]
            if bad:
                log.warning("checkpoint %s: %s fails its checksum: skipped", path, bad[0])
                continue
            return path, manifest
        return None

    # -- load --------------------------------------------------------------------------------
    def load_latest(
        self,
        template: dict[str, Any] | None = None,
        map_location: str = "cpu",
        at_most: int | None = None,
    ) -> LoadedCheckpoint | None:
        """Collective: the newest checkpoint (at or below ``at_most``) that every rank verifies,
        loaded in place into ``template`` (``{"model": m, "optimizer": o, "t": tensor...}``).

        The returned state holds the extras plus the template's loaded objects; ``"rng"``
        only when the world size is the saved one. ``map_location`` is unused (DCP loads
        into the template's devices).
        """
        self.wait()
        agreed, found = at_most, None
        while True:  # every rank runs the same iterations: lo/hi are the same everywhere
            found = self.verify_newest(at_most=agreed)
            mine = int(found[1]["step"]) if found else -1
            lo, hi = self.all_reduce(mine, "min"), self.all_reduce(mine, "max")
            if lo == hi:
                break
            agreed, found = lo, None
            if lo < 0:  # some rank has no usable checkpoint at all: start afresh
                break
        if found is None:
            return None
        return self._load(*found, template or {})

    def _load(
        self, path: Path, manifest: dict[str, Any], template: dict[str, Any]
    ) -> LoadedCheckpoint:
        import torch  # noqa: PLC0415 (lazy: torch only in the job)
        import torch.distributed.checkpoint as dcp  # noqa: PLC0415
        from torch.distributed.checkpoint.state_dict import set_state_dict  # noqa: PLC0415

        where = f"checkpoint {path.name} (saved at world size {manifest['world_size']})"
        split = _split(template)
        saved_opt, this_opt = manifest.get("optimizer"), split.optimizer
        if saved_opt and this_opt and saved_opt != this_opt:
            raise CheckpointError(
                f"{where}: its optimizer state is {saved_opt['class']}'s with "
                f"{saved_opt['param_groups']} param group(s); this run's optimizer is "
                f"{this_opt['class']} with {this_opt['param_groups']}: cannot be converted"
            )
        missing = sorted(set(split.sharded) - set(manifest["contents"]["sharded"]))
        if missing:
            raise CheckpointError(f"{where} has no {', '.join(missing)} state")
        try:
            with _single_process_quiet():
                dcp.load(
                    split.sharded,
                    checkpoint_id=path,
                    process_group=self.process_group,
                    no_dist=not _distributed(),
                )
        except Exception as exc:  # DCP's planner: missing keys, shapes that differ, ...
            first = next((line for line in str(exc).splitlines() if line.strip()), repr(exc))
            raise CheckpointError(
                f"{where} does not fit this run's state: {first.strip()[:300]}"
            ) from exc
        model = template.get("model")
        if isinstance(model, torch.nn.Module) and "model" in split.sharded:
            optimizer = template.get("optimizer")
            set_state_dict(
                model,
                [optimizer] if "optimizer" in split.sharded else [],
                model_state_dict=split.sharded["model"],
                optim_state_dict=split.sharded.get("optimizer", {}),
            )
        with open(path / self._extras_file(manifest), "rb") as fh:
            extras = torch.load(fh, map_location="cpu", weights_only=False)
        if int(manifest["world_size"]) != self.world_size:
            extras.pop("rng", None)  # another rank's stream: the session re-seeds instead
        state = {**extras, **{k: template[k] for k in split.sharded if k in template}}
        return LoadedCheckpoint(int(manifest["step"]), path, state, manifest)


def make_checkpoints(
    checkpoint_cfg: dict[str, Any],
    default_dir: str | os.PathLike[str],
    rank: int,
    world_size: int,
    barrier: Callable[[], None],
    all_reduce: Callable[[int, str], int] | None = None,
) -> CheckpointManager | DcpCheckpointManager:
    """The manager for ``checkpoint.format``: ``torch`` (per-rank files) or ``dcp``."""
    directory = checkpoint_cfg.get("dir") or default_dir
    keep = int(checkpoint_cfg.get("keep", 2))
    fmt = checkpoint_cfg.get("format", "torch")
    fmt = getattr(fmt, "value", fmt)  # the schema's enum, or its string
    if fmt == FORMAT:
        return DcpCheckpointManager(
            directory,
            keep,
            rank,
            world_size,
            barrier=barrier,
            all_reduce=all_reduce,
            # hpc.spec.rules refuses async with dcp until the Session waits for the save in
            # flight (wait()) before a preempted exit and before destroying the groups.
            asynchronous=bool(checkpoint_cfg.get("async", False)),
        )
    return CheckpointManager(
        directory, keep=keep, rank=rank, world_size=world_size, barrier=barrier
    )
