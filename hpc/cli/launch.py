"""``hpc-launch [-m] [key=value ...]``: compose, validate, plan, then run or submit.

Exit codes: 0 success, 2 bad input (nothing launched), otherwise the job's own.
Only light modules are imported here; torch and mlflow load inside the job.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc.config import ConfigError
from hpc.sweep import SweepPlan, is_secret_override, plan_sweep, sweep_record, write_record

if TYPE_CHECKING:  # the launchers load lazily: the CLI stays light
    from hpc.jobspec import JobSpec
    from hpc.launchers.base import JobHandle

USAGE = """\
usage: hpc-launch [-m|--multirun] [--cfg] [key=value ...]

Compose the job config (configs/config.yaml) with overrides and launch it.
  hpc-launch                                  digits job, 2 local workers
  hpc-launch job.epochs=3 resources.tasks_per_node=4
  hpc-launch cluster=slurm dry_run=true       print the sbatch script only
  hpc-launch --cfg                            print the resolved config only
Config groups: cluster={local,slurm,k8s,mpi} job={digits}
"""


def err(message: str) -> None:
    print(f"hpc-launch: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="hpc-launch: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE, end="")
        return 0
    multirun = False
    show_cfg = False
    overrides: list[str] = []
    for arg in args:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg == "--cfg":
            show_cfg = True
        elif arg.startswith("-"):
            err(f"error: unknown option {arg!r} (see hpc-launch --help)")
            return 2
        else:
            overrides.append(arg)
    if multirun:
        return run_sweep(overrides)
    return launch(overrides, show_cfg=show_cfg)


def launch(overrides: Sequence[str], show_cfg: bool = False) -> int:
    from hpc.jobspec import load_spec
    from hpc.launchers import get_launcher

    try:
        spec = load_spec(overrides)
        launcher = get_launcher(spec.launcher)
        plan = launcher.plan(spec)
    except ConfigError as exc:
        err(f"error: {exc}")
        return 2
    except KeyError as exc:
        err(f"error: cluster: {exc.args[0]}")
        return 2
    if show_cfg:
        sys.stdout.write(spec.config_yaml())
        return 0
    if spec.config.get("dry_run"):
        sys.stdout.write(plan.text)
        show_placement(spec)
        return 0
    from hpc.launchers.base import SubmitError

    try:
        handle = launcher.submit(plan)
    except ConfigError as exc:
        err(f"error: {exc}")
        return 2
    except SubmitError as exc:
        err(f"error: {spec.launcher} rejected the job: {exc}")
        return 1
    err(f"{handle.job_id}: started, run directory {handle.run_dir}")
    if spec.launcher not in ("local", "mpi") and not spec.config.get("wait"):
        return 0
    return follow(handle, spec.name)


def show_placement(spec: JobSpec) -> None:
    """On stderr (stdout holds the plan alone): where each rank will be bound."""
    placement = spec.config.get("placement") or {}
    if not placement.get("enabled", True):
        return
    ranks = int(spec.resources["tasks_per_node"])
    if spec.launcher not in ("local", "mpi") and not placement.get("topo_file"):
        return  # computed on each node at start (`hpc topo plan` shows it for a node)
    import logging

    from hpc.topology.discover import discover
    from hpc.topology.model import TopologyError, format_cpulist
    from hpc.topology.nvsmi import read_nvsmi
    from hpc.topology.placement import plan_node

    logging.getLogger("hpc.topology").setLevel(logging.ERROR)
    try:
        topo = read_nvsmi(placement["topo_file"]) if placement.get("topo_file") else discover()
        plan = plan_node(topo, ranks, link_layer=placement.get("link_layer"))
    except (TopologyError, OSError) as exc:
        err(f"placement: cannot plan ({exc})")
        return
    for p in plan:
        err(
            f"placement: local rank {p.local_rank} -> gpu {p.gpu if p.gpu is not None else '-'}"
            f" cpus {format_cpulist(p.cpus)} numa {p.numa_node} nics {','.join(p.nics) or '-'}"
        )


def follow(handle: JobHandle, name: str) -> int:
    """Wait for the job with a progress display; forward Ctrl-C/SIGTERM to it."""
    from hpc.cli.progress import Progress

    interrupts = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1 and signum == signal.SIGINT:
            handle.forward(signal.SIGKILL)
            return
        err(f"{signal.Signals(signum).name}: stopping {handle.job_id}")
        handle.forward(signum)

    watched: set[int] = {signal.SIGINT, signal.SIGTERM}
    preempt = handle.restart_signal()
    if preempt:
        watched.add(preempt)

    def on_preempt(signum: int, _frame: object) -> None:
        err(f"{signal.Signals(signum).name}: checkpointing {handle.job_id}, then restarting")
        handle.forward(signum)

    previous = {s: signal.signal(s, on_preempt if s == preempt else on_signal) for s in watched}
    try:
        with Progress(handle, name) as progress:
            code = progress.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    message = handle.message
    if code == 0:
        warning = f"; warning: {message}" if message else ""
        note = _tracking_note(handle.run_dir)
        err(f"{handle.job_id}: COMPLETED ({handle.run_dir}){warning}{note}")
    else:
        err(f"{handle.job_id}: {handle.status()}: {message or f'exit code {code}'}")
    return code


def _tracking_note(run_dir: Path) -> str:
    """``; metrics not in MLflow yet ...`` when the run's metrics could not be sent."""
    from hpc import records
    from hpc.runtime.tracking import unsent_message

    try:
        message = unsent_message(records.load(run_dir))
    except (FileNotFoundError, ValueError):
        return ""
    return f"; {message}" if message else ""


def _hide_secret(override: str) -> str:
    return f"{override.partition('=')[0]}=***" if is_secret_override(override) else override


def run_sweep(overrides: Sequence[str]) -> int:
    """``hpc-launch -m``: plan, then submit arrays (Slurm) or run tasks in turn (local)."""
    try:
        plan = plan_sweep(overrides)
    except ConfigError as exc:
        print(f"hpc-launch: error: {exc}", file=sys.stderr)
        return 2
    first = next(iter(plan.shapes.values()))
    if first.launcher == "slurm":
        from hpc.launchers.slurm.sweep import submit_sweep

        return submit_sweep(plan, dry_run=bool(first.config.get("dry_run")))
    if first.launcher == "local":
        return _run_local(plan, first)
    print(
        f"hpc-launch: error: cluster: sweeps are not supported on {first.launcher}", file=sys.stderr
    )
    return 2


def _run_local(plan: SweepPlan, first: Any) -> int:
    """Local sweeps run their tasks one after another, each a normal launch."""
    if first.config.get("dry_run"):
        for task in plan.tasks:
            shown = [_hide_secret(o) for o in [*plan.base_overrides, *task.overrides]]
            print(" ".join(shown))
        return 0
    write_record(plan.sweep_dir, sweep_record(plan, first.name, "local"))
    worst = 0
    for task in plan.tasks:
        code = launch([*plan.base_overrides, *task.overrides, f"run_dir={task.run_dir}"])
        worst = worst or code
    return worst


if __name__ == "__main__":
    sys.exit(main())
