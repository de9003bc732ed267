"""The local launcher: the job as worker processes on this machine (torchrun's contract).

Each worker gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT. Workers run in their own process groups; the launcher forwards
Ctrl-C/SIGTERM to all of them, reaps them, and fails the job with the exit code
of the first worker that fails, naming the rank that failed for its own reason
(:mod:`hpc.runtime.failures`). Once one worker has exited normally, the others
get ``cluster.exit_grace_s`` seconds to follow; a worker still running then is
killed and named, and the job fails (a rank hung at exit must not hang the launcher).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hpc.defaults import EXIT_GRACE_S, PREEMPTION_SIGNAL
from hpc.exitcodes import COMPLETED_IDLE, FAILED_HANG, PREEMPTED, shell_code
from hpc.launchers.base import (
    NOTHING_DISCOVERED,
    JobHandle,
    Launcher,
    MachineFacts,
    Plan,
    prepare_run,
)
from hpc.ports import free_port  # also importable from here (the tests)
from hpc.quoting import shell_join, shell_word
from hpc.rundir import records
from hpc.runtime import failures, heartbeat
from hpc.runtime.checkpoint import latest_step
from hpc.runtime.preemption import restarts_without_progress, signal_number
from hpc.runtime.watchdog import Watchdog, dump_and_record
from hpc.spec.jobspec import JobSpec, redact_uri

if TYPE_CHECKING:
    import subprocess

WORKER_MODULE = "hpc.run"
SignalMeaning = Literal["restart", "stop", "pass"]
PORT_PLACEHOLDER = "auto"


@dataclass
class LocalClusterConfig:
    kind: str = "local"
    master_addr: str = "127.0.0.1"
    # Seconds between SIGTERM and SIGKILL when workers are stopped.
    kill_grace_s: float = 10.0
    # Seconds the other workers may take to exit once one has exited normally; then
    # they are killed and named (a rank hung at exit), and the job fails.
    exit_grace_s: float = EXIT_GRACE_S


class LocalLauncher(Launcher):
    schema = LocalClusterConfig
    name = "local"

    def plan(self, spec: JobSpec, facts: MachineFacts = NOTHING_DISCOVERED) -> Plan:
        ntasks = int(spec.resources["tasks_per_node"])
        cluster = spec.config["cluster"]
        env = {
            "MASTER_ADDR": str(cluster["master_addr"]),
            "MASTER_PORT": PORT_PLACEHOLDER,
            "WORLD_SIZE": str(ntasks),
            "LOCAL_WORLD_SIZE": str(ntasks),
            "HPC_RUN_DIR": str(spec.run_dir),
            "HPC_CONFIG_FILE": str(spec.config_file),
            "HPC_LAUNCHER": self.name,
            "PYTHONUNBUFFERED": "1",
        }
        if spec.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = spec.tracking_uri
        command = [sys.executable, "-m", WORKER_MODULE, str(spec.config_file)]
        commands = [command for _ in range(ntasks)]
        return Plan(
            launcher=self.name,
            spec=spec,
            text=_render(spec, env, command, ntasks),
            commands=commands,
            env=env,
            files={spec.config_file.name: spec.config_yaml()},
        )

    def submit(self, plan: Plan) -> LocalJob:
        job_id = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
        prepare_run(plan, job_id)
        job = LocalJob(plan, job_id)
        job.start()
        return job


def _render(spec: JobSpec, env: dict[str, str], command: list[str], ntasks: int) -> str:
    shown = dict(env)
    if "MLFLOW_TRACKING_URI" in shown:
        shown["MLFLOW_TRACKING_URI"] = redact_uri(shown["MLFLOW_TRACKING_URI"]) or ""
    lines = [
        "# hpc-launch plan (local launcher)",
        f"# job: {shell_word(spec.name)}    run_dir: {shell_word(spec.run_dir)}",
        f"# {ntasks} worker process(es) on this machine; MASTER_PORT=auto is a free port",
        "# chosen at start. Files written first: config.yaml (resolved config), job.json.",
    ]
    if spec.secrets:
        lines.append(f"# secrets.env (mode 0600) adds: {' '.join(sorted(spec.secrets))}")
    common = " ".join(f"{k}={shell_word(v)}" for k, v in shown.items())
    for rank in range(ntasks):
        lines.append(
            f"env {common} RANK={rank} LOCAL_RANK={rank} {shell_join(command)}"
            f"  > {shell_word(spec.run_dir / 'logs' / f'rank{rank}.log')}"
        )
    return "\n".join(lines) + "\n"


class LocalJob(JobHandle):
    """Worker processes of one local run, supervised (signals, grace periods, restarts).

    A subclass that runs the ranks differently (:class:`hpc.launchers.mpi.MpiJob`: one
    ``mpirun``) overrides only these declared hooks:

    - :meth:`start`: start one attempt's processes into ``procs`` (and ``reader``, the
      thread that reads the output shown on the terminal, if any) and record RUNNING;
    - :meth:`signal_meaning`: what a forwarded signal asks (restart, stop, or nothing);
    - :meth:`signal_workers`: deliver a forwarded signal to the processes;
    - :meth:`exit_status`: the job's exit code and message once the processes exited.

    It may read :attr:`stop_signal`; the supervision itself is this class's.
    """

    def __init__(self, plan: Plan, job_id: str) -> None:
        self.plan = plan
        self.job_id = job_id
        self.run_dir = plan.run_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stop_signal: int | None = None
        self._restart_requested = False
        self._failed_rank: int | None = None
        self._failed_order: list[int] = []  # ranks that failed, in the order seen
        self._hung: tuple[list[int], int] | None = None  # (ranks still running, rank done)
        preemption = plan.spec.config.get("preemption") or {}
        self._preempt_signum = signal_number(str(preemption.get("signal", PREEMPTION_SIGNAL)))
        self._preemption = preemption
        self.restarts = 0
        self._give_up: str | None = None
        self._exit_code: int | None = None
        self._grace = float(plan.spec.config["cluster"].get("kill_grace_s", 10.0))
        self._exit_grace = float(plan.spec.config["cluster"].get("exit_grace_s", EXIT_GRACE_S))
        self.last_line = ""
        self.message: str | None = None
        self.watchdog: Watchdog | None = None  # this attempt's (fault.*), made by start()
        self._hang_message: str | None = None
        self.on_line: Callable[[str], None] | None = None
        # The thread reading the output shown on the terminal; joined once the processes exit.
        self.reader: threading.Thread | None = None

    def log_path(self, rank: int = 0) -> Path:
        return self.run_dir / "logs" / f"rank{rank}.log"

    def start(self) -> None:
        """Hook: start one attempt's worker processes (again after a preemption)."""
        env = dict(os.environ)
        env.update(self.plan.env)
        env.update(self.plan.spec.secrets)  # never in the plan: also in secrets.env (0600)
        env["MASTER_PORT"] = str(free_port(env["MASTER_ADDR"]))
        env["HPC_JOB_ID"] = self.job_id
        import subprocess  # noqa: PLC0415 (lazy: ~8 ms with socket, not needed to plan)

        failures.clear(self.run_dir)
        heartbeat.clear(self.run_dir)  # this attempt's reports only
        self.watchdog = Watchdog(self.run_dir, self.plan.spec.config.get("fault") or {})
        for rank, command in enumerate(self.plan.commands):
            rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank))
            log = open(self.log_path(rank), "ab")  # noqa: SIM115 - closed by the reader/after exit
            stdout = subprocess.PIPE if rank == 0 else log
            proc = subprocess.Popen(
                command,
                env=rank_env,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: signals reach its children too
                cwd=os.getcwd(),
            )
            if rank == 0:
                self.reader = threading.Thread(
                    target=self._pump, args=(proc, log), daemon=True, name="rank0-output"
                )
                self.reader.start()
            else:
                log.close()
            self.procs.append(proc)
        records.update(
            self.run_dir,
            state="RUNNING",
            extra={"launcher_pid": os.getpid(), "master_port": env["MASTER_PORT"]},
        )

    def _pump(self, proc: subprocess.Popen[bytes], log: object) -> None:
        assert proc.stdout is not None
        with log:  # type: ignore[attr-defined]
            for raw in iter(proc.stdout.readline, b""):
                log.write(raw)  # type: ignore[attr-defined]
                log.flush()  # type: ignore[attr-defined]
                line = raw.decode(errors="replace").rstrip("\n")
                self.last_line = line
                if self.on_line:
                    self.on_line(line)

    # -- JobHandle -------------------------------------------------------------
    def status(self) -> str:
        if self._exit_code is None:
            return "RUNNING" if self.procs else "PENDING"
        if self._hang_message is not None:
            return "FAILED_HANG"
        if self._stop_signal is not None:
            return "CANCELLED"
        if self._exit_code == COMPLETED_IDLE:
            return "COMPLETED_IDLE"
        return "COMPLETED" if self._exit_code == 0 else "FAILED"

    def cancel(self) -> None:
        self.forward(signal.SIGTERM)

    def logs(self, follow: bool = False) -> Iterator[str]:
        yield from follow_file(self.log_path(0), follow=follow, done=self.done)

    def restart_signal(self) -> int | None:
        return self._preempt_signum

    def forward(self, signum: int) -> None:
        """Send ``signum`` to every live worker's process group.

        The preemption signal means "checkpoint and restart" (as a requeue would);
        SIGTERM/SIGINT mean "checkpoint and stop".
        """
        meaning = self.signal_meaning(signum)
        if meaning == "restart":
            self._restart_requested = True
        elif meaning == "stop":
            self._stop_signal = self._stop_signal or signum
        self.signal_workers(signum)

    def signal_meaning(self, signum: int) -> SignalMeaning:
        """Hook: what a forwarded signal asks of the job: ``restart`` (checkpoint, then
        restart the workers), ``stop`` (checkpoint and stop) or ``pass`` (delivered only)."""
        return "restart" if signum == self._preempt_signum else "stop"

    def signal_workers(self, signum: int) -> None:
        """Hook: deliver a forwarded signal; here to every worker's process group."""
        for proc in self.procs:
            signal_group(proc, signum)

    @property
    def stop_signal(self) -> int | None:
        """The first stop signal forwarded (SIGTERM, SIGINT, ...), if any."""
        return self._stop_signal

    def wait(self) -> int:
        """Supervise the workers (restarting them after a preemption); return the exit code."""
        last_step = latest_step(self.plan.spec.checkpoint_dir)
        idle_restarts = 0
        while True:
            codes = self._supervise()
            preempted = all(code == PREEMPTED for code in codes)
            if not (preempted and self._restart_requested and self._stop_signal is None):
                return self._finish(codes)
            step = latest_step(self.plan.spec.checkpoint_dir)
            idle_restarts, exhausted = restarts_without_progress(
                idle_restarts, step, last_step, self._preemption
            )
            last_step = step
            if exhausted:
                self._failed_rank = 0
                self._give_up = f"{idle_restarts} restarts without step progress: giving up"
                return self._finish(codes)
            self.restarts += 1
            records.update(
                self.run_dir,
                extra={
                    "restart_count": self.restarts,
                    "last_interruption": "preemption",
                    "restart_step": step,
                },
            )
            if self.on_line:
                self.on_line(f"hpc-launch: preempted at step {step}; restarting the workers")
            self._restart_requested = False
            self.procs = []
            self.start()

    def _supervise(self) -> list[int]:
        """Wait for every worker of one attempt to exit; return their exit codes."""
        deadline: float | None = None
        first_exit: tuple[float, int] | None = None  # when and which rank exited normally
        next_check = time.monotonic()
        while True:
            codes = [proc.poll() for proc in self.procs]
            for rank, code in enumerate(codes):  # also when all exited since the last poll
                failed = code not in (None, 0, PREEMPTED, COMPLETED_IDLE)
                if failed and rank not in self._failed_order and not self._stop_signal:
                    self._failed_order.append(rank)
                if failed and self._failed_rank is None and not self._stop_signal:
                    self._failed_rank = rank
                    for other in self.procs:
                        signal_group(other, signal.SIGTERM)
                if code in (0, PREEMPTED, COMPLETED_IDLE) and first_exit is None:
                    first_exit = (time.monotonic(), rank)
            if all(code is not None for code in codes):
                break
            if first_exit and time.monotonic() > first_exit[0] + self._exit_grace:
                self._kill_hung(codes, first_exit[1])
            if time.monotonic() >= next_check and deadline is None:
                next_check = time.monotonic() + 0.5
                self._watch()
            stopping = self._stop_signal or self._restart_requested
            if (self._failed_rank is not None or stopping) and deadline is None:
                deadline = time.monotonic() + self._grace
            if deadline is not None and time.monotonic() > deadline:
                for proc in self.procs:
                    signal_group(proc, signal.SIGKILL)
            time.sleep(0.05)
        for proc in self.procs:  # reap stragglers in the groups (e.g. data loader workers)
            signal_group(proc, signal.SIGKILL)
        if self.reader:
            self.reader.join(timeout=5)
        return [proc.returncode for proc in self.procs]

    def _watch(self) -> None:
        """The hang watchdog's turn: on a hang, dump the stacks, record it, kill the workers."""
        hang = self.watchdog.check() if self.watchdog and self._hang_message is None else None
        if hang is None:
            return

        def send(signum: int, ranks: list[int]) -> None:
            for rank in ranks:
                with contextlib.suppress(ProcessLookupError, PermissionError, KeyError):
                    os.kill(int(hang.beats[rank]["pid"]), signum)

        self._hang_message = dump_and_record(self.run_dir, hang, send)
        if self.on_line:
            self.on_line(f"hpc-launch: {self._hang_message}")
        for proc in self.procs:
            signal_group(proc, signal.SIGKILL)

    def _kill_hung(self, codes: list[int | None], done: int) -> None:
        """Kill the workers still running past the exit grace; remember them for the error."""
        if self._hung is None and self._failed_rank is None:
            self._hung = ([rank for rank, code in enumerate(codes) if code is None], done)
            for rank in self._hung[0]:
                signal_group(self.procs[rank], signal.SIGKILL)

    def _finish(self, codes: list[int]) -> int:
        code, message = self.exit_status(codes)
        self._exit_code = code
        self.message = self._give_up or message
        records.update(self.run_dir, state=self.status(), exit_code=code, message=message)
        return code

    def exit_status(self, codes: list[int]) -> tuple[int, str | None]:
        """Hook: the job's exit code and message, once its processes exited with ``codes``."""
        finished = records.finished(self.run_dir)
        if finished:  # a signal after the end changes nothing
            self._failed_rank = self._stop_signal = self._give_up = None
            codes = [0] * len(codes)
        message = None
        if self._hang_message is not None and not finished:
            code, message = FAILED_HANG, self._hang_message
        elif self._hung is not None:
            hung, done = self._hung
            # A run that wrote FINISHED is COMPLETED; the hung rank is named as a warning.
            code = 0 if finished else EXIT_HUNG
            names = ", ".join(map(str, hung))
            message = (
                f"rank{'s' if len(hung) > 1 else ''} {names} did not exit within "
                f"{self._exit_grace:g}s (cluster.exit_grace_s) after rank {done} had: "
                "hung at exit, killed"
            )
        elif self._failed_rank is not None:
            rank, account = self._failed_rank, None
            if self._failed_order and not self._give_up:
                rank, account = failures.blame(self.run_dir, self._failed_order)
            code = shell_code(codes[rank])
            message = f"rank {rank} failed with exit code {code}"
            if codes[rank] < 0:
                message = f"rank {rank} was killed by {signal.Signals(-codes[rank]).name}"
            if account is not None:
                message += f": {account.error}"
        elif self._stop_signal is not None:
            code, message = stopped_status(self._stop_signal)
            if all(c == PREEMPTED for c in codes):
                message += f"; checkpointed: continue with hpc-launch resume={self.run_dir}"
        elif codes and all(c == COMPLETED_IDLE for c in codes):
            code = COMPLETED_IDLE
            message = "idle (accounting.idle): checkpointed and ended COMPLETED_IDLE"
        else:
            code = 0
        return code, message


EXIT_HUNG = 1  # a worker hung after another had exited normally


def stopped_status(signum: int) -> tuple[int, str]:
    """Exit code and message of a job stopped by ``signum`` (as a shell reports it)."""
    return 128 + signum, f"stopped by {signal.Signals(signum).name}"


def signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """``signum`` to the process group of ``proc`` (one that already ended is skipped)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def follow_file(
    path: Path, follow: bool = False, done: Callable[[], bool] | None = None
) -> Iterator[str]:
    """Lines of ``path``; with ``follow``, keep reading until ``done()`` and EOF."""
    while not path.exists():
        if not follow or (done and done()):
            return
        time.sleep(0.2)
    with open(path, errors="replace") as fh:
        while True:
            line = fh.readline()
            if line:
                yield line.rstrip("\n")
                continue
            if not follow or (done and done()):
                return
            time.sleep(0.2)


__all__ = [
    "LocalJob",
    "LocalLauncher",
    "SignalMeaning",
    "follow_file",
    "free_port",
    "signal_group",
    "stopped_status",
]
