"""Launchers: ``HpcSlurmLauncher`` and ``HpcLocalLauncher``, adapters over hpc-launch's
own backends (``hpc.registry.get_launcher("slurm"|"local")``).

Each batch of sweep points (one ``launch()`` call) becomes ONE hpc-launch sweep:
:func:`hpc.sweeps.plan.plan_sweep` over the point's index, submitted by the backend's
``submit_sweep`` (on Slurm one job array rendered by the one renderer). So every point
is a full hpc-launch job: preemption signal and requeue, placement, NCCL profile,
the accounting sampler, an MLflow child run under the sweep's parent when tracking
is configured (see :mod:`.config` for how ``hydra.launcher.*`` maps onto it). The
job's entry point, :func:`hydra_plugins.hpc_launch_plugin._task.run`, runs the app's
task function itself through Hydra's ``run_job``, as Hydra's own launchers do: the
function, the HydraContext, each point's sweep config and Hydra's singletons travel
in a cloudpickle payload.

Where things go: Hydra's outputs where Hydra puts them (``hydra.sweep.dir`` /
``hydra.sweep.subdir``); hpc-launch's sweep (sweep.json, the batch script, Slurm logs)
in ``<hydra.sweep.dir>/.hpc-launch/sweep-<time>-<id>/``, one run directory per point
(job.json, config.yaml, checkpoints, accounting, ``hydra-return.pkl``); ``hpc status``
on that directory or on the array id shows the points.

``hydra.launcher.wait=true``: wait until every point has ended (on Slurm through
requeues: a requeued point comes back PENDING, then RUNNING) and return each point's
real JobReturn (``cfg``, ``hydra_cfg``, ``working_dir``, ``task_name``,
``return_value``; a task function that raised is FAILED with its exception), so
sweepers that read return values work. ``wait=false`` (the default) is
fire-and-forget on the same code path: the points are queued (Slurm: one array;
local: run in turn by a background process) and ``launch`` returns at once, each
JobReturn COMPLETED with the point's job id as its value.
"""

from __future__ import annotations

import abc
import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.errors import CompactHydraException, HydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.hpc_launch_plugin._task import (
    PATHS_FILE,
    PAYLOAD_FILE,
    RETURN_FILE,
)

if TYPE_CHECKING:
    from hpc.backend import Launcher as Backend
    from hpc.sweeps.plan import SweepPlan

log = logging.getLogger(__name__)


class LauncherConfigError(CompactHydraException):
    """A bad ``hydra.launcher`` value: Hydra prints this one line, no traceback."""


ENTRYPOINT = "hydra_plugins.hpc_launch_plugin._task:run"
HPC_DIR = ".hpc-launch"  # inside hydra.sweep.dir
RESOURCES = (
    "nodes",
    "tasks_per_node",
    "gpus_per_node",
    "cpus_per_task",
    "mem",
    "time",
    "partition",
    "account",
    "qos",
    "constraint",
)
SLURM_CLUSTER = ("python", "setup", "sbatch_args", "array_parallelism", "submit_retries")
PREEMPTION = ("signal", "lead_s", "requeue")
SECTIONS = (
    "tracking", "nccl", "placement", "accounting", "checkpoint", "preemption", "fault",
    "container",
)  # fmt: skip
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:@+-]+\Z")


def hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar (strings quoted when they need it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _SAFE_VALUE.match(text) and text.lower() not in ("null", "true", "false"):
        return text
    # Inside quotes a backslash is literal except before a quote or at the end; `${`
    # would be an interpolation: escape those (round trip tested in test_render_injection).
    text = re.sub(r"(\\+)(?='|\Z)", lambda m: m.group(1) * 2, text).replace("'", "\\'")
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    return "'" + text + "'"


def _flatten(prefix: str, data: Any) -> list[str]:
    if isinstance(data, dict):
        return [o for k, v in data.items() for o in _flatten(f"{prefix}.{k}", v)]
    return [f"++{prefix}={hydra_value(data)}"]  # ++: new keys of maps (nccl.env) too


def framework_overrides(params: dict[str, Any], backend: str) -> list[str]:
    """hpc-launch overrides for the ``hydra.launcher.*`` params (None: its default)."""
    out = [f"cluster={backend}"]
    for key in RESOURCES:
        if params.get(key) is not None:
            out.append(f"resources.{key}={hydra_value(params[key])}")
    if backend == "slurm":
        for key in SLURM_CLUSTER:
            if params.get(key) not in (None, []):
                out.append(f"cluster.{key}={hydra_value(params[key])}")
        for key in PREEMPTION:
            if params.get(key) is not None:
                out.append(f"preemption.{key}={hydra_value(params[key])}")
    for section in SECTIONS:
        out += _flatten(section, params.get(section) or {})
    if not params.get("tracking") and not os.environ.get("MLFLOW_TRACKING_URI"):
        out.append("tracking.enabled=false")  # tracking only when configured
    out += [str(o) for o in params.get("overrides") or []]
    return out


class _HpcLauncherBase(Launcher):
    backend = "abstract"

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in params.items()
        }
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    # -- planning --------------------------------------------------------------------

    def _sweep_config(self, overrides: Sequence[str], num: int) -> DictConfig:
        assert self.config is not None and self.hydra_context is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(
            self.config, list(overrides)
        )
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"job_id_for_{num}"  # the job sets the real one
            sweep_config.hydra.job.num = num
        return sweep_config

    def _plan(self, sweep_dir: Path, nums: list[int]) -> SweepPlan:
        """One hpc-launch sweep over the points' numbers, its files in ``sweep_dir``: the
        framework's sections only, plus a job section that names the points' entry point."""
        # lazy: Hydra imports plugins at startup; composition only when launching
        from hpc.spec.errors import ConfigError  # noqa: PLC0415
        from hpc.spec.sources import FRAMEWORK_ONLY  # noqa: PLC0415
        from hpc.sweeps.plan import plan_sweep  # noqa: PLC0415

        assert self.config is not None
        name = str(self.params.get("job_name") or self.config.hydra.job.name)
        overrides = [
            *framework_overrides(self.params, self.backend),
            f"+job.name={hydra_value(name)}",
            f"+job.entrypoint={ENTRYPOINT}",
            f"+job.hydra_payload={hydra_value(str(sweep_dir / PAYLOAD_FILE))}",
            f"+job.hydra_index=choice({','.join(map(str, nums))})",  # Hydra's job.num
        ]
        try:
            plan = plan_sweep(overrides, source=FRAMEWORK_ONLY)
        except ConfigError as exc:
            raise LauncherConfigError(f"hydra.launcher ({self.backend}): {exc}") from None
        plan.sweep_dir = sweep_dir
        for task in plan.tasks:
            task.run_dir = str(sweep_dir / str(task.index))
        return plan

    def _write_payload(self, plan: SweepPlan, configs: dict[int, DictConfig]) -> None:
        from hpc.files import write_atomic  # noqa: PLC0415 (lazy: only when launching)
        from hydra_plugins.hpc_launch_plugin._pickle import dumps  # noqa: PLC0415 (lazy: cloudpickle)

        plan.sweep_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "task_function": self.task_function,
            "hydra_context": self.hydra_context,
            "config": self.config,
            "sweep_configs": configs,
            "singleton_state": Singleton.get_state(),
        }
        paths = {"sys_path": [p for p in sys.path if p], "cwd": os.getcwd()}
        write_atomic(plan.sweep_dir / PATHS_FILE, json.dumps(paths, indent=2) + "\n")
        write_atomic(plan.sweep_dir / PAYLOAD_FILE, dumps(payload), mode=0o600)

    # -- launching -------------------------------------------------------------------

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hpc.registry import get_launcher  # noqa: PLC0415 (lazy: only when launching)

        assert self.config is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).expanduser().absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        nums = [initial_job_idx + n for n in range(len(job_overrides))]
        configs = {
            num: self._sweep_config(ov, num) for num, ov in zip(nums, job_overrides, strict=True)
        }
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        plan = self._plan(sweep_dir / HPC_DIR / f"sweep-{stamp}-{os.urandom(2).hex()}", nums)
        for num, overrides in zip(nums, job_overrides, strict=True):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        backend = get_launcher(self.backend)
        self._check_cost(plan)
        if self.params.get("dry_run"):  # the scripts on stdout; nothing written
            backend.submit_sweep(plan, True, launch_task)
            return [self._queued(plan, i, ov, None) for i, ov in enumerate(job_overrides)]
        self._write_payload(plan, configs)
        ids = self._submit(backend, plan)
        if not self.params.get("wait"):
            return [self._queued(plan, i, ov, ids[i]) for i, ov in enumerate(job_overrides)]
        states = self._wait(backend, plan, ids)
        return [self._result(plan, i, ov, states[i]) for i, ov in enumerate(job_overrides)]

    def _check_cost(self, plan: SweepPlan) -> None:
        """hpc-launch's estimate and budgets, as for ``hpc-launch -m``: a refusing budget
        ends the launch with BUDGET_REFUSED and one line before anything is written."""
        from hpc.cost.guard import before_submit  # noqa: PLC0415 (lazy: only when launching)
        from hpc.exitcodes import BUDGET_REFUSED  # noqa: PLC0415

        counts = Counter(task.shape for task in plan.tasks)
        configs = [(spec.config, counts[shape]) for shape, spec in plan.shapes.items()]
        try:
            guard = before_submit(configs, sweep=True)
        except ValueError as exc:  # hpc.cost.model.CostInputError: names the file and key
            raise LauncherConfigError(f"hydra.launcher ({self.backend}): {exc}") from None
        stop = guard.refusal(bool(self.params.get("dry_run")))
        if stop is not None:
            print(f"hpc_{self.backend}: error: {stop}", file=sys.stderr)
            raise SystemExit(BUDGET_REFUSED)  # past Hydra's handler: its own exit code
        for line in guard.shown():
            log.info(f"hpc_{self.backend}: {line}")

    @abc.abstractmethod
    def _submit(self, backend: Backend, plan: SweepPlan) -> list[str | None]:
        """Submit the sweep; each point's job id (None where it has none yet)."""

    @abc.abstractmethod
    def _wait(self, backend: Backend, plan: SweepPlan, ids: list[str | None]) -> list[str]:
        """Block until every point has ended; each point's final state."""

    def _queued(
        self, plan: SweepPlan, index: int, overrides: Sequence[str], job_id: str | None
    ) -> JobReturn:
        ret = JobReturn(
            overrides=list(overrides),
            working_dir=plan.tasks[index].run_dir,
            task_name=str(self.config.hydra.job.name) if self.config is not None else None,
            status=JobStatus.COMPLETED,
        )
        ret.return_value = job_id
        return ret

    def _result(
        self, plan: SweepPlan, index: int, overrides: Sequence[str], state: str
    ) -> JobReturn:
        """The JobReturn the point's job wrote, or a FAILED one saying why there is none."""
        import cloudpickle  # noqa: PLC0415 (lazy: only when launching)

        path = Path(plan.tasks[index].run_dir) / RETURN_FILE
        if path.exists():
            with open(path, "rb") as fh:
                ret: JobReturn = cloudpickle.load(fh)
            return ret
        ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
        ret.working_dir = plan.tasks[index].run_dir
        ret.return_value = RuntimeError(
            f"hpc-launch: point {' '.join(overrides) or '(no overrides)'} ended {state} "
            f"without a result; its job's log is in {plan.sweep_dir / 'logs'} and "
            f"{plan.tasks[index].run_dir}"
        )
        return ret


def launch_task(overrides: Sequence[str]) -> int:
    """One point as a normal hpc-launch job, followed until it ends (local sweeps)."""
    # lazy, all: the submit path, only when launching
    from hpc.backend import SubmitError  # noqa: PLC0415
    from hpc.registry import get_launcher  # noqa: PLC0415
    from hpc.spec.errors import ConfigError  # noqa: PLC0415
    from hpc.spec.jobspec import load_spec  # noqa: PLC0415
    from hpc.spec.sources import FRAMEWORK_ONLY  # noqa: PLC0415

    try:
        spec = load_spec(overrides, source=FRAMEWORK_ONLY)
        backend = get_launcher(spec.launcher)
        handle = backend.submit(backend.plan(spec, backend.discover(spec)))
    except (ConfigError, SubmitError) as exc:
        log.error(f"hpc-launch: {exc}")
        return 2
    return handle.wait()


class HpcSlurmLauncher(_HpcLauncherBase):
    backend = "slurm"

    def _submit(self, backend: Backend, plan: SweepPlan) -> list[str | None]:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # the array ids: logged below instead
            code = backend.submit_sweep(plan, False, launch_task)
        record = json.loads((plan.sweep_dir / "sweep.json").read_text(encoding="utf-8"))
        if code != 0:
            raise HydraException(
                f"hpc_slurm: the sweep was not submitted (exit code {code}); {plan.sweep_dir}"
            )
        ids = [f"{t['array_id']}_{t['array_index']}" for t in record["tasks"]]
        arrays = ",".join(a["array_id"] for a in record["arrays"])
        log.info(
            f"hpc_slurm: {len(ids)} points queued as Slurm array {arrays}; "
            f"hpc status {plan.sweep_dir} shows them"
        )
        return list(ids)

    def _wait(self, backend: Backend, plan: SweepPlan, ids: list[str | None]) -> list[str]:
        runs = [
            {"job_id": job_id, "run_dir": task.run_dir, "state": "PENDING"}
            for job_id, task in zip(ids, plan.tasks, strict=True)
        ]
        from hpc.states import TERMINAL  # noqa: PLC0415 (lazy: only when launching)

        poll_s = float(self.params.get("poll_s") or 2.0)
        limit = self.params.get("wait_timeout_s")
        deadline = None if limit is None else time.monotonic() + float(limit)
        try:
            while any(r["state"] not in TERMINAL for r in runs):
                if deadline is not None and time.monotonic() > deadline:
                    left = " ".join(f"{r['job_id']}={r['state']}" for r in runs)
                    raise HydraException(
                        f"hpc_slurm: points still not ended after wait_timeout_s={limit} "
                        f"({left}); they go on: hpc status {plan.sweep_dir}"
                    )
                time.sleep(poll_s)
                for warning in backend.refresh_states(runs):
                    log.warning(f"hpc_slurm: {warning}")
        except KeyboardInterrupt:
            log.warning(
                f"hpc_slurm: no longer waiting; the points go on: hpc status {plan.sweep_dir}"
            )
            raise
        return [str(r["state"]) for r in runs]


class HpcLocalLauncher(_HpcLauncherBase):
    backend = "local"

    def _submit(self, backend: Backend, plan: SweepPlan) -> list[str | None]:
        if self.params.get("wait"):
            backend.submit_sweep(plan, False, launch_task)  # the points in turn, here
            return [None] * len(plan.tasks)
        # lazy, all: only when launching
        from hpc.files import write_atomic  # noqa: PLC0415
        from hpc.sweeps.plan import sweep_record, write_record  # noqa: PLC0415
        from hydra_plugins.hpc_launch_plugin._pickle import dumps  # noqa: PLC0415

        first = next(iter(plan.shapes.values()))  # the record now: `hpc status` at once
        write_record(plan.sweep_dir, sweep_record(plan, first.name, "local"))
        plan_file = plan.sweep_dir / "plan.pkl"
        write_atomic(plan_file, dumps(plan), mode=0o600)
        log_file = plan.sweep_dir / "local-sweep.log"
        cmd = [sys.executable, "-m", "hydra_plugins.hpc_launch_plugin._task", str(plan_file)]
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this process; Ctrl-C here does not stop it
            )
        log.info(
            f"hpc_local: {len(plan.tasks)} points running in turn in the background "
            f"(pid {proc.pid}, log {log_file}; hpc status {plan.sweep_dir})"
        )
        return [f"local-{proc.pid}-{task.index}" for task in plan.tasks]

    def _wait(self, backend: Backend, plan: SweepPlan, ids: list[str | None]) -> list[str]:
        from hpc.rundir import records  # noqa: PLC0415 (lazy: only when launching)

        states = []
        for task in plan.tasks:
            try:
                states.append(str(records.load(Path(task.run_dir)).get("state")))
            except (FileNotFoundError, ValueError):
                states.append("FAILED")
        return states
