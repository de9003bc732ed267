"""Benchmark job for bench_checkpoint.py: a ~100 MB parameter trained until a stop signal.

Run by hpc-launch as ``job.entrypoint=benchmarks/preempt_job.py`` (any launcher). Each
step touches the whole parameter (a few ms) and sleeps 20 ms; a checkpoint is taken
only when a stop signal arrives (checkpoint.every_steps set high). Lines starting with
``bench:`` carry wall-clock times (``time.time()``) for the benchmark to read:

    bench: ready STEP TIME                      the loop runs
    bench: stop noticed at step STEP TIME       the first step boundary after the signal
    bench: committed step STEP TIME SAVE_S      save_checkpoint returned on this rank

``BENCH_PARAM_MB`` (default 100) sets the parameter size per rank.
"""

from __future__ import annotations

import os
import time

import torch

from hpc.runtime.session import Session

MB = int(os.environ.get("BENCH_PARAM_MB", "100"))

with Session.from_env() as s:
    param = torch.nn.Parameter(torch.zeros(MB * 2**20 // 4))
    resumed = s.resume()
    step = 0
    if resumed is not None:
        param.data.copy_(resumed.state["param"])
        step = resumed.step
    print(f"bench: ready {step} {time.time():.3f}", flush=True)
    noticed = False
    while True:
        step += 1
        with torch.no_grad():
            param.add_(1.0)  # one "training step": touches all of the parameter
        time.sleep(0.02)
        s.log_metrics({"value": float(param[0])}, step)
        if s.signals.received and not noticed:
            noticed = True
            print(f"bench: stop noticed at step {step} {time.time():.3f}", flush=True)
        if s.should_checkpoint(step):
            began = time.time()
            s.save_checkpoint(step, {"param": param.detach(), "step": step})
            now = time.time()
            print(f"bench: committed step {step} {now:.3f} {now - began:.3f}", flush=True)
            if s.stop_requested:
                break
