"""Benchmark: asynchronous against synchronous checkpoints of the same state, one run.

A state of ``--mb`` MiB (default 512: random float32 tensors, as in
bench_checkpoint.py) is saved, alternating, ``--reps`` times each way:

* sync: ``CheckpointManager.save`` (one rank): the step is blocked for all of it.
* async: ``AsyncCheckpointer.save``: the step is blocked while the state is staged
  (copied to host memory; the staging buffers are reused from the second save on),
  then the background thread serialises, hashes, fsyncs and commits; the benchmark
  waits for it before the next save.
* raw: the same bytes (``torch.save`` into memory first) written in 8 MiB blocks
  with fsync, to the same file system.

Printed: per rep and as medians, the step-blocking time of async vs sync (target
<= 10 %), and the async write throughput (bytes / background time) vs the raw
write (target >= 70 %); the end-to-end async time (staging included) too.

    python benchmarks/bench_async_checkpoint.py [--mb 512] [--reps 3] [--dir DIR]
    python benchmarks/bench_async_checkpoint.py --quick    # 32 MiB, 3 reps: a smoke run
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_checkpoint import make_state, raw_write

from hpc.runtime.checkpoint import CheckpointManager
from hpc.runtime.checkpoint_async import AsyncCheckpointer


def bench(mb: int, reps: int, directory: Path) -> dict[str, float]:
    state = make_state(mb)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    size = len(data)
    print(f"state: {size / 1e6:.0f} MB ({len(state['model'])} tensors), directory {directory}")
    sync = CheckpointManager(directory / "sync", keep=1)
    saver = AsyncCheckpointer(CheckpointManager(directory / "async", keep=1))
    sync_s, block_s, background_s, raw_s = [], [], [], []
    for rep in range(reps):
        raw = directory / f"raw-{rep}.bin"
        raw_s.append(raw_write(raw, data))
        raw.unlink()

        began = time.perf_counter()
        sync.save(rep + 1, state)
        sync_s.append(time.perf_counter() - began)

        began = time.perf_counter()
        path = saver.save(rep + 1, state)
        returned = time.perf_counter()
        for tensor in state["model"].values():  # the next step updates in place
            tensor.add_(1.0)
        saver.wait()
        block_s.append(returned - began)
        background_s.append(time.perf_counter() - returned)
        written = sum(f.stat().st_size for f in path.glob("rank*.pt"))
        assert abs(written - size) < 1 << 20, (written, size)
        print(
            f"  rep {rep + 1}: sync save {sync_s[-1]:6.3f} s   async blocks {block_s[-1]:6.3f} s "
            f"(+ {background_s[-1]:6.3f} s background)   raw {size / raw_s[-1] / 1e6:6.0f} MB/s"
        )
    saver.close()
    median = statistics.median
    return {
        "bytes": size,
        "sync_s": median(sync_s),
        "block_s": median(block_s),
        "background_s": median(background_s),
        "async_mb_s": size / median(background_s) / 1e6,
        "end_to_end_mb_s": size
        / median(b + w for b, w in zip(block_s, background_s, strict=True))
        / 1e6,
        "raw_mb_s": size / median(raw_s) / 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=512, help="state size in MiB")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="32 MiB, 3 reps (a smoke run)")
    args = ap.parse_args()
    mb, reps = (32, 3) if args.quick else (args.mb, args.reps)
    base = Path(tempfile.mkdtemp(prefix="bench_async_ckpt_", dir=args.dir))
    try:
        r = bench(mb, reps, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    blocking = r["block_s"] / r["sync_s"]
    throughput = r["async_mb_s"] / r["raw_mb_s"]
    print(f"async checkpoint ({r['bytes'] / 1e6:.0f} MB, median of {reps}):")
    print(
        f"  step blocked: async {r['block_s']:.3f} s vs sync {r['sync_s']:.3f} s = "
        f"{100 * blocking:.1f}% (target <= 10%)"
    )
    print(
        f"  write: async background {r['async_mb_s']:.0f} MB/s vs raw write+fsync "
        f"{r['raw_mb_s']:.0f} MB/s = {100 * throughput:.0f}% (target >= 70%); "
        f"end to end with staging {r['end_to_end_mb_s']:.0f} MB/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
