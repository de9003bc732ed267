"""The MPI launcher: the job under a local ``mpirun`` (Open MPI).

The ranks find their rank, world size and local rank in Open MPI's
``OMPI_COMM_WORLD_*`` variables (:mod:`hpc.runtime.mpi_env`); rank 0 picks the
torch.distributed rendezvous and broadcasts it with mpi4py. mpirun runs with
``--tag-output``: the launcher splits the merged output into ``logs/rankN.log``
(rank 0 is also streamed to the terminal) and keeps mpirun's own messages in
``logs/mpirun.log``. Supervision (signals, grace period, job.json) is the local
launcher's; a failing rank is named from mpirun's report.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from hpc.exitcodes import shell_code
from hpc.launchers.base import NOTHING_DISCOVERED, Launcher, MachineFacts, Plan, prepare_run
from hpc.launchers.local import (
    WORKER_MODULE,
    LocalJob,
    SignalMeaning,
    signal_group,
    stopped_status,
)
from hpc.quoting import shell_join, shell_word
from hpc.rundir import records
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import JobSpec
from hpc.spec.rules import check_local_gpus, local_gpu_count

if TYPE_CHECKING:
    import subprocess

# Set by the ranks' environment, never inherited from the shell that runs hpc-launch:
# a stray RANK/MASTER_PORT would make the ranks take the torchrun contract instead.
_SCRUB = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_TAG = re.compile(rb"\[(\d+),(\d+)\]<(?:stdout|stderr|stddiag)>:")
_FAILED_EXIT = re.compile(r"Process name: \[\[\d+,\d+\],(\d+)\]\s+Exit code:\s+(\d+)")
_FAILED_SIGNAL = re.compile(r"process rank (\d+) with PID \d+ on node \S+ exited on signal (\d+)")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class MpiClusterConfig:
    """Local ``mpirun`` (Open MPI): ranks discover each other through MPI."""

    kind: str = "mpi"
    mpirun: str = "mpirun"
    extra_args: list[str] = field(default_factory=list)


class MpiLauncher(Launcher):
    schema = MpiClusterConfig
    name = "mpi"

    def discover(self, spec: JobSpec) -> MachineFacts:
        gpus = int(spec.resources["gpus_per_node"])
        return MachineFacts(gpu_count=local_gpu_count() if gpus else 0, is_root=is_root())

    def plan(self, spec: JobSpec, facts: MachineFacts = NOTHING_DISCOVERED) -> Plan:
        res = spec.resources
        cluster = spec.config["cluster"]
        if int(res["nodes"]) != 1:
            raise ConfigError(
                "resources.nodes",
                f"the mpi launcher runs 1 node (this machine), got {res['nodes']}",
            )
        check_local_gpus(int(res["gpus_per_node"]), facts.gpu_count)
        mpirun = str(cluster.get("mpirun") or "").strip()
        if not mpirun:
            raise ConfigError("cluster.mpirun", "must name the mpirun program")
        ntasks = int(res["tasks_per_node"])
        env = {
            "HPC_RUN_DIR": str(spec.run_dir),
            "HPC_CONFIG_FILE": str(spec.config_file),
            "HPC_LAUNCHER": self.name,
            "PYTHONUNBUFFERED": "1",
        }
        command = [mpirun]
        if facts.is_root:
            command.append("--allow-run-as-root")
        command += ["--oversubscribe", "-np", str(ntasks), "--bind-to", "none", "--tag-output"]
        for key, value in env.items():
            command += ["-x", f"{key}={value}"]
        # Forwarded by name from mpirun's environment (set at submit): the job id is not
        # known yet, and a tracking URI may hold credentials that must not be on a command line.
        passed = {"HPC_JOB_ID": ""}
        command += ["-x", "HPC_JOB_ID"]
        if spec.tracking_uri:
            passed["MLFLOW_TRACKING_URI"] = spec.tracking_uri
            command += ["-x", "MLFLOW_TRACKING_URI"]
        passed.update(spec.secrets)  # by name too: secrets stay off the command line
        for key in sorted(spec.secrets):
            command += ["-x", key]
        command += [str(a) for a in cluster.get("extra_args") or []]
        command += [sys.executable, "-m", WORKER_MODULE, str(spec.config_file)]
        return Plan(
            launcher=self.name,
            spec=spec,
            text=_render(spec, command, ntasks),
            commands=[command],
            env=passed,
            files={spec.config_file.name: spec.config_yaml()},
        )

    def submit(self, plan: Plan) -> MpiJob:
        job_id = f"mpi-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
        prepare_run(plan, job_id)
        job = MpiJob(plan, job_id)
        job.start()
        return job


def _render(spec: JobSpec, command: list[str], ntasks: int) -> str:
    lines = [
        "# hpc-launch plan (mpi launcher)",
        f"# job: {shell_word(spec.name)}    run_dir: {shell_word(spec.run_dir)}",
        f"# {ntasks} rank(s) under mpirun on this machine; rank 0 picks MASTER_ADDR/MASTER_PORT",
        "# and broadcasts them (mpi4py). HPC_JOB_ID and MLFLOW_TRACKING_URI come from the",
        "# environment at submit. Files written first: config.yaml (resolved config), job.json.",
        shell_join(command),
    ]
    return "\n".join(lines) + "\n"


class MpiJob(LocalJob):
    """One ``mpirun`` process; its output split per rank."""

    def __init__(self, plan: Plan, job_id: str) -> None:
        super().__init__(plan, job_id)
        self._files: dict[str, IO[bytes]] = {}
        self._mpirun_lines: list[str] = []

    def start(self) -> None:
        import subprocess  # noqa: PLC0415 (lazy: not needed to plan)

        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update(self.plan.env)
        env["HPC_JOB_ID"] = self.job_id
        try:
            proc = subprocess.Popen(
                self.plan.commands[0],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: Ctrl-C reaches mpirun once, from us
                cwd=os.getcwd(),
            )
        except FileNotFoundError:
            records.update(self.run_dir, state="FAILED", exit_code=127, message="mpirun not found")
            raise ConfigError(
                "cluster.mpirun", f"{self.plan.commands[0][0]!r} not found (install Open MPI)"
            ) from None
        self.procs.append(proc)
        self.reader = threading.Thread(
            target=self._demux, args=(proc,), daemon=True, name="mpirun-output"
        )
        self.reader.start()
        records.update(self.run_dir, state="RUNNING", extra={"launcher_pid": os.getpid()})

    def _log(self, name: str) -> IO[bytes]:
        if name not in self._files:
            self._files[name] = open(self.run_dir / "logs" / name, "ab")  # noqa: SIM115
        return self._files[name]

    def _demux(self, proc: subprocess.Popen[bytes]) -> None:
        """Split mpirun's tagged output into per-rank lines.

        Open MPI tags every write a rank makes, not every line: ``print("a", "b")``
        unbuffered arrives as ``[1,0]<stdout>:a[1,0]<stdout>: [1,0]<stdout>:b...\\n``,
        and fragments of different ranks may share a line. Each rank's fragments are
        joined until a fragment ends the line.
        """
        assert proc.stdout is not None
        partial: dict[int, bytes] = {}
        try:
            for raw in iter(proc.stdout.readline, b""):
                parts = _TAG.split(raw)
                if len(parts) == 1:  # mpirun's own message
                    self._emit(None, raw)
                    continue
                if parts[0].strip():
                    self._emit(None, parts[0])
                for i in range(1, len(parts), 3):
                    rank, payload = int(parts[i + 1]), parts[i + 2]
                    partial[rank] = partial.get(rank, b"") + payload
                    if payload.endswith(b"\n"):
                        self._emit(rank, partial.pop(rank))
            for rank, rest in partial.items():
                self._emit(rank, rest)
        finally:
            for fh in self._files.values():
                with contextlib.suppress(OSError):
                    fh.close()

    def _emit(self, rank: int | None, body: bytes) -> None:
        line = body.decode(errors="replace").rstrip("\n")
        if rank is None:
            self._mpirun_lines.append(line)
        fh = self._log("mpirun.log" if rank is None else f"rank{rank}.log")
        fh.write(line.encode() + b"\n")
        fh.flush()
        if rank in (0, None):  # rank 0 and mpirun's own messages reach the terminal
            if rank == 0:
                self.last_line = line
            if self.on_line:
                self.on_line(line)

    def signal_meaning(self, signum: int) -> SignalMeaning:
        """mpirun passes SIGUSR1/2 on to the ranks: the preemption signal among them
        restarts, the other is only delivered; any other signal stops the job."""
        if signum in (signal.SIGUSR1, signal.SIGUSR2):
            return "restart" if signum == self.restart_signal() else "pass"
        return "stop"

    def signal_workers(self, signum: int) -> None:
        """SIGUSR1/2 to mpirun only (it forwards them to every rank); others to the group."""
        for proc in self.procs:
            if signum in (signal.SIGUSR1, signal.SIGUSR2):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)
            else:
                signal_group(proc, signum)

    def exit_status(self, codes: list[int]) -> tuple[int, str | None]:
        """mpirun's exit code; a failing rank is named from mpirun's report."""
        if self.stop_signal is not None:
            return stopped_status(self.stop_signal)
        if codes[0] != 0:
            code = shell_code(codes[0])
            return code, self.failure() or f"mpirun exited with code {code}"
        return 0, None

    def failure(self) -> str | None:
        """The first failing rank, from mpirun's report."""
        text = "\n".join(self._mpirun_lines)
        if match := _FAILED_EXIT.search(text):
            return f"rank {match.group(1)} failed with exit code {match.group(2)}"
        if match := _FAILED_SIGNAL.search(text):
            name = signal.Signals(int(match.group(2))).name
            return f"rank {match.group(1)} was killed by {name}"
        return None


__all__ = ["MpiJob", "MpiLauncher"]
