"""Dry-run wall time: ``hpc-launch dry_run=true`` vs torchx's slurm dry run, side by side.

    python benchmarks/bench_dry_run.py [--runs 15] [--quick]

Both commands run alternately in the same scratch directory (same machine, same
cache state); the figure is the median wall time of each and their ratio.
Target: hpc-launch <= 0.7x torchx (PASS/FAIL; exit 1 on FAIL). torchx is a
benchmark-only extra (``pip install -e '.[bench]'``).

Both run with bytecode caching on (PYTHONDONTWRITEBYTECODE removed from their
environment): pip wrote torchx's .pyc files at install, and an editable checkout
of this project gets its own from the warm-up run. Without that, a shell that
sets PYTHONDONTWRITEBYTECODE recompiles every hpc module on every run (~50 ms).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.7


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 runs each (a smoke check)")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    bindir = Path(sys.executable).parent
    hpc_launch = [str(bindir / "hpc-launch"), "dry_run=true"]
    torchx_bin = bindir / "torchx"
    if not torchx_bin.exists() and not shutil.which("torchx"):
        sys.exit("torchx is not installed: pip install -e '.[bench]'")
    torchx = [
        str(torchx_bin if torchx_bin.exists() else shutil.which("torchx")),
        "run",
        "--dryrun",
        "-s",
        "slurm",
        "dist.ddp",
        "-j",
        "2x1",
        "--script",
        "x.py",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "x.py").write_text("print('hello')\n")
        for _ in range(2):  # warm the page cache and write bytecode
            timed(hpc_launch, cwd, env), timed(torchx, cwd, env)
        ours, theirs = [], []
        for _ in range(runs):
            ours.append(timed(hpc_launch, cwd, env))
            theirs.append(timed(torchx, cwd, env))
    ours_med, theirs_med = (statistics.median(w for w, _ in x) for x in (ours, theirs))
    ours_cpu, theirs_cpu = (statistics.median(c for _, c in x) for x in (ours, theirs))
    for name, wall, cpu in (
        ("hpc-launch dry_run=true  ", ours_med, ours_cpu),
        ("torchx run --dryrun slurm", theirs_med, theirs_cpu),
    ):
        print(f"{name}  median {wall * 1000:7.1f} ms wall, {cpu * 1000:7.1f} ms CPU  ({runs} runs)")
    # CPU time is steadier than wall time on a shared machine: shown, not judged.
    print(f"CPU-time ratio {ours_cpu / theirs_cpu:.2f}x (information only)")
    ratio = ours_med / theirs_med
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"wall-time ratio {ratio:.2f}x  target <= {TARGET:.2f}x  {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
