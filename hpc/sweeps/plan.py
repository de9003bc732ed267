"""Sweeps: ``hpc-launch -m key=a,b other=range(3)`` as Slurm job arrays.

Submission does not compose one config per task. It parses the sweep with
Hydra's override grammar, composes the config once per distinct choice of the
keys that shape the batch script (config groups, ``resources.*``, ``cluster.*``,
``preemption.*``), checks every distinct value of every swept key against the
schema and the value rules, writes ``sweep.json`` (one entry per task), and
submits ONE array per script shape (split at the cluster's MaxArraySize). Each
array task composes its own config when it starts (:mod:`hpc.launchers.slurm.sweep_task`).
With the local launcher the tasks run one after another.
"""

from __future__ import annotations

import copy
import datetime as _dt
import itertools
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hpc.credentials import looks_secret, split_uri, write_private
from hpc.files import write_atomic
from hpc.spec.compose import (
    EMBEDDED,
    ConfigError,
    check_declared_keys,
    check_override_syntax,
    compose,
    override_parser,
    to_container,
    translate_error,
)
from hpc.spec.hydra_internals import apply_overrides
from hpc.spec.jobspec import spec_from_config
from hpc.spec.rules import validate
from hpc.spec.schema import FRAMEWORK_KEYS
from hpc.spec.sources import ConfigSource

SWEEP_FILE = "sweep.json"
SCRIPT_SHAPING = ("resources.", "cluster.", "preemption.", "placement.", "nccl.")


@dataclass
class Task:
    index: int
    overrides: list[str]
    shape: tuple[str, ...]  # overrides that change the batch script
    run_dir: str = ""
    array_id: str | None = None
    array_index: int | None = None


@dataclass
class SweepPlan:
    base_overrides: list[str]
    tasks: list[Task]
    sweep_dir: Path
    shapes: dict[tuple[str, ...], Any] = field(default_factory=dict)  # shape -> JobSpec
    source: ConfigSource = EMBEDDED  # where each task's config is composed from


def expand(overrides: Sequence[str]) -> tuple[list[str], list[list[str]], set[str]]:
    """Split into fixed overrides and the cartesian product of the swept ones."""

    check_override_syntax(overrides)
    parser = override_parser()
    fixed: list[str] = []
    axes: list[list[str]] = []
    groups: set[str] = set()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except Exception as exc:
            raise ConfigError(text.split("=")[0], f"cannot parse {text!r}: {exc}") from None
        key = override.get_key_element()
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            if not values:
                raise ConfigError(override.key_or_group, "sweep has no values")
            axes.append([f"{key}={v}" for v in values])
        else:
            fixed.append(text)
        if "." not in override.key_or_group and not override.is_add():
            groups.add(override.key_or_group)
    combos = [list(c) for c in itertools.product(*axes)] if axes else [[]]
    return fixed, combos, groups


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def plan_sweep(
    overrides: Sequence[str],
    now: _dt.datetime | None = None,
    source: ConfigSource = EMBEDDED,
) -> SweepPlan:
    """Validate every swept value and compose once per script shape."""
    fixed, combos, groups = expand(overrides)
    if len(combos) == 1 and not combos[0]:
        raise ConfigError("-m", "nothing to sweep: give a key with several values (key=a,b)")

    def shaping(ov: str) -> bool:
        key = _key(ov)
        return key in groups or key.startswith(SCRIPT_SHAPING)

    tasks = [
        Task(i, combo, tuple(ov for ov in combo if shaping(ov))) for i, combo in enumerate(combos)
    ]
    shapes: dict[tuple[str, ...], Any] = {}
    checked: set[tuple[tuple[str, ...], str]] = set()
    base = None
    for task in tasks:
        if task.shape not in shapes:
            cfg = compose([*fixed, *task.shape], source)
            data = to_container(cfg)
            validate(data)
            shapes[task.shape] = (cfg, spec_from_config(data, now=now), script_key(data))
        cfg, spec, _ = shapes[task.shape]
        base = base or spec
        for override in task.overrides:
            if override in task.shape or (task.shape, override) in checked:
                continue
            _check_value(cfg, override)
            checked.add((task.shape, override))
    assert base is not None
    # Choices that compose to the same framework sections share one array (a user's
    # `model=small,large` does not change the batch script; `resources=...` does).
    canonical: dict[str, tuple[str, ...]] = {}
    for shape, (_, _, key) in shapes.items():
        canonical.setdefault(key, shape)
    for task in tasks:
        task.shape = canonical[shapes[task.shape][2]]
    stamp = (now or _dt.datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = base.run_dir.parent / f"sweep-{stamp}-{os.urandom(2).hex()}"
    for task in tasks:
        task.run_dir = str(sweep_dir / str(task.index))
    specs = {shape: shapes[shape][1] for shape in canonical.values()}
    return SweepPlan(fixed, tasks, sweep_dir, specs, source)


def script_key(data: dict[str, Any]) -> str:
    """What a task's batch script is made of: the framework's sections and the job's name
    (the renderer reads nothing else); the user's keys are read by the job itself."""
    framework = {k: data[k] for k in FRAMEWORK_KEYS if k in data and k != "job"}
    return json.dumps([data["job"]["name"], framework], sort_keys=True, default=str)


def _check_value(cfg: Any, override: str) -> None:
    """Apply one override to ``cfg``, validate, and put the old value back."""
    parsed = override_parser().parse_overrides([override])  # also parsed in apply_overrides
    key = _key(override)
    changing = parsed[0].is_add() is False and parsed[0].is_delete() is False
    target = cfg if changing else copy.deepcopy(cfg)
    old = OmegaConf.select(target, key) if changing else None
    try:
        apply_overrides(target, [override])
    except Exception as exc:
        raise translate_error(exc, [override]) from None
    try:
        check_declared_keys(target)
        validate(to_container(target))
    finally:
        if changing:
            OmegaConf.update(target, key, old, merge=False)


SECRET_OVERRIDES_FILE = "secret-overrides.json"


def is_secret_override(override: str) -> bool:
    """An override whose value must not be written in clear: a secret-looking key, or a
    URI holding ``user:password@``."""
    key, _, value = override.lstrip("+~").partition("=")
    return looks_secret(key.rsplit(".", 1)[-1]) or bool(split_uri(value.strip("'\""))[1])


def sweep_record(plan: SweepPlan, name: str, launcher: str) -> dict[str, Any]:
    """The sweep's record (sweep.json). Secret overrides are kept apart: ``write_record``
    puts them into a mode-0600 file beside it, which each task reads when it starts."""
    secrets = {
        "base": [o for o in plan.base_overrides if is_secret_override(o)],
        "tasks": {
            str(t.index): [o for o in t.overrides if is_secret_override(o)] for t in plan.tasks
        },
    }
    return {
        "_secrets": secrets,
        "name": name,
        "launcher": launcher,
        "sweep_dir": str(plan.sweep_dir),
        "base_overrides": [o for o in plan.base_overrides if not is_secret_override(o)],
        "config_source": plan.source.to_record(),
        "created": time.time(),
        "arrays": [],
        "tasks": [
            {
                "index": t.index,
                "overrides": [o for o in t.overrides if not is_secret_override(o)],
                "run_dir": t.run_dir,
                "array_id": t.array_id,
                "array_index": t.array_index,
            }
            for t in plan.tasks
        ],
    }


def read_secret_overrides(sweep_dir: Path, index: int) -> list[str]:
    """The secret overrides of task ``index`` (base ones first); none without the file."""
    try:
        secrets = json.loads((sweep_dir / SECRET_OVERRIDES_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    return [*secrets["base"], *secrets["tasks"].get(str(index), [])]


def write_record(sweep_dir: Path, record: dict[str, Any]) -> Path:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    secrets = record.pop("_secrets", None)
    if secrets and (secrets["base"] or any(secrets["tasks"].values())):
        write_private(sweep_dir / SECRET_OVERRIDES_FILE, json.dumps(secrets))
    path = sweep_dir / SWEEP_FILE
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return path
