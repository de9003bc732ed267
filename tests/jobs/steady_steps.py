"""A two-rank loop through the Session: an all-reduce per step, ``STEP_S`` seconds a step.

It runs ``STEPS`` steps (default: until stopped), marking each with
``should_checkpoint`` and rank 0's ``log_metrics``; ``FIRST_STEP_DELAY_S`` waits
before the first step (a slow start). ``NO_COLLECTIVE=1`` drops the all-reduce and
``should_checkpoint`` (whose stop agreement all-reduces now and then), so ranks run
apart; and ``SLOW_RANK`` names a rank that takes ten times as long a step (a
straggler). Every rank writes ``ready.<rank>`` (its pid) into the run directory once
it has made 3 steps, so a test knows whom to stop. ``STEPS_AFTER_RESUME``: a resumed
run makes that many more steps and ends (a first attempt runs until it is stopped).
"""

import os
import time

import torch
import torch.distributed as dist

from hpc.runtime.session import Session

STEP_S = float(os.environ.get("STEP_S", "0.05"))
STEPS = int(os.environ.get("STEPS", "1000000"))
FIRST_STEP_DELAY_S = float(os.environ.get("FIRST_STEP_DELAY_S", "0"))
COLLECTIVE = os.environ.get("NO_COLLECTIVE") != "1"
SLOW_RANK = int(os.environ.get("SLOW_RANK", "-1"))
STEPS_AFTER_RESUME = int(os.environ.get("STEPS_AFTER_RESUME", "0"))

with Session.from_env() as s:
    resumed = s.resume()
    start = resumed.step if resumed else 0
    last = start + STEPS_AFTER_RESUME if resumed and STEPS_AFTER_RESUME else STEPS
    print(
        f"rank {s.rank} starts after step {start} on {os.environ.get('SLURMD_NODENAME', '-')}",
        flush=True,
    )
    time.sleep(FIRST_STEP_DELAY_S)
    for step in range(start + 1, last + 1):
        value = torch.ones(1)
        if s.world_size > 1 and COLLECTIVE:
            dist.all_reduce(value)
        time.sleep(STEP_S * (10 if s.rank == SLOW_RANK else 1))
        s.log_metrics({"value": float(value)}, step)
        if step == start + 3:
            path = s.run_dir / f"ready.{s.rank}"
            path.write_text(str(os.getpid()))
        if COLLECTIVE and s.should_checkpoint(step):  # its stop agreement all-reduces too
            s.save_checkpoint(step, {"step": step})
            if s.stop_requested:
                break
    print(f"rank {s.rank} done at step {step}", flush=True)
