"""Agreeing on a stop across ranks without a blocking collective per step.

Every rank calls :meth:`StopAgreement.agreed` at the same step boundaries with its
own flag (a stop signal seen). Call ``k`` starts an all-reduce (MAX) of the flags and
returns the result of the all-reduce started at call ``k - 1``, which has long
finished by then: the wait costs nothing, the step never synchronises on it, and on
NCCL jobs nothing touches the device (the flags use a gloo group of their own).

The promise stays the one a per-step all-reduce gave: at every call all ranks get
the same answer, so they checkpoint at the same step boundary; a signal any rank sees
before call ``k`` is in the all-reduce started at call ``k`` and stops everyone at call
``k + 1``. Once true, the answer stays true.
"""

from __future__ import annotations

from typing import Any


class StopAgreement:
    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._stopped = False
        self._group: Any = None
        self._pending: Any = None  # (work handle, tensor) of the all-reduce in flight
        if world_size > 1:
            import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

            # Its own gloo group: CPU only, never ordered with the model's collectives.
            self._group = dist.new_group(backend="gloo")

    def agreed(self, local_flag: bool) -> bool:
        """True from the call at which the ranks agreed that some rank must stop."""
        if self._stopped:
            return True
        if self._group is None:
            self._stopped = local_flag
            return self._stopped
        import torch  # noqa: PLC0415 (lazy: torch only in the job)
        import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

        if self._pending is not None:
            work, tensor = self._pending
            work.wait()
            self._pending = None
            if int(tensor[0]):
                self._stopped = True
                return True
        tensor = torch.tensor([1 if local_flag else 0], dtype=torch.int32)
        work = dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, tensor)
        return False

    def close(self) -> None:
        """Finish the all-reduce in flight (every rank, before the process group ends)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
