"""``hpc-launch [-m] [key=value ...]``: compose, validate, plan, then run or submit.

Exit codes: 0 success, 2 bad input (nothing launched), otherwise the job's own.
Only light modules are imported here; torch and mlflow load inside the job.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from hpc.backend import NotSupported, SubmitError
from hpc.exitcodes import BUDGET_REFUSED
from hpc.registry import get_launcher
from hpc.rundir import records
from hpc.spec.compose import EMBEDDED
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import load_spec
from hpc.spec.schema import FRAMEWORK_KEYS
from hpc.spec.sources import ConfigSource, split_flags

if TYPE_CHECKING:
    from hpc.backend import JobHandle
    from hpc.spec.jobspec import JobSpec

USAGE = """\
usage: hpc-launch [-m|--multirun] [--cfg] [-cd DIR] [-cp DIR] [-cn NAME] [key=value ...]

Compose the job config with overrides and launch it. Without a project: the example
digits job (the package's config.yaml) on 2 local workers.
  hpc-launch job.epochs=3 resources.tasks_per_node=4
  hpc-launch --config-dir conf model=large    your project: conf/config.yaml
  hpc-launch -cd conf -m model=small,large    a sweep over your own group
  hpc-launch cluster=slurm dry_run=true       print the sbatch script only
  hpc-launch --cfg                            print the resolved config only
Options: --config-dir/-cd DIR (add DIR to the search path; its config.yaml is the
primary), --config-path/-cp DIR (the primary config's dir), --config-name/-cn NAME.
Framework groups: cluster resources nccl preemption placement accounting; profiles
are found in ~/.config/hpc-launch and /etc/hpc-launch (`hpc config` shows the path).
"""


def err(message: str) -> None:
    print(f"hpc-launch: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="hpc-launch: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    if os.getcwd() not in sys.path:  # the project's modules, as `python -m hpc.run` sees them
        sys.path.insert(0, os.getcwd())
    if any(a in ("-h", "--help") for a in args):
        print(USAGE, end="")
        return 0
    multirun = False
    show_cfg = False
    overrides: list[str] = []
    try:
        source, args = split_flags(args)
    except ConfigError as exc:
        err(f"error: {exc}")
        return 2
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
        return run_sweep(overrides, source)
    return launch(overrides, show_cfg=show_cfg, source=source)


def launch(
    overrides: Sequence[str],
    show_cfg: bool = False,
    source: ConfigSource = EMBEDDED,
    check_budget: bool = True,
) -> int:
    try:
        spec = load_spec(overrides, source=source)
        launcher = get_launcher(spec.launcher)
        plan = launcher.plan(spec, launcher.discover(spec))  # discovery first: plans are pure
    except ConfigError as exc:
        err(f"error: {exc}")
        return 2
    except KeyError as exc:
        err(f"error: cluster: {exc.args[0]}")
        return 2
    if show_cfg:
        sys.stdout.write(spec.config_yaml())
        return 0
    dry_run = bool(spec.config.get("dry_run"))
    estimate: list[str] = []
    if check_budget:
        refused, estimate = cost_check([(spec.config, 1)], dry_run=dry_run, sweep=False)
        if refused is not None:
            return refused
    if dry_run:
        for line in estimate:
            err(line)
        sys.stdout.write(plan.text)
        show_config(spec)
        show_placement(spec, launcher.follows_by_default)
        return 0
    for note in plan.notes:  # what could not be checked here (the dry run shows it too)
        err(f"note: {note}")
    try:
        handle = launcher.submit(plan)
    except ConfigError as exc:
        err(f"error: {exc}")
        return 2
    except SubmitError as exc:
        err(f"error: {spec.launcher} rejected the job: {exc}")
        return 1
    err(f"{handle.job_id}: started, run directory {handle.run_dir}")
    for line in estimate:  # after the submit: a rejected job gets its one error line only
        err(line)
    if not launcher.follows_by_default and not spec.config.get("wait"):
        return 0
    return follow(handle, spec.name)


def cost_check(
    configs: list[tuple[dict[str, object], int]], dry_run: bool, sweep: bool
) -> tuple[int | None, list[str]]:
    """The exit code when a budget refuses (or the budgets file is bad; its one error line
    is printed), else None: go on; and the estimate and budget lines to show."""
    from hpc.cost.guard import before_submit  # noqa: PLC0415 (lazy: budgets only here)

    try:
        guard = before_submit(configs, sweep=sweep)
    except ValueError as exc:  # hpc.cost.model.CostInputError: names the file and key
        err(f"error: {exc}")
        return 2, []
    stop = guard.refusal(dry_run)
    if stop is not None:  # one line: budget, consumed, estimate, limit
        err(f"error: {stop}")
        return BUDGET_REFUSED, []
    return None, guard.shown()


def show_config(spec: JobSpec) -> None:
    """On stderr (stdout holds the plan alone): the job's section and the user's own
    keys as composed (the framework's sections show in the plan; ``--cfg`` prints all)."""
    theirs = {k: v for k, v in spec.config.items() if k == "job" or k not in FRAMEWORK_KEYS}
    err(f"config: job and your own keys (all of it: --cfg; written to {spec.config_file}):")
    for line in yaml.safe_dump(theirs, sort_keys=False).splitlines():
        print(f"  {line}", file=sys.stderr)


def show_placement(spec: JobSpec, on_this_machine: bool) -> None:
    """On stderr (stdout holds the plan alone): where each rank will be bound."""
    placement = spec.config.get("placement") or {}
    if not placement.get("enabled", True):
        return
    ranks = int(spec.resources["tasks_per_node"])
    if not on_this_machine and not placement.get("topo_file"):
        return  # computed on each node at start (`hpc topo plan` shows it for a node)
    # lazy: topology discovery only when the placement is shown on this machine
    from hpc.topology.discover import discover  # noqa: PLC0415
    from hpc.topology.model import TopologyError, format_cpulist  # noqa: PLC0415
    from hpc.topology.nvsmi import read_nvsmi  # noqa: PLC0415
    from hpc.topology.placement import plan_node  # noqa: PLC0415

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
    from hpc.cli.progress import Progress  # noqa: PLC0415 (lazy: rich only when following)

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
    from hpc.runtime.tracking import unsent_message  # noqa: PLC0415 (lazy: after a followed run)

    try:
        message = unsent_message(records.load(run_dir))
    except (FileNotFoundError, ValueError):
        return ""
    return f"; {message}" if message else ""


def run_sweep(overrides: Sequence[str], source: ConfigSource = EMBEDDED) -> int:
    """``hpc-launch -m``: plan, then let the backend submit it (Slurm arrays, local tasks
    in turn); a backend without sweeps is a one-line error, exit 2."""
    from hpc.sweeps.plan import plan_sweep  # noqa: PLC0415 (lazy: -m only)

    try:
        plan = plan_sweep(overrides, source=source)
        first = next(iter(plan.shapes.values()))
        launcher = get_launcher(first.launcher)
    except ConfigError as exc:
        err(f"error: {exc}")
        return 2
    except KeyError as exc:
        err(f"error: cluster: {exc.args[0]}")
        return 2
    if not launcher.supports_sweeps():  # before the estimate: one error line
        err(f"error: cluster: {launcher.no_sweeps()}")
        return 2
    dry_run = bool(first.config.get("dry_run"))
    counts: dict[tuple[str, ...], int] = {}
    for t in plan.tasks:
        counts[t.shape] = counts.get(t.shape, 0) + 1
    refused, estimate = cost_check(
        [(spec.config, counts.get(shape, 0)) for shape, spec in plan.shapes.items()],
        dry_run=dry_run,
        sweep=True,
    )
    if refused is not None:
        return refused
    for line in estimate:
        err(line)
    try:
        task = functools.partial(launch, source=source, check_budget=False)
        return launcher.submit_sweep(plan, dry_run, task)
    except ConfigError as exc:  # a backend's refusal while rendering, before any submit
        err(f"error: {exc}")
        return 2
    except NotSupported as exc:
        err(f"error: cluster: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
