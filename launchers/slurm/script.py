"""Render the sbatch script for a job spec (pure text; golden-tested).

Values in ``#SBATCH`` lines are checked against a conservative character set
(sbatch parses those lines itself, not a shell); everything in the script body
is shell-quoted. Secrets never enter the script: they are sourced from the run's
mode-0600 ``secrets.env`` (written at submit, see :mod:`hpc.credentials`).
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from collections.abc import Iterable
from typing import Any

from hpc.config import ConfigError
from hpc.credentials import ENV_FILE
from hpc.exitcodes import PREEMPTED
from hpc.jobspec import JobSpec
from hpc.quoting import shell_join, shell_word

# What may appear in a #SBATCH value: no whitespace, quotes, `$` or newlines.
_DIRECTIVE_SAFE = re.compile(r"^[A-Za-z0-9_.,:@%+=/\-\[\]]+\Z")


def directive_value(key: str, value: object) -> str:
    text = str(value)
    if not _DIRECTIVE_SAFE.match(text):
        raise ConfigError(key, f"{text!r} cannot go into an #SBATCH line (unsafe characters)")
    return text


def sbatch_directives(spec: JobSpec, *, output: str | None = None) -> list[str]:
    """The ``#SBATCH`` options as ``--name=value`` strings, in a stable order."""
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
        ("signal", "preemption.signal", f"B:{pre['signal']}@{pre['lead_s']}"),
    ]
    lines = [f"--{name}={directive_value(key or name, value)}" for name, key, value in opts]
    lines.append("--requeue" if pre.get("requeue", True) else "--no-requeue")
    for i, extra in enumerate(cluster.get("sbatch_args") or []):
        if not str(extra).startswith("-"):
            raise ConfigError(f"cluster.sbatch_args[{i}]", f"{extra!r} is not an sbatch option")
        lines.append(directive_value(f"cluster.sbatch_args[{i}]", extra))
    return lines


def job_environment(spec: JobSpec, *, run_paths: bool = True) -> dict[str, str]:
    env = {"HPC_LAUNCHER": "slurm", "PYTHONUNBUFFERED": "1"}
    if run_paths:
        env["HPC_RUN_DIR"] = str(spec.run_dir)
        env["HPC_CONFIG_FILE"] = str(spec.config_file)
    if spec.tracking_uri:  # never holds credentials (they are in secrets.env)
        env["MLFLOW_TRACKING_URI"] = spec.tracking_uri
    return env


def srun_command(spec: JobSpec, worker: Iterable[str]) -> list[str]:
    res = spec.resources
    # --wait: once one task has exited, the others get cluster.exit_grace_s to follow
    # (a rank hung at exit would otherwise hold the allocation until the time limit).
    grace = math.ceil(float(spec.config["cluster"].get("exit_grace_s", 60.0)))
    return [
        "srun",
        "--kill-on-bad-exit=1",
        f"--wait={grace}",
        f"--ntasks-per-node={res['tasks_per_node']}",
        f"--cpus-per-task={res['cpus_per_task']}",
        "--cpu-bind=none",  # the runtime binds each rank next to its GPU
        *worker,
    ]


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
) -> str:
    """The whole batch script. ``prepare`` lines run before the step (already quoted)."""
    pre = spec.config["preemption"]
    python = python_for(spec)
    worker = worker or [python, "-m", "hpc.run", str(spec.config_file)]
    header = header or f"{spec.name} (run dir {shell_word(spec.run_dir)})"
    out = ["#!/bin/bash", f"# hpc-launch: {header}"]
    out += [f"#SBATCH {d}" for d in directives]
    out.append("")
    for key, value in (env if env is not None else job_environment(spec)).items():
        out.append(f"export {key}={shell_word(value)}")
    sig = shlex.quote(str(pre["signal"]))
    out += [
        "",
        "# Stop signals (--signal=B:..., SIGTERM) are caught from here on and passed to the",
        "# step once it runs; one that comes before the step starts skips it.",
        'step=""; sig=""; interrupted=0',
        'forward() { interrupted=1; sig=$1; [ -z "$step" ] || kill -s "$1" "$step" 2>/dev/null; }',
        f"trap 'forward {sig}' {sig}",
        "trap 'forward TERM' TERM",
    ]
    setup = spec.config["cluster"].get("setup") or []
    if setup:
        out.append("# cluster.setup (verbatim)")
        out += [str(line) for line in setup]
    out += prepare or []
    if spec.secrets:  # names only here; the values stay in the owner-only file
        out.append(f"# secrets: {' '.join(sorted(spec.secrets))}")
        out.append(f'. "$HPC_RUN_DIR"/{ENV_FILE}')
    py = shell_word(python)
    out += [
        'if [ -e "$HPC_RUN_DIR/FINISHED" ]; then  # a finished run that got requeued',
        '  echo "hpc-launch: $HPC_RUN_DIR already finished; nothing to do"',
        f'  {py} -m hpc.records finish "$HPC_RUN_DIR" 0; exit 0',
        "fi",
        "",
        'echo "hpc-launch: job ${SLURM_JOB_ID} on ${SLURM_JOB_NODELIST}'
        ' (restart ${SLURM_RESTART_COUNT:-0})"',
        f'{py} -m hpc.records start "$HPC_RUN_DIR"',
        'if [ -n "$sig" ]; then',
        f"  rc={PREEMPTED}  # stopped before the step started: nothing to checkpoint",
        "else",
        "  # The step runs in the background so this shell can take the signals.",
        "  " + shell_join(srun_command(spec, worker)) + " &",
        "  step=$!",
        "  while :; do",
        '    interrupted=0; wait "$step"; rc=$?',
        '    [ "$interrupted" = 1 ] || break  # woken by a signal: wait for the real exit',
        "  done",
        "fi",
        'echo "hpc-launch: step exited with code $rc"',
        '[ -e "$HPC_RUN_DIR/FINISHED" ] && rc=0  # finished: a signal after the end is no failure',
        "# Checkpointed after a stop signal (exit code, or the marker rank 0 leaves when",
        "# srun reports another rank's kill instead): requeue unless hpc.requeue says no.",
        f'if {{ [ "$rc" = {PREEMPTED} ] || [ -e "$HPC_RUN_DIR/PREEMPTED" ]; }} && \\',
        f'   {py} -m hpc.requeue "$HPC_RUN_DIR" "${{sig:-}}"; then',
        "  # Requeue this job only: an array task by its own id, never the whole array.",
        '  id="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"',
        '  scontrol requeue "${id:-$SLURM_JOB_ID}" && exit 0',
        "fi",
        f'[ -e "$HPC_RUN_DIR/PREEMPTED" ] && rc={PREEMPTED}',
        f'{py} -m hpc.records finish "$HPC_RUN_DIR" "$rc"',
        'rm -f "$HPC_RUN_DIR/PREEMPTED"',
        'exit "$rc"',
    ]
    return "\n".join(out) + "\n"
