"""Hostile inputs never execute, in every rendered script, plan and manifest (no cluster).

Each test renders with hostile values (newlines, quotes, ``$(touch PWNED)``, ...) in
every input that reaches the text, then either sees a one-line ConfigError naming the
key, or checks the text: sbatch's ``#SBATCH`` block (parsed as Slurm does) still holds
the framework's and the user's options, ``bash -n`` accepts it, and running it under
bash with recording stand-ins for srun/scontrol/env/mpirun/python shows every value
arrived intact and no injected command ran.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from render_checks import no_raw_control, sbatch_block

from hpc.launchers.slurm.script import python_for
from hpc.registry import get_launcher
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import JobSpec, load_spec, spec_from_config

PIECES = [*"ab /$`'\";|&()<>{}\\\n\r\t\x0b*?!#~=", "\x85", "\u2028", "é"]
PIECES += ["$(touch PWNED)", "`touch PWNED`", "\ntouch PWNED\n", "\n#SBATCH --time=1\n"]
HOSTILE = st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map("".join)
EXAMPLES = settings(
    max_examples=int(os.environ.get("HPC_HOSTILE_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a subprocess per example: no shrink
)
RECORDER = (
    # one record, then one append (background calls of the script must not interleave)
    '#!/bin/sh\n{ printf "%s\\0" "$0" "$@"; printf "\\1"; } > "$REC.$$"\n'
    'cat "$REC.$$" >> "$REC"; rm -f "$REC.$$"\n'
    'printf "%s" "${HPC_STATE_DIR-}" > "$REC.state"\n'
)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where an injected `touch PWNED` would land


@functools.cache
def base_config(kind: str) -> dict[str, Any]:
    return load_spec([f"cluster={kind}", "run_dir=/tmp/base", "resources.time=00:07:00"]).config


def spec_with(kind: str, **changes: Any) -> JobSpec:
    """The shipped config for ``kind`` with dotted keys changed (no validation)."""
    cfg = copy.deepcopy(base_config(kind))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = cfg
        for key in parents:
            node = node[key]
        node[leaf] = value
    return spec_from_config(cfg)


def recorder(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECORDER)
    path.chmod(0o755)
    return str(path)


def run(text: str | bytes, tmp: Path, shell: str = "bash", **env: str) -> list[list[str]]:
    """``bash -n`` then run ``text`` with recording srun/scontrol/env; return the calls."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    script = tmp / "script"
    script.write_bytes(data)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr
    bindir = tmp / "shims"
    for name in ("srun", "scontrol", "env", "mpirun"):
        recorder(bindir / name)
    rec = tmp / "calls"
    rec.unlink(missing_ok=True)
    full = dict(
        os.environ,
        PATH=f"{bindir}:{os.environ['PATH']}",
        REC=str(rec),
        SLURM_JOB_ID="1",
        SLURM_JOB_NODELIST="n1",
        SLURM_ARRAY_TASK_ID="0",
        TMPDIR=str(tmp),
        **env,
    )
    subprocess.run([shell, str(script)], cwd=tmp, env=full, capture_output=True, timeout=30)
    assert not list(tmp.rglob("PWNED")), "a value was executed"
    raw = rec.read_bytes() if rec.exists() else b""
    return [[os.fsdecode(arg) for arg in call.split(b"\0")[:-1]] for call in raw.split(b"\1")[:-1]]


def calls_of(calls: list[list[str]], program: str) -> list[list[str]]:
    return [c[1:] for c in calls if c and (c[0] == program or c[0].endswith(f"/{program}"))]


def assert_config_error(exc: ConfigError, *keys: str) -> None:
    assert "\n" not in str(exc) and exc.key.split("[")[0] in keys, str(exc)


def assert_one_line_each(text: str, reference: str) -> None:
    """Each value stayed on its line: no raw control character, as many lines as with plain ones."""
    assert no_raw_control(text) == []
    assert len(text.split("\n")) == len(reference.split("\n"))


def python_at(tmp: Path, hostile: str) -> str:
    return recorder(tmp / "py" / ("py" + hostile.replace("/", "_")))


# --- hpc-sbatch ---------------------------------------------------------------------


def hpc_sbatch_dry_run(args: list[str]) -> tuple[int, bytes]:
    from hpc.cli.sbatch import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape")
    with redirect_stdout(out):
        code = main(["--dry-run", *args])
        out.flush()
    return code, out.buffer.getvalue()  # type: ignore[attr-defined]


@EXAMPLES
@given(name=HOSTILE, args=st.lists(HOSTILE, max_size=3))
def test_hpc_sbatch_wrapper(name: str, args: list[str], tmp_path: Path) -> None:
    path = "s" + name.replace("/", "_")
    Path(path).write_bytes(
        b'#!/bin/bash\n#SBATCH --time=7\nprintf "%s\\0" "$0" "$@" > "$REC.orig"\n'
    )
    code, text = hpc_sbatch_dry_run([path, *args])
    assert code == 0
    assert sbatch_block(text) == [
        "--signal=B:USR2@120",
        "--requeue",
        "--open-mode=append",
        "--time=7",
    ]
    run(text, tmp_path)
    argv = (tmp_path / "calls.orig").read_bytes().split(b"\0")[1:-1]
    assert [os.fsdecode(a) for a in argv] == args


def test_hpc_sbatch_issue_reproduction(tmp_path: Path) -> None:
    path = "evil\ntouch PWNED\n.sh"
    Path(path).write_text("#!/bin/bash\n#SBATCH --time=7\necho ok\n")
    code, text = hpc_sbatch_dry_run([path])
    assert code == 0
    assert {"--signal=B:USR2@120", "--requeue", "--time=7"} <= set(sbatch_block(text))
    run(text, tmp_path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"#!/bin/bash\necho a\0b\n", "NUL"), (b"#!/bin/bash\r\necho a\r\n", "DOS line breaks")],
)
def test_hpc_sbatch_refuses_what_sbatch_refuses(content: bytes, problem: str, tmp_path: Path):
    bindir = tmp_path / "bin"
    recorder(bindir / "sbatch")
    script = tmp_path / "bad.sh"
    script.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-m", "hpc.cli.sbatch", str(script)],
        env=dict(
            os.environ,
            PATH=f"{bindir}:{os.environ['PATH']}",
            REC=str(tmp_path / "calls"),
            HPC_STATE_DIR=str(tmp_path / "state"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert str(script) in proc.stderr and problem in proc.stderr
    assert not (tmp_path / "calls").exists() and not (tmp_path / "state").exists()


def test_hpc_sbatch_keeps_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    original = b'#!/bin/bash\n#SBATCH --time=7 # caf\xe9\ncat "$0" > "$REC.orig"\n# \xff\xfe'
    Path(os.fsdecode(b"caf\xe9\xff.sh")).write_bytes(original)
    code, text = hpc_sbatch_dry_run([os.fsdecode(b"caf\xe9\xff.sh")])
    assert code == 0 and sbatch_block(text)[-1] == "--time=7"
    run(text, tmp_path)
    assert (tmp_path / "calls.orig").read_bytes() == original


# --- hpc-launch's batch script and sweep arrays -------------------------------------


@EXAMPLES
@given(
    python=HOSTILE,
    uri=HOSTILE,
    run_dir=HOSTILE,
    name=HOSTILE,
    extra=st.lists(HOSTILE.map(lambda s: "--" + s), max_size=2),
    setup=st.lists(st.sampled_from(["#SBATCH --time=1", "\n#SBATCH --time=1", "true"])),
)
def test_batch_script(
    python: str, uri: str, run_dir: str, name: str, extra: list[str], setup: list[str], tmp_path
) -> None:
    from hpc.spec.jobspec import redact_uri

    plain_uri = "x" if redact_uri(uri) == uri else "https://u:p@h"
    for changes, plain in (
        (
            {"cluster__python": python_at(tmp_path, python), "tracking__uri": uri},
            {"cluster__python": python_at(tmp_path, "x"), "tracking__uri": plain_uri},
        ),
        ({"run_dir": f"{tmp_path}/{run_dir}", "job__name": name}, {}),
        (
            {"cluster__sbatch_args": extra, "cluster__setup": setup},
            {"cluster__sbatch_args": ["--x"] * len(extra), "cluster__setup": setup},
        ),
    ):
        # the pre-flight step's own srun line is checked in test_slurm_plan.py
        changes = {**changes, "fault__preflight": False}
        plain = {**plain, "fault__preflight": False}
        spec = spec_with("slurm", **{"run_dir": f"{tmp_path}/run", **changes})
        try:
            plan = get_launcher("slurm").plan(spec)
        except ConfigError as exc:
            assert_config_error(exc, "run_dir", "job.name", "cluster.sbatch_args")
            continue
        reference = get_launcher("slurm").plan(
            spec_with("slurm", **{"run_dir": f"{tmp_path}/run", **plain})
        )
        assert_one_line_each(plan.text, reference.text)
        block = sbatch_block(plan.text)
        assert {"--signal=B:USR2@120", "--requeue", "--time=00:07:00"} <= set(block)
        if extra and "cluster__sbatch_args" in changes:
            assert block[-len(extra) :] == extra
        calls = run(plan.text, tmp_path)
        python_path = python_for(spec)
        step = calls_of(calls, "srun")
        assert step and step[0][-4:] == [python_path, "-m", "hpc.run", str(spec.config_file)]
        records = [c[1:3] for c in calls if c[0] == python_path]
        if "cluster__python" in changes:
            assert records and records[0] == ["-m", "hpc.launchers.slurm.job_steps"]


@EXAMPLES
@given(python=HOSTILE, sweep_dir=HOSTILE)
def test_sweep_array_script(python: str, sweep_dir: str, tmp_path: Path) -> None:
    from hpc.launchers.slurm.sweep import array_script
    from hpc.sweeps.plan import SweepPlan

    spec = spec_with(
        "slurm", run_dir=f"{tmp_path}/run", cluster__python=python_at(tmp_path, python)
    )
    for directory in (tmp_path / "sweep", tmp_path / sweep_dir):
        try:
            text = array_script(spec, SweepPlan([], [], directory))
        except ConfigError as exc:
            assert_config_error(exc, "run_dir")
            continue
        plain = spec_with(
            "slurm", run_dir=f"{tmp_path}/r", cluster__python=python_at(tmp_path, "x")
        )
        assert_one_line_each(text, array_script(plain, SweepPlan([], [], tmp_path / "sweep")))
        assert "--signal=B:USR2@120" in sbatch_block(text)
        calls = run(text, tmp_path)
        task = [c for c in calls if c[1:3] == ["-m", "hpc.launchers.slurm.sweep_task"]]
        assert task == [
            [
                spec.config["cluster"]["python"],
                "-m",
                "hpc.launchers.slurm.sweep_task",
                str(directory),
                "0",
            ]
        ]


# --- the Hydra plugin: hydra.launcher.* values become hpc-launch overrides -------------


@EXAMPLES
@given(name=HOSTILE, python=HOSTILE, setup=HOSTILE, extra=HOSTILE, partition=HOSTILE)
def test_hydra_launcher_values_reach_the_job_config_intact(
    name: str, python: str, setup: str, extra: str, partition: str, tmp_path: Path
) -> None:
    """Each value, quoted for Hydra's override grammar, composes back to itself; the
    script of the resulting sweep then passes the checks above (or a named error)."""
    from hpc.launchers.slurm.sweep import array_script
    from hpc.spec.compose import compose, to_container
    from hpc.sweeps.plan import SweepPlan
    from hydra_plugins.hpc_launch_plugin.launcher import framework_overrides, hydra_value

    params = {
        "python": python_at(tmp_path, python),
        "setup": [setup, "true"],
        "sbatch_args": [f"--{extra}"],
        "partition": partition,
        "time": "00:07:00",
        "nccl": {"env": {"NCCL_DEBUG": setup}},
    }
    overrides = [*framework_overrides(params, "slurm"), f"job.name={hydra_value(name)}"]
    cfg = to_container(compose(overrides))
    assert cfg["job"]["name"] == name
    assert cfg["cluster"]["python"] == params["python"]
    assert cfg["cluster"]["setup"] == [setup, "true"]
    assert cfg["cluster"]["sbatch_args"] == [f"--{extra}"]
    assert cfg["resources"]["partition"] == partition
    assert cfg["nccl"]["env"] == {"NCCL_DEBUG": setup}
    assert cfg["tracking"]["enabled"] is False  # not configured: off
    try:
        text = array_script(spec_from_config(cfg), SweepPlan([], [], tmp_path / "sweep"))
    except ConfigError as exc:
        assert_config_error(exc, "job.name", "resources.partition", "cluster.sbatch_args")
        return
    assert {"--signal=B:USR2@120", "--requeue", "--time=00:07:00"} <= set(sbatch_block(text))


# --- schedules: the self-resubmitting job and the scrontab block ----------------------


@EXAMPLES
@given(python=HOSTILE, state_dir=HOSTILE, overrides=st.lists(HOSTILE, max_size=3), zone=HOSTILE)
def test_schedule_script_and_scrontab_line(
    python: str, state_dir: str, overrides: list[str], zone: str, tmp_path: Path, monkeypatch
) -> None:
    from hpc.slurm_schedules import resubmit, scrontab
    from hpc.slurm_schedules.store import Schedule

    monkeypatch.setenv("HPC_STATE_DIR", str(tmp_path / "state"))
    schedule = Schedule(
        name="nightly",
        cron="0 3 * * *",
        zone=zone,
        overrides=overrides,
        multirun=True,
        workdir=str(tmp_path),
        python=python_at(tmp_path, python),
        state_dir=f"{tmp_path}/{state_dir}",
        mechanism="resubmit",
        sbatch={"time": "00:07:00"},
    )
    try:
        text = resubmit.script_text(schedule)
        lines = scrontab.block(schedule)
    except ConfigError as exc:
        assert_config_error(exc, "HPC_STATE_DIR", "python (the interpreter of hpc sweep)")
        return
    assert {"--time=00:07:00", "--no-requeue"} <= set(sbatch_block(text))
    expected = [[schedule.python, "-m", "hpc.slurm_schedules.fire", "nightly", schedule.id]]
    assert run(text, tmp_path) == expected
    assert (tmp_path / "calls.state").read_text() == schedule.state_dir
    # Each block line stays one line, and its cron line is what /bin/sh runs.
    assert "\n".join(lines).split("\n") == lines
    cron_line = lines[-2]
    assert cron_line.startswith("0 3 * * * ")
    assert run(cron_line.removeprefix("0 3 * * * "), tmp_path, shell="sh") == expected
    assert (tmp_path / "calls.state").read_text() == schedule.state_dir


# --- local and mpi plans, the k8s manifest --------------------------------------------


@EXAMPLES
@given(run_dir=HOSTILE, name=HOSTILE, uri=HOSTILE, extra=st.lists(HOSTILE, max_size=2))
def test_local_and_mpi_plans(run_dir: str, name: str, uri: str, extra: list[str], tmp_path):
    changes = {"run_dir": f"{tmp_path}/{run_dir}", "job__name": name, "tracking__uri": uri}
    spec = spec_with("local", **changes)
    (spec.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    local = get_launcher("local").plan(spec)
    calls = calls_of(run(local.text, tmp_path), "env")
    assert calls and all(c[-len(local.commands[0]) :] == local.commands[0] for c in calls)
    assert all(f"HPC_RUN_DIR={spec.run_dir}" in c for c in calls)
    mpirun = recorder(tmp_path / "mpi" / "mpirun")
    spec = spec_with("mpi", cluster__mpirun=mpirun, cluster__extra_args=extra, **changes)
    mpi = get_launcher("mpi").plan(spec)
    assert run(mpi.text, tmp_path) == [mpi.commands[0]]


@EXAMPLES
@given(command=st.lists(HOSTILE, min_size=1, max_size=3), uri=HOSTILE)
def test_k8s_manifest_stays_valid_yaml(command: list[str], uri: str, tmp_path: Path) -> None:
    spec = spec_with("k8s", run_dir=f"{tmp_path}/run", cluster__command=command, tracking__uri=uri)
    plan = get_launcher("k8s").plan(spec)
    head = plan.text.split("\n---\n", 1)[0].split("\n")
    assert all(line.startswith("#") for line in head), head
    docs = list(yaml.safe_load_all(plan.text))
    assert [d["kind"] for d in docs] == ["ConfigMap", "MPIJob"]
    launcher = docs[1]["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    assert launcher["containers"][0]["command"] == plan.commands[0]
    assert plan.commands[0][-len(command) - 1 : -1] == command


# --- a trailing newline is not a safe value (Python's `$` matches before one) -----------


def test_trailing_newline_is_refused_everywhere(tmp_path: Path) -> None:
    from hpc.slurm_schedules.store import check_name
    from hpc.spec.rules import validate

    for key, value in (("job__name", "digits\n"), ("resources__partition", "debug\n")):
        with pytest.raises(ConfigError) as exc:
            get_launcher("slurm").plan(spec_with("slurm", run_dir=f"{tmp_path}/r", **{key: value}))
        assert_config_error(exc.value, key.replace("__", "."))
        cfg = copy.deepcopy(base_config("slurm"))
        cfg[key.split("__")[0]][key.split("__")[1]] = value
        with pytest.raises(ConfigError):
            validate(cfg)
    with pytest.raises(ConfigError):
        check_name("nightly\n")
