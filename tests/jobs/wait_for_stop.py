"""Waits (up to 300 s) for a stop signal and checkpoints; a restarted run just finishes."""

import os
import time

from hpc.runtime.session import Session

with Session.from_env() as s:
    resumed = s.resume()
    if resumed is None and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
        print("waiting for a stop", flush=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if s.should_checkpoint(1):
                s.save_checkpoint(1, {"step": 1})
                break
    else:
        print("resumed: done", flush=True)
