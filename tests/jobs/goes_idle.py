"""Busy for 500 steps, then idle (waiting, no compute) until the idle policy stops it.

Every rank makes the same calls (the stop agreement counts them), so the busy phase is
a number of steps, not a time."""

import time

from hpc.runtime.session import Session

with Session.from_env() as s:
    step = 0
    for step in range(1, 501):  # CPU-bound "training"
        sum(i * i for i in range(20000))
        s.log_metrics({"loss": 1.0 / step}, step)
        if s.should_checkpoint(step):
            s.save_checkpoint(step, {"step": step})
    print(f"busy until step {step}; now idle", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # waiting on nothing: the accelerator sits idle
        time.sleep(0.05)
        if s.should_checkpoint(step):
            s.save_checkpoint(step, {"step": step})
            break
    print("left the loop", flush=True)
