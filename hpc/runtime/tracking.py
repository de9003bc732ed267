"""MLflow tracking from rank 0, batched on a background thread.

``log_metrics`` only appends to an in-memory queue; a worker thread sends
batches with ``MlflowClient.log_batch`` (within MLflow's per-request limits),
so a training step never waits on the tracking server. Every MLflow call is
guarded: a tracking failure is reported, never raised into training.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
MAX_PARAM_LEN = 6000
_SECRET_KEY = re.compile(r"(token|password|passwd|secret|api[_-]?key|credential)", re.I)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"job": {"lr": 0.1}}`` → ``{"job.lr": "0.1"}``; secret-looking keys dropped."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if _SECRET_KEY.search(str(key)):
            continue
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LEN]
    return out


def ensure_experiment(client: Any, experiment: str) -> str:
    """The experiment's id, creating it if needed (tolerates a concurrent creator)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(experiment))
    except Exception:  # created concurrently by another job
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return str(exp.experiment_id)


class Tracker:
    """No-op tracker: what non-zero ranks and disabled tracking get."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(Tracker):
    def __init__(
        self,
        uri: str,
        experiment: str,
        run_id: str | None = None,
        run_name: str | None = None,
        flush_interval_s: float = 1.0,
        parent_run_id: str | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.flush_interval_s = flush_interval_s
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self.errors = 0
        self._lock = threading.Lock()  # one drainer at a time keeps batches in order
        self.run_id = run_id or self._create_run(experiment, run_name, parent_run_id)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        self._thread = threading.Thread(target=self._loop, name="mlflow-logger", daemon=True)
        self._thread.start()

    def _create_run(
        self, experiment: str, run_name: str | None, parent_run_id: str | None = None
    ) -> str:
        exp_id = ensure_experiment(self.client, experiment)
        tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
        return str(self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id)

    # -- producer side (training thread): never blocks -------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            self._queue.put(("param", (key, str(value)[:MAX_PARAM_LEN])))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._queue.put(("tag", (key, str(value))))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            self._queue.put(("metric", (key, float(value), now, int(step))))

    # -- consumer side ----------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.flush_interval_s)
            self._drain()

    def _drain(self) -> None:
        with self._lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics: list[Any] = []
        params: dict[str, Any] = {}
        tags: dict[str, Any] = {}
        while True:
            try:
                kind, item = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "metric":
                key, value, ts, step = item
                metrics.append(Metric(key, value, ts, step))
            elif kind == "param":
                params[item[0]] = Param(*item)
            else:
                tags[item[0]] = RunTag(*item)
        self._send(metrics, list(params.values()), list(tags.values()))

    def _send(self, metrics: list[Any], params: list[Any], tags: list[Any]) -> None:
        while metrics or params or tags:
            chunk_m, metrics = metrics[:MAX_METRICS], metrics[MAX_METRICS:]
            chunk_p, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
            chunk_t, tags = tags[:MAX_TAGS], tags[MAX_TAGS:]
            try:
                self.client.log_batch(self.run_id, metrics=chunk_m, params=chunk_p, tags=chunk_t)
            except Exception as exc:  # never into training
                self.errors += 1
                log.warning("MLflow logging failed (%s); %d metrics dropped", exc, len(chunk_m))

    def flush(self, timeout: float | None = None) -> None:
        self._drain()

    def finish(self, status: str = "FINISHED") -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._drain()
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            log.warning("MLflow: could not mark run %s %s: %s", self.run_id, status, exc)


def sweep_parent_run(client_uri: str, experiment: str, sweep_dir: str, name: str) -> str:
    """The sweep's parent run id: created once by whichever task gets there first."""
    import fcntl
    import json
    import os

    from mlflow.tracking import MlflowClient

    path = os.path.join(sweep_dir, "mlflow_parent.json")
    with open(os.path.join(sweep_dir, ".mlflow_parent.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                return str(json.load(fh)["run_id"])
        client = MlflowClient(tracking_uri=client_uri)
        exp_id = ensure_experiment(client, experiment)
        run = client.create_run(
            exp_id, run_name=name, tags={"hpc.sweep_dir": sweep_dir, "hpc.kind": "sweep"}
        )
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"run_id": run.info.run_id}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return str(run.info.run_id)
