"""Launchers: ``HpcSlurmLauncher`` (one job array) and ``HpcLocalLauncher`` (tasks in turn).

Neither runs the task function in this process. Each sweep point re-runs the
user's app (``sys.argv[0]``, or ``-m module``; same interpreter, same working
directory) as a normal single Hydra run with that point's overrides plus
``hydra.run.dir=<sweep dir>/<subdir>``, so the outputs land where Hydra's own
multirun puts them. The points go into ``<sweep dir>/sweep.json`` (the same shape
as hpc-launch's, so ``hpc status <sweep dir>`` works); each array task picks its
point by ``SLURM_ARRAY_TASK_ID`` (:mod:`hydra_plugins.hpc_launch_plugin._task`).

``launch`` returns once the array is queued (or the local runner started); with
``hydra.launcher.wait=true`` it waits and returns each task's real status.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hpc.defaults import EXIT_GRACE_S
from hpc.files import write_atomic
from hpc.launchers.slurm import render
from hpc.quoting import shell_join, shell_word
from hpc.rundir import records
from hpc.states import TERMINAL

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
STATUS_DIR = ".hpc_tasks"  # <sweep dir>/.hpc_tasks/<index>.json, written by each task
# Hydra overrides of the multirun that must not reach the single runs.
_DROPPED_HYDRA = re.compile(r"^[~+]*hydra[./](launcher|sweeper|sweep\b|mode\b|job\.num|job\.id)")
_CONFIG_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:@+-]+\Z")


def hydra_quote(value: str) -> str:
    """A value for a Hydra override, quoted when it holds anything unusual."""
    if _SAFE_VALUE.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def app_command() -> list[str]:
    """How to start this app again: ``[script]`` or ``[-m, module]``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return ["-m", name]
    return [os.path.abspath(sys.argv[0])]


def config_flags(argv: Sequence[str]) -> list[str]:
    """The ``--config-path/--config-name/--config-dir`` flags of the original command line."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        flag = arg.split("=", 1)[0]
        if flag in _CONFIG_FLAGS:
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(items):
                i += 1
                value = items[i]
            else:
                break
            if flag in ("--config-path", "-cp", "--config-dir", "-cd"):
                value = os.path.abspath(value) if not value.startswith("pkg://") else value
            out += [flag, value]
        i += 1
    return out


class _HpcLauncherBase(Launcher):
    kind = "abstract"

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

    # -- the sweep file ----------------------------------------------------------

    def _subdir(self, overrides: Sequence[str], idx: int) -> str:
        assert self.config is not None and self.hydra_context is not None
        raw = OmegaConf.to_container(self.config.hydra.sweep, resolve=False)
        if isinstance(raw, dict) and str(raw.get("subdir")).replace(" ", "") == "${hydra.job.num}":
            return str(idx)

        sweep_config = self.hydra_context.config_loader.load_sweep_config(
            self.config, list(overrides)
        )
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"job_{idx}"
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)
        return str(sweep_config.hydra.sweep.subdir)

    def _hydra_overrides(self) -> list[str]:
        assert self.config is not None
        given = OmegaConf.to_container(self.config.hydra.overrides.hydra, resolve=False)
        return [str(o) for o in (given or []) if not _DROPPED_HYDRA.match(str(o))]

    def _write_sweep(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> tuple[Path, dict[str, Any]]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).expanduser().resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "logs").mkdir(exist_ok=True)
        (sweep_dir / STATUS_DIR).mkdir(exist_ok=True)
        path = sweep_dir / SWEEP_FILE
        record: dict[str, Any]
        if path.exists():  # a later batch of the same sweep (sweeper max_batch_size)
            record = json.loads(path.read_text(encoding="utf-8"))
        else:
            record = {
                "name": str(self.config.hydra.job.name),
                "launcher": f"hydra:{self.kind}",
                "sweep_dir": str(sweep_dir),
                "created": time.time(),
                "python": str(self.params.get("python") or sys.executable),
                "app": app_command(),
                "args": [*config_flags(sys.argv[1:]), *self._hydra_overrides()],
                "cwd": os.getcwd(),
                "arrays": [],
                "tasks": [],
            }
        for n, overrides in enumerate(job_overrides):
            idx = initial_job_idx + n
            run_dir = sweep_dir / self._subdir(overrides, idx)
            record["tasks"].append(
                {
                    "index": idx,
                    "overrides": list(overrides),
                    "run_dir": str(run_dir),
                    "hydra": [
                        f"hydra.run.dir={hydra_quote(str(run_dir))}",
                        f"hydra.job.num={idx}",
                        "hydra.mode=RUN",
                    ],
                    "array_id": None,
                    "array_index": None,
                }
            )
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        _write_json(path, record)
        return sweep_dir, record

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir, record = self._write_sweep(job_overrides, initial_job_idx)
        indices = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        handles = self._start(sweep_dir, record, indices)
        if not self.params.get("wait"):
            return [
                self._job_return(record, i, JobStatus.COMPLETED, {"queued": handles.get(i)})
                for i in indices
            ]
        finals = self._wait(sweep_dir, record, indices)
        out = []
        for i in indices:
            state, code = finals[i]
            if state == "COMPLETED":
                out.append(self._job_return(record, i, JobStatus.COMPLETED, None))
            else:
                task = _task(record, i)
                error = RuntimeError(
                    f"task {i} ({' '.join(task['overrides'])}): {state}"
                    + (f" (exit code {code})" if code is not None else "")
                    + f"; log in {sweep_dir / 'logs'}"
                )
                out.append(self._job_return(record, i, JobStatus.FAILED, error))
        return out

    def _job_return(
        self, record: dict[str, Any], index: int, status: JobStatus, value: Any
    ) -> JobReturn:
        task = _task(record, index)
        ret = JobReturn(
            overrides=task["overrides"],
            working_dir=task["run_dir"],
            task_name=record["name"],
            status=status,
        )
        ret.return_value = value
        return ret

    def _start(self, sweep_dir: Path, record: dict[str, Any], indices: list[int]) -> dict[int, str]:
        raise NotImplementedError

    def _wait(
        self, sweep_dir: Path, record: dict[str, Any], indices: list[int]
    ) -> dict[int, tuple[str, int | None]]:
        raise NotImplementedError


def _task(record: dict[str, Any], index: int) -> dict[str, Any]:
    for task in record["tasks"]:
        if task["index"] == index:
            return task
    raise KeyError(index)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def task_status(sweep_dir: Path, index: int) -> dict[str, Any]:
    try:
        return json.loads((sweep_dir / STATUS_DIR / f"{index}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class HpcSlurmLauncher(_HpcLauncherBase):
    kind = "slurm"
    poll_s = 2.0

    def _script(self, sweep_dir: Path, record: dict[str, Any]) -> str:
        """The array's batch script (``slurm/templates/hydra-array.sbatch``)."""
        p = self.params
        signal = p.get("signal") or render.SIGNAL
        lead_s = render.LEAD_S if p.get("lead_s") is None else p["lead_s"]
        opts: list[tuple[str, Any]] = [
            ("job-name", p.get("job_name") or record["name"]),
            ("nodes", p.get("nodes", 1)),
            ("ntasks-per-node", p.get("tasks_per_node", 1)),
            ("cpus-per-task", p.get("cpus_per_task", 1)),
        ]
        if p.get("gpus_per_node"):
            opts.append(("gpus-per-node", p["gpus_per_node"]))
        for key in ("mem", "time", "partition", "account", "qos", "constraint"):
            if p.get(key) not in (None, ""):
                opts.append((key, p[key]))
        opts += [
            ("output", f"{sweep_dir}/logs/slurm-%A_%a.out"),
            ("open-mode", "append"),
            ("chdir", record["cwd"]),
            ("signal", render.signal_value(signal, lead_s)),
        ]
        directives = render.directives(
            ((name, f"hydra.launcher.{name}", value) for name, value in opts),
            requeue=p.get("requeue") is not False,
            extra=p.get("sbatch_args") or [],
            extra_key="hydra.launcher.sbatch_args",
        )
        words = [record["python"], "-m", "hydra_plugins.hpc_launch_plugin._task", str(sweep_dir)]
        runner = f'{shell_join(words)} "$index"'
        tasks, cpus = int(p.get("tasks_per_node", 1)), int(p.get("cpus_per_task", 1))
        if int(p.get("nodes", 1)) * tasks > 1:
            srun = render.srun_words(tasks, cpus, EXIT_GRACE_S, bind=False)
            runner = f"{shell_join(srun)} {runner}"
        return render.render(
            "hydra-array.sbatch",
            header=f"{shell_word(record['name'])} (sweep dir {shell_word(sweep_dir)})",
            directives=render.sbatch_block(directives),
            setup=render.block(str(line) for line in p.get("setup") or []),
            **render.step_parts(shell_word(signal), runner),
        )

    def _start(self, sweep_dir: Path, record: dict[str, Any], indices: list[int]) -> dict[int, str]:
        # lazy: Hydra imports plugins at startup; Slurm code only in a sweep
        from hpc.launchers.slurm import client  # noqa: PLC0415
        from hpc.launchers.slurm.sweep import chunks, max_array_size  # noqa: PLC0415

        script = sweep_dir / f"hpc-array-{indices[0]}.sbatch"
        script.write_text(self._script(sweep_dir, record), encoding="utf-8")

        class _Point:  # what chunks() needs
            def __init__(self, index: int) -> None:
                self.index = index

        parallel = self.params.get("array_parallelism")
        handles: dict[int, str] = {}
        for group in chunks([_Point(i) for i in indices], max_array_size()):
            offset = group[0].index
            spec = f"0-{len(group) - 1}" + (f"%{int(parallel)}" if parallel else "")
            array_id = client.submit(
                str(script),
                [f"--array={spec}"],
                script_args=[str(offset)],
                retries=int(self.params.get("submit_retries", 5)),
            )
            record["arrays"].append({"array_id": array_id, "offset": offset, "count": len(group)})
            for point in group:
                task = _task(record, point.index)
                task["array_id"], task["array_index"] = array_id, point.index - offset
                handles[point.index] = f"{array_id}_{point.index - offset}"
            _write_json(sweep_dir / SWEEP_FILE, record)
        records.add_to_index(sweep_dir)
        ids = ",".join(a["array_id"] for a in record["arrays"] if a["offset"] in indices)
        log.info(
            f"hpc_slurm: {len(indices)} tasks queued as Slurm array {ids}; "
            f"hpc status {sweep_dir} shows them"
        )
        return handles

    def _wait(
        self, sweep_dir: Path, record: dict[str, Any], indices: list[int]
    ) -> dict[int, tuple[str, int | None]]:
        # lazy: Hydra imports plugins at startup; Slurm code only in a sweep
        from hpc.launchers.slurm import client  # noqa: PLC0415
        from hpc.launchers.slurm.runs import array_tasks  # noqa: PLC0415

        arrays = sorted({str(_task(record, i)["array_id"]) for i in indices})
        finals: dict[int, tuple[str, int | None]] = {}
        while len(finals) < len(indices):
            try:
                states = client.states(arrays, retries=3)
            except client.SlurmError as exc:
                log.warning(f"hpc_slurm: {exc}; asking again")
                states = {}
            found: dict[str, Any] = {}
            for key, state in states.items():
                for array_task in array_tasks(key):
                    found.setdefault(array_task, state)
            for i in indices:
                if i in finals:
                    continue
                task = _task(record, i)
                known = found.get(f"{task['array_id']}_{task['array_index']}")
                if known is not None and known.state in TERMINAL:
                    finals[i] = (known.state, known.exit_code)
            if len(finals) < len(indices):
                time.sleep(self.poll_s)
        return finals


class HpcLocalLauncher(_HpcLauncherBase):
    kind = "local"

    def _start(self, sweep_dir: Path, record: dict[str, Any], indices: list[int]) -> dict[int, str]:
        log_file = sweep_dir / "logs" / f"local-{indices[0]}.log"
        cmd = [
            record["python"],
            "-m",
            "hydra_plugins.hpc_launch_plugin._task",
            str(sweep_dir),
            "--local",
            ",".join(map(str, indices)),
            "--parallel",
            str(int(self.params.get("array_parallelism") or 1)),
        ]
        with open(log_file, "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=record["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this process; Ctrl-C here does not stop it
            )
        record.setdefault("runners", []).append({"pid": self._proc.pid, "log": str(log_file)})
        _write_json(sweep_dir / SWEEP_FILE, record)
        records.add_to_index(sweep_dir)
        log.info(
            f"hpc_local: {len(indices)} tasks running one after another in the background "
            f"(pid {self._proc.pid}, log {log_file})"
        )
        return {i: f"local-{self._proc.pid}-{i}" for i in indices}

    def _wait(
        self, sweep_dir: Path, record: dict[str, Any], indices: list[int]
    ) -> dict[int, tuple[str, int | None]]:
        self._proc.wait()
        finals: dict[int, tuple[str, int | None]] = {}
        for i in indices:
            status = task_status(sweep_dir, i)
            finals[i] = (str(status.get("state", "FAILED")), status.get("exit_code"))
        return finals
