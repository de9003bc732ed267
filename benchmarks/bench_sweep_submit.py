"""1000-point sweep: time from command start until all tasks are in the Slurm queue.

    python benchmarks/bench_sweep_submit.py [--points 1000]

Side by side on the same (test) cluster in one run:
  * hydra-submitit-launcher: ``python app.py --multirun +lr=1,...,N hydra/launcher=submitit_slurm``
  * hpc-launch:              ``hpc-launch -m cluster=slurm job.lr=1,...,N``
Each command starts, squeue is polled until the sweep's N array tasks are queued,
the time is taken, then the command is stopped and its jobs cancelled.
Target: hpc-launch >= 10x faster. hydra-submitit-launcher is a benchmark-only
extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = """\
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> float:
    return float(cfg.lr)


if __name__ == "__main__":
    main()
"""


def queued(name: str) -> int:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-n", name, "-o", "%i"], capture_output=True, text=True
    ).stdout
    return len(out.split())


def measure(cmd: list[str], name: str, points: int, cwd: Path, env: dict[str, str]) -> float:
    subprocess.run(["scancel", "-n", name], check=False)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        while queued(name) < points:
            if proc.poll() not in (None, 0):
                sys.exit(f"{cmd[:3]} failed: {proc.stderr.read() if proc.stderr else ''}")
            if time.perf_counter() - start > 900:
                sys.exit(f"{name}: not all {points} tasks queued after 900 s")
            time.sleep(0.1)
        return time.perf_counter() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        subprocess.run(["scancel", "-n", name], check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    values = ",".join(str(i) for i in range(1, args.points + 1))
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "app.py").write_text(APP)
        env = dict(os.environ, HPC_STATE_DIR=str(cwd / ".state"))
        hydra_cmd = [
            sys.executable,
            "app.py",
            "--multirun",
            f"+lr={values}",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.name=bench_hydra",
            "hydra.launcher.timeout_min=5",
        ]
        ours_cmd = [
            str(bindir / "hpc-launch"),
            "-m",
            "cluster=slurm",
            "job.name=bench_hpc",
            f"job.lr={values}",
            "tracking.enabled=false",
        ]
        ours = measure(ours_cmd, "bench_hpc", args.points, cwd, env)
        theirs = measure(hydra_cmd, "bench_hydra", args.points, cwd, env)
    print(f"hpc-launch -m              {ours:7.2f} s until {args.points} tasks queued")
    print(f"hydra-submitit-launcher    {theirs:7.2f} s until {args.points} tasks queued")
    speedup = theirs / ours
    print(f"speed-up {speedup:.1f}x  (target >= 10x: {'met' if speedup >= 10 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
