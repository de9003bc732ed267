"""The GPU-only paths on real hardware, one verdict per check (PASS / FAIL / SKIP).

    python benchmarks/gpu_check.py [--quick] [--stage-gb 1.0] [--json out.json] [-v]

Checks, each with one line of evidence (the whole run takes well under 10 minutes on
one GPU; ``--quick`` shortens the busy loops and stages 0.25 GB):

* ``nvml_discovery``  hpc.topology.discover() through NVML: GPUs, PCI bus ids, NUMA
  nodes, local CPUs; each bus id and NUMA node checked against sysfs.
* ``nvsmi_placement`` the live ``nvidia-smi topo -m`` parsed by hpc.topology.nvsmi,
  compared with the NVML discovery; plan_node() for 1 rank gives GPU 0 and CPUs
  local to it (where the cpuset allows).
* ``nvml_sampler``    hpc.accounting.sampler over a busy matmul loop: nonzero
  utilisation, memory and power in its JSONL, summarize() reads it back.
* ``nccl_init``       in a child process: hpc.runtime.node.place_rank() with the
  ``debug`` NCCL profile (its variables must reach NCCL: NCCL INFO lines), a 1-rank
  NCCL process group, all_reduce on the GPU.
* ``async_staging``   ~1 GB of CUDA state copied to pinned host memory with
  non_blocking copies, bytes compared, timed (the project's Stager when
  hpc.runtime.checkpoint_async has one, else raw staging: see HOOK below).
* ``step_overhead``   a short GPU training loop, plain vs calling a real Session's
  should_checkpoint() and log_metrics() every step (1 rank, tracking off).

Exit code 0 only when no check FAILs. Without a GPU every check SKIPs (exit 0).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))


@dataclass
class Verdict:
    check: str
    status: str  # PASS | FAIL | SKIP
    evidence: str
    seconds: float = 0.0


class Skip(Exception):
    """The check cannot run here (no GPU, no driver, no nvidia-smi)."""


class Fail(Exception):
    """The check ran and found something wrong."""


@dataclass
class Options:
    quick: bool
    stage_gb: float
    verbose: bool
    tmp: Path


# -- shared probes ------------------------------------------------------------------------


def _torch_cuda() -> Any:
    """torch with a usable CUDA device, else Skip."""
    try:
        import torch
    except ImportError as exc:
        raise Skip(f"torch not importable ({exc})") from None
    if not torch.cuda.is_available():
        raise Skip(f"no CUDA device (torch {torch.__version__})")
    return torch


def _nvml_topology() -> Any:
    """The NVML discovery (hpc.topology.discover), else Skip where no driver answers."""
    from hpc.topology.discover import discover, nvidia_driver_loaded

    if not nvidia_driver_loaded():
        raise Skip("no NVIDIA driver loaded (no /proc/driver/nvidia, no /dev/nvidiactl)")
    try:
        import pynvml  # noqa: F401
    except ImportError as exc:
        raise Skip(f"nvidia-ml-py not installed ({exc})") from None
    topo = discover()
    if topo.source != "nvml":
        raise Fail(f"driver loaded but discovery fell back to {topo.source}: {topo.notes[:1]}")
    return topo


def _child_env() -> dict[str, str]:
    """This environment, with the checkout importable in a child process."""
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _gpu_line(gpu: Any) -> str:
    from hpc.topology.model import format_cpulist

    return (
        f"GPU{gpu.index} {gpu.pci_bus_id} numa {gpu.numa_node} "
        f"cpus {format_cpulist(gpu.cpu_affinity) or '-'}"
    )


# -- the checks -----------------------------------------------------------------------------


def check_nvml_discovery(opts: Options) -> str:
    from hpc.topology.sysfs import normalize_bus_id

    topo = _nvml_topology()
    if not topo.gpus:
        raise Fail("NVML initialised but the topology has no GPUs")
    problems = []
    for gpu in topo.gpus:
        if not gpu.pci_bus_id:
            problems.append(f"GPU{gpu.index}: no bus id")
            continue
        dev = Path("/sys/bus/pci/devices") / normalize_bus_id(gpu.pci_bus_id)
        if not dev.exists():
            problems.append(f"GPU{gpu.index}: {gpu.pci_bus_id} not in /sys/bus/pci/devices")
            continue
        node_file = dev / "numa_node"
        sysfs_node = int(node_file.read_text()) if node_file.exists() else -1
        if sysfs_node >= 0 and gpu.numa_node != sysfs_node:
            problems.append(f"GPU{gpu.index}: NVML numa {gpu.numa_node}, sysfs {sysfs_node}")
        if not gpu.cpu_affinity:
            problems.append(f"GPU{gpu.index}: no local CPUs")
    if problems:
        raise Fail("; ".join(problems))
    names = {g.name for g in topo.gpus if g.name}
    return (
        f"{len(topo.gpus)} GPU(s) ({', '.join(sorted(names)) or 'unnamed'}): "
        + "; ".join(_gpu_line(g) for g in topo.gpus)
        + "; bus ids and NUMA nodes agree with sysfs"
    )


def check_nvsmi_placement(opts: Options) -> str:
    from hpc.topology.model import format_cpulist
    from hpc.topology.nvsmi import parse_nvsmi
    from hpc.topology.placement import plan_node
    from hpc.topology.sysfs import read_cpu_info

    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise Skip("nvidia-smi not on PATH")
    nvml = _nvml_topology()
    proc = subprocess.run([smi, "topo", "-m"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise Fail(f"nvidia-smi topo -m exited {proc.returncode}: {proc.stderr.strip()[:200]}")
    (opts.tmp / "nvidia-smi-topo.txt").write_text(proc.stdout)
    siblings = read_cpu_info("/").siblings
    parsed = parse_nvsmi(proc.stdout, path="nvidia-smi topo -m", siblings=siblings)
    problems = []
    if len(parsed.gpus) != len(nvml.gpus):
        problems.append(f"nvidia-smi shows {len(parsed.gpus)} GPUs, NVML {len(nvml.gpus)}")
    for a, b in zip(parsed.gpus, nvml.gpus, strict=False):
        if a.cpu_affinity and a.cpu_affinity != b.cpu_affinity:
            problems.append(
                f"GPU{a.index} cpus: nvidia-smi {format_cpulist(a.cpu_affinity)}, "
                f"NVML {format_cpulist(b.cpu_affinity)}"
            )
        if a.numa_node is not None and a.numa_node != b.numa_node:
            problems.append(f"GPU{a.index} numa: nvidia-smi {a.numa_node}, NVML {b.numa_node}")
    for (i, j), link in parsed.gpu_links.items():
        ours = nvml.gpu_links.get((i, j))
        if ours is not None and ours != link:
            problems.append(f"link GPU{i}-GPU{j}: nvidia-smi {link}, NVML {ours}")
    (mine,) = plan_node(nvml, 1)
    gpu0 = nvml.gpu(0)
    local = gpu0.cpu_affinity & nvml.allowed_cpus
    if mine.gpu != 0:
        problems.append(f"plan_node(1 rank) gave GPU {mine.gpu}, not 0")
    if local and not set(mine.cpus) <= local:
        problems.append(
            f"plan_node cpus {format_cpulist(mine.cpus)} not within GPU0's local "
            f"allowed cpus {format_cpulist(local)}"
        )
    if local and mine.numa_node != gpu0.numa_node:
        problems.append(f"plan_node numa {mine.numa_node}, GPU0's {gpu0.numa_node}")
    if problems:
        raise Fail("; ".join(problems))
    where = "NUMA-local" if local else "fallback: the cpuset has none of GPU0's local CPUs"
    return (
        f"nvidia-smi and NVML agree on {len(parsed.gpus)} GPU(s), affinity and links; "
        f"plan_node(1) -> gpu {mine.gpu} cpus {format_cpulist(mine.cpus)} "
        f"numa {mine.numa_node} ({where})"
    )


def _busy(torch: Any, seconds: float, stop_after: Callable[[], bool] | None = None) -> int:
    """Matmuls on the GPU for about ``seconds``; returns how many ran."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        for _ in range(10):
            a = (a @ b) * n**-0.5  # keeps the values' scale
        torch.cuda.synchronize()
        count += 10
    return count


def check_nvml_sampler(opts: Options) -> str:
    from hpc.accounting import summarize
    from hpc.accounting.sampler import Sampler, SamplerConfig

    torch = _torch_cuda()
    _nvml_topology()
    path = opts.tmp / "accounting.jsonl"
    hold = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB held
    with Sampler(SamplerConfig(path=path, interval_s=0.2, fsync_every_s=5.0)) as sampler:
        time.sleep(0.5)
        matmuls = _busy(torch, 2.0 if opts.quick else 5.0)
        time.sleep(0.3)
    del hold
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header = records[0]
    if header.get("mode") != "nvml":
        raise Fail(f"sampler mode {header.get('mode')!r}: {header.get('reason')}")
    gpus = [g for r in records if r["type"] == "sample" for g in r["gpus"]]
    if not gpus:
        raise Fail(f"no GPU samples in {len(records)} records")
    util = max((g["util"] or 0) for g in gpus)
    mem = max((g["mem"] or 0) for g in gpus)
    powers = [g["power_w"] for g in gpus if g["power_w"] is not None]
    problems = []
    if util <= 0:
        problems.append("utilisation never above 0")
    if mem <= 0:
        problems.append("memory used never above 0")
    if powers and max(powers) <= 0:
        problems.append("power never above 0")
    summary = summarize(path)
    if problems:
        raise Fail("; ".join(problems) + f" ({len(gpus)} GPU samples, {matmuls} matmuls)")
    power = f"{max(powers):.0f} W" if powers else "power not supported by the driver"
    return (
        f"{sampler.samples} samples over {matmuls} matmuls: util max {util}%, "
        f"mem max {mem / 2**30:.2f} GiB, power max {power}; summarize: "
        f"gpu_util_mean {summary.get('gpu_util_mean')}, gpu_hours {summary.get('gpu_hours')}"
    )


def check_nccl_init(opts: Options) -> str:
    torch = _torch_cuda()
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        raise Skip(f"torch {torch.__version__} built without NCCL")
    proc = subprocess.run(
        [sys.executable, __file__, "--nccl-child"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=opts.tmp,
        env=_child_env(),
    )
    out = proc.stdout + proc.stderr
    (opts.tmp / "nccl-child.log").write_text(out)
    results = [line for line in proc.stdout.splitlines() if line.startswith("NCCL_CHECK ")]
    if proc.returncode != 0 or not results:
        last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["no output"]
        raise Fail(f"child exited {proc.returncode}: {last[0][:300]}")
    result = json.loads(results[-1].split(" ", 1)[1])
    problems = []
    if not result["all_reduce_ok"]:
        problems.append(f"all_reduce gave {result['all_reduce_value']}, not 2.0")
    for key, want in (("NCCL_DEBUG", "INFO"), ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")):
        if result["env"].get(key) != want:
            problems.append(f"{key}={result['env'].get(key)!r} after place_rank, want {want!r}")
    if "NCCL INFO" not in out:
        problems.append("no 'NCCL INFO' line: the profile's NCCL_DEBUG did not reach NCCL")
    if problems:
        raise Fail("; ".join(problems))
    return (
        f"NCCL {result['nccl_version']}: 1-rank group + all_reduce of 4 MiB on cuda:0 in "
        f"{result['seconds']:.2f} s; place_rank: {result['placement']}; profile 'debug' "
        f"env reached NCCL (NCCL INFO lines: {out.count('NCCL INFO')})"
    )


def nccl_child() -> int:
    """The NCCL check's child: the runtime's own node setup, then a 1-rank NCCL group."""
    import torch
    import torch.distributed as dist

    from hpc.ports import free_port
    from hpc.runtime.environment import RankInfo
    from hpc.runtime.node import place_rank

    port = free_port("127.0.0.1")
    info = RankInfo(0, 1, 0, 1, 0, "127.0.0.1", port)
    cfg = {"placement": {"enabled": True}, "nccl": {"profile": "debug"}}
    added, line = place_rank(cfg, info)
    start = time.perf_counter()
    # GPU_CHECK_BACKEND=gloo: the same child on a CPU-only machine (to try the script)
    backend = os.environ.get("GPU_CHECK_BACKEND", "nccl")
    device = "cuda" if backend == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(
        backend=backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
    )
    tensor = torch.full((1 << 20,), 2.0, device=device)
    dist.all_reduce(tensor)
    value = float(tensor[0].item())
    ok = bool((tensor == 2.0).all().item())
    dist.barrier()
    dist.destroy_process_group()
    seconds = time.perf_counter() - start
    version = ".".join(str(v) for v in torch.cuda.nccl.version()) if device == "cuda" else "-"
    env = {k: os.environ.get(k) for k in (*added, "NCCL_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING")}
    result = {
        "all_reduce_ok": ok,
        "all_reduce_value": value,
        "seconds": seconds,
        "nccl_version": version,
        "placement": line,
        "env": env,
    }
    print("NCCL_CHECK " + json.dumps(result), flush=True)
    return 0


def _state(torch: Any, gb: float) -> dict[str, Any]:
    """A checkpoint-like state of about ``gb`` GB on cuda:0 (model, optimizer, scalars)."""
    per = max(1, int(gb * 1e9) // 4 // 4)  # four float32 tensors
    gen = torch.Generator(device="cuda").manual_seed(0)
    model = {f"layer{i}.weight": torch.randn(per, device="cuda", generator=gen) for i in range(3)}
    return {
        "model": model,
        "optimizer": {"exp_avg": torch.randn(per, device="cuda", generator=gen), "step": 7},
        "step": 7,
        "rng": torch.cuda.get_rng_state(),
    }


def _tensors(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_tensors(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): obj} if hasattr(obj, "is_pinned") else {}


def _project_stager() -> Any:
    """HOOK (async checkpoint API): the project's staging step, where it exists.

    ``hpc.runtime.checkpoint_async.Stager().stage(state)`` (issue 14, item 2) returns
    the state with every tensor copied to host memory (pinned for CUDA sources),
    reusing its buffers on the next call. None where it is not there yet: the check
    then stages raw (pinned buffers, ``copy_(non_blocking=True)``, one synchronize).
    """
    try:
        from hpc.runtime.checkpoint_async import Stager
    except ImportError:
        return None
    return Stager()


def _raw_stage(torch: Any, state: dict[str, Any], buffers: dict[str, Any]) -> dict[str, Any]:
    """Copy every CUDA tensor into (reused) pinned host buffers, then synchronize once."""
    staged = {}
    for name, tensor in _tensors(state).items():
        buf = buffers.get(name)
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            buf = buffers[name] = torch.empty(
                tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True
            )
        buf.copy_(tensor, non_blocking=True)
        staged[name] = buf
    torch.cuda.synchronize()
    return staged


def check_async_staging(opts: Options) -> str:
    torch = _torch_cuda()
    gb = min(opts.stage_gb, 0.25) if opts.quick else opts.stage_gb
    state = _state(torch, gb)
    sources = {k: t for k, t in _tensors(state).items() if t.device.type == "cuda"}
    nbytes = sum(t.numel() * t.element_size() for t in sources.values())
    torch.cuda.synchronize()
    start = time.perf_counter()
    reference = {name: src.to("cpu") for name, src in sources.items()}  # pageable, blocking
    pageable = time.perf_counter() - start
    stager = _project_stager()
    buffers: dict[str, Any] = {}
    times = []
    staged: dict[str, Any] = {}
    for _ in range(3):  # the first pays for pinning the buffers; later ones reuse them
        start = time.perf_counter()
        if stager is not None:  # its copy is complete when stage() returns
            staged = _tensors(stager.stage(state))
        else:
            staged = _raw_stage(torch, state, buffers)
        times.append(time.perf_counter() - start)
    problems = []  # compared on the host, before anything else synchronizes the device
    for name, ref in reference.items():
        out = staged.get(name)
        if out is None:
            problems.append(f"{name}: not staged")
        elif out.device.type != "cpu" or not out.is_pinned():
            problems.append(f"{name}: staged on {out.device}, pinned={out.is_pinned()}")
        elif not torch.equal(out.view(torch.uint8), ref.view(torch.uint8)):
            problems.append(f"{name}: bytes differ from the device's")
    if problems:
        raise Fail("; ".join(problems[:3]))
    best = min(times[1:])
    how = "project Stager" if stager is not None else "raw staging (HOOK: no Stager yet)"
    return (
        f"{how}: {nbytes / 1e9:.2f} GB of CUDA tensors staged to pinned host memory, bytes "
        f"equal; step blocked {best:.3f} s ({nbytes / best / 1e9:.1f} GB/s; first call "
        f"{times[0]:.3f} s with pinning); pageable .to('cpu') {pageable:.3f} s"
    )


def check_step_overhead(opts: Options) -> str:
    _torch_cuda()
    missing = [m for m in ("omegaconf", "hydra", "yaml") if importlib.util.find_spec(m) is None]
    if missing:  # composing the job's config needs them (a bare CUDA image may lack them)
        raise Skip(f"{', '.join(missing)} not installed (carry the hydra-core, omegaconf wheels)")
    proc = subprocess.run(
        [sys.executable, __file__, "--step-child", str(100 if opts.quick else 400)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=opts.tmp,
        env=_child_env(),
    )
    (opts.tmp / "step-child.log").write_text(proc.stdout + proc.stderr)
    results = [line for line in proc.stdout.splitlines() if line.startswith("STEP_CHECK ")]
    if proc.returncode != 0 or not results:
        out = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        raise Fail(f"child exited {proc.returncode}: {(out[-1:] or ['no output'])[0][:300]}")
    r = json.loads(results[-1].split(" ", 1)[1])
    ratio = r["session_ms"] / r["plain_ms"]
    if ratio > 1.5:
        raise Fail(f"median step {r['session_ms']:.3f} ms with the hooks vs {r['plain_ms']:.3f}")
    return (
        f"median step plain {r['plain_ms']:.3f} ms, with should_checkpoint+log_metrics "
        f"{r['session_ms']:.3f} ms: ratio {ratio:.3f} (issue target <= 1.05 "
        f"{'met' if ratio <= 1.05 else 'NOT met'}; 1 rank, so no collective)"
    )


def step_child(steps: int) -> int:
    """The step-overhead child: the same loop plain and inside a 1-rank Session."""
    import torch

    from hpc.runtime.session import Session
    from hpc.spec.jobspec import load_spec

    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: to try it anywhere
    run_dir = Path.cwd() / "step-run"
    gpus = int(device == "cuda")
    spec = load_spec(
        [
            f"run_dir={run_dir}",
            "resources.tasks_per_node=1",
            f"resources.gpus_per_node={gpus}",
            "tracking.enabled=false",
            "accounting.enabled=false",
        ]
    )
    cfg = dict(spec.config, run_dir=str(run_dir))
    os.environ.update(
        {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29599", "HPC_RUN_DIR": str(run_dir)}
    )  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    model = torch.nn.Sequential(
        torch.nn.Linear(2048, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 10)
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(256, 2048, device=device)
    y = torch.randint(0, 10, (256,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.item())  # what a job logs (hpc.jobs.digits does the same)

    def timed(hook: Callable[[int, float], None]) -> float:
        times = []
        for i in range(steps):
            start = time.perf_counter()
            loss = step()
            hook(i, loss)
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times[steps // 5 :]) * 1000

    timed(lambda i, loss: None)  # warm up
    plain = timed(lambda i, loss: None)
    with Session(cfg) as session:

        def hooks(i: int, loss: float) -> None:
            session.log_metrics({"loss": loss}, step=i)
            session.should_checkpoint(i)

        with_session = timed(hooks)
        plain_again = timed(lambda i, loss: None)
    result = {"plain_ms": min(plain, plain_again), "session_ms": with_session}
    print("STEP_CHECK " + json.dumps(result), flush=True)
    return 0


CHECKS: list[tuple[str, Callable[[Options], str]]] = [
    ("nvml_discovery", check_nvml_discovery),
    ("nvsmi_placement", check_nvsmi_placement),
    ("nvml_sampler", check_nvml_sampler),
    ("nccl_init", check_nccl_init),
    ("async_staging", check_async_staging),
    ("step_overhead", check_step_overhead),
]


def run_checks(opts: Options, only: list[str] | None = None) -> list[Verdict]:
    verdicts = []
    for name, fn in CHECKS:
        if only and name not in only:
            continue
        start = time.perf_counter()
        try:
            status, evidence = "PASS", fn(opts)
        except Skip as exc:
            status, evidence = "SKIP", str(exc)
        except Fail as exc:
            status, evidence = "FAIL", str(exc)
        except subprocess.TimeoutExpired as exc:
            status, evidence = "FAIL", f"timed out after {exc.timeout:.0f} s: {exc.cmd}"
        except Exception as exc:  # a crash is a failure with its one-line reason
            status, evidence = "FAIL", f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
            if opts.verbose:
                traceback.print_exc()
        verdict = Verdict(name, status, evidence, round(time.perf_counter() - start, 2))
        print(f"{status:4}  {name:16} {evidence}  [{verdict.seconds:.1f} s]", flush=True)
        verdicts.append(verdict)
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter loops, 0.25 GB staged")
    parser.add_argument("--stage-gb", type=float, default=1.0)
    parser.add_argument("--json", type=Path, help="also write the verdicts here")
    parser.add_argument("--only", nargs="*", help="run only these checks")
    parser.add_argument("--keep", type=Path, help="keep the logs here (nvidia-smi, NCCL)")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks on FAIL")
    parser.add_argument("--nccl-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--step-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nccl_child:
        return nccl_child()
    if args.step_child:
        return step_child(args.step_child)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        opts = Options(args.quick, args.stage_gb, args.verbose, work)
        verdicts = run_checks(opts, args.only)
    counts = {s: sum(v.status == s for v in verdicts) for s in ("PASS", "FAIL", "SKIP")}
    total = time.perf_counter() - start
    print(
        f"gpu_check: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP "
        f"in {total:.1f} s"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(v) for v in verdicts], indent=1) + "\n")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
