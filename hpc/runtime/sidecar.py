"""The node's sidecar: metric shipping and the accounting sampler, out of the training process.

Local rank 0 of each node (the Session, or ``hpc.run`` for a plain script) starts
``python -m hpc.runtime.sidecar`` as its child. On every node it runs the accounting
sampler; on rank 0's node it also ships rank 0's spool to MLflow with the
:class:`~hpc.runtime.tracking.MlflowTracker` sender (run creation or resume, the
sweep's parent run, ``mlflow_run_id`` and ``extra.tracking`` in job.json, outage
backoff, auth failures). The training process only appends to the spool
(:class:`SidecarTracker`): it never imports mlflow, and no sender or sampler thread
shares its GIL or its cores.

The rank talks to it over the child's stdin/stdout, one JSON object a line:
``start`` (CPUs, nice, sampler), ``track`` (the MLflow run), ``wake`` (after a
commit; no answer), ``stop_sampler``, and ``finish`` (status, timeout: answered
with the unsent count once the run is flushed as ``MlflowTracker.finish`` does).
End of file on stdin, or a new parent pid, means the rank is gone (even by
``kill -9``): the sidecar stops the sampler, sends what is committed (at most
``GONE_FLUSH_S``) and exits. The spool keeps the rest for ``hpc sync``. It sits in
its own session and ignores the stop and terminal signals, so a signal meant for
the ranks cannot end it before the rank's own finish.

Placement: on the node's CPUs that no local rank is bound to when placement left
some (:func:`hpc.runtime.node.sidecar_cpus`), else on all the job's CPUs at
``nice`` 10: it then mostly runs when a rank's core waits. The nice comes once the
sender is warm (mlflow imported, the server met; ``WARM_S`` at most), so that heavy
start cannot be starved into the rank's final wait. ``HPC_SIDECAR=0``
keeps the in-process sender and sampler (also the fallback when it cannot start).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from hpc.credentials import redact
from hpc.runtime.tracking import SpoolTracker, record_unsent, warn_unsent

log = logging.getLogger(__name__)
START_TIMEOUT_S = 60.0  # a cold Python with psutil on a busy node
REPLY_GRACE_S = 15.0  # past flush_timeout_s: the final status call and the reply
GONE_FLUSH_S = 5.0
WARM_S = 60.0  # the sidecar runs at normal priority until its sender is warm, this at most
_warned: set[str] = set()


def enabled() -> bool:
    return os.environ.get("HPC_SIDECAR", "1").strip().lower() not in ("0", "off", "false", "no")


def warn_fallback(what: str, why: str) -> None:
    """Once per process: the sidecar is not used, its work stays in the rank."""
    if not _warned:
        _warned.add(what)
        log.warning(
            "hpc-launch: sidecar not available (%s): the %s and what else it would run"
            " stay in the training process",
            why,
            what,
        )


class Sidecar:
    """The rank's handle on its sidecar process; ``roles`` it still serves."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.roles: set[str] = set()
        self._buffer = b""
        self._requests = 0

    @classmethod
    def start(
        cls, cpus: list[int], nice: int, sampler: dict[str, Any] | None = None
    ) -> tuple[Sidecar | None, str]:
        """A started sidecar (or None and why); ``sampler``: SamplerConfig's fields."""
        if not enabled():
            return None, "HPC_SIDECAR is off"
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hpc.runtime.sidecar"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return None, str(exc)
        side = cls(proc)
        spec = {"op": "start", "parent": os.getpid(), "cpus": cpus, "nice": nice}
        answer = side.request({**spec, "sampler": sampler}, START_TIMEOUT_S)
        if not answer or not answer.get("ok"):
            side.kill()
            return None, "it did not start"
        if sampler is not None:
            if answer.get("sampler_error"):
                log.warning("accounting sampler not started: %s", answer["sampler_error"])
            else:
                side.roles.add("sampler")
        return side, ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, message: dict[str, Any]) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):  # it is gone: the caller falls back
            return False

    def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """Send ``message``; its answer, or None when none came within ``timeout_s``.

        Answers carry the request's ``id``: a late answer to an earlier request that
        timed out is skipped, never taken for this one's.
        """
        self._requests += 1
        if not self.send({**message, "id": self._requests}):
            return None
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            answer = json.loads(line)
            if answer.get("id") == self._requests:
                return answer

    def track(self, spec: dict[str, Any]) -> bool:
        answer = self.request({"op": "track", **spec}, START_TIMEOUT_S)
        if answer and answer.get("ok"):
            self.roles.add("tracking")
            return True
        return False

    def stop_sampler(self, timeout_s: float = 30.0) -> None:
        if "sampler" in self.roles:
            self.request({"op": "stop_sampler"}, timeout_s)
            self.release("sampler")

    def finish(self, status: str | None, timeout_s: float) -> int | None:
        """The unsent count after the sidecar's finish; None when it did not answer."""
        answer = self.request(
            {"op": "finish", "status": status, "timeout_s": timeout_s}, timeout_s + REPLY_GRACE_S
        )
        self.release("tracking")
        return int(answer["unsent"]) if answer and "unsent" in answer else None

    def release(self, role: str) -> None:
        """``role`` is done; with none left, end of file tells the sidecar to exit."""
        self.roles.discard(role)
        if not self.roles:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=GONE_FLUSH_S + 5)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


class SidecarTracker(SpoolTracker):
    """Rank 0's tracker when the sidecar ships: spool writes only, finish by request."""

    def __init__(self, sidecar: Sidecar, spool_dir: str | os.PathLike[str], run_dir: Path) -> None:
        super().__init__(spool_dir)
        self.sidecar = sidecar
        self.run_dir = run_dir

    def committed(self, step: int) -> None:
        self.sidecar.send({"op": "wake"})

    def finish(self, status: str | None = "FINISHED", timeout_s: float = 60.0) -> int:
        self.write_held()
        self.spool.close()  # flushed and fsynced: the sidecar reads it all
        left = self.sidecar.finish(status, timeout_s)
        if left is None:  # gone or silent: say what the spool still holds
            left = sum(1 for _ in self.spool.pending(final=status == "FINISHED"))
            if left:
                reason = "the sidecar did not answer"
                warn_unsent(self.spool, left, reason)
                record_unsent(self.run_dir, left, reason)
        return left


# -- the sidecar process -------------------------------------------------------------------
class _Service:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.parent = os.getppid()
        self.sampler: Any = None
        self.tracker: Any = None
        self.lock = threading.Lock()
        self.done = False
        self.request_id: int | None = None
        self.nice = 0

    def reply(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps({**message, "id": self.request_id}) + "\n")
        self.out.flush()

    def handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        self.request_id = msg.get("id")
        with self.lock:
            if op == "wake":
                if self.tracker is not None:
                    self.tracker._wake.set()
            elif op == "start":
                self.parent = int(msg.get("parent") or self.parent)
                self.reply({"ok": True, "sampler_error": self._start(msg)})
            elif op == "track":
                self.tracker = mlflow_tracker(msg)
                self.reply({"ok": True})
            elif op == "stop_sampler":
                self._stop_sampler()
                self.reply({"ok": True})
            elif op == "finish":
                tracker, self.tracker = self.tracker, None
                left = tracker.finish(msg.get("status"), float(msg["timeout_s"])) if tracker else 0
                self.reply({"unsent": left})

    def _start(self, msg: dict[str, Any]) -> str | None:
        if msg.get("cpus"):
            with contextlib.suppress(OSError):  # CPUs outside this cpuset: keep the rank's
                os.sched_setaffinity(0, msg["cpus"])
        self.nice = int(msg.get("nice") or 0)
        threading.Thread(target=self._renice_when_warm, name="renice", daemon=True).start()
        spec = msg.get("sampler")
        if spec is None:
            return None
        from hpc.accounting.sampler import Sampler, SamplerConfig  # noqa: PLC0415

        try:
            config = SamplerConfig(**{**spec, "path": Path(spec["path"])})
            config.path.parent.mkdir(parents=True, exist_ok=True)
            self.sampler = Sampler(config).start()
        except Exception as exc:  # accounting never stops training
            return f"{type(exc).__name__}: {exc}"
        return None

    def _renice_when_warm(self) -> None:
        """Lower the priority once the sender has imported mlflow and met the server
        (at most ``WARM_S`` after start; at once after it when nothing is tracked).

        That start is the sidecar's one heavy piece of work (seconds of CPU); at low
        priority on a busy node it could still be pending when the rank's finish
        waits on it. After it, sending is light.
        """
        deadline = time.monotonic() + WARM_S
        while time.monotonic() < deadline:
            tracker = self.tracker
            if tracker is not None and (tracker._client is not None or tracker.errors):
                break
            time.sleep(0.2)
        renice(self.nice)

    def _stop_sampler(self) -> None:
        sampler, self.sampler = self.sampler, None
        if sampler is not None:
            try:
                sampler.stop()
            except Exception as exc:
                log.warning("accounting sampler did not stop cleanly: %s", exc)

    def gone(self) -> None:
        """The rank is gone: stop, send what is committed (bounded), leave the rest."""
        with self.lock:
            if self.done:
                return
            self.done = True
            self._stop_sampler()
            if self.tracker is not None:
                self.tracker.finish(None, timeout_s=GONE_FLUSH_S)
                self.tracker = None

    def watch_parent(self) -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != self.parent:
                self.gone()
                os._exit(0)


def renice(nice: int) -> None:
    """Every thread of this process at nice ``nice`` at least (Linux: nice is per thread)."""
    if not nice:
        return
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]:
        with contextlib.suppress(OSError, ValueError):
            current = os.getpriority(os.PRIO_PROCESS, int(tid))
            os.setpriority(os.PRIO_PROCESS, int(tid), max(current, nice))


def mlflow_tracker(spec: dict[str, Any], writer: bool = False) -> Any:
    """The MLflow sender for ``spec`` (the ``track`` request); ``writer``: in the rank."""
    from hpc.rundir import records  # noqa: PLC0415
    from hpc.runtime.tracking import MlflowTracker, sweep_parent_run  # noqa: PLC0415

    run_dir, sweep_dir = spec["run_dir"], spec.get("sweep_dir")
    uri, experiment = spec["uri"], spec["experiment"]

    def parent() -> str | None:
        if not sweep_dir:
            return None
        return sweep_parent_run(uri, experiment, sweep_dir, Path(sweep_dir).name)

    def remember(run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):  # a run without a record
            records.update(run_dir, mlflow_run_id=run_id)

    return MlflowTracker(
        uri,
        experiment,
        spec["spool_dir"],
        run_id=spec.get("run_id"),
        run_name=spec.get("run_name"),
        parent_run_id=parent,
        on_run=remember,
        on_unsent=lambda left, reason: record_unsent(run_dir, left, reason),
        writer=writer,
    )


def main() -> int:
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")  # the answers: a private copy
    os.dup2(2, 1)  # whatever else prints goes to the run's output, not into the answers
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    service = _Service(out)
    threading.Thread(target=service.watch_parent, name="parent-watch", daemon=True).start()
    for line in sys.stdin:
        if line.strip():
            try:
                service.handle(json.loads(line))
            except Exception as exc:  # never silent, never fatal to the rank
                error = redact(f"{type(exc).__name__}: {exc}")[:300]
                log.warning("hpc-launch sidecar: %s", error)
                with contextlib.suppress(Exception):
                    service.reply({"ok": False, "error": error})
    service.gone()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
