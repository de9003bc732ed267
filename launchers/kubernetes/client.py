"""Submit and follow an MPIJob through the official ``kubernetes`` client.

Imported only by ``submit`` and by code that looks at a submitted job (never on
the dry-run path: the client package is heavy). Connection: the kubeconfig
(``KUBECONFIG`` or ``~/.kube/config``, context ``cluster.context``), else the
in-cluster service account. The namespace always comes from ``cluster.namespace``.

Requests (group ``kubeflow.org``, version ``v2beta1``, plural ``mpijobs``):

=========  ==========================================================================
submit     POST /api/v1/namespaces/NS/configmaps (and .../secrets: the run's secrets,
           never printed), POST /apis/kubeflow.org/v2beta1/namespaces/NS/mpijobs, then
           PATCH their ownerReferences to the MPIJob (deleting it garbage-collects them)
status     GET .../mpijobs/NAME (status.conditions); while pending, GET pods
           (labelSelector hpc-launch/mpijob=NAME) for image-pull/scheduling problems
logs       GET pods (role launcher), GET /api/v1/namespaces/NS/pods/POD/log
cancel     DELETE .../mpijobs/NAME (propagationPolicy Background), the ConfigMap, Secret
=========  ==========================================================================
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from hpc.credentials import ENV_FILE, write_env_file
from hpc.files import write_atomic
from hpc.launchers.base import JobHandle, Plan
from hpc.launchers.kubernetes import manifest
from hpc.rundir import records
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import redact_uri
from hpc.states import TERMINAL

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kubeflow.org", "v2beta1", "mpijobs"
TIMEOUT = (10, 60)  # connect, read (seconds) for every request but followed logs
_POD_PROBLEMS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
}


class KubernetesError(ConfigError):
    """A one-line problem talking to the cluster (``str()`` names ``cluster``)."""

    def __init__(self, message: str, key: str = "cluster") -> None:
        super().__init__(key, message)


# -- connection -------------------------------------------------------------------------
def kubeconfig_files() -> list[Path]:
    """The kubeconfig files that exist (``KUBECONFIG`` may list several)."""
    env = os.environ.get("KUBECONFIG")
    names = [n for n in env.split(os.pathsep) if n] if env else ["~/.kube/config"]
    return [Path(n).expanduser() for n in names if Path(n).expanduser().is_file()]


def api_client(context: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` for the kubeconfig context or the in-cluster account."""
    from kubernetes import client, config  # noqa: PLC0415 (lazy: the kubernetes client, only to talk to a cluster)
    from kubernetes.config.config_exception import ConfigException  # noqa: PLC0415

    configuration = client.Configuration()
    files = kubeconfig_files()
    try:
        if files:
            config.load_kube_config(
                config_file=str(files[0]) if len(files) == 1 else None,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            raise KubernetesError(
                "no Kubernetes cluster configured: no kubeconfig (KUBECONFIG or ~/.kube/config)"
                " and not running inside a cluster"
            )
    except ConfigException as exc:
        where = ", ".join(str(f) for f in files) or "in-cluster"
        key = "cluster.context" if context and "context" in str(exc).lower() else "cluster"
        raise KubernetesError(f"kubeconfig ({where}): {_one_line(exc)}", key) from None
    configuration.retries = 0  # fail fast, in one line, when nothing listens
    return client.ApiClient(configuration)


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


def _call(api: Any, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one request; translate connection and API failures into one-line errors."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415 (lazy: kubernetes)
    from urllib3.exceptions import HTTPError  # noqa: PLC0415 (lazy: kubernetes' transport)

    kwargs.setdefault("_request_timeout", TIMEOUT)
    try:
        return func(*args, **kwargs)
    except ApiException as exc:
        raise _api_error(what, exc) from None
    except (HTTPError, OSError) as exc:
        host = api.configuration.host
        reason = getattr(exc, "reason", None) or exc
        raise KubernetesError(
            f"no Kubernetes cluster reachable at {host} ({what}): {_one_line(reason)}"
        ) from None


class _ApiError(KubernetesError):
    def __init__(self, message: str, status: int, key: str = "cluster") -> None:
        super().__init__(message, key)
        self.status = status


def _api_error(what: str, exc: Any) -> _ApiError:

    message = exc.reason or ""
    with contextlib.suppress(Exception):
        message = json.loads(exc.body).get("message") or message
    key = "cluster"
    if exc.status == 404 and "namespaces" in message and "not found" in message:
        key = "cluster.namespace"
    elif exc.status == 404 and PLURAL in what:
        message += " (is the MPI operator installed? it serves kubeflow.org/v2beta1 MPIJobs)"
    return _ApiError(f"{what}: HTTP {exc.status}: {_one_line(message)}", exc.status, key)


# -- submit -----------------------------------------------------------------------------
def submit(plan: Plan) -> KubernetesJob:
    """Create the plan's ConfigMap and MPIJob, then record the run in job.json."""
    from kubernetes import client  # noqa: PLC0415 (lazy: kubernetes)

    spec = plan.spec
    cluster = spec.config["cluster"]
    docs = [d for d in yaml.safe_load_all(plan.text) if d]  # exactly what dry_run prints
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    mpijob = next(d for d in docs if d["kind"] == manifest.KIND)
    namespace = mpijob["metadata"]["namespace"]
    name = mpijob["metadata"]["name"]
    api = api_client(cluster.get("context"))
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)

    _call(
        api,
        f"create configmaps/{configmap['metadata']['name']}",
        core.create_namespaced_config_map,
        namespace,
        configmap,
    )
    secret = manifest.render_secret(spec, name)
    secret_name = manifest.secret_name(name)
    try:
        if secret:
            _call(api, "create secrets", core.create_namespaced_secret, namespace, secret)
        created = _call(
            api,
            f"create {PLURAL}/{name}",
            custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            mpijob,
        )
    except KubernetesError:
        with contextlib.suppress(KubernetesError):  # leave nothing behind
            _call(
                api,
                "delete configmap",
                core.delete_namespaced_config_map,
                configmap["metadata"]["name"],
                namespace,
            )
        if secret:
            with contextlib.suppress(KubernetesError):
                _call(api, "delete secret", core.delete_namespaced_secret, secret_name, namespace)
        raise
    uid = (created.get("metadata") or {}).get("uid")
    if uid:
        owner = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": manifest.KIND,
            "name": name,
            "uid": uid,
            "blockOwnerDeletion": False,
        }
        owned = [("ConfigMap", core.patch_namespaced_config_map, configmap["metadata"]["name"])]
        if secret:
            owned.append(("Secret", core.patch_namespaced_secret, secret_name))
        for kind, patch, object_name in owned:
            try:
                body = {"metadata": {"ownerReferences": [owner]}}
                _call(api, f"set the {kind}'s owner", patch, object_name, namespace, body)
            except KubernetesError as exc:  # the job runs anyway; cancel deletes it explicitly
                log.warning("%s", exc)

    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for file_name, content in plan.files.items():
        write_atomic(run_dir / file_name, content)
    if spec.secrets:  # kept for a resume (mode 0600)
        write_env_file(run_dir / ENV_FILE, spec.secrets)
    pod_run_dir, pod_ckpt = manifest.pod_paths(spec)
    extra = {
        "namespace": namespace,
        "context": cluster.get("context"),
        "mpijob": name,
        "configmap": configmap["metadata"]["name"],
        "secret": secret_name if secret else None,
        "uid": uid,
        "pod_run_dir": pod_run_dir,
        "checkpoint_pvc": cluster.get("checkpoint_pvc"),
    }
    if records.record_path(run_dir).exists():  # resume: keep the record, new attempt
        records.update(run_dir, job_id=name, state="PENDING", exit_code=None, extra=extra)
    else:
        record = records.RunRecord.for_spec(spec, "k8s", job_id=name, extra=extra)
        # The tracking URI and checkpoints as the pods see them.
        record.tracking_uri = redact_uri(manifest.pod_tracking_uri(spec))
        record.checkpoint_dir = pod_ckpt
        records.create(record)
    return KubernetesJob(api, name, namespace, run_dir)


def handle_from_record(run_dir: str | os.PathLike[str]) -> KubernetesJob:
    """Re-attach to a submitted job from its run directory (for ``hpc status/logs/cancel``)."""
    record = records.load(run_dir)
    extra = record.get("extra") or {}
    if record.get("launcher") != "k8s" or not extra.get("namespace"):
        raise KubernetesError(f"{run_dir}: not a Kubernetes run", key="run_dir")
    api = api_client(extra.get("context"))
    return KubernetesJob(api, str(record["job_id"]), extra["namespace"], Path(run_dir))


# -- the handle ---------------------------------------------------------------------------
def state_from_conditions(conditions: list[dict[str, Any]]) -> tuple[str, str | None]:
    """(Slurm-style state, message) from an MPIJob's ``status.conditions``."""
    true = {c.get("type"): c for c in conditions or [] if c.get("status") == "True"}
    if "Failed" in true:
        cond = true["Failed"]
        state = "TIMEOUT" if cond.get("reason") == "DeadlineExceeded" else "FAILED"
        return state, cond.get("message")
    if "Succeeded" in true:
        return "COMPLETED", true["Succeeded"].get("message")
    if "Suspended" in true:
        return "PENDING", true["Suspended"].get("message") or "suspended"
    if "Running" in true or "Restarting" in true:
        return "RUNNING", None
    return "PENDING", None


class KubernetesJob(JobHandle):
    """One submitted MPIJob."""

    poll_s = 5.0  # between status queries in wait()
    status_ttl_s = 1.0  # status() answers from its last query this long (progress redraws)

    def __init__(self, api: Any, name: str, namespace: str, run_dir: Path) -> None:
        from kubernetes import client  # noqa: PLC0415 (lazy: kubernetes)

        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.job_id = name
        self.namespace = namespace
        self.run_dir = Path(run_dir)
        self.message: str | None = None
        self.last_line = ""
        self.on_line: Callable[[str], None] | None = None
        self._state = "PENDING"
        self._cancelled = False
        self._follower: threading.Thread | None = None
        self._checked_at = float("-inf")

    # -- queries ---------------------------------------------------------------------------
    def mpijob(self) -> dict[str, Any] | None:
        try:
            return _call(
                self.api,
                f"get {PLURAL}/{self.job_id}",
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.job_id,
            )
        except _ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self, role: str | None = None) -> list[Any]:
        selector = f"{manifest.LABEL_MPIJOB}={self.job_id}"
        if role:
            selector += f",{manifest.LABEL_ROLE}={role}"
        result = _call(
            self.api,
            "list pods",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=selector,
        )
        return list(result.items or [])

    def status(self) -> str:
        if time.monotonic() - self._checked_at < self.status_ttl_s:
            return self._state
        obj = self.mpijob()
        if obj is None:  # deleted: by us, by someone else, or by ttlSecondsAfterFinished
            state = "CANCELLED" if self._cancelled else self._state
            if state not in TERMINAL:
                state, self.message = "CANCELLED", "the MPIJob no longer exists"
        else:
            state, message = state_from_conditions(
                (obj.get("status") or {}).get("conditions") or []
            )
            self.message = message
            if state == "PENDING":
                self.message = self._pod_problem() or message
        self._set_state(state)
        self._checked_at = time.monotonic()
        return state

    def _pod_problem(self) -> str | None:
        """Why pods are stuck (image pull, config, scheduling), or None."""
        for pod in self.pods():
            name = pod.metadata.name
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                waiting = cs.state.waiting if cs.state else None
                if waiting and waiting.reason in _POD_PROBLEMS:
                    return f"pod {name}: {waiting.reason}: {_one_line(waiting.message or '')}"
            for cond in (pod.status.conditions or []) if pod.status else []:
                if cond.type == "PodScheduled" and cond.status == "False" and cond.reason:
                    return f"pod {name}: {cond.reason}: {_one_line(cond.message or '')}"
        return None

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            with contextlib.suppress(FileNotFoundError, ValueError):
                records.update(self.run_dir, state=state, message=self.message)

    def launcher_pod(self) -> str | None:
        """The newest launcher pod's name (a retried launcher gets a new pod)."""
        pods = self.pods("launcher")
        if not pods:
            return None
        pods.sort(key=lambda p: str(p.metadata.creation_timestamp or ""))
        return str(pods[-1].metadata.name)

    def exit_code(self) -> int | None:
        """The launcher container's exit code (mpirun's: the first failing rank's)."""
        pods = self.pods("launcher")
        pods.sort(key=lambda p: str(p.metadata.creation_timestamp or ""))
        for pod in reversed(pods):
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                term = cs.state.terminated if cs.state else None
                if term is not None and term.exit_code is not None:
                    return int(term.exit_code)
        return None

    # -- JobHandle -----------------------------------------------------------------------------
    def describe_cancel(self) -> str:
        return f"deleted MPIJob of {self.run_dir}"

    def cancel(self) -> None:
        from kubernetes import client  # noqa: PLC0415 (lazy: kubernetes)

        self._cancelled = True
        options = client.V1DeleteOptions(propagation_policy="Background")
        secret = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            secret = (records.load(self.run_dir).get("extra") or {}).get("secret")
        deletions = [
            (
                f"delete {PLURAL}/{self.job_id}",
                self.custom.delete_namespaced_custom_object,
                (GROUP, VERSION, self.namespace, PLURAL, self.job_id),
            ),
            (
                f"delete configmaps/{self.job_id}-config",
                self.core.delete_namespaced_config_map,
                (f"{self.job_id}-config", self.namespace),
            ),
        ]
        if secret:
            deletions.append(
                (
                    f"delete secrets/{secret}",
                    self.core.delete_namespaced_secret,
                    (secret, self.namespace),
                )
            )
        for what, func, args in deletions:
            try:
                _call(self.api, what, func, *args, body=options)
            except _ApiError as exc:
                if exc.status != 404:
                    raise
        self.message = "cancelled"
        self._set_state("CANCELLED")
        self._checked_at = float("-inf")

    def logs(self, follow: bool = False) -> Iterator[str]:
        """The launcher pod's output (mpirun merges every rank's)."""
        pod = self.launcher_pod()
        while pod is None and follow and not self.done():
            time.sleep(self.poll_s)
            pod = self.launcher_pod()
        if pod is None:
            return
        resp = _call(
            self.api,
            f"logs of pod {pod}",
            self.core.read_namespaced_pod_log,
            pod,
            self.namespace,
            follow=follow,
            _preload_content=False,
            _request_timeout=None if follow else TIMEOUT,
        )
        try:
            buffer = b""
            for chunk in resp.stream(4096):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if buffer:
                yield buffer.decode(errors="replace")
        finally:
            resp.release_conn()

    def _follow(self) -> None:
        with contextlib.suppress(KubernetesError):
            for line in self.logs(follow=True):
                self.last_line = line
                if self.on_line:
                    self.on_line(line)

    def wait(self) -> int:
        while True:
            state = self.status()
            if state == "RUNNING" and self.on_line and self._follower is None:
                self._follower = threading.Thread(target=self._follow, daemon=True)
                self._follower.start()
            if state in TERMINAL:
                break
            time.sleep(self.poll_s)
        if self._follower is not None:
            self._follower.join(timeout=10)
        code = 0 if state == "COMPLETED" else 1
        if state != "COMPLETED" and not self._cancelled:
            with contextlib.suppress(KubernetesError):
                code = self.exit_code() or 1
        if self._cancelled:
            code = 130
        with contextlib.suppress(FileNotFoundError, ValueError):
            records.update(self.run_dir, state=state, exit_code=code, message=self.message)
        return code


__all__ = [
    "KubernetesError",
    "KubernetesJob",
    "api_client",
    "handle_from_record",
    "kubeconfig_files",
    "state_from_conditions",
    "submit",
]
