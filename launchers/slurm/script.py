"""Render the sbatch script for a job spec (pure text; golden-tested).

The text comes from ``slurm/templates/batch.sbatch`` through :mod:`.render`.
Values in ``#SBATCH`` lines are checked against a conservative character set
(sbatch parses those lines itself, not a shell); everything in the script body
is shell-quoted. Secrets never enter the script: they are sourced from the run's
mode-0600 ``secrets.env`` (written at submit, see :mod:`hpc.credentials`).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpc.credentials import ENV_FILE
from hpc.defaults import EXIT_GRACE_S
from hpc.exitcodes import NODE_LOST, PREFLIGHT_FAILED
from hpc.launchers.slurm import container as slurm_container
from hpc.launchers.slurm import render
from hpc.quoting import shell_join, shell_word
from hpc.spec import container
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import JobSpec

SCRIPT_NAME = "job.sbatch"  # in the run dir


def sbatch_directives(
    spec: JobSpec, *, output: str | None = None, exclude: list[str] | None = None
) -> list[str]:
    """The ``#SBATCH`` options as ``--name=value`` strings, in a stable order; ``exclude``:
    the run's exclusion list (nodes that failed it before, from job.json)."""
    res = spec.resources
    cluster = spec.config["cluster"]
    pre = spec.config["preemption"]
    opts: list[tuple[str, str, Any]] = [
        ("job-name", "job.name", spec.name),
        ("nodes", "resources.nodes", res["nodes"]),
        ("ntasks-per-node", "resources.tasks_per_node", res["tasks_per_node"]),
        ("cpus-per-task", "resources.cpus_per_task", res["cpus_per_task"]),
    ]
    if res["gpus_per_node"]:
        opts.append(("gpus-per-node", "resources.gpus_per_node", res["gpus_per_node"]))
    for key in ("mem", "time", "partition", "account", "qos", "constraint"):
        if res.get(key) is not None:
            opts.append((key, f"resources.{key}", res[key]))
    opts += [
        ("output", spec.run_dir_key, output or f"{spec.run_dir}/logs/slurm-%j.out"),
        ("open-mode", "", "append"),
        ("chdir", "(working directory)", spec.workdir),
        ("signal", "preemption.signal", render.signal_value(pre["signal"], pre["lead_s"])),
    ]
    if exclude:
        opts.append(("exclude", "extra.excluded_nodes (job.json)", ",".join(exclude)))
    # resubmit: the job's successor runs it again, so Slurm must not requeue it as well
    requeue = bool(pre.get("requeue", True)) and pre.get("mode", "requeue") == "requeue"
    return render.directives(opts, requeue=requeue, extra=cluster.get("sbatch_args") or [])


def job_environment(spec: JobSpec, *, run_paths: bool = True) -> dict[str, str]:
    env = {"HPC_LAUNCHER": "slurm", "PYTHONUNBUFFERED": "1"}
    if run_paths:
        env["HPC_RUN_DIR"] = str(spec.run_dir)
        env["HPC_CONFIG_FILE"] = str(spec.config_file)
    if spec.tracking_uri:  # never holds credentials (they are in secrets.env)
        env["MLFLOW_TRACKING_URI"] = spec.tracking_uri
    return env


def srun_command(
    spec: JobSpec, worker: Iterable[str], box: slurm_container.ContainerStep | None = None
) -> list[str]:
    res = spec.resources
    # --wait: once one task has exited, the others get cluster.exit_grace_s to follow
    # (a rank hung at exit would otherwise hold the allocation until the time limit).
    grace = float(spec.config["cluster"].get("exit_grace_s", EXIT_GRACE_S))
    tasks, cpus = int(res["tasks_per_node"]), int(res["cpus_per_task"])
    if box is not None and box.ranks_per_task > 1:  # one task per node starts its ranks
        tasks, cpus = tasks // box.ranks_per_task, cpus * box.ranks_per_task
    srun = render.srun_words(tasks, cpus, grace, bind=True)
    if box is not None and box.ranks_per_task > 1:  # not the job's SLURM_NTASKS srun inherits
        srun.insert(-2, f"--ntasks={int(res['nodes']) * tasks}")
    if box is not None:  # the ranks in the container; this shell stays outside
        return [*srun, *box.srun_options, *box.command]
    return [*srun, *worker]


def container_step(
    spec: JobSpec, worker: list[str] | None = None, run_root: Path | None = None
) -> slurm_container.ContainerStep | None:
    """The ``container`` section's pieces (None: no container)."""
    if not container.enabled(spec.config):
        return None
    worker = worker or [python_for(spec), "-m", "hpc.run", str(spec.config_file)]
    return slurm_container.step(spec, worker, python_for(spec), run_root)


def python_for(spec: JobSpec) -> str:
    return str(spec.config["cluster"].get("python") or sys.executable)


def render_script(
    spec: JobSpec,
    *,
    directives: list[str],
    env: dict[str, str] | None = None,
    prepare: list[str] | None = None,
    worker: list[str] | None = None,
    header: str = "",
    sweep: bool = False,
    run_root: Path | None = None,
) -> str:
    """The whole batch script. ``prepare`` lines run before the step (already quoted);
    ``run_root`` is where every run of the script lives (a sweep's dir: mounted)."""
    pre = spec.config["preemption"]
    python = python_for(spec)
    worker = worker or [python, "-m", "hpc.run", str(spec.config_file)]
    header = header or f"{spec.name} (run dir {shell_word(spec.run_dir)})"
    exports = env if env is not None else job_environment(spec)
    before = [str(line) for line in spec.config["cluster"].get("setup") or []]
    if before:
        before.insert(0, "# cluster.setup (verbatim)")
    before += prepare or []
    box = container_step(spec, worker, run_root)
    if box is not None:
        before += [f"# {note}" for note in box.notes]
        before += box.prepare
    if spec.secrets:  # names only here; the values stay in the owner-only file
        before.append(f"# secrets: {' '.join(sorted(spec.secrets))}")
        before.append(f'. "$HPC_RUN_DIR"/{ENV_FILE}')
    steps = render.step_parts(
        shlex.quote(str(pre["signal"])), shell_join(srun_command(spec, worker, box))
    )
    steps |= fault_parts(spec, shell_word(python))
    return render.render(
        "batch.sbatch",
        header=header,
        directives=render.sbatch_block(directives),
        exports="\n".join(f"export {k}={shell_word(v)}" for k, v in exports.items()),
        before_step=render.block(before),
        python=shell_word(python),
        beside_step=render.block(box.beside if box else []),
        after_step=render.block(box.after if box else []),
        **(steps | resubmit_parts(spec, sweep, steps["requeue"])),
    )


def fault_parts(spec: JobSpec, python: str) -> dict[str, str]:
    """The pre-flight step (``fault.preflight``) and the node-loss probe's limits."""
    fault = spec.config.get("fault") or {}
    timeout = f"{float(fault.get('preflight_timeout_s', 60)):g}"
    preflight = ""
    if fault.get("preflight", True):
        preflight = render.fragment("preflight.sh", timeout=timeout, python=python) + "\n"
    return {
        "preflight": preflight,
        "preflight_failed": str(PREFLIGHT_FAILED),
        "node_lost": str(NODE_LOST),
        "probe_timeout": f"{float(fault.get('node_probe_timeout_s', 20)):g}",
    }


def resubmit_parts(spec: JobSpec, sweep: bool, requeue: str) -> dict[str, str]:
    """``preemption.mode=resubmit``: queue the successor at the start, let it take over
    after a checkpointed stop, cancel it otherwise. Empty pieces for ``requeue``."""
    if spec.config["preemption"].get("mode", "requeue") != "resubmit":
        return {"resubmit": "", "after_finish": "", "requeue": requeue}
    if sweep:
        raise ConfigError(
            "preemption.mode", "resubmit is for single jobs; a sweep's tasks use requeue"
        )
    script = shell_word(spec.run_dir / SCRIPT_NAME)
    return {
        "resubmit": render.fragment("resubmit.sh", script=script) + "\n",
        "after_finish": render.fragment("resubmit-cancel.sh") + "\n",
        "requeue": render.fragment("resubmit-continue.sh"),
    }
