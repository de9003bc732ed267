"""MPI: Open MPI / PMI rank parsing, the mpi4py rendezvous, and real ``mpirun`` runs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from hpc.runtime.environment import (
    EnvironmentError_,
    SingleProcessEnvironment,
    TorchrunEnvironment,
)
from hpc.runtime.mpi_env import OpenMpiEnvironment, PmiEnvironment, agree_rendezvous
from hpc.runtime.rank_discovery import ENVIRONMENTS, from_env

from support import hpc_launch


class FakeComm:
    """mpi4py's bcast as seen by one rank: root's value is what every rank gets."""

    def __init__(self, root_value: Any = None) -> None:
        self.root_value = root_value
        self.calls: list[Any] = []

    def bcast(self, obj: Any, root: int = 0) -> Any:
        self.calls.append(obj)
        return obj if obj is not None else self.root_value


class NoComm:
    def bcast(self, obj: Any, root: int = 0) -> Any:
        raise AssertionError("no broadcast expected")


def ompi(rank: int, size: int, local_rank: int, local_size: int, **extra: str) -> dict[str, str]:
    env = {
        "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_SIZE": str(size),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(local_rank),
        "OMPI_COMM_WORLD_LOCAL_SIZE": str(local_size),
        "OMPI_COMM_WORLD_NODE_RANK": str(local_rank),  # not the node index (see mpi_env)
    }
    env.update(extra)
    return env


# -- parsing --------------------------------------------------------------------------------
def test_openmpi_variables_with_master_set() -> None:
    env = ompi(5, 8, 1, 4, MASTER_ADDR="job-worker-0.job.ns.svc", MASTER_PORT="29500")
    info = OpenMpiEnvironment(env, comm=NoComm()).rank_info()
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (5, 8, 1, 4)
    assert info.node_rank == 1
    assert (info.master_addr, info.master_port) == ("job-worker-0.job.ns.svc", 29500)


def test_openmpi_rank0_picks_and_broadcasts_the_rendezvous() -> None:
    comm = FakeComm()
    info = OpenMpiEnvironment(ompi(0, 2, 0, 2), comm=comm).rank_info()
    assert info.master_addr == "127.0.0.1"  # every rank on this node
    assert 1024 <= info.master_port <= 65535
    assert comm.calls == [("127.0.0.1", info.master_port)]


def test_other_ranks_take_rank0s_values() -> None:
    comm = FakeComm(root_value=("10.0.0.7", 41000))
    info = OpenMpiEnvironment(ompi(3, 4, 1, 2), comm=comm).rank_info()
    assert (info.master_addr, info.master_port) == ("10.0.0.7", 41000)
    assert comm.calls == [None]
    assert info.node_rank == 1


def test_partial_master_is_completed_by_rank0() -> None:
    comm = FakeComm()
    info = OpenMpiEnvironment(ompi(0, 4, 0, 2, MASTER_PORT="31000"), comm=comm).rank_info()
    assert info.master_port == 31000 and comm.calls[0][1] == 31000


def test_rank_info_broadcasts_once() -> None:
    comm = FakeComm()
    env = OpenMpiEnvironment(ompi(0, 2, 0, 2), comm=comm)
    assert env.rank_info() == env.rank_info()
    assert len(comm.calls) == 1


def test_agree_rendezvous_multi_node_address_is_not_loopback_when_resolvable() -> None:
    comm = FakeComm()
    addr, _ = agree_rendezvous(comm, 0, single_node=False)
    assert addr and not addr.startswith("127.0.0.1")


def test_pmi_variables() -> None:
    env = {
        "PMI_RANK": "6",
        "PMI_SIZE": "8",
        "MPI_LOCALRANKID": "2",
        "MPI_LOCALNRANKS": "4",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "29400",
    }
    info = PmiEnvironment(env, comm=NoComm()).rank_info()
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (6, 8, 2, 4)
    assert info.node_rank == 1 and info.master_addr == "n1"


def test_pmi_without_local_variables_is_one_node() -> None:
    env = {"PMI_RANK": "1", "PMI_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    info = PmiEnvironment(env).rank_info()
    assert (info.local_rank, info.local_world_size, info.node_rank) == (1, 2, 0)


def test_world_of_one_needs_no_mpi() -> None:
    info = PmiEnvironment({"PMI_RANK": "0", "PMI_SIZE": "1"}, comm=NoComm()).rank_info()
    assert info.world_size == 1 and info.master_addr == "127.0.0.1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (ompi(4, 4, 0, 4), "rank 4 outside world size 4"),
        ({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"}, "not an integer"),
        (ompi(1, 2, 3, 2, MASTER_ADDR="h", MASTER_PORT="1"), "local rank 3 outside 2"),
        ({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0"}, "MPI_LOCALNRANKS"),
    ],
)
def test_inconsistent_variables(env: dict[str, str], message: str) -> None:
    cls = OpenMpiEnvironment if "OMPI_COMM_WORLD_RANK" in env else PmiEnvironment
    with pytest.raises(EnvironmentError_, match=message):
        cls(env, comm=FakeComm(("h", 1))).rank_info()


def test_detection_order() -> None:
    names = [e.__name__ for e in ENVIRONMENTS]
    assert names.index("TorchrunEnvironment") < names.index("OpenMpiEnvironment")
    assert names.index("OpenMpiEnvironment") < names.index("PmiEnvironment")
    if "SlurmEnvironment" in names:  # mpirun inside an allocation sets both
        assert names.index("PmiEnvironment") < names.index("SlurmEnvironment")
    assert ENVIRONMENTS[-1] is SingleProcessEnvironment
    slurm = {"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2"}
    assert isinstance(from_env({**slurm, **ompi(1, 2, 1, 2)}), OpenMpiEnvironment)
    assert isinstance(from_env({"PMI_RANK": "0", "PMI_SIZE": "2"}), PmiEnvironment)
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert isinstance(from_env({**torchrun, **ompi(0, 2, 0, 2)}), TorchrunEnvironment)


# -- the mpi launcher ---------------------------------------------------------------------------
needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI not installed")


def _mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


needs_mpi4py = pytest.mark.skipif(not _mpi4py(), reason="mpi4py not installed")


def test_plan_is_the_mpirun_command(workdir: Path) -> None:
    import os

    proc = hpc_launch(
        [
            "cluster=mpi",
            "dry_run=true",
            f"run_dir={workdir}/run",
            "resources.tasks_per_node=3",
            "cluster.extra_args=[--mca,btl,self\\,tcp]",
        ],
        workdir,
    )
    assert proc.returncode == 0, proc.stderr
    command = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert len(command) == 1
    line = command[0]
    assert line.startswith("mpirun ") and " -np 3 " in line and " --bind-to none " in line
    assert ("--allow-run-as-root" in line) == (os.geteuid() == 0)
    assert f"-x HPC_RUN_DIR={workdir}/run" in line and "-x HPC_LAUNCHER=mpi" in line
    assert "--mca btl self,tcp" in line
    assert line.endswith(f"{sys.executable} -m hpc.run {workdir}/run/config.yaml")
    assert not (workdir / "run").exists()


def test_mpi_launcher_runs_one_node_only(workdir: Path) -> None:
    proc = hpc_launch(["cluster=mpi", "resources.nodes=2"], workdir)
    assert proc.returncode == 2 and "error: resources.nodes:" in proc.stderr


@pytest.mark.slow
@needs_mpirun
@needs_mpi4py
def test_mpirun_two_rank_digits_run(workdir: Path) -> None:
    run = workdir / "run"
    proc = hpc_launch(
        # wait=true: mpirun is the CLI's child and must be followed whatever the default
        [
            "cluster=mpi",
            "wait=true",
            "job.epochs=3",
            "resources.tasks_per_node=2",
            f"run_dir={run}",
        ],
        workdir,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((run / "job.json").read_text())
    assert record["launcher"] == "mpi" and record["job_id"].startswith("mpi-")
    assert record["state"] == "COMPLETED" and record["exit_code"] == 0
    assert record["extra"]["accuracy"] > 0.85
    assert record["mlflow_run_id"], "rank 0 opened the MLflow run"
    rank0 = (run / "logs" / "rank0.log").read_text()
    assert "(world size 2)" in rank0
    assert "via openmpi" in rank0 or "final accuracy" in rank0
    assert (run / "logs" / "rank1.log").exists()
    assert "(world size 2)" in proc.stdout, "rank 0's output reaches the terminal"
    assert "[1,0]<" not in rank0, "mpirun's tags are stripped"


@pytest.mark.slow
@needs_mpirun
@needs_mpi4py
def test_failing_rank_is_named(workdir: Path) -> None:
    script = workdir / "fail_rank1.py"
    script.write_text(
        "import os, sys\n"
        "rank = int(os.environ['OMPI_COMM_WORLD_RANK'])\n"
        "print('rank', rank, 'here', flush=True)\n"
        "sys.exit(3 if rank == 1 else 0)\n"
    )
    run = workdir / "run"
    proc = hpc_launch(
        ["cluster=mpi", "wait=true", f"job.entrypoint={script.name}", f"run_dir={run}"],
        workdir,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    record = json.loads((run / "job.json").read_text())
    assert record["state"] == "FAILED" and record["exit_code"] == 3
    assert record["message"] == "rank 1 failed with exit code 3"
    assert "rank 1 failed with exit code 3" in proc.stderr
    assert "rank 1 here" in (run / "logs" / "rank1.log").read_text()
    assert (run / "logs" / "mpirun.log").exists()
