"""The example user project (examples/my_project), run as a user runs it: from a copy in a
temporary directory, with its own config dir, groups and structured config. Both of its
entry points, the Session function and the plain torchrun script, run locally (2 ranks),
on the Slurm test cluster (2 nodes) and as a sweep over a user group (one array)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_entrypoints import assert_ddp_ran, ddp_lines

from slurm_helpers import require_cluster, wait_for_job
from support import REPO, cli_env, hpc_launch

EXAMPLE = REPO / "examples" / "my_project"
SESSION_LINE = re.compile(
    r"my_project: model hidden=(\d+) layers=(\d+) optim (\w+): accuracy ([\d.]+) "
    r"after (\d+) steps \(world size (\d+)"
)
DDP = ["-cn", "ddp"]  # conf/ddp.yaml: the torchrun script with the same groups


@pytest.fixture
def project(workdir: Path) -> Path:
    """A copy of the example, as a user's checkout (nothing of it installed)."""
    dest = workdir / "my_project"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    return dest


def launch(project: Path, args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return hpc_launch(["-cd", "conf", *args], project, **kw)


def runs(project: Path, name: str) -> list[Path]:
    return sorted(p for p in (project / "outputs" / name).iterdir() if p.is_dir())


def session_result(text: str) -> re.Match[str]:
    match = SESSION_LINE.search(text)
    assert match, text[-3000:]
    return match


# -- composition: the user's groups, keys and schema ---------------------------------------------
def test_composes_user_groups_and_keys(project: Path) -> None:
    proc = launch(project, ["--cfg", "model=large", "optim=adam", "data=spirals", "train.epochs=5"])
    assert proc.returncode == 0, proc.stderr
    import yaml

    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"] == {"hidden": 64, "layers": 3}
    assert cfg["optim"]["name"] == "adam" and cfg["optim"]["lr"] == 0.01
    assert cfg["data"]["kind"] == "spirals" and cfg["data"]["features"] == 2
    assert cfg["train"]["epochs"] == 5
    assert cfg["job"]["entrypoint"] == "my_project.train:main"
    assert cfg["resources"]["tasks_per_node"] == 2  # the framework's sections are there


@pytest.mark.parametrize(
    ("override", "key", "says"),
    [
        ("model=huge", "model", "large"),  # the group and its options
        ("model.hiden=32", "model.hiden", ""),  # the project's schema: unknown key
        ("model.layers=two", "model.layers", ""),  # the project's schema: type
        ("resources.nodes=0", "resources.nodes", ">= 1"),  # the framework's keys
    ],
)
def test_bad_values_are_refused_naming_the_key(
    project: Path, override: str, key: str, says: str
) -> None:
    proc = launch(project, [override, "dry_run=true"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and says in lines[0], lines
    assert not (project / "outputs").exists()


# -- locally, 2 ranks ----------------------------------------------------------------------------
@pytest.mark.slow
def test_session_training_local_two_ranks(project: Path) -> None:
    from mlflow.tracking import MlflowClient

    proc = launch(project, ["model=large", "optim=adam"])
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = runs(project, "my-project")
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "COMPLETED" and record["extra"]["accuracy"] > 0.6
    result = session_result(proc.stdout)
    assert result.group(1, 2, 3, 6) == ("64", "3", "adam", "2")
    assert (run_dir / "checkpoints" / "LATEST").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    mlflow_run = client.get_run(record["mlflow_run_id"])
    assert mlflow_run.data.params["model.hidden"] == "64"
    assert mlflow_run.data.params["optim.name"] == "adam"
    steps = [m.step for m in client.get_metric_history(record["mlflow_run_id"], "loss")]
    assert steps == list(range(1, int(result.group(5)) + 1)), "each step logged once"


@pytest.mark.slow
def test_torchrun_script_local_two_ranks(project: Path) -> None:
    proc = launch(project, [*DDP, "model=large", "train.steps=7", "tracking.enabled=false"])
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = runs(project, "my-project-ddp")
    text = "".join((run_dir / "logs" / f"rank{r}.log").read_text() for r in range(2))
    lines = ddp_lines(text)
    assert_ddp_ran(lines, 2, 7)
    assert {m.group(7) for m in lines.values()} == {"64"}, "model.hidden reached its args"


# -- on the Slurm test cluster -------------------------------------------------------------------
SLURM_TWO_NODES = ["cluster=slurm", "resources.nodes=2", "resources.tasks_per_node=1"]


@pytest.fixture
def slurm_jobs() -> Iterator[list[str]]:
    require_cluster(min_nodes=2)
    ids: list[str] = []
    yield ids
    for job_id in ids:
        subprocess.run(["scancel", job_id], capture_output=True, check=False)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("entry", ["session", "torchrun"])
def test_two_node_slurm_run(project: Path, slurm_jobs: list[str], entry: str) -> None:
    name = f"hpcE-example-{entry}"
    extra = DDP if entry == "torchrun" else []
    proc = launch(
        project,
        [*extra, *SLURM_TWO_NODES, "wait=true", f"job.name={name}", "tracking.enabled=false"],
        timeout=300,
    )
    (run_dir,) = runs(project, name)
    record = json.loads((run_dir / "job.json").read_text())
    slurm_jobs.append(str(record["job_id"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert record["state"] == "COMPLETED"
    log = (run_dir / "logs" / f"slurm-{record['job_id']}.out").read_text()
    assert re.search(r"rank 0/2 local_rank 0 node_rank 0 host n1 via slurm", log), log
    assert re.search(r"rank 1/2 local_rank 0 node_rank 1 host n2 via slurm", log), log
    if entry == "torchrun":
        assert_ddp_ran(ddp_lines(log), 2, 20)
    else:
        assert session_result(log).group(6) == "2"
        assert record["extra"]["accuracy"] > 0.6


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("entry", ["session", "torchrun"])
def test_sweep_over_a_user_group_is_one_array(
    project: Path, slurm_jobs: list[str], entry: str
) -> None:
    name = f"hpcE-sweep-{entry}"
    extra = DDP if entry == "torchrun" else []
    proc = launch(
        project,
        [
            "-m",
            *extra,
            "model=small,large",
            "cluster=slurm",
            "resources.tasks_per_node=1",
            f"job.name={name}",
            "tracking.enabled=false",
        ],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    array_id = proc.stdout.strip()
    assert array_id.isdigit(), f"one array id expected, got {proc.stdout!r}"
    slurm_jobs.append(array_id)
    (sweep_file,) = (project / "outputs" / name).glob("sweep-*/sweep.json")
    sweep = json.loads(sweep_file.read_text())
    assert len(sweep["tasks"]) == 2 and {t["array_id"] for t in sweep["tasks"]} == {array_id}
    hidden = set()
    for task in sweep["tasks"]:
        job_id = f"{array_id}_{task['array_index']}"
        assert wait_for_job(job_id, timeout=300) == "COMPLETED"
        text = (sweep_file.parent / "logs" / f"slurm-{job_id}.out").read_text()
        if entry == "torchrun":
            lines = ddp_lines(text)
            assert_ddp_ran(lines, 1, 20)
            hidden |= {m.group(7) for m in lines.values()}
        else:
            hidden.add(session_result(text).group(1))
    assert hidden == {"16", "64"}, "each task ran its own model choice"


# -- the same project as an existing Hydra app, through the hpc-launch plugin -------------------
APP_LINE = re.compile(r"app: model hidden=(\d+) accuracy ([\d.]+)")


def app_sweep(project: Path, launcher: list[str], timeout: float) -> list[dict[str, Any]]:
    """``python app.py -m model=small,large`` on the plugin with ``wait=true``: what the
    JobReturn each point's job wrote (what Hydra's sweeper received) holds. The returns are
    read in a child process: unpickling them imports the project's schema, which registers
    its nodes in this process's ConfigStore and would travel in later tests' payloads."""
    proc = subprocess.run(
        [sys.executable, "app.py", "-m", "model=small,large", "hydra.sweep.dir=multirun",
         "hydra.launcher.wait=true", *launcher],
        cwd=project, env=cli_env(project), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (sweep_dir,) = (project / "multirun" / ".hpc-launch").glob("sweep-*")
    reader = (
        "import json, sys, cloudpickle\n"
        "sys.path.insert(0, '.')\n"  # the configs hold the project's schema classes
        "out = []\n"
        "for path in sys.argv[1:]:\n"
        "    with open(path, 'rb') as fh:\n"
        "        r = cloudpickle.load(fh)\n"
        "    out.append({'overrides': list(r.overrides), 'hidden': r.cfg.model.hidden,\n"
        "                'value': r.return_value, 'job_id': str(r.hydra_cfg.hydra.job.id)})\n"
        "print(json.dumps(out))\n"
    )
    paths = [str(sweep_dir / str(index) / "hydra-return.pkl") for index in range(2)]
    read = subprocess.run(
        [sys.executable, "-c", reader, *paths], cwd=project, env=cli_env(project),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr[-4000:]
    returns: list[dict[str, Any]] = json.loads(read.stdout)
    return returns


def assert_app_points(returns: list[dict[str, Any]], logs: str) -> None:
    assert [r["overrides"] for r in returns] == [["model=small"], ["model=large"]]
    assert [r["hidden"] for r in returns] == [16, 64]
    accuracies = [r["value"] for r in returns]
    assert all(isinstance(a, float) and 0.5 < a <= 1.0 for a in accuracies), accuracies
    printed = {(int(h), float(a)) for h, a in APP_LINE.findall(logs)}
    assert printed == {(16, round(accuracies[0], 3)), (64, round(accuracies[1], 3))}, printed


@pytest.mark.slow
def test_hydra_app_sweep_through_the_local_plugin_returns_accuracies(project: Path) -> None:
    returns = app_sweep(project, ["hydra/launcher=hpc_local"], timeout=300)
    logs = "".join(p.read_text() for p in (project / "multirun").rglob("rank0.log"))
    assert_app_points(returns, logs)


@pytest.mark.slurm
@pytest.mark.slow
def test_hydra_app_sweep_through_the_slurm_plugin_returns_accuracies(project: Path) -> None:
    require_cluster()
    launcher = [
        "hydra/launcher=hpc_slurm",
        "hydra.launcher.job_name=hpcE-app",
        "hydra.launcher.time=00:05:00",
        "hydra.launcher.poll_s=0.5",
        "hydra.launcher.wait_timeout_s=400",
    ]
    returns = app_sweep(project, launcher, timeout=450)
    logs = "".join(p.read_text() for p in (project / "multirun").rglob("slurm-*.out"))
    assert_app_points(returns, logs)
    assert "_" in returns[0]["job_id"], "an array task of the sweep's array"
