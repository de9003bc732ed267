"""Step overhead: the same 2-rank gloo DDP loop plain under torchrun vs under hpc-launch.

    python benchmarks/bench_step_overhead.py [--rounds 3] [--steps 4000] [--quick]

The loop is benchmarks/step_loop.py (a 256→512→10 MLP, batch 64, one thread per
rank). Under hpc-launch it calls ``log_metrics`` (tracking on, a real MLflow store)
and ``should_checkpoint`` every step, with checkpoints effectively off; the framework
is as a user gets it (placement, accounting sampler, NCCL profile all on). Rounds
alternate plain / hpc-launch so load changes hit both alike; the figure is the median
over rounds of each round's median step time (the slower rank), and the ratio.
Target: hpc-launch / torchrun <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from hpc.ports import free_port

HERE = Path(__file__).resolve().parent
LOOP = HERE / "step_loop.py"
TARGET = 1.05


def median_step(out: Path) -> float:
    medians = [json.loads(p.read_text())["median_s"] for p in sorted(out.glob("rank*.json"))]
    if len(medians) != 2:
        sys.exit(f"{out}: expected 2 ranks' results, got {len(medians)}")
    return max(medians)


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(
            f"{' '.join(cmd[:3])}... failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--quick", action="store_true", help="1 round of 400 steps (a smoke run)")
    ap.add_argument("overrides", nargs="*", help="extra hpc-launch overrides (to find a cost)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps = 1, 400
    bindir = Path(sys.executable).parent
    figures: dict[str, list[float]] = {"torchrun": [], "hpc-launch": []}
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
        env.pop("HPC_LAUNCH_CONFIG_PATH", None)
        for index in range(args.rounds):
            plain_out, hpc_out = work / f"plain{index}", work / f"hpc{index}"
            loop_args = ["--steps", str(args.steps)]
            run(
                [str(bindir / "torchrun"), "--nproc-per-node", "2",
                 "--master-port", str(free_port()), str(LOOP),
                 "--mode", "plain", "--out", str(plain_out), *loop_args],
                work, env,
            )  # fmt: skip
            job_args = ",".join(["--mode", "hpc", "--out", str(hpc_out), *loop_args])
            run(
                [str(bindir / "hpc-launch"), f"job.entrypoint={LOOP}", f"job.args=[{job_args}]",
                 "job.name=step-overhead", "resources.tasks_per_node=2",
                 "checkpoint.every_steps=1000000000", f"output_root={work}/outputs",
                 *args.overrides],
                work, env,
            )  # fmt: skip
            figures["torchrun"].append(median_step(plain_out))
            figures["hpc-launch"].append(median_step(hpc_out))
            print(
                f"round {index + 1}: torchrun {figures['torchrun'][-1] * 1e3:.3f} ms/step, "
                f"hpc-launch {figures['hpc-launch'][-1] * 1e3:.3f} ms/step",
                flush=True,
            )
    plain = statistics.median(figures["torchrun"])
    framework = statistics.median(figures["hpc-launch"])
    ratio = framework / plain
    print(f"2 gloo ranks, {args.steps} steps x {args.rounds} rounds (median of round medians)")
    print(f"torchrun (plain DDP loop):      {plain * 1e3:.3f} ms/step")
    print(f"hpc-launch (log + should_ckpt): {framework * 1e3:.3f} ms/step")
    print(f"ratio hpc-launch / torchrun: {ratio:.3f} (target <= {TARGET}) "
          f"{'PASS' if ratio <= TARGET else 'FAIL'}")  # fmt: skip
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
