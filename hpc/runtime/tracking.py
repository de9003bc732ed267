"""MLflow tracking from rank 0 through a durable local spool.

``log_metrics`` appends to a spool file (:mod:`hpc.runtime.spool`); a sender
thread ships records in order with ``MlflowClient.log_batch`` (within MLflow's
per-request limits). A training step never waits on the tracking server, an
outage loses nothing (the spool is replayed when it returns), and a resumed run
logs each step exactly once. Every MLflow call is guarded: a tracking failure is
reported, never raised into training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hpc.credentials import load_run_secrets, looks_secret, redact, split_uri
from hpc.files import file_lock, write_atomic
from hpc.rundir import records
from hpc.runtime.spool import MetricSpool
from hpc.runtime.store import ensure_experiment, store_init_lock

log = logging.getLogger(__name__)

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
MAX_PARAM_LEN = 6000
_AUTH_FAILED = re.compile(r"\b(401|403)\b|UNAUTHENTICATED|PERMISSION_DENIED|Unauthorized", re.I)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"job": {"lr": 0.1}}`` → ``{"job.lr": "0.1"}``; secret-looking keys dropped."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if looks_secret(key):
            continue
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LEN]
    return out


class Tracker:
    """No-op tracker: what non-zero ranks and disabled tracking get."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def commit(self, step: int) -> None:
        """Metrics up to ``step`` are covered by a durable checkpoint."""

    def rewind(self, step: int) -> int:
        """Resuming at ``step``: forget uncommitted metrics past it."""
        return 0

    def finish(self, status: str | None = "FINISHED", timeout_s: float = 60.0) -> int:
        """Send what is left (bounded wait); returns how many records stay unsent."""
        return 0


class SpoolTracker(Tracker):
    """Rank 0's producer: records go to the spool; nothing here talks to MLflow.

    ``log_metrics`` takes floats and one-element torch tensors. A tensor is not read
    (no ``.item()``, no device synchronisation) when logged: it is detached and copied
    (so a later in-place update cannot change it) and converted when the held steps are
    written, every ``hold_steps`` steps, at a commit, a param or tag, and at finish, by
    which time it has long been computed. Floats with nothing held go straight to the
    spool. What ships them is the subclass: the sidecar (:mod:`hpc.runtime.sidecar`)
    or the in-process sender (:class:`MlflowTracker`).
    """

    def __init__(
        self, spool_dir: str | os.PathLike[str], writer: bool = True, hold_steps: int = 32
    ) -> None:
        self.spool = MetricSpool(spool_dir, writer=writer)
        self.hold_steps = hold_steps
        self._held: list[tuple[dict[str, Any], int, int]] = []
        # An asynchronous checkpoint commits from its own thread while the training
        # thread logs: held metrics move to the spool whole and in order.
        self._held_lock = threading.RLock()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.write_held()
        self.spool.append(
            [{"k": "p", "key": k, "v": str(v)[:MAX_PARAM_LEN]} for k, v in params.items()]
        )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.write_held()
        self.spool.append([{"k": "t", "key": k, "v": str(v)} for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        values: dict[str, Any] = {}
        lazy = False
        for key, value in metrics.items():
            if isinstance(value, float | int):
                values[key] = float(value)
            elif hasattr(value, "detach") and hasattr(value, "numel"):  # a torch tensor
                if value.numel() != 1:
                    raise ValueError(f"metric {key!r}: a tensor of {value.numel()} elements")
                values[key] = value.detach().clone()
                lazy = True
            else:
                values[key] = float(value)
        with self._held_lock:
            if not lazy and not self._held:
                self.spool.append(_metric_records(values, now, step))
                return
            self._held.append((values, now, int(step)))
            if len(self._held) >= self.hold_steps:
                self.write_held()

    def write_held(self) -> None:
        """Append the held steps' metrics (converting their tensors) to the spool."""
        with self._held_lock:
            if not self._held:
                return
            held, self._held = self._held, []
            out: list[dict[str, Any]] = []
            for values, now, step in held:
                out.extend(_metric_records({k: float(v) for k, v in values.items()}, now, step))
            self.spool.append(out)

    def commit(self, step: int) -> None:
        self.write_held()
        self.spool.commit(step)
        self.committed(step)

    def committed(self, step: int) -> None:
        """A commit was written: a hook for the sender (wake it up)."""

    def rewind(self, step: int) -> int:
        self.write_held()
        return self.spool.rewind(step)

    def finish(self, status: str | None = "FINISHED", timeout_s: float = 60.0) -> int:
        self.write_held()
        return 0


def _metric_records(values: Mapping[str, float], now: int, step: int) -> list[dict[str, Any]]:
    return [{"k": "m", "key": k, "v": v, "ts": now, "s": int(step)} for k, v in values.items()]


class MlflowTracker(SpoolTracker):
    """Spool to disk (durable, ordered); a background sender ships to MLflow.

    The run is created (or resumed by id) by the sender, so a server that is down
    at start delays nothing; ``on_run`` is called with the run id once it exists.
    In the sidecar it is the sender only (``writer=False``): the rank's
    :class:`SpoolTracker` writes the spool it reads.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        spool_dir: str | os.PathLike[str],
        run_id: str | None = None,
        run_name: str | None = None,
        parent_run_id: Callable[[], str | None] | None = None,
        on_run: Callable[[str], None] | None = None,
        send_interval_s: float = 1.0,
        on_unsent: Callable[[int, str], None] | None = None,
        writer: bool = True,
    ) -> None:
        super().__init__(spool_dir, writer=writer)
        # Our own retry loop runs in the sender; keep MLflow's per-request retries short.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # Credentials travel as MLflow's own variables, never inside a URI it may print.
        self.uri, credentials = split_uri(uri)
        for key, value in credentials.items():
            os.environ.setdefault(key, value)
        self.on_unsent = on_unsent
        self.auth_failed = False
        self.experiment = experiment
        self.run_id = run_id
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.on_run = on_run
        self.send_interval_s = send_interval_s
        self.errors = 0
        self.last_error: str | None = None
        self._client: Any = None
        self._final = False  # send uncommitted metrics too (the run ended normally)
        self._draining = False  # send what is sendable, then stop
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._resumed = run_id is not None
        self._thread = threading.Thread(target=self._loop, name="mlflow-sender", daemon=True)
        self._thread.start()

    def committed(self, step: int) -> None:
        self._wake.set()

    # -- sender side ------------------------------------------------------------------------
    def _loop(self) -> None:
        delay = self.send_interval_s
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            draining, final = self._draining, self._final
            try:
                self._send_pending(final)
                delay = self.send_interval_s
                if draining:
                    return
            except Exception as exc:  # never into training: count, back off, retry
                self.errors += 1
                self.last_error = redact(f"{type(exc).__name__}: {exc}").splitlines()[0][:200]
                if _AUTH_FAILED.search(self.last_error):
                    if not self.auth_failed:
                        log.warning(
                            "MLflow: authentication failed at %s (%s): metrics are NOT being"
                            " sent; check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD",
                            redact(self.uri),
                            self.last_error,
                        )
                    self.auth_failed = True
                    if draining:  # retrying cannot help: the spool keeps everything
                        return
                else:
                    log.warning(
                        "MLflow unreachable (%s); metrics kept on disk, retrying", self.last_error
                    )
                delay = min(max(delay * 2, 1.0), 30.0)
            if self._stop.is_set():
                return

    def _ensure_run(self) -> None:
        if self._client is None:
            # lazy: mlflow only when tracking
            from mlflow.tracking import MlflowClient  # noqa: PLC0415

            with store_init_lock(self.uri):  # the first query may create/migrate the store
                self._client = MlflowClient(tracking_uri=self.uri)
                self._client.search_experiments(max_results=1)
        if self.run_id is None:
            parent = self.parent_run_id() if self.parent_run_id else None  # its lock first
            tags = {"mlflow.parentRunId": parent} if parent else None
            with store_init_lock(self.uri):
                exp_id = ensure_experiment(self._client, self.experiment)
                run = self._client.create_run(exp_id, run_name=self.run_name, tags=tags)
            self.run_id = str(run.info.run_id)
            if self.on_run:
                self.on_run(self.run_id)
        elif self._resumed:
            self._client.update_run(self.run_id, status="RUNNING")
            self._resumed = False

    def _send_pending(self, final: bool) -> None:
        # lazy: mlflow only when tracking
        from mlflow.entities import Metric, Param, RunTag  # noqa: PLC0415

        self._ensure_run()
        with self.spool.sending():  # a rewind waits for this cycle (and vice versa)
            self._send_batches(final, Metric, Param, RunTag)

    def _send_batches(self, final: bool, Metric: Any, Param: Any, RunTag: Any) -> None:
        metrics: list[Any] = []
        params: dict[str, Any] = {}
        tags: dict[str, Any] = {}
        end = None
        for offset, record in self.spool.pending(final=final):
            kind = record.get("k")
            if kind == "m":
                metrics.append(Metric(record["key"], record["v"], record["ts"], record["s"]))
            elif kind == "p":
                params[record["key"]] = Param(record["key"], record["v"])
            elif kind == "t":
                tags[record["key"]] = RunTag(record["key"], record["v"])
            end = offset
            if len(metrics) >= MAX_METRICS or len(params) >= MAX_PARAMS or len(tags) >= MAX_TAGS:
                self._client.log_batch(
                    self.run_id,
                    metrics=metrics,
                    params=list(params.values()),
                    tags=list(tags.values()),
                )
                self.spool.set_sent_offset(end)
                metrics, params, tags = [], {}, {}
        if metrics or params or tags:
            self._client.log_batch(
                self.run_id, metrics=metrics, params=list(params.values()), tags=list(tags.values())
            )
        if end is not None:
            self.spool.set_sent_offset(end)

    def unsent(self) -> int:
        return sum(1 for _ in self.spool.pending(final=self._final))

    def finish(self, status: str | None = "FINISHED", timeout_s: float = 60.0) -> int:
        """Send what is left (waiting at most ``timeout_s``) and set the run status.

        A run that FINISHED sends everything; a stopped, failed or killed one sends only
        committed metrics: the others belong to steps a resumed run will redo.
        """
        self.write_held()
        self._final = status == "FINISHED"
        self._draining = True
        self._wake.set()
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():  # server still down: the spool keeps the rest
            self._stop.set()
        left = self.unsent()
        if left:
            reason = (
                "authentication failed"
                if self.auth_failed
                else "MLflow unreachable"
                if self.errors
                else f"MLflow did not answer within {timeout_s:g} s"
            )
            warn_unsent(self.spool, left, reason)
            if self.on_unsent:
                self.on_unsent(left, reason)
            self.spool.close()
            return left
        if self.on_unsent:
            self.on_unsent(0, "")
        if status and self.run_id and self._client is not None:
            try:
                self._client.set_terminated(self.run_id, status=status)
            except Exception as exc:
                log.warning(
                    "MLflow: could not mark run %s %s: %s", self.run_id, status, redact(str(exc))
                )
        self.spool.close()
        return 0


def warn_unsent(spool: MetricSpool, left: int, reason: str) -> None:
    """The one warning line for records a finish left in the spool."""
    log.warning(
        "MLflow: %d records not sent yet (%s); they stay in %s: send them with `hpc sync %s`",
        left,
        reason,
        spool.path,
        os.path.dirname(os.path.abspath(spool.directory)),
    )


def record_unsent(run_dir: str | os.PathLike[str], left: int, reason: str) -> None:
    """Say in job.json whether the run's metrics are in MLflow (``extra.tracking``)."""
    note: dict[str, Any]
    if left:
        note = {
            "state": "unauthenticated" if reason == "authentication failed" else "unsent",
            "unsent": left,
            "message": f"metrics not in MLflow yet ({left} records not sent: {reason});"
            f" send them with `hpc sync {os.path.abspath(run_dir)}`",
        }
    else:
        note = {"state": "sent", "unsent": 0, "message": None}
    with contextlib.suppress(FileNotFoundError, ValueError):  # a run without a record
        records.update(run_dir, extra={"tracking": note})


def unsent_message(record: Mapping[str, Any]) -> str | None:
    """The run's "metrics not in MLflow yet" line, if any (for final lines)."""
    note = (record.get("extra") or {}).get("tracking") or {}
    return note.get("message") if note.get("unsent") else None


def sweep_parent_run(client_uri: str, experiment: str, sweep_dir: str, name: str) -> str:
    """The sweep's parent run id: created once by whichever task gets there first."""
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 (lazy: mlflow only when tracking)

    path = os.path.join(sweep_dir, "mlflow_parent.json")
    with file_lock(os.path.join(sweep_dir, ".mlflow_parent.lock")):
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                return str(json.load(fh)["run_id"])
        with store_init_lock(client_uri):
            client = MlflowClient(tracking_uri=client_uri)
            exp_id = ensure_experiment(client, experiment)
            run = client.create_run(
                exp_id, run_name=name, tags={"hpc.sweep_dir": sweep_dir, "hpc.kind": "sweep"}
            )
        write_atomic(Path(path), json.dumps({"run_id": run.info.run_id}))
        return str(run.info.run_id)


def sync_run(
    run_dir: str | os.PathLike[str], uri: str | None = None, timeout_s: float = 120.0
) -> int:
    """Send what a run's spool still holds (after an outage outlasted the job).

    Returns the number of records still unsent (0 when everything went through).
    """
    record = records.load(run_dir)
    load_run_secrets(run_dir)  # the credentials the run was started with
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or record.get("tracking_uri")
    if not uri:
        raise ValueError(f"{run_dir}: no tracking URI (set MLFLOW_TRACKING_URI)")
    config = records.read_run_config(record["config_file"])
    experiment = (config.get("tracking") or {}).get("experiment", "hpc-launch")
    finished = record.get("state") == "COMPLETED"

    def remember(run_id: str) -> None:
        records.update(run_dir, mlflow_run_id=run_id)

    tracker = MlflowTracker(
        uri,
        experiment,
        os.path.join(run_dir, "tracking"),
        run_id=record.get("mlflow_run_id"),
        run_name=os.path.basename(os.path.normpath(run_dir)),
        on_run=remember,
        on_unsent=lambda left, reason: record_unsent(run_dir, left, reason),
    )
    return tracker.finish("FINISHED" if finished else None, timeout_s=timeout_s)
