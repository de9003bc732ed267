"""Benchmark: DCP checkpoints vs the per-rank torch format, 4 ranks; resharded load 4 -> 2.

4 gloo ranks on CPU hold an FSDP2 (``fully_shard``) MLP of ``--mb`` MiB of float32
parameters in total, with AdamW state (one step taken: 3x the parameters in all). Side
by side, alternating, ``--reps`` times each:

* torch format: ``CheckpointManager.save`` of each rank's local shards (``to_local()``
  of the sharded state dict, taken inside the timed span), and ``load_latest`` (read,
  checksum, ``torch.load``; not copied into the model: DCP's load time includes that);
* DCP: ``DcpCheckpointManager.save({"model": m, "optimizer": o})`` and ``load_latest`` of
  the same into the model and optimizer (in place);
* DCP asynchronous (``blocking=False``): the time the call blocks (staging to host
  memory) and until ``wait()`` returns (written, hashed, committed);
* then 2 ranks load the newest DCP checkpoint (resharded 4 -> 2; the torch format cannot).

Times are rank 0's, from a barrier before to a barrier after (the slowest rank). Prints
the medians, MB/s of checkpoint bytes, and DCP / torch ratios.

    python benchmarks/bench_dcp.py [--mb 512] [--reps 3] [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hpc.runtime.checkpoint import CheckpointManager
from hpc.runtime.checkpoint_dcp import DcpCheckpointManager

WIDTH = 1024  # a Linear(WIDTH, WIDTH) is 4 MiB of float32


def make_model(mb: int) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    layers = max(1, mb // 4)
    model = nn.Sequential(*(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers)))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    return model


def timed(fn: Any) -> float:
    """Seconds from a barrier before ``fn`` to a barrier after it."""
    dist.barrier()
    began = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - began


def record(times: dict[str, list[float]], name: str, seconds: float) -> None:
    times.setdefault(name, []).append(seconds)


def local_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.tensor import DTensor

    def local(tree: Any) -> Any:
        if isinstance(tree, dict):
            return {k: local(v) for k, v in tree.items()}
        if isinstance(tree, list):
            return [local(v) for v in tree]
        return tree.to_local() if isinstance(tree, DTensor) else tree

    model_sd, optim_sd = get_state_dict(model, [opt])
    return {"model": local(model_sd), "optimizer": local(optim_sd)}


def rank_main(rank: int, world: int, port: int, mode: str, args: dict[str, Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    base = Path(args["dir"])
    model = make_model(args["mb"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(2, WIDTH)).sum().backward()
    opt.step()
    dcp_mgr = DcpCheckpointManager(base / "dcp", keep=2, rank=rank, world_size=world)
    times: dict[str, list[float]] = {}
    template = {"model": model, "optimizer": opt}

    def torch_state(step: int) -> dict[str, Any]:
        return {**local_state(model, opt), "step": step}

    if mode == "compare":
        torch_mgr = CheckpointManager(
            base / "torch", keep=2, rank=rank, world_size=world, barrier=dist.barrier
        )
        for rep in range(1, args["reps"] + 1):
            state = {"model": model, "optimizer": opt, "step": rep}
            record(times, "torch save", timed(lambda r=rep: torch_mgr.save(r, torch_state(r))))
            record(times, "dcp save", timed(functools.partial(dcp_mgr.save, rep, state)))
            record(times, "torch load", timed(torch_mgr.load_latest))
            record(times, "dcp load", timed(functools.partial(dcp_mgr.load_latest, template)))
            # Asynchronous: what the step waits for (staging), then the rest in the background.
            later = args["reps"] + rep
            save = functools.partial(dcp_mgr.save, later, {**state, "step": later}, blocking=False)
            record(times, "dcp async blocked", timed(save))
            record(times, "dcp async total", times["dcp async blocked"][-1] + timed(dcp_mgr.wait))
    else:  # the resharded load
        for _ in range(args["reps"]):
            record(times, "dcp load 4->2", timed(functools.partial(dcp_mgr.load_latest, template)))
    if rank == 0:
        (base / f"{mode}.json").write_text(json.dumps(times))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def checkpoint_bytes(directory: Path) -> int:
    newest = sorted(p for p in directory.glob("step-*") if p.is_dir())[-1]
    return sum(f.stat().st_size for f in newest.iterdir() if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=512, help="parameters in MiB (all ranks)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="16 MiB, one repetition: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.mb, args.reps = 16, 1
    base = Path(tempfile.mkdtemp(prefix="bench_dcp_", dir=args.dir))
    shared = {"dir": str(base), "mb": args.mb, "reps": args.reps}
    try:
        mp.spawn(rank_main, args=(4, free_port(), "compare", shared), nprocs=4)
        mp.spawn(rank_main, args=(2, free_port(), "reshard", shared), nprocs=2)
        times = {
            **json.loads((base / "compare.json").read_text()),
            **json.loads((base / "reshard.json").read_text()),
        }
        sizes = {"torch": checkpoint_bytes(base / "torch"), "dcp": checkpoint_bytes(base / "dcp")}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"state: {args.mb} MiB of parameters + AdamW state, 4 ranks, {args.reps} rep(s)")
    print(f"checkpoint bytes: torch {sizes['torch'] / 1e6:.0f} MB, dcp {sizes['dcp'] / 1e6:.0f} MB")
    for name, seconds in median.items():
        size = sizes["torch" if name.startswith("torch") else "dcp"]
        print(f"  {name:18s} {seconds:8.3f} s  {size / seconds / 1e6:8.0f} MB/s")
    print(f"ratio dcp/torch save: {median['dcp save'] / median['torch save']:.2f}")
    blocked = median["dcp async blocked"] / median["dcp save"]
    print(f"ratio dcp async step-blocking / dcp save: {blocked:.2f}")
    print(f"ratio dcp/torch load: {median['dcp load'] / median['torch load']:.2f}")
    resharded = median["dcp load 4->2"] / median["dcp load"]
    print(f"ratio resharded 4->2 load / dcp load at 4: {resharded:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
