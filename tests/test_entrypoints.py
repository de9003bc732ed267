"""Entry points a researcher already has: functions, scripts with args, ``-m`` modules,
torchrun-style scripts on every launcher, and what a plain script gets without the Session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpc.run import config_arguments

from support import REPO, cli_env, hpc_launch

TORCHRUN_SCRIPT = REPO / "examples" / "my_project" / "train_ddp.py"
QUIET = ["tracking.enabled=false"]
DDP_LINE = re.compile(
    r"train_ddp: rank (\d)/(\d) local_rank (\d) master (\S+):(\d+) steps (\d+) hidden (\d+) .* "
    r"replicas_equal (\w+) checksum (\S+)"
)


def ddp_lines(text: str) -> dict[int, re.Match[str]]:
    return {int(m.group(1)): m for m in DDP_LINE.finditer(text)}


def assert_ddp_ran(lines: dict[int, re.Match[str]], world: int, steps: int) -> None:
    """Every rank trained in one process group: same master, equal replicas."""
    assert sorted(lines) == list(range(world)), lines
    assert {m.group(2) for m in lines.values()} == {str(world)}
    assert len({(m.group(4), m.group(5)) for m in lines.values()}) == 1, "one rendezvous"
    assert all(m.group(6) == str(steps) for m in lines.values())
    assert all(m.group(8) == "True" for m in lines.values()), "DDP kept the replicas equal"
    assert len({m.group(9) for m in lines.values()}) == 1


# -- functions: DictConfig or dict, by annotation ------------------------------------------------
FUNCTIONS = """
from __future__ import annotations  # every annotation below is a string

import typing
from typing import Any, Optional

from omegaconf import DictConfig


def as_dict(cfg: dict[str, Any]) -> int: ...
def as_dictconfig(cfg: DictConfig) -> int: ...
def as_optional(cfg: Optional[DictConfig]) -> int: ...
def as_union(cfg: DictConfig | None) -> int: ...
def unannotated(cfg): ...
def no_parameters(): ...
def unresolvable(cfg: NoSuchName) -> int: ...
def unresolvable_dictconfig(cfg: "omegaconf.DictConfig", other: NoSuchName) -> int: ...
"""


def test_function_gets_the_config_as_its_annotation_asks(tmp_path: Path) -> None:
    from omegaconf import DictConfig

    module_file = tmp_path / "annotated_functions.py"
    module_file.write_text(FUNCTIONS)
    namespace: dict[str, Any] = {"__name__": "annotated_functions"}
    exec(compile(module_file.read_text(), str(module_file), "exec"), namespace)
    cfg = {"job": {"name": "x", "entrypoint": "m:f"}, "model": {"hidden": 8}}
    kinds = {}
    for name in ("as_dict", "as_dictconfig", "as_optional", "as_union", "unannotated"):
        (arg,) = config_arguments(namespace[name], cfg)
        kinds[name] = type(arg).__name__
        assert arg["model"]["hidden"] == 8
    assert kinds == {
        "as_dict": "dict",
        "as_dictconfig": "DictConfig",
        "as_optional": "DictConfig",
        "as_union": "DictConfig",
        "unannotated": "dict",  # today's behaviour (hpc.jobs.digits:main takes a dict)
    }
    assert config_arguments(namespace["no_parameters"], cfg) == []
    assert type(config_arguments(namespace["unresolvable"], cfg)[0]) is dict
    (conf,) = config_arguments(namespace["unresolvable_dictconfig"], cfg)
    assert isinstance(conf, DictConfig) and conf.model.hidden == 8
    with pytest.raises(Exception, match="nosuchkey"):
        conf.model.nosuchkey = 1  # struct mode, as Hydra hands a config to a task


USER_PACKAGE = {
    "userpkg/__init__.py": "",
    "userpkg/entry.py": """
from __future__ import annotations
import json, os
from omegaconf import DictConfig

def run(cfg: DictConfig) -> int:
    out = {"type": type(cfg).__name__, "hidden": cfg.job.seed, "rank": os.environ["RANK"]}
    with open(os.path.join(cfg.run_dir, f"seen{os.environ['RANK']}.json"), "w") as fh:
        json.dump(out, fh)
    return 0
""",
    "userpkg/tool/__init__.py": "",
    "userpkg/tool/__main__.py": """
import os, sys
print(f"tool argv {sys.argv[1:]} name {__name__} rank {os.environ['RANK']}/"
      f"{os.environ['WORLD_SIZE']} master {os.environ['MASTER_ADDR']}", flush=True)
""",
    "userpkg/nomain/__init__.py": "",
    "show_argv.py": """
import sys
print(f"script argv {sys.argv[1:]} argv0 {sys.argv[0]} name {__name__}", flush=True)
""",
}


@pytest.fixture
def project(workdir: Path) -> Path:
    """A user's code in the working directory, installed nowhere."""
    for rel, text in USER_PACKAGE.items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return workdir


@pytest.mark.slow
def test_function_of_a_package_in_the_working_directory(project: Path) -> None:
    run_dir = project / "run"
    proc = hpc_launch(
        ["job.entrypoint=userpkg.entry:run", "job.seed=7", f"run_dir={run_dir}", *QUIET], project
    )
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        seen = json.loads((run_dir / f"seen{rank}.json").read_text())
        assert seen == {"type": "DictConfig", "hidden": 7, "rank": str(rank)}


@pytest.mark.slow
def test_script_and_module_get_job_args(project: Path) -> None:
    args = "job.args=[--alpha,'1','two words','--flag=x y']"
    run_dir = project / "script"
    proc = hpc_launch(["job.entrypoint=show_argv.py", args, f"run_dir={run_dir}", *QUIET], project)
    assert proc.returncode == 0, proc.stderr
    expected = ["--alpha", "1", "two words", "--flag=x y"]
    log = (run_dir / "logs" / "rank1.log").read_text()
    assert f"script argv {expected} argv0 {project / 'show_argv.py'} name __main__" in log
    run_dir = project / "module"
    proc = hpc_launch(
        ["job.entrypoint=-m userpkg.tool", args, f"run_dir={run_dir}", *QUIET], project
    )
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        log = (run_dir / "logs" / f"rank{rank}.log").read_text()
        assert f"tool argv {expected} name __main__ rank {rank}/2 master 127.0.0.1" in log


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("-m nosuch.module", "-m nosuch.module: module 'nosuch.module' cannot be found"),
        ("-m userpkg.nomain", "package 'userpkg.nomain' has no __main__ module to run with -m"),
        ("-m", "'-m' takes one module name"),
        ("-m userpkg.tool extra", "'-m' takes one module name"),
        ("-m 1bad", "'-m' takes one module name"),
        ("userpkg.entry:no-such", "is not 'package.module:function', 'script.py' or '-m"),
        ("nosuch.pkg:main", "module 'nosuch.pkg' cannot be found"),
    ],
)
def test_bad_entrypoints_are_refused_before_submit(
    project: Path, entrypoint: str, message: str
) -> None:
    proc = hpc_launch([f"job.entrypoint={entrypoint}", "cluster=slurm", "dry_run=true"], project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpc-launch: error: job.entrypoint:"), lines
    assert message in lines[0]
    assert not (project / "outputs").exists()


def test_module_entrypoint_in_the_slurm_dry_run(project: Path) -> None:
    proc = hpc_launch(
        ["job.entrypoint=-m userpkg.tool", "job.args=[--n,'3']", "cluster=slurm", "dry_run=true"],
        project,
    )
    assert proc.returncode == 0, proc.stderr
    assert "-m hpc.run" in proc.stdout


# -- a torchrun-style script on every launcher --------------------------------------------------
@pytest.mark.slow
def test_torchrun_script_local(workdir: Path) -> None:
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            f"job.entrypoint={TORCHRUN_SCRIPT}",
            "job.args=[--steps,'6']",
            "resources.tasks_per_node=3",
            f"run_dir={run_dir}",
            *QUIET,
        ],
        workdir,
    )
    assert proc.returncode == 0, proc.stderr
    text = "".join((run_dir / "logs" / f"rank{r}.log").read_text() for r in range(3))
    assert_ddp_ran(ddp_lines(text), 3, 6)


needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI not installed")


@pytest.mark.slow
@needs_mpirun
def test_torchrun_script_under_mpirun(workdir: Path) -> None:
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            "cluster=mpi",
            "wait=true",
            f"job.entrypoint={TORCHRUN_SCRIPT}",
            "job.args=[--steps,'5']",
            f"run_dir={run_dir}",
            *QUIET,
        ],
        workdir,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = "".join((run_dir / "logs" / f"rank{r}.log").read_text() for r in range(2))
    assert "via openmpi" in text, "ranks came from Open MPI's variables"
    assert_ddp_ran(ddp_lines(text), 2, 5)


@pytest.mark.slow
@needs_mpirun
def test_torchrun_script_as_the_mpijob_runs_it(workdir: Path) -> None:
    """The MPIJob's launcher command, run here by Open MPI: only worker 0's DNS name and the
    pod paths are swapped for local ones (no cluster can be reached from the tests)."""
    proc = hpc_launch(
        [
            "cluster=k8s",
            "dry_run=true",
            f"job.entrypoint={TORCHRUN_SCRIPT}",
            "job.args=[--steps,'4']",
            "resources.tasks_per_node=2",
        ],
        workdir,
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    config = yaml.safe_load(
        next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"]
    )
    mpijob = next(d for d in docs if d["kind"] == "MPIJob")
    launcher = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    command: list[str] = launcher["command"]
    assert command[0] == "mpirun" and command[-4:-1] == ["python", "-m", "hpc.run"]
    assert config["job"]["entrypoint"] == str(TORCHRUN_SCRIPT)
    assert config["job"]["args"] == ["--steps", "4"]
    exported = dict(command[i + 1].split("=", 1) for i, w in enumerate(command) if w == "-x")
    assert exported["MASTER_ADDR"].endswith(".svc") and exported["MASTER_PORT"] == "29500"
    # Here: loopback for worker 0, a free port, local paths for the pod's volume.
    run_dir = workdir / "pod-run"
    run_dir.mkdir()
    config.update(run_dir=str(run_dir), checkpoint=dict(config["checkpoint"], dir=None))
    config_file = run_dir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    swap = {
        exported["MASTER_ADDR"]: "127.0.0.1",
        exported["HPC_CONFIG_FILE"]: str(config_file),
        exported["HPC_RUN_DIR"]: str(run_dir),
        "29500": str(_free_port()),
    }
    local = []
    for word in command[:-4]:
        key, sep, value = word.partition("=")
        local.append(f"{key}={swap.get(value, value)}" if sep else word)
    if os.geteuid() != 0:
        local.remove("--allow-run-as-root")
    # One file per rank: two ranks writing to mpirun's merged stdout can interleave mid-line.
    per_rank = workdir / "mpirun-output"
    local[1:1] = ["--output-filename", str(per_rank)]
    local += [sys.executable, "-m", "hpc.run", str(config_file)]
    done = subprocess.run(
        local, cwd=workdir, env=cli_env(workdir), capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rank_out = "\n".join(p.read_text() for p in sorted(per_rank.glob("*/rank.*/stdout")))
    assert "via openmpi" in rank_out
    assert_ddp_ran(ddp_lines(rank_out), 2, 4)
    assert {m.group(4) for m in ddp_lines(rank_out).values()} == {"127.0.0.1"}


def _free_port() -> int:
    from hpc.ports import free_port

    return free_port()


# -- what a plain script gets without the Session ------------------------------------------------
PLAIN_PROBE = """
import os, time
print(f"probe rank {os.environ['RANK']} affinity {sorted(os.sched_getaffinity(0))} "
      f"omp {os.environ.get('OMP_NUM_THREADS')} "
      f"async {os.environ.get('TORCH_NCCL_ASYNC_ERROR_HANDLING')} "
      f"ib_timeout {os.environ.get('NCCL_IB_TIMEOUT')} "
      f"gpu {os.environ.get('HPC_PLACEMENT_GPU')} order {os.environ.get('CUDA_DEVICE_ORDER')} "
      f"hca {os.environ.get('NCCL_IB_HCA')} "
      f"signal {os.environ['HPC_PREEMPTION_SIGNAL']} "
      f"ckpt {os.environ['HPC_CHECKPOINT_DIR']}", flush=True)
time.sleep(1.0)  # the accounting sampler (interval 0.2 s) takes a few samples
"""
TOPO = REPO / "tests" / "fixtures" / "topologies" / "hgx-h100-8gpu-8nic-ib.txt"


def probe(run_dir: Path) -> dict[int, str]:
    found = {}
    for rank in (0, 1):
        text = (run_dir / "logs" / f"rank{rank}.log").read_text()
        match = re.search(r"probe rank (\d) .*", text)
        assert match, text
        found[int(match.group(1))] = match.group(0)
    return found


@pytest.mark.slow
def test_plain_script_gets_placement_nccl_and_accounting(workdir: Path) -> None:
    script = workdir / "probe.py"
    script.write_text(PLAIN_PROBE)
    run_dir = workdir / "run"
    proc = hpc_launch(
        [
            f"job.entrypoint={script}",
            f"run_dir={run_dir}",
            "nccl=infiniband",
            "+nccl.env.NCCL_IB_TIMEOUT=19",
            "accounting.interval_s=0.2",
            *QUIET,
        ],
        workdir,
    )
    assert proc.returncode == 0, proc.stderr
    lines = probe(run_dir)
    sets = {
        r: set(map(int, re.search(r"affinity \[([^\]]*)\]", line).group(1).split(", ")))
        for r, line in lines.items()
    }
    if len(os.sched_getaffinity(0)) >= 2:
        assert sets[0] and sets[1] and not sets[0] & sets[1], sets
    for line in lines.values():
        assert "async 1" in line and "ib_timeout 19" in line  # the profile, then nccl.env
        assert "omp 1" in line
        assert "signal SIGUSR2" in line  # the script's to handle (see the signal tests)
        assert f"ckpt {run_dir / 'checkpoints'}" in line
    samples = (run_dir / "accounting" / "node0.jsonl").read_text().splitlines()
    assert len(samples) >= 3, samples
    record = json.loads((run_dir / "job.json").read_text())
    assert record["accounting_file"] == str(run_dir / "accounting")
    assert record["extra"]["accounting"]["nodes"] == 1
    assert record["extra"]["accounting"]["samples"] >= 2
    assert not (run_dir / "FINISHED").exists(), "only the Session writes FINISHED"


@pytest.mark.slow
def test_plain_script_gets_its_gpu_and_nics_from_the_topology(workdir: Path) -> None:
    script = workdir / "probe.py"
    script.write_text(PLAIN_PROBE)
    run_dir = workdir / "run"
    proc = hpc_launch(
        [f"job.entrypoint={script}", f"run_dir={run_dir}", f"placement.topo_file={TOPO}", *QUIET],
        workdir,
    )
    assert proc.returncode == 0, proc.stderr
    lines = probe(run_dir)
    for rank, line in lines.items():
        assert f"gpu {rank} order PCI_BUS_ID" in line
        assert re.search(r"hca =mlx5_\d", line), line
    assert lines[0].split("hca ")[1].split()[0] != lines[1].split("hca ")[1].split()[0]


UNHANDLED = """
import time
print("ready", flush=True)
time.sleep(60)
print("never", flush=True)
"""


def ready_worker(workdir: Path, script: Path) -> subprocess.Popen[str]:
    """``python -m hpc.run`` on the composed config of ``script``, once it printed ready."""
    cfg = hpc_launch(
        ["--cfg", f"job.entrypoint={script}", "accounting.enabled=false", *QUIET], workdir
    )
    assert cfg.returncode == 0, cfg.stderr
    config_file = workdir / "config.yaml"
    config_file.write_text(cfg.stdout)
    worker = subprocess.Popen(
        [sys.executable, "-m", "hpc.run", str(config_file)],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    for line in worker.stdout:
        if line.strip() == "ready":
            break
    return worker


@pytest.mark.parametrize("signame", ["SIGUSR2", "SIGTERM"])
def test_plain_script_without_a_handler_is_ended_by_the_signal(workdir: Path, signame: str) -> None:
    """As under srun or torchrun: no handler of its own, the default action."""
    script = workdir / "unhandled.py"
    script.write_text(UNHANDLED)
    worker = ready_worker(workdir, script)
    assert worker.stdout is not None
    time.sleep(0.2)
    worker.send_signal(getattr(signal, signame))
    assert worker.wait(timeout=30) == -getattr(signal, signame)


RESUMABLE = """
import json, os, signal, sys, time
from pathlib import Path

TOTAL = int(sys.argv[1])
ckpt = Path(os.environ["HPC_CHECKPOINT_DIR"])
stop = []
signal.signal(getattr(signal, os.environ["HPC_PREEMPTION_SIGNAL"]), lambda *_: stop.append(1))
done = 0
if (ckpt / "LATEST").exists():
    done = json.loads((ckpt / (ckpt / "LATEST").read_text() / "state.json").read_text())["step"]
    print(f"resumed at step {done}", flush=True)
for step in range(done + 1, TOTAL + 1):
    time.sleep(0.1)
    print(f"did step {step}", flush=True)
    if stop:  # checkpoint, point LATEST at it, exit with the preempted code
        target = ckpt / f"step-{step:09d}"
        target.mkdir(parents=True, exist_ok=True)
        (target / "state.json").write_text(json.dumps({"step": step}))
        (ckpt / "LATEST.tmp").write_text(target.name)
        os.replace(ckpt / "LATEST.tmp", ckpt / "LATEST")
        print(f"checkpointed at step {step}", flush=True)
        sys.exit(75)
print(f"finished {TOTAL} steps", flush=True)
"""


def assert_each_step_once(text: str, total: int) -> int:
    steps = [int(s) for s in re.findall(r"^did step (\d+)$", text, re.M)]
    assert sorted(steps) == list(range(1, total + 1)), steps
    (stopped,) = map(int, re.findall(r"^checkpointed at step (\d+)$", text, re.M))
    assert f"resumed at step {stopped}" in text
    return stopped


@pytest.mark.slow
def test_plain_script_checkpoints_exits_75_and_is_restarted_locally(workdir: Path) -> None:
    script = workdir / "resumable.py"
    script.write_text(RESUMABLE)
    run_dir = workdir / "run"
    launch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpc.cli.launch",
            f"job.entrypoint={script}",
            "job.args=['60']",
            "resources.tasks_per_node=1",
            f"run_dir={run_dir}",
            *QUIET,
        ],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = run_dir / "logs" / "rank0.log"
    deadline = time.monotonic() + 60
    while "did step 5" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and launch.poll() is None
        time.sleep(0.1)
    launch.send_signal(signal.SIGUSR2)
    out, err = launch.communicate(timeout=120)
    assert launch.returncode == 0, out + err
    stopped = assert_each_step_once(log.read_text(), 60)
    record = json.loads((run_dir / "job.json").read_text())
    assert record["state"] == "COMPLETED" and record["extra"]["restart_count"] == 1
    assert record["extra"]["restart_step"] == stopped


SESSION_LATER = """
import time
from hpc.runtime.session import Session  # imported: stop signals are kept for it

print("ready", flush=True)
time.sleep(1.5)  # the signal arrives here, before the Session exists
with Session.from_env() as s:
    assert s.should_checkpoint(1), "the early signal reached the Session"
    s.save_checkpoint(1, {"step": 1})
    print(f"stop requested {s.stop_requested}", flush=True)
"""


def test_a_signal_before_the_session_opens_is_kept_for_it(workdir: Path) -> None:
    script = workdir / "session_later.py"
    script.write_text(SESSION_LATER)
    worker = ready_worker(workdir, script)
    assert worker.stdout is not None
    worker.send_signal(signal.SIGUSR2)
    out = worker.stdout.read()
    assert worker.wait(timeout=60) == 75, out
    assert "stop requested True" in out
    assert "stopping at step 1 (SIGUSR2): checkpoint step-000000001 committed" in out
