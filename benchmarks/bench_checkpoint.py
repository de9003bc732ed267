"""Benchmark: checkpoint write throughput, and signal-to-requeue time on Slurm.

1. Throughput. A state of ``--mb`` MiB (default 512: random float32 tensors) saved
   through ``CheckpointManager.save`` (one rank: serialisation with an inline sha256,
   fsync, manifest, rename, LATEST, pruning) against a raw sequential write of the
   same bytes (``torch.save`` into memory first; then write in 8 MiB blocks + fsync) to
   the same directory, alternating, ``--reps`` times each. Prints the median MB/s of
   both and their ratio. Target: ratio >= 70 %.

2. Signal to requeue (``--slurm``, needs the test cluster: slurm/testcluster/up). A
   2-node job (benchmarks/preempt_job.py, a ~100 MB parameter per rank) gets
   ``scancel -b -s USR2``; the benchmark measures from the signal until the job noticed
   it, until the checkpoint was committed (the job's own line, and the manifest's time),
   until the batch script's "requeueing" line appeared in the log, and until squeue
   showed the job pending again (after ``scontrol requeue``). Target: <= 5 s. The
   requeued job is cancelled afterwards.

    python benchmarks/bench_checkpoint.py [--mb 512] [--reps 3] [--dir DIR] [--slurm]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hpc.runtime.checkpoint import CheckpointManager

HERE = Path(__file__).resolve().parent
BLOCK = 8 << 20


def make_state(mb: int) -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    per_tensor = 64  # MiB
    tensors = {}
    left = mb
    i = 0
    while left > 0:
        size = min(per_tensor, left)
        tensors[f"layer{i}.weight"] = torch.rand(size * 2**20 // 4, generator=gen)
        left -= size
        i += 1
    return {"model": tensors, "step": 0}


def raw_write(path: Path, data: memoryview) -> float:
    began = time.perf_counter()
    with open(path, "wb") as fh:
        for offset in range(0, len(data), BLOCK):
            fh.write(data[offset : offset + BLOCK])
        fh.flush()
        os.fsync(fh.fileno())
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return time.perf_counter() - began


def throughput(mb: int, reps: int, directory: Path) -> dict[str, float]:
    state = make_state(mb)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    size = len(data)
    print(f"state: {size / 1e6:.0f} MB ({len(state['model'])} tensors), directory {directory}")
    ckpt_dir = directory / "checkpoints"
    manager = CheckpointManager(ckpt_dir, keep=2)
    raw_times, ckpt_times = [], []
    for rep in range(reps):
        raw = directory / f"raw-{rep}.bin"
        raw_times.append(raw_write(raw, data))
        raw.unlink()
        began = time.perf_counter()
        path = manager.save(rep + 1, state)
        ckpt_times.append(time.perf_counter() - began)
        written = sum(f.stat().st_size for f in path.glob("rank*.pt"))
        assert abs(written - size) < 1 << 20, (written, size)
        print(
            f"  rep {rep + 1}: raw {size / raw_times[-1] / 1e6:7.0f} MB/s   "
            f"CheckpointManager.save {size / ckpt_times[-1] / 1e6:7.0f} MB/s"
        )
    raw_mbs = size / statistics.median(raw_times) / 1e6
    ckpt_mbs = size / statistics.median(ckpt_times) / 1e6
    return {"bytes": size, "raw_mb_s": raw_mbs, "ckpt_mb_s": ckpt_mbs, "ratio": ckpt_mbs / raw_mbs}


# -- signal to requeue -------------------------------------------------------------------------


def squeue_state(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return out.splitlines()[0] if out else ""


def bench_lines(text: str, kind: str) -> list[list[str]]:
    return [line.split()[2:] for line in text.splitlines() if line.startswith(f"bench: {kind}")]


def signal_to_requeue(workdir: Path, param_mb: int, warmup_s: float) -> dict[str, float]:
    env = dict(os.environ, HPC_STATE_DIR=str(workdir / ".state"), BENCH_PARAM_MB=str(param_mb))
    env.pop("MLFLOW_TRACKING_URI", None)
    args = [
        "cluster=slurm",
        "resources.nodes=2",
        "resources.tasks_per_node=1",
        "job.name=bench-preempt",
        f"job.entrypoint={HERE / 'preempt_job.py'}",
        "checkpoint.every_steps=100000000",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "hpc.cli.launch", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"hpc-launch failed: {proc.stderr}")
    run_dir = next((workdir / "outputs" / "bench-preempt").iterdir())
    record = json.loads((run_dir / "job.json").read_text())
    job_id = str(record["job_id"])
    log = Path(record["extra"]["log_file"])
    try:
        deadline = time.monotonic() + 180
        while len(bench_lines(log.read_text() if log.exists() else "", "ready")) < 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} did not start: {log}")
            time.sleep(0.2)
        time.sleep(warmup_s)  # the MLflow run exists, steps are flowing
        t_signal = time.time()
        subprocess.run(["scancel", "-b", "-s", "USR2", job_id], check=True)
        t_line = t_pending = None
        deadline = time.monotonic() + 120
        while t_pending is None and time.monotonic() < deadline:
            now = time.time()
            if t_line is None and ": requeueing" in log.read_text(errors="replace"):
                t_line = now
            if squeue_state(job_id) in ("PENDING", "REQUEUED"):
                t_pending = now
            time.sleep(0.05)
        if t_pending is None:
            raise SystemExit(f"job {job_id} was not requeued: {log.read_text()[-2000:]}")
        if t_line is None and ": requeueing" in log.read_text(errors="replace"):
            t_line = t_pending
        text = log.read_text(errors="replace")
    finally:
        subprocess.run(["scancel", job_id], check=False)
    noticed = min(float(fields[-1]) for fields in bench_lines(text, "stop noticed"))
    committed = [(int(f[1]), float(f[2]), float(f[3])) for f in bench_lines(text, "committed")]
    step = committed[0][0]
    manifest = json.loads(
        (run_dir / "checkpoints" / f"step-{step:09d}" / "manifest.json").read_text()
    )
    files = manifest["files"]
    return {
        "job_id": float(job_id),
        "checkpoint_mb": sum(f["bytes"] for f in files.values()) / 1e6,
        "noticed_s": noticed - t_signal,
        "manifest_s": float(manifest["time"]) - t_signal,
        "committed_s": max(t for _, t, _ in committed) - t_signal,
        "save_s": max(s for _, _, s in committed),
        "requeue_line_s": (t_line or t_pending) - t_signal,
        "pending_s": t_pending - t_signal,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=512, help="state size for the throughput part")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--slurm", action="store_true", help="also time signal-to-requeue on Slurm")
    ap.add_argument("--param-mb", type=int, default=100, help="model size per rank (Slurm part)")
    ap.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of training before the signal"
    )
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()

    if not args.skip_throughput:
        base = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=args.dir))
        try:
            result = throughput(args.mb, args.reps, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(
            f"checkpoint write ({result['bytes'] / 1e6:.0f} MB, median of {args.reps}): "
            f"CheckpointManager.save {result['ckpt_mb_s']:.0f} MB/s, "
            f"raw write+fsync {result['raw_mb_s']:.0f} MB/s, "
            f"ratio {100 * result['ratio']:.0f}% (target >= 70%)"
        )
    if args.slurm:
        workdir = Path(tempfile.mkdtemp(prefix="bench_preempt_", dir=args.dir))
        figures = signal_to_requeue(workdir, args.param_mb, args.warmup)
        print(
            f"signal to requeue (job {figures['job_id']:.0f}, 2 ranks, "
            f"{figures['checkpoint_mb']:.0f} MB checkpoint):"
        )
        print(f"  stop noticed at a step boundary  {figures['noticed_s']:6.2f} s")
        print(f"  manifest written (rank 0)        {figures['manifest_s']:6.2f} s")
        print(f"  checkpoint committed             {figures['committed_s']:6.2f} s")
        print(f"    (of which save_checkpoint      {figures['save_s']:6.2f} s)")
        print(f"  'requeueing' line in the log     {figures['requeue_line_s']:6.2f} s")
        print(f"  job pending again (requeued)     {figures['pending_s']:6.2f} s   (target <= 5 s)")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
