"""Submit a planned sweep as Slurm job arrays (one per script shape, split at MaxArraySize)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from hpc.files import write_atomic
from hpc.launchers.slurm import client
from hpc.launchers.slurm.script import job_environment, python_for, render_script, sbatch_directives
from hpc.quoting import shell_word
from hpc.rundir import records
from hpc.spec.jobspec import JobSpec
from hpc.sweeps.plan import SweepPlan, sweep_record, write_record

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default: indices 0..1000


TASK_MODULE = "hpc.launchers.slurm.sweep_task"  # composes one task's config


def array_script(spec: JobSpec, plan: SweepPlan) -> str:
    """The batch script every array task of one shape runs; ``$1`` is the index offset."""
    sweep_dir = str(plan.sweep_dir)
    prepare = [
        f"export HPC_SWEEP_DIR={shell_word(sweep_dir)}",
        "index=$(( ${1:-0} + SLURM_ARRAY_TASK_ID ))",
        'export HPC_RUN_DIR="$HPC_SWEEP_DIR/$index"',
        'export HPC_CONFIG_FILE="$HPC_RUN_DIR/config.yaml"',
        "# Compose this task's config from sweep.json (validated at submit).",
        f'{shell_word(python_for(spec))} -m {TASK_MODULE} "$HPC_SWEEP_DIR" "$index" || exit $?',
    ]
    return render_script(
        spec,
        directives=sbatch_directives(spec, output=f"{sweep_dir}/logs/slurm-%A_%a.out"),
        env=job_environment(spec, run_paths=False),
        prepare=prepare,
        worker=[python_for(spec), "-m", "hpc.run"],  # reads $HPC_CONFIG_FILE
        header=f"sweep of {spec.name} (sweep dir {shell_word(sweep_dir)})",
        sweep=True,
        run_root=plan.sweep_dir,
    )


def max_array_size() -> int:
    try:
        value = client.config_value("MaxArraySize")
    except client.SlurmError:
        return DEFAULT_MAX_ARRAY_SIZE
    return int(value) if value and value.isdigit() else DEFAULT_MAX_ARRAY_SIZE


class HasIndex(Protocol):
    index: int


Indexed = TypeVar("Indexed", bound=HasIndex)


def chunks(tasks: Sequence[Indexed], size: int) -> list[list[Indexed]]:
    """Groups whose indices span less than ``size`` (an array's largest index is size-1)."""
    groups: list[list[Indexed]] = []
    for task in tasks:
        if not groups or task.index - groups[-1][0].index >= size:
            groups.append([])
        groups[-1].append(task)
    return groups


def submit_sweep(plan: SweepPlan, dry_run: bool = False) -> int:
    limit = max_array_size() if not dry_run else DEFAULT_MAX_ARRAY_SIZE
    first: JobSpec = next(iter(plan.shapes.values()))
    parallel = first.config["cluster"].get("array_parallelism")
    submissions: list[dict[str, Any]] = []
    scripts: dict[str, str] = {}
    for n, (shape, spec) in enumerate(plan.shapes.items()):
        name = f"sweep-{n}.sbatch"
        scripts[name] = array_script(spec, plan)
        members = [t for t in plan.tasks if t.shape == shape]
        for group in chunks(members, limit):
            offset = group[0].index
            # Tasks of one shape are contiguous unless other shapes lie between them;
            # then the array lists its members' positions explicitly.
            positions = [t.index - offset for t in group]
            contiguous = positions == list(range(len(group)))
            spec_text = f"0-{len(group) - 1}" if contiguous else ",".join(map(str, positions))
            if parallel:
                spec_text += f"%{parallel}"
            submissions.append(
                {"script": name, "array": spec_text, "offset": offset, "tasks": group}
            )
    if dry_run:
        for text in scripts.values():
            sys.stdout.write(text)
        for sub in submissions:
            print(f"# sbatch --array={sub['array']} {sub['script']} {sub['offset']}")
        return 0
    record = sweep_record(plan, first.name, "slurm")
    write_record(plan.sweep_dir, record)
    (plan.sweep_dir / "logs").mkdir(exist_ok=True)
    for name, text in scripts.items():
        write_atomic(plan.sweep_dir / name, text)
    retries = int(first.config["cluster"].get("submit_retries", 5))
    for sub in submissions:
        try:
            array_id = client.submit(
                str(plan.sweep_dir / sub["script"]),
                [f"--array={sub['array']}"],
                script_args=[str(sub["offset"])],
                retries=retries,
            )
        except client.SlurmError as exc:
            print(f"hpc-launch: error: sbatch: {exc}", file=sys.stderr)
            write_record(plan.sweep_dir, record)
            return 1
        record["arrays"].append(
            {"array_id": array_id, "offset": sub["offset"], "count": len(sub["tasks"])}
        )
        for task in sub["tasks"]:
            entry = record["tasks"][task.index]
            entry["array_id"], entry["array_index"] = array_id, task.index - sub["offset"]
        write_record(plan.sweep_dir, record)
    records.add_to_index(plan.sweep_dir)
    ids = ",".join(a["array_id"] for a in record["arrays"])
    print(
        f"hpc-launch: sweep of {len(plan.tasks)} tasks queued as array(s) {ids}; "
        f"{plan.sweep_dir / 'sweep.json'}",
        file=sys.stderr,
    )
    print(ids)
    return 0
