"""Agreeing on a stop across ranks without a collective on every step.

Every rank calls :meth:`StopAgreement.agreed` at the same step boundaries with its
own flag (a stop signal seen). Now and then (see below) a call starts an all-reduce
of the flags on a gloo group of its own and the call ``interval`` calls later reads it,
long finished by then: no step waits on it, most steps do no collective work at all,
and on NCCL jobs nothing touches the device.

The all-reduce also carries each rank's proposal for the next interval (as many calls
as take about ``target_s``, from its own step time, at most ``max_interval``); every
rank takes the smallest, so all of them read and start at the same calls. The promise
stays the one a per-step all-reduce gave: at every call all ranks get the same answer,
so they checkpoint at the same step boundary, and a signal any rank has seen is in the
next all-reduce started: it stops everyone at most two intervals later (about
``2 * target_s``, or one call later where steps are longer than ``target_s``). Once
true, the answer stays true.
"""

from __future__ import annotations

import time
from typing import Any

TARGET_S = 0.05  # about how long apart the agreements are
MAX_INTERVAL = 256  # calls


class StopAgreement:
    def __init__(
        self, world_size: int, target_s: float = TARGET_S, max_interval: int = MAX_INTERVAL
    ) -> None:
        self.world_size = world_size
        self.target_s = target_s
        self.max_interval = max(1, max_interval)
        self._stopped = False
        self._group: Any = None
        self._pending: Any = None  # (work handle, tensor) of the all-reduce in flight
        self._calls = 0
        self._read_at = 0  # the call that reads the pending all-reduce
        self._started = (0, 0.0)  # (call, time) the pending all-reduce was started
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
        self._calls += 1
        if self._pending is not None and self._calls < self._read_at:
            return False  # the common case: nothing to do
        interval = 1
        if self._pending is not None:
            work, tensor = self._pending
            work.wait()
            self._pending = None
            if int(tensor[0]):
                self._stopped = True
                return True
            interval = -int(tensor[1])  # the smallest proposal
        self._start(local_flag, interval)
        return False

    def _start(self, local_flag: bool, interval: int) -> None:
        import torch  # noqa: PLC0415 (lazy: torch only in the job)
        import torch.distributed as dist  # noqa: PLC0415 (lazy: torch only in the job)

        now = time.monotonic()
        began_call, began = self._started
        calls = self._calls - began_call
        step_s = (now - began) / calls if began and calls else self.target_s
        proposal = min(self.max_interval, max(1, int(self.target_s / max(step_s, 1e-9))))
        # MAX of the flags, and MAX of the negated proposals: the smallest proposal.
        tensor = torch.tensor([1 if local_flag else 0, -proposal], dtype=torch.int64)
        work = dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, tensor)
        self._read_at = self._calls + interval
        self._started = (self._calls, now)

    def close(self) -> None:
        """Finish the all-reduce in flight (every rank, before the process group ends)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
