"""Asynchronous checkpoints (``checkpoint.async=true``): stage, then write in the background.

:meth:`AsyncCheckpointer.save` blocks the caller only while the state is staged: a
deep copy of it with every tensor copied to host memory (from a GPU into pinned
buffers with non-blocking copies and one synchronize per device; on the CPU a plain
copy). The copy is a snapshot: in-place updates of the model after ``save`` returns
do not reach the file (pytorch#144657). A background thread then runs the phases of
:class:`~hpc.runtime.checkpoint.CheckpointManager` unchanged: this rank's file with
its sha256 and fsync, then its side file; on rank 0, once every rank's side file is
there, the manifest, the rename, LATEST and pruning, then ``on_commit``.

The background thread runs no ``torch.distributed`` collective (one from a second
thread would race the training thread's): the ranks meet through the files in the
temp directory. Rank 0 polls for ``rank<N>.json`` of every rank; a rank whose write
failed leaves ``rank<N>.failed`` there instead, and rank 0 fails at once rather than
waiting out ``wait_for_ranks_s``. A failed background save raises
:class:`AsyncCheckpointError` in the caller at its next ``save`` or ``wait``.

Memory: one staged copy per rank, as many bytes as the state's tensors (pinned host
memory for GPU tensors). A new save waits for the previous one, so at most one
copy exists; its buffers are kept and reused by the next save (same shapes), until
:meth:`close`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpc.files import write_atomic
from hpc.runtime.checkpoint import CheckpointManager

WAIT_FOR_RANKS_S = 1800.0  # rank 0 waits this long for the other ranks' parts


class AsyncCheckpointError(RuntimeError):
    """A background checkpoint write or commit failed."""


def _collect(obj: Any, out: list[Any], seen: set[int]) -> None:
    """The tensors in nested dicts, lists and tuples, each once, in walk order."""
    import torch  # noqa: PLC0415 (lazy: torch only in the job)

    if isinstance(obj, torch.Tensor):
        if id(obj) not in seen:
            seen.add(id(obj))
            out.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _collect(value, out, seen)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _collect(value, out, seen)


class Stager:
    """Copies a state to host memory, reusing the previous copy's buffers."""

    def __init__(self) -> None:
        self._buffers: list[Any] = []

    @property
    def nbytes(self) -> int:
        """Host bytes held by the staging buffers."""
        return sum(b.numel() * b.element_size() for b in self._buffers)

    def stage(self, state: dict[str, Any]) -> dict[str, Any]:
        """A deep copy of ``state`` whose tensors are host copies, complete on return.

        The previous staged copy must no longer be in use (its buffers are reused).
        """
        import torch  # noqa: PLC0415 (lazy: torch only in the job)

        tensors: list[Any] = []
        _collect(state, tensors, set())
        memo: dict[int, Any] = {}
        buffers: list[Any] = []
        devices = set()
        for i, tensor in enumerate(tensors):
            source = tensor.detach()
            if source.layout is not torch.strided or source.is_quantized:
                memo[id(tensor)] = source.to("cpu", copy=True)  # rare layouts: no reuse
                continue
            pinned = source.device.type == "cuda"
            buffer = self._buffers[i] if i < len(self._buffers) else None
            if (
                buffer is None
                or buffer.shape != source.shape
                or buffer.dtype != source.dtype
                or buffer.is_pinned() != pinned
            ):
                buffer = torch.empty(
                    source.shape, dtype=source.dtype, device="cpu", pin_memory=pinned
                )
            buffer.copy_(source, non_blocking=pinned)
            if pinned:
                devices.add(source.device)
            memo[id(tensor)] = buffer
            buffers.append(buffer)
        for device in devices:  # the non-blocking copies are complete after this
            torch.cuda.synchronize(device)
        self._buffers = buffers
        return copy.deepcopy(state, memo)  # tensors come from the memo: the host copies

    def release(self) -> None:
        self._buffers = []


class AsyncCheckpointer:
    """Saves through ``manager``: staging in the caller, the rest in a background thread."""

    def __init__(
        self,
        manager: CheckpointManager,
        wait_for_ranks_s: float = WAIT_FOR_RANKS_S,
    ) -> None:
        self.manager = manager
        self.wait_for_ranks_s = wait_for_ranks_s
        self.stager = Stager()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._step = -1

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def save(
        self,
        step: int,
        state: dict[str, Any],
        meta: dict[str, Any] | None = None,
        on_commit: Callable[[int, Path], None] | None = None,
    ) -> Path:
        """Every rank calls this at the same step; returns the directory the checkpoint
        will have once committed (it may not be yet: see :meth:`wait`).

        Waits for the previous save first (and raises its error). ``on_commit`` runs
        on rank 0 in the background thread after LATEST moved.
        """
        self.wait()
        staged = self.stager.stage(state)
        tmp = self.manager.prepare(step)  # rank 0 clears it; a barrier on all ranks
        self._step = step
        self._thread = threading.Thread(
            target=self._write,
            args=(step, tmp, staged, meta, on_commit),
            name=f"checkpoint-step-{step}",
            daemon=True,
        )
        self._thread.start()
        return self.manager.step_dir(step)

    def wait(self) -> None:
        """Wait for the save in flight; raise :class:`AsyncCheckpointError` if it failed.

        On rank 0 the checkpoint is committed when this returns; on the other ranks
        their part is durable (rank 0 commits once it has every part).
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise AsyncCheckpointError(
                f"asynchronous checkpoint of step {self._step} failed on rank "
                f"{self.manager.rank}: {error!r}"
            ) from error

    def close(self) -> None:
        """Wait (errors raised as in :meth:`wait`), then free the staging buffers."""
        try:
            self.wait()
        finally:
            self.stager.release()

    # -- the background thread -----------------------------------------------------------
    def _write(
        self,
        step: int,
        tmp: Path,
        staged: dict[str, Any],
        meta: dict[str, Any] | None,
        on_commit: Callable[[int, Path], None] | None,
    ) -> None:
        rank = self.manager.rank
        try:
            self.manager.write_rank(tmp, staged)
            del staged
            if rank == 0:
                self._wait_for_ranks(step, tmp)
                final = self.manager.commit(step, tmp, meta)
                if on_commit is not None:
                    on_commit(step, final)
        except BaseException as exc:
            self._error = exc
            with contextlib.suppress(OSError):  # tell rank 0 not to wait for this part
                write_atomic(tmp / f"rank{rank}.failed", f"{exc!r}\n")

    def _wait_for_ranks(self, step: int, tmp: Path) -> None:
        """Poll until every rank's side file exists; fail on a ``.failed`` or the timeout."""
        world = self.manager.world_size
        deadline = time.monotonic() + self.wait_for_ranks_s
        pause = 0.002
        while True:
            names = set(os.listdir(tmp))
            failed = sorted(n for n in names if n.endswith(".failed") and n.startswith("rank"))
            if failed:
                reasons = "; ".join(
                    f"{n[: -len('.failed')]}: {(tmp / n).read_text().strip()}" for n in failed
                )
                raise AsyncCheckpointError(f"step {step}: a rank failed to write ({reasons})")
            missing = [r for r in range(world) if f"rank{r}.json" not in names]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AsyncCheckpointError(
                    f"step {step}: ranks {missing} wrote no part within "
                    f"{self.wait_for_ranks_s:.0f} s; not committed"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
