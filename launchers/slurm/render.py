"""The one Slurm batch-script renderer, and the defaults every Slurm script shares.

Templates live in the top-level ``slurm/templates/`` (package data, reached here
through the link ``launchers/slurm/templates``): ``batch.sbatch`` (hpc-launch
jobs and sweep arrays, the Hydra plugin's points included), ``sbatch-wrapper.sh``
(hpc-sbatch) and ``schedule.sbatch``, plus the fragments they share (``forward.sh``,
``step.sh``, ``requeue.sh``).

A template names its values as ``{{ name }}``; bash's own ``$x``/``${x}`` stay
as they are. Every name must be given (a missing one is a KeyError, a stray
``{{`` a ValueError). Values arrive already quoted (:mod:`hpc.quoting`) or as
``#SBATCH`` values checked by :func:`directive_value`. A value that is a block
of lines ends with a newline when it sits at the start of a template line
(``{{ setup }}if ...``), so an empty block leaves no blank line.

No template library: the templates only substitute (no loops or conditions,
those stay in Python, next to the quoting), so a one-line ``re.sub`` does it;
Jinja2 would add ~60 ms to every dry run (``python -X importtime -c 'import jinja2'``),
and string.Template's ``$name`` would collide with bash's own ``$``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from hpc.defaults import PREEMPTION_LEAD_S, PREEMPTION_SIGNAL
from hpc.exitcodes import COMPLETED_IDLE, FAILED_HANG, PREEMPTED
from hpc.ports import PORT_BASE, PORT_SPAN
from hpc.spec.errors import ConfigError

TEMPLATES = Path(__file__).resolve().parent / "templates"

# Defaults of every Slurm script (hpc-launch's config defaults are the same values).
SIGNAL = PREEMPTION_SIGNAL  # sent by Slurm (--signal=B:SIGNAL@LEAD_S) before the time limit
LEAD_S = PREEMPTION_LEAD_S
# The rendezvous port when none is set: the same formula as hpc.ports.port_for_job.
MASTER_PORT = f"$(( {PORT_BASE} + ${{SLURM_JOB_ID:-0}} % {PORT_SPAN} ))"

# What may appear in a #SBATCH value: no whitespace, quotes, `$` or newlines.
_DIRECTIVE_SAFE = re.compile(r"^[A-Za-z0-9_.,:@%+=/\-\[\]]+\Z")


_PLACEHOLDER = re.compile(r"\{\{ ([a-z_]+) \}\}")


@functools.cache
def template(name: str) -> str:
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    stray = _PLACEHOLDER.sub("", text).find("{{")
    if stray >= 0:
        raise ValueError(f"{TEMPLATES / name}: stray '{{{{' at offset {stray}")
    return text


def render(template_name: str, /, **values: str) -> str:
    """``template_name`` with every placeholder filled (KeyError names a missing one)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template(template_name))


def fragment(name: str, /, **values: str) -> str:
    """A shared piece of a template, without its final newline."""
    return render(name, **values).removesuffix("\n")


def directive_value(key: str, value: object) -> str:
    text = str(value)
    if not _DIRECTIVE_SAFE.match(text):
        raise ConfigError(key, f"{text!r} cannot go into an #SBATCH line (unsafe characters)")
    return text


def directives(
    opts: Iterable[tuple[str, str, object]],
    *,
    requeue: bool | None = None,
    extra: Sequence[object] = (),
    extra_key: str = "cluster.sbatch_args",
) -> list[str]:
    """``--name=value`` options (``(name, config key, value)``), then requeue, then extras."""
    lines = [f"--{name}={directive_value(key or name, value)}" for name, key, value in opts]
    if requeue is not None:
        lines.append("--requeue" if requeue else "--no-requeue")
    for i, option in enumerate(extra):
        if not str(option).startswith("-"):
            raise ConfigError(f"{extra_key}[{i}]", f"{option!r} is not an sbatch option")
        lines.append(directive_value(f"{extra_key}[{i}]", option))
    return lines


def signal_value(signal: object = SIGNAL, lead_s: object = LEAD_S) -> str:
    """``--signal``'s value: to the batch shell only, ``lead_s`` before the limit."""
    return f"B:{signal}@{lead_s}"


def sbatch_block(options: Iterable[str]) -> str:
    return "\n".join(f"#SBATCH {option}" for option in options)


def block(lines: Iterable[str]) -> str:
    """Lines for a placeholder at the start of a template line ('' when none)."""
    return "".join(f"{line}\n" for line in lines)


def srun_words(
    tasks_per_node: int, cpus_per_task: int, exit_grace_s: float, *, bind: bool
) -> list[str]:
    """srun for one step; ``--wait`` ends a step whose other tasks hang after one exited."""
    words = [
        "srun",
        "--kill-on-bad-exit=1",
        f"--wait={math.ceil(exit_grace_s)}",
        f"--ntasks-per-node={tasks_per_node}",
        f"--cpus-per-task={cpus_per_task}",
    ]
    if bind:
        words.append("--cpu-bind=none")  # the runtime binds each rank next to its GPU
    return words


def step_parts(signal: str, command: str) -> dict[str, str]:
    """The shared trap/step/requeue pieces; ``signal`` and ``command`` already quoted."""
    return {
        "forward": fragment("forward.sh", signal=signal),
        "step": fragment("step.sh", command=command),
        "requeue": fragment("requeue.sh"),
        "preempted": str(PREEMPTED),
        "failed_hang": str(FAILED_HANG),
        "completed_idle": str(COMPLETED_IDLE),
    }
