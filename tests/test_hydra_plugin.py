"""The Hydra launcher plugin: an unmodified Hydra app's sweep, each point a full hpc-launch job.

Hydra's own conformance suites (``hydra.test_utils.launcher_common_tests``) run for
``hpc_local`` and, on the Slurm test cluster, ``hpc_slurm``, with ``wait=true``. Then:
a sweep on Slurm returning its task functions' values (with NCCL variables, placement,
accounting and an MLflow child run under the sweep's parent), the same sweep with one
point preempted and requeued, fire-and-forget, the rendered array script of a plugin
sweep, and bad launcher values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hydra.core.utils import JobStatus
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

from hpc.exitcodes import BUDGET_REFUSED

from slurm_helpers import require_cluster, wait_for_job
from support import cli_env

# Tiny jobs: one rank, a short time limit, tracking off (the default unless configured).
SLURM = [
    "hydra.launcher.wait=true",
    "hydra.launcher.job_name=hpcP-hydra",
    "hydra.launcher.time=00:05:00",
    "hydra.launcher.poll_s=0.5",
    "hydra.launcher.wait_timeout_s=300",
]
LOCAL = ["hydra.launcher.wait=true"]
QUIET = ["-m", "hydra/hydra_logging=disabled", "hydra/job_logging=disabled"]


@pytest.fixture
def cluster() -> None:
    require_cluster()


# --- Hydra's conformance suites ---------------------------------------------------------


@pytest.mark.parametrize("launcher_name, overrides", [("hpc_local", LOCAL)])
class TestLocalLauncherSuite(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags", [({}, [*QUIET, "hydra/launcher=hpc_local", *LOCAL])]
)
class TestLocalIntegrationSuite(IntegrationTestSuite):
    pass


# Several launch() calls into one sweep dir (what return-value sweepers do).
BATCHES = ["hydra.sweeper.max_batch_size=2"]


@pytest.mark.parametrize("launcher_name, overrides", [("hpc_local", [*LOCAL, *BATCHES])])
class TestLocalBatchedSuite(BatchedSweeperTestSuite):
    pass


@pytest.mark.slurm
@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize("launcher_name, overrides", [("hpc_slurm", SLURM)])
class TestSlurmLauncherSuite(LauncherTestSuite):
    pass


@pytest.mark.slurm
@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize("launcher_name, overrides", [("hpc_slurm", [*SLURM, *BATCHES])])
class TestSlurmBatchedSuite(BatchedSweeperTestSuite):
    pass


@pytest.mark.slurm
@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags", [({}, [*QUIET, "hydra/launcher=hpc_slurm", *SLURM])]
)
class TestSlurmIntegrationSuite(IntegrationTestSuite):
    pass


# --- a sweep in this process (the suites' runner), returning values ----------------------


def sweep_runner(hydra_sweep_runner: Any, overrides: list[str], task: Any, sweep_dir: Path) -> Any:
    return hydra_sweep_runner(
        calling_file=None,
        calling_module="hydra.test_utils.a_module",
        task_function=task,
        config_path="configs",
        config_name="compose",
        overrides=overrides,
        temp_dir=sweep_dir,
    )


def hpc_sweep_dir(sweep_dir: Path) -> Path:
    (found,) = sweep_dir.glob(".hpc-launch/*/sweep.json")
    return found.parent


def record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "job.json").read_text())


@pytest.mark.slurm
@pytest.mark.usefixtures("hydra_restore_singletons", "cluster")
def test_slurm_sweep_returns_task_values_from_full_jobs(
    hydra_sweep_runner: Any, tmp_path: Path
) -> None:
    """Each point is an hpc-launch job: the task function's value comes back, and the job
    had the NCCL profile's and the launcher's NCCL variables, placement, the accounting
    sampler and an MLflow child run under the sweep's parent run."""

    def task(cfg: Any) -> dict[str, Any]:
        from hydra.core.hydra_config import HydraConfig

        return {
            "value": cfg.x * 10,
            "job_id": HydraConfig.get().job.id,
            "nccl_debug": os.environ.get("NCCL_DEBUG"),
            "async": os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING"),
            "affinity": sorted(os.sched_getaffinity(0)),
            "host": os.uname().nodename,
        }

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        "hydra/launcher=hpc_slurm",
        *SLURM,
        "++hydra.launcher.nccl.env.NCCL_DEBUG=WARN",
        f"++hydra.launcher.tracking.uri={uri}",
        "++hydra.launcher.accounting.interval_s=1",
        "+x=1,2,3",
    ]
    start = time.monotonic()
    with sweep_runner(hydra_sweep_runner, overrides, task, tmp_path / "sweep") as sweep:
        took = time.monotonic() - start
        (returns,) = sweep.returns
        sweep_dir = hpc_sweep_dir(tmp_path / "sweep")
        run_dirs = [sweep_dir / str(i) for i in range(3)]
        records = [record(d) for d in run_dirs]
        log0 = next((sweep_dir / "logs").glob("slurm-*_0.out")).read_text()
        parent = json.loads((sweep_dir / "mlflow_parent.json").read_text())["run_id"]
    print(f"3-point Slurm sweep with wait=true: {took:.1f}s")
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 3
    values = [r.return_value for r in returns]
    assert [v["value"] for v in values] == [10, 20, 30]
    assert [r.overrides for r in returns] == [["+x=1"], ["+x=2"], ["+x=3"]]
    assert [r.cfg.x for r in returns] == [1, 2, 3]
    assert [r.hydra_cfg.hydra.job.num for r in returns] == [0, 1, 2]
    assert [r.task_name for r in returns] == ["a_module"] * 3
    assert [v["job_id"] for v in values] == [rec["job_id"] for rec in records]
    assert all(rec["state"] == "COMPLETED" and "_" in rec["job_id"] for rec in records)
    assert len({rec["job_id"].split("_")[0] for rec in records}) == 1, "one array"
    assert all(v["nccl_debug"] == "WARN" and v["async"] == "1" for v in values)
    # Placement: the session bound the rank and said so in the job's log.
    assert "rank 0/1 local_rank 0" in log0 and "cpus " in log0
    assert values[0]["affinity"], values[0]
    assert all((rec.get("extra") or {}).get("accounting", {}).get("samples") for rec in records)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for rec, ret in zip(records, returns, strict=True):
        run = client.get_run(rec["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["hydra.overrides"] == " ".join(ret.overrides)
        assert run.info.status == "FINISHED"


@pytest.mark.slurm
@pytest.mark.usefixtures("hydra_restore_singletons")
def test_slurm_two_node_point_runs_the_task_function_on_every_rank(
    hydra_sweep_runner: Any, tmp_path: Path
) -> None:
    """nodes=2: both ranks run the task function inside one torch.distributed group;
    the value returned is rank 0's."""
    require_cluster(min_nodes=2)

    def task(cfg: Any) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        total = torch.tensor([dist.get_rank() + 1])
        dist.all_reduce(total)
        return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": int(total)}

    overrides = [
        "hydra/launcher=hpc_slurm",
        *SLURM,
        "hydra.launcher.nodes=2",
        "hydra.launcher.tasks_per_node=1",
        "+x=1,2",
    ]
    with sweep_runner(hydra_sweep_runner, overrides, task, tmp_path / "sweep") as sweep:
        (returns,) = sweep.returns
        sweep_dir = hpc_sweep_dir(tmp_path / "sweep")
        log0 = next((sweep_dir / "logs").glob("slurm-*_0.out")).read_text()
    assert [r.return_value for r in returns] == [{"rank": 0, "world": 2, "sum": 3}] * 2
    assert "rank 0/2" in log0 and "rank 1/2" in log0


@pytest.mark.slurm
@pytest.mark.usefixtures("hydra_restore_singletons", "cluster")
def test_slurm_point_that_dies_without_a_result_fails_the_sweep(
    hydra_sweep_runner: Any, tmp_path: Path
) -> None:
    """A job that ends before the task function could return (here its setup fails)
    comes back FAILED, naming the point, its state and where its log is."""
    overrides = ["hydra/launcher=hpc_slurm", *SLURM, "hydra.launcher.setup=[exit 3]", "+x=1"]
    failed = r"point \+x=1 ended FAILED without a result; its job's log is in "
    sweep = sweep_runner(hydra_sweep_runner, overrides, None, tmp_path / "sweep")
    with pytest.raises(RuntimeError, match=failed), sweep:
        pass


def squeue(job_id: str) -> tuple[str, str] | None:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    if "|" not in out:
        return None
    state, reason = out.splitlines()[0].split("|", 1)
    return state, reason


def requeued(job_id: str) -> bool:
    """The array task waits for its begin time again (Slurm holds a requeued job)."""
    state, reason = squeue(job_id) or ("", "")
    return state == "REQUEUED" or (state == "PENDING" and reason == "BeginTime")


def wait_for(predicate: Any, what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen within {timeout}s")


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.usefixtures("hydra_restore_singletons", "cluster")
def test_slurm_sweep_with_a_preempted_point_still_returns_every_value(
    hydra_sweep_runner: Any, tmp_path: Path
) -> None:
    """Point x=2 gets the preemption signal while its task function runs: the job is
    requeued (only that array task), the function runs again, and the launcher, waiting
    through PENDING and RUNNING again, returns every point's value."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def task(cfg: Any) -> int:
        attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        (marks / f"started-{cfg.x}-{attempt}").write_text(job)
        if cfg.x == 2 and attempt == "0":
            time.sleep(240)  # interrupted by the signal
            raise AssertionError("not interrupted")
        return int(cfg.x) * 100

    seen: dict[str, Any] = {}

    def preempt_once() -> None:
        try:
            started = marks / "started-2-0"
            job = wait_for(lambda: started.exists() and started.read_text(), "point x=2 started")
            seen["job"] = job
            subprocess.run(["scancel", "-b", "-s", "USR2", job], check=True, timeout=30)
            seen["requeued"] = wait_for(lambda: requeued(job), "the requeue")
            time.sleep(2)  # a new credential must come from a later second
            subprocess.run(
                ["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30
            )
        except BaseException as exc:  # reported by the test below
            seen["error"] = exc

    thread = threading.Thread(target=preempt_once, daemon=True)
    thread.start()
    overrides = ["hydra/launcher=hpc_slurm", *SLURM, "hydra.launcher.wait_timeout_s=420"]
    start = time.monotonic()
    with sweep_runner(
        hydra_sweep_runner, [*overrides, "+x=1,2,3"], task, tmp_path / "sweep"
    ) as sweep:
        took = time.monotonic() - start
        (returns,) = sweep.returns
        sweep_dir = hpc_sweep_dir(tmp_path / "sweep")
        records = [record(sweep_dir / str(i)) for i in range(3)]
        log1 = next((sweep_dir / "logs").glob("slurm-*_1.out")).read_text()
    thread.join(timeout=30)
    print(f"3-point Slurm sweep, one point preempted and requeued: {took:.1f}s")
    assert "error" not in seen, seen.get("error")
    assert [r.return_value for r in returns] == [100, 200, 300]
    assert (marks / "started-2-1").read_text() == seen["job"]  # the same array task, again
    assert not (marks / "started-1-1").exists() and not (marks / "started-3-1").exists()
    assert returns[1].hydra_cfg.hydra.job.id == seen["job"]
    assert [rec["extra"]["restart_count"] for rec in records] == [0, 1, 0]
    assert records[1]["extra"]["last_interruption"] == "preemption"
    assert "interrupted (SIGUSR2)" in log1 and "(restart 1)" in log1


# --- an app on the command line ---------------------------------------------------------

APP = """\
import os, sys

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base=None, config_path=None)
def main(cfg):
    if cfg.get("fail_on") is not None and cfg.x == cfg.fail_on:
        raise ValueError(f"no good: x={cfg.x}")
    with open(os.path.join(HydraConfig.get().runtime.output_dir, "result.txt"), "w") as fh:
        fh.write(f"{cfg.x} {HydraConfig.get().job.id}")
    return cfg.x * 10


if __name__ == "__main__":
    main()
"""


def run_app(
    app_dir: Path, args: list[str], timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "app.py", "-m", *args],
        cwd=app_dir,
        env=cli_env(app_dir, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def only_sweep(app_dir: Path) -> tuple[Path, Path]:
    """Hydra's sweep dir and hpc-launch's sweep inside it."""
    (found,) = app_dir.glob("multirun/*/*/.hpc-launch/*/sweep.json")
    return found.parents[2], found.parent


@pytest.mark.slurm
def test_slurm_fire_and_forget_returns_at_once_with_the_array_queued(app_dir: Path) -> None:
    require_cluster()
    start = time.monotonic()
    proc = run_app(
        app_dir, ["hydra/launcher=hpc_slurm", "hydra.launcher.job_name=hpcP-ff", "+x=1,2"]
    )
    returned_after = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert returned_after < 30, f"the launcher blocked for {returned_after:.0f}s"
    hydra_dir, sweep_dir = only_sweep(app_dir)
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    (array,) = sweep["arrays"]
    array_id = array["array_id"]
    assert f"points queued as Slurm array {array_id}" in proc.stdout  # Hydra's log
    assert array_id not in proc.stdout.splitlines(), "the array id is logged, not printed"
    assert [t["array_id"] for t in sweep["tasks"]] == [array_id] * 2
    for index in range(2):
        assert wait_for_job(f"{array_id}_{index}", timeout=180) == "COMPLETED"
    for index, x in enumerate((1, 2)):
        # The task function itself ran in the job (no re-run of the app): its outputs are
        # where Hydra puts them, and its JobReturn is beside the job's record.
        assert (hydra_dir / str(index) / "result.txt").read_text() == f"{x} {array_id}_{index}"
        assert (hydra_dir / str(index) / ".hydra" / "overrides.yaml").exists()
        assert (sweep_dir / str(index) / "hydra-return.pkl").exists()

    def status() -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "hpc.cli.main", "status", str(sweep_dir)],
            cwd=app_dir,
            env=cli_env(app_dir),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    # squeue may still show a task COMPLETING for a moment after sacct has it COMPLETED.
    def done() -> str | None:
        out = status()
        return out if "2/2 done" in out else None

    shown = wait_for(done, "2/2 done", timeout=60)
    assert f"{array_id}_1" in shown


def test_slurm_array_script_of_a_plugin_sweep(app_dir: Path) -> None:
    """dry_run: the one renderer's array script, with the stop signal, requeue, the
    launcher's resources and setup, the task's config composed on the node and the
    workers under srun; the job config carries placement and the NCCL profile."""
    proc = run_app(
        app_dir,
        [
            "hydra/launcher=hpc_slurm",
            "hydra.launcher.dry_run=true",
            "hydra.launcher.nodes=2",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.time=00:10:00",
            "hydra.launcher.signal=USR1",
            "hydra.launcher.lead_s=90",
            "hydra.launcher.setup=[module load x]",
            "hydra.launcher.overrides=['nccl=infiniband']",
            "+x=1,2",
        ],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    lines = text.splitlines()
    for option in (
        "--job-name=app",
        "--nodes=2",
        "--ntasks-per-node=2",
        "--time=00:10:00",
        "--signal=B:USR1@90",
        "--requeue",
    ):
        assert f"#SBATCH {option}" in lines, option
    assert "module load x" in lines
    assert "trap 'forward USR1' USR1" in lines
    assert "-m hpc.launchers.slurm.sweep_task" in text and "-m hpc.run &" in text
    assert "scontrol requeue" in text
    assert lines[-1].startswith("# sbatch --array=0-1 sweep-0.sbatch 0")
    assert not list(app_dir.glob("multirun/*/*/.hpc-launch/*/sweep.json")), "nothing submitted"
    # The job config of the points (what sweep_task composes on the node).
    from hpc.spec.compose import compose, to_container
    from hydra_plugins.hpc_launch_plugin.launcher import framework_overrides

    params = {"nodes": 2, "tasks_per_node": 2, "overrides": ["nccl=infiniband"]}
    params["fault"] = {"stall_timeout_s": 30, "hang_requeues": 0}
    cfg = to_container(compose(framework_overrides(params, "slurm")))
    assert cfg["fault"]["stall_timeout_s"] == 30 and cfg["fault"]["hang_requeues"] == 0
    assert cfg["placement"]["enabled"] is True
    assert cfg["nccl"]["profile"] == "infiniband"
    assert cfg["preemption"]["requeue"] is True


@pytest.mark.parametrize(
    "override, key",
    [
        ("hydra.launcher.time=soon", "resources.time"),
        ("++hydra.launcher.tracking.urii=x", "tracking.urii"),
        ("hydra.launcher.tasks_per_node=0", "resources.tasks_per_node"),
    ],
)
def test_bad_launcher_values_name_the_key(app_dir: Path, override: str, key: str) -> None:
    proc = run_app(app_dir, ["hydra/launcher=hpc_slurm", override, "+x=1,2"], timeout=120)
    assert proc.returncode != 0
    assert f"hydra.launcher (slurm): {key}" in proc.stderr, proc.stderr
    assert not list(app_dir.glob("multirun/*/*/.hpc-launch/*/sweep.json")), "nothing submitted"


def test_a_refusing_budget_stops_a_plugin_sweep_before_anything_is_written(
    app_dir: Path,
) -> None:
    (app_dir / "prices.yaml").write_text("currency: EUR\ncpu_hour: 1.0\n")
    budgets = app_dir / "budgets.yaml"
    budgets.write_text(
        "version: 1\nprices: prices.yaml\nbudgets:\n"
        "  - {name: tiny, money: 1.5, policy: refuse, period: total}\n"
    )
    args = ["hydra/launcher=hpc_local", "hydra.launcher.overrides=['resources.time=00:30:00']"]
    args.append("+x=1,2,3,4")  # 4 points of 1 CPU for 30 min: 2.00 EUR
    proc = run_app(app_dir, args, 120, HPC_BUDGETS=str(budgets), HPC_COST_LIVE="0")
    assert proc.returncode == BUDGET_REFUSED, proc.stderr
    assert (
        f"hpc_local: error: budget tiny (every job; total, {budgets}): refused: consumed "
        "0.00 EUR + estimate 2.00 EUR > limit 1.50 EUR; nothing submitted"
    ) in proc.stderr.splitlines()
    assert not list(app_dir.glob("multirun/*/*/.hpc-launch/*/sweep.json")), "nothing submitted"
    assert not list(app_dir.glob("multirun/*/*/*/result.txt"))


def test_local_fire_and_forget_and_wait(app_dir: Path) -> None:
    start = time.monotonic()
    proc = run_app(app_dir, ["hydra/launcher=hpc_local", "+x=1,2"])
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 30
    hydra_dir, sweep_dir = only_sweep(app_dir)
    results = [hydra_dir / str(i) / "result.txt" for i in range(2)]
    wait_for(lambda: all(p.exists() for p in results), "both points' results", timeout=120)
    assert [p.read_text().split()[0] for p in results] == ["1", "2"]
    wait_for(lambda: record(sweep_dir / "1").get("state") == "COMPLETED", "point 1 done", 60)
    assert results[1].read_text().split()[1] == record(sweep_dir / "1")["job_id"]

    # wait=true: a point whose task function raised fails the multirun with its exception.
    subprocess.run(["rm", "-rf", str(app_dir / "multirun")], check=True)
    proc = run_app(
        app_dir, ["hydra/launcher=hpc_local", "hydra.launcher.wait=true", "+x=1,2", "+fail_on=2"]
    )
    assert proc.returncode != 0
    assert "ValueError: no good: x=2" in proc.stderr, proc.stderr
    assert "Error executing job with overrides: ['+x=2', '+fail_on=2']" in proc.stderr
    hydra_dir, sweep_dir = only_sweep(app_dir)
    assert (hydra_dir / "0" / "result.txt").exists()
    assert not (hydra_dir / "1" / "result.txt").exists()
    assert record(sweep_dir / "0")["state"] == "COMPLETED"
    assert record(sweep_dir / "1")["state"] == "FAILED"


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_local_return_value_that_cannot_travel_is_a_named_failure(
    hydra_sweep_runner: Any, tmp_path: Path
) -> None:
    def task(cfg: Any) -> Any:
        import threading

        return threading.Lock() if cfg.x == 2 else cfg.x

    overrides = ["hydra/launcher=hpc_local", *LOCAL, "+x=1,2"]
    sweep = sweep_runner(hydra_sweep_runner, overrides, task, tmp_path / "sweep")
    unpicklable = r"return value <unlocked _thread.lock .* cannot be pickled"
    with pytest.raises(RuntimeError, match=unpicklable), sweep:
        pass


def test_payload_carries_a_main_module_function_that_reaches_a_module_subclass() -> None:
    """A task function from a script (pickled by value) whose code names ``classes``
    next to ``import torch`` pulls in ``torch.classes``, a ``ModuleType`` subclass that
    plain cloudpickle cannot pickle; the payload sends it by name."""
    import types

    import cloudpickle
    import torch  # noqa: F401  (registers torch.classes in sys.modules)

    from hydra_plugins.hpc_launch_plugin._pickle import dumps

    script = types.ModuleType("__main__hpc_test")
    exec(  # a function whose module cannot be imported elsewhere, as a script's
        "import torch\ndef task(cfg):\n    return [cfg.classes, torch.tensor([2]).item()]\n",
        script.__dict__,
    )
    with pytest.raises(TypeError, match="_Classes"):
        cloudpickle.dumps(script.task)
    task = cloudpickle.loads(dumps(script.task))
    assert task(types.SimpleNamespace(classes=4)) == [4, 2]
