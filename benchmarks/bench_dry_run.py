"""Dry-run wall time: ``hpc-launch dry_run=true`` vs torchx's slurm dry run, side by side.

    python benchmarks/bench_dry_run.py [--runs 9]

Both commands run alternately in the same scratch directory (same machine, same
cache state); the figure is the median wall time of each and their ratio.
Target: hpc-launch <= 0.8x torchx. torchx is a benchmark-only extra
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{proc.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
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
        timed(hpc_launch, cwd), timed(torchx, cwd)  # warm the page cache once
        ours, theirs = [], []
        for _ in range(args.runs):
            ours.append(timed(hpc_launch, cwd))
            theirs.append(timed(torchx, cwd))
    ours_med, theirs_med = statistics.median(ours), statistics.median(theirs)
    print(f"hpc-launch dry_run=true      median {ours_med * 1000:7.1f} ms  ({args.runs} runs)")
    print(f"torchx run --dryrun slurm    median {theirs_med * 1000:7.1f} ms  ({args.runs} runs)")
    ratio = ours_med / theirs_med
    print(f"ratio {ratio:.2f}x  (target <= 0.80x: {'met' if ratio <= 0.8 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
