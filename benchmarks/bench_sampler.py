"""Benchmark: CPU cost of the accounting sampler at a 1 s interval.

Starts a small "job" (a process tree of a few sleeping children), then measures over
``--duration`` seconds (at least 30):

* the sampler thread's own CPU time (``time.thread_time()`` inside the thread), and
* this process's CPU time (``resource.getrusage``) while sampling, against the same length
  of time idle (no sampler),

and prints both as a percentage of one core. Target: < 0.5 % of one core.

    python benchmarks/bench_sampler.py [--duration 30] [--interval 1.0] [--children 8]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpc.accounting.sampler import Sampler, SamplerConfig, summarize


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--children", type=int, default=8, help="processes in the job's tree")
    args = ap.parse_args()
    if args.duration < 30:
        print("note: --duration under 30 s gives a noisy figure", file=sys.stderr)

    # the job: a shell with children, all sleeping (the sampler walks the tree)
    kids = " & ".join(["sleep 600"] * args.children) + " & wait"
    job = subprocess.Popen(["sh", "-c", kids])
    time.sleep(0.5)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_sampler_") as tmp:
            path = Path(tmp) / "accounting.jsonl"
            cpu0, t0 = process_cpu(), time.monotonic()
            time.sleep(args.duration)
            idle_cpu, idle_wall = process_cpu() - cpu0, time.monotonic() - t0

            sampler = Sampler(SamplerConfig(path=path, interval_s=args.interval, root_pid=job.pid))
            cpu0, t0 = process_cpu(), time.monotonic()
            sampler.start()
            time.sleep(args.duration)
            sampler.stop()
            busy_cpu, busy_wall = process_cpu() - cpu0, time.monotonic() - t0
            summary = summarize(path)
            size = path.stat().st_size
    finally:
        job.kill()
        job.wait()

    thread_pct = 100.0 * sampler.thread_cpu_s / busy_wall
    process_pct = 100.0 * (busy_cpu / busy_wall - idle_cpu / idle_wall)
    print(
        f"mode: {sampler.mode} ({sampler.reason}); {summary['samples']} samples in "
        f"{busy_wall:.1f} s at {args.interval:g} s, job tree of {args.children + 1} processes; "
        f"{size / max(1, summary['samples']):.0f} bytes per sample"
    )
    print(
        f"sampler thread CPU : {sampler.thread_cpu_s * 1000:8.1f} ms = {thread_pct:.3f} % "
        "of one core"
    )
    print(
        f"process CPU vs idle: {(busy_cpu - idle_cpu * busy_wall / idle_wall) * 1000:8.1f} ms "
        f"= {process_pct:.3f} % of one core"
    )
    per_sample = sampler.thread_cpu_s / max(1, summary["samples"]) * 1000
    print(f"per sample         : {per_sample:8.2f} ms")
    ok = thread_pct < 0.5 and process_pct < 0.5
    print("target (< 0.5 % of one core):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
