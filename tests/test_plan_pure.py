"""Plans are pure: ``plan(spec, facts)`` reads nothing of the machine.

What a plan needs of this machine (its GPU count, whether it runs as root) is read by
``Launcher.discover`` before planning and passed in. With every machine probe made to
fail, each backend still plans, and the MPI plan follows the facts it is given, not
the machine it runs on.
"""

from __future__ import annotations

import os
import socket
import sys
import types
from pathlib import Path
from typing import Any, NoReturn

import pytest

from hpc.backend import MachineFacts
from hpc.registry import get_launcher
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import JobSpec, load_spec


def probe(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise AssertionError("plan() read the machine")


@pytest.fixture
def no_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe a plan could make fails the test: NVML, the user id, sockets, hostname."""
    nvml = types.ModuleType("pynvml")
    for name in ("nvmlInit", "nvmlDeviceGetCount", "nvmlShutdown"):
        setattr(nvml, name, probe)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(os, "geteuid", probe)
    monkeypatch.setattr(os, "sched_getaffinity", probe)
    monkeypatch.setattr(socket, "socket", probe)
    monkeypatch.setattr(socket, "gethostname", probe)


def spec(tmp_path: Path, kind: str, *overrides: str) -> JobSpec:
    return load_spec([f"cluster={kind}", f"run_dir={tmp_path}/run", *overrides])


@pytest.mark.parametrize("kind", ["local", "mpi", "slurm", "k8s"])
def test_every_backend_plans_without_reading_the_machine(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    job = spec(tmp_path, kind)  # loading validates, which may read the machine (local)
    request.getfixturevalue("no_machine")
    launcher = get_launcher(kind)
    plan = launcher.plan(job, MachineFacts(gpu_count=0, is_root=False))
    assert plan.text and plan.launcher == kind


def test_mpi_plan_follows_the_given_facts_not_this_machine(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    job = spec(tmp_path, "mpi", "resources.gpus_per_node=4", "resources.tasks_per_node=4")
    request.getfixturevalue("no_machine")
    mpi = get_launcher("mpi")
    plan = mpi.plan(job, MachineFacts(gpu_count=8, is_root=True))  # a GPU node, as root
    assert "--allow-run-as-root" in plan.commands[0]
    assert "--allow-run-as-root" not in mpi.plan(job, MachineFacts(gpu_count=4)).commands[0]
    with pytest.raises(ConfigError) as exc:
        mpi.plan(job, MachineFacts(gpu_count=2))
    assert exc.value.key == "resources.gpus_per_node"
    assert "asks for 4 GPUs but this machine has 2" in str(exc.value)


def test_discovery_reads_this_machine(tmp_path: Path) -> None:
    """What the CLI passes in: this machine's facts, read by the backend's discover()."""
    mpi = get_launcher("mpi")
    facts = mpi.discover(spec(tmp_path, "mpi"))
    assert facts.is_root == (os.geteuid() == 0)
    assert facts.gpu_count == 0  # no GPUs asked for: NVML is not even asked
