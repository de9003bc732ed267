"""Rendered sbatch scripts: golden text, and hostile values never execute (no cluster needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpc.registry import get_launcher
from hpc.spec.jobspec import load_spec

from support import check_golden, hpc_launch


def normalise(text: str, workdir: Path) -> str:
    return text.replace(sys.executable, "PYTHON").replace(str(workdir), "WORKDIR")


GOLDEN_CASES = {
    "slurm_default.sbatch": [],
    "slurm_gpu_full.sbatch": [
        "resources.nodes=4",
        "resources.tasks_per_node=8",
        "resources.gpus_per_node=8",
        "resources.cpus_per_task=12",
        "resources.mem=480G",
        "resources.time=2-00:00:00",
        "resources.partition=gpu",
        "resources.account=proj42",
        "resources.qos=high",
        "resources.constraint=h100",
        "preemption.signal=USR1",
        "preemption.lead_s=300",
        "cluster.setup=['module load cuda/12.4','source /opt/venv/bin/activate']",
        "cluster.sbatch_args=['--exclusive','--mail-type=END']",
    ],
    "slurm_resubmit.sbatch": ["preemption.mode=resubmit", "resources.partition=scavenger"],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_scripts(name: str, workdir: Path) -> None:
    proc = hpc_launch(
        ["cluster=slurm", "dry_run=true", f"run_dir={workdir}/run", *GOLDEN_CASES[name]],
        workdir,
        MLFLOW_TRACKING_URI="",
    )
    assert proc.returncode == 0, proc.stderr
    check_golden(name, normalise(proc.stdout, workdir))


def test_sweep_dry_run_golden(workdir: Path) -> None:
    proc = hpc_launch(
        [
            "-m",
            "cluster=slurm",
            "dry_run=true",
            "output_root=" + str(workdir),
            "job.lr=0.1,0.2",
            "job.hidden=8,16,32",
            "cluster.array_parallelism=4",
        ],
        workdir,
    )
    assert proc.returncode == 0, proc.stderr
    text = normalise(proc.stdout, workdir)
    sweep_dir = text.split("sweep dir ", 1)[1].split(")", 1)[0]
    check_golden("slurm_sweep.sbatch", text.replace(sweep_dir, "SWEEPDIR"))
    assert text.rstrip().endswith("# sbatch --array=0-5%4 sweep-0.sbatch 0")


def test_unsafe_directive_value_is_rejected(workdir: Path) -> None:
    proc = hpc_launch(["cluster=slurm", "dry_run=true", f"run_dir={workdir}/a b"], workdir)
    assert proc.returncode == 2 and "error: run_dir:" in proc.stderr


HOSTILE = st.lists(
    st.sampled_from([*"ab $`'\";|&()<>{}\\\n*?!#~=", "$(touch PWNED)", "`touch PWNED`"]),
    min_size=1,
    max_size=20,
).map("".join)


def run_body(script: str, workdir: Path) -> list[str]:
    """Run the script under bash with a recording `srun`; return the step's argv."""
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "srun").write_text(
        '#!/bin/sh\nprintf "%s\\0" "$@" > "$SRUN_ARGV"\n'
        '[ -e "$SRUN_ARGV.first" ] || cp "$SRUN_ARGV" "$SRUN_ARGV.first"\n'
        'printf "%s" "$MLFLOW_TRACKING_URI" > "$SRUN_ARGV.uri"\n'
    )
    (bindir / "srun").chmod(0o755)
    argv_file = workdir / "argv"
    env = dict(
        os.environ,
        PATH=f"{bindir}:{os.environ['PATH']}",
        SRUN_ARGV=str(argv_file),
        SLURM_JOB_ID="1",
        SLURM_JOB_NODELIST="n1",
    )
    subprocess.run(
        ["bash", "-c", script], cwd=workdir, env=env, capture_output=True, timeout=30, check=False
    )
    return argv_file.read_bytes().decode().split("\0")[:-1]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(python=HOSTILE, uri=HOSTILE)
def test_hostile_values_never_execute(python: str, uri: str, tmp_path: Path) -> None:
    os.chdir(tmp_path)
    spec = load_spec(["cluster=slurm", f"run_dir={tmp_path}/run"])
    spec.config["cluster"]["python"] = python
    spec.config["tracking"]["uri"] = uri
    from hpc.spec.jobspec import spec_from_config

    spec = spec_from_config(spec.config)
    script = get_launcher("slurm").plan(spec).text
    (tmp_path / "argv.first").unlink(missing_ok=True)  # tmp_path is every example's
    run_body(script, tmp_path)  # the pre-flight step first (then the step is skipped:
    # the pre-flight result is read with that python too, which does not exist)
    first = (tmp_path / "argv.first").read_bytes().decode().split("\0")[:-1]
    assert first[-4:] == [python, "-m", "hpc.runtime.preflight", str(spec.config_file)]
    (tmp_path / "argv.first").unlink()
    spec.config["fault"]["preflight"] = False
    script = get_launcher("slurm").plan(spec_from_config(spec.config)).text
    argv = run_body(script, tmp_path)
    assert argv[-4:] == [python, "-m", "hpc.run", str(spec.config_file)]
    assert not list(tmp_path.rglob("PWNED")), "a value was executed"
    if "://" in uri and "@" in uri:
        return  # credentials never go into the script (checked below)
    sent = (tmp_path / "argv.uri").read_text()
    assert sent == (spec.tracking_uri or "")


def test_credentials_never_written(workdir: Path) -> None:
    proc = hpc_launch(
        ["cluster=slurm", "dry_run=true", "tracking.uri=https://bob:hunter2@mlflow.example.org"],
        workdir,
    )
    assert proc.returncode == 0 and "hunter2" not in proc.stdout


def test_a_sweep_refuses_resubmit_mode_before_anything_is_written(workdir: Path) -> None:
    proc = hpc_launch(
        ["-m", "cluster=slurm", "dry_run=true", f"output_root={workdir}",
         "preemption.mode=resubmit", "job.lr=0.1,0.2"],
        workdir,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "preemption.mode: resubmit is for single jobs; a sweep's tasks use requeue"
    )
    assert not list(workdir.glob("**/*.sbatch"))


def test_an_unknown_preemption_mode_names_the_key(workdir: Path) -> None:
    proc = hpc_launch(["cluster=slurm", "dry_run=true", "preemption.mode=restart"], workdir)
    assert proc.returncode == 2
    assert "preemption.mode" in proc.stderr and "restart" in proc.stderr, proc.stderr
