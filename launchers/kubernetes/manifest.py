"""Render a JobSpec as a ConfigMap (the job's resolved config) plus a Kubeflow MPIJob.

Pure functions of the spec: no filesystem, no network, no ``kubernetes`` import.

Layout of the rendered job:

* ``<name>-config`` ConfigMap: ``config.yaml``, the resolved config with the run
  directory and checkpoint directory rewritten to their paths inside the pods.
  Mounted read-only at ``/etc/hpc-launch`` in the workers (HPC_CONFIG_FILE).
* MPIJob ``<name>``: Launcher (1 replica, no GPU) runs ``mpirun``; Worker replicas =
  ``resources.nodes``, ``slotsPerWorker`` = tasks per node, one GPU per task. The
  ranks' environment is passed with ``mpirun -x`` (Open MPI) or ``-genv`` (Intel
  MPI, MPICH): processes started over ssh do not see the worker pod's own env.
* The run directory lives on the checkpoint volume (``cluster.checkpoint_pvc``,
  mounted at ``cluster.checkpoint_mount``): ``<mount>/<job.name>/<run id>``.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import yaml

from hpc.quoting import shell_join, shell_word
from hpc.spec.jobspec import JobSpec
from hpc.spec.rules import parse_time_limit

API_VERSION = "kubeflow.org/v2beta1"
KIND = "MPIJob"
CONFIG_DIR = "/etc/hpc-launch"
CONFIG_KEY = "config.yaml"
LABEL_RUN = "hpc-launch/run"
LABEL_JOB = "hpc-launch/job-name"
LABEL_MPIJOB = "hpc-launch/mpijob"  # on the pods: which MPIJob (attempt) they belong to
LABEL_ROLE = "hpc-launch/role"  # on the pods: launcher or worker
ANNOTATION_RUN_DIR = "hpc-launch/run-dir"  # the run directory on the submitting machine
LAUNCHER_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}}
MAX_NAME = 50  # leaves room for -launcher, -worker-<N>, -config within 63 characters
_MEM_UNITS = {"K": "Ki", "M": "Mi", "G": "Gi", "T": "Ti", "": "Mi"}  # Slurm: no unit = MB
_LOCAL_STORES = ("sqlite:", "file:", "/")


def dns_label(text: str, limit: int = 63) -> str:
    """Lower-case DNS-1123 label made from ``text`` (may be empty)."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    label = re.sub(r"-{2,}", "-", label).strip("-")
    return label[:limit].rstrip("-")


def label_value(text: str) -> str:
    """A valid label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def run_id(spec: JobSpec) -> str:
    return spec.run_dir.name


def job_name(spec: JobSpec) -> str:
    """``<job>-<run id>`` as a DNS label short enough for the operator's pod names."""
    rid = dns_label(run_id(spec)) or "run"
    if spec.config.get("resume"):  # a new MPIJob for each attempt on the same run directory
        rid = dns_label(f"{rid}-r{_attempt_stamp()}")
    base = dns_label(spec.name) or "job"
    room = MAX_NAME - len(rid) - 1
    if room < 1:
        return rid[-MAX_NAME:].strip("-")
    return f"{base[:room].rstrip('-')}-{rid}"


def _attempt_stamp() -> str:
    return time.strftime("%m%d%H%M%S")


def memory_quantity(mem: str | None) -> str | None:
    """Slurm's ``--mem`` (16G, 500M, 16000 = MB) as a Kubernetes quantity (16Gi, 500Mi)."""
    if mem is None:
        return None
    text = str(mem).strip()
    match = re.fullmatch(r"([1-9]\d*)([KMGTkmgt]?)", text)
    if not match:
        raise ValueError(f"{text!r} is not a size like 16G or 500M")
    return match.group(1) + _MEM_UNITS[match.group(2).upper()]


def pod_paths(spec: JobSpec) -> tuple[str, str]:
    """(run directory, checkpoint directory) inside the worker pods."""
    mount = PurePosixPath(spec.config["cluster"]["checkpoint_mount"])
    run_dir = mount / spec.name / run_id(spec)
    try:
        rel = spec.checkpoint_dir.relative_to(spec.run_dir)
    except ValueError:  # a checkpoint.dir outside the run directory means nothing in a pod
        rel = PurePosixPath("checkpoints")  # type: ignore[assignment]
    return str(run_dir), str(run_dir / rel)


def pod_tracking_uri(spec: JobSpec) -> str | None:
    """The MLflow URI the ranks get, or None.

    A local store (a SQLite file or a directory on the submitting machine) does not
    exist in the pods: it moves onto the checkpoint volume. A URI with credentials
    is never put into the manifest.
    """
    uri = spec.tracking_uri
    if not uri:
        return None
    if uri.startswith(_LOCAL_STORES):
        return f"sqlite:///{PurePosixPath(spec.config['cluster']['checkpoint_mount'])}/mlflow.db"
    if has_credentials(uri):
        return None
    return uri


def has_credentials(uri: str) -> bool:
    if "://" not in uri:
        return False
    netloc = uri.split("://", 1)[1].split("/", 1)[0]
    return "@" in netloc or bool(re.search(r"(token|password|secret|key)=", uri, re.I))


def pod_spec(spec: JobSpec) -> JobSpec:
    """The spec as seen from the pods (run and checkpoint directories on the volume)."""
    run_dir, ckpt = pod_paths(spec)
    return dataclasses.replace(
        spec,
        # dry_run and wait are switches of the submitting CLI: fixed here, so the ConfigMap
        # is the same text whether printed or applied, waited for or not.
        config=dict(spec.config, dry_run=False, wait=False),
        run_dir=PurePosixPath(run_dir),  # type: ignore[arg-type]
        checkpoint_dir=PurePosixPath(ckpt),  # type: ignore[arg-type]
        tracking_uri=pod_tracking_uri(spec),
    )


def master_addr(name: str, namespace: str) -> str:
    """Worker 0's DNS name through the headless Service the operator creates."""
    return f"{name}-worker-0.{name}.{namespace}.svc"


def env_for_ranks(spec: JobSpec, name: str) -> dict[str, str]:
    cluster = spec.config["cluster"]
    pod_run_dir, _ = pod_paths(spec)
    env = {
        "HPC_RUN_DIR": pod_run_dir,
        "HPC_CONFIG_FILE": f"{CONFIG_DIR}/{CONFIG_KEY}",
        "HPC_LAUNCHER": "k8s",
        "HPC_JOB_ID": name,
        # Ranks 0..tasks_per_node-1 run on worker 0 (--map-by ppr:N:node / -ppn N).
        "MASTER_ADDR": master_addr(name, str(cluster["namespace"])),
        "MASTER_PORT": str(cluster["master_port"]),
        "PYTHONUNBUFFERED": "1",
    }
    uri = pod_tracking_uri(spec)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    if int(spec.resources["gpus_per_node"]) > 0:
        env.setdefault("NCCL_DEBUG", "WARN")
    for key, value in sorted((cluster.get("env") or {}).items()):
        env[str(key)] = str(value)
    return env


def mpirun_command(spec: JobSpec, name: str) -> list[str]:
    """The launcher's command: mpirun over all workers, no binding (the runtime binds)."""
    cluster = spec.config["cluster"]
    res = spec.resources
    per_node = int(res["tasks_per_node"])
    impl = str(cluster["mpi_implementation"])
    env = env_for_ranks(spec, name)
    rank_command = [*map(str, cluster["command"]), f"{CONFIG_DIR}/{CONFIG_KEY}"]
    secrets = sorted(spec.secrets)  # passed by name from the launcher pod's Secret env
    if impl == "OpenMPI":
        cmd = ["mpirun", "--allow-run-as-root", "-np", str(spec.world_size)]
        cmd += ["--map-by", f"ppr:{per_node}:node", "--bind-to", "none"]
        for key, value in env.items():
            cmd += ["-x", f"{key}={value}"]
        for key in secrets:
            cmd += ["-x", key]
    else:  # Intel MPI and MPICH share Hydra's options
        cmd = ["mpirun", "-n", str(spec.world_size), "-ppn", str(per_node)]
        cmd += ["-genv", "I_MPI_PIN", "off"] if impl == "Intel" else ["-bind-to", "none"]
        for key, value in env.items():
            cmd += ["-genv", key, value]
        if secrets:
            cmd += ["-genvlist", ",".join(secrets)]
    return [*cmd, *rank_command]


def _metadata(spec: JobSpec, name: str, namespace: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": _labels(spec),
        "annotations": {
            LABEL_RUN: run_id(spec),
            LABEL_JOB: spec.name,
            ANNOTATION_RUN_DIR: str(spec.run_dir),
        },
    }


def _labels(spec: JobSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "hpc-launch",
        LABEL_RUN: label_value(run_id(spec)) or "run",
        LABEL_JOB: label_value(spec.name) or "job",
    }


def render_configmap(spec: JobSpec, name: str) -> dict[str, Any]:
    cluster = spec.config["cluster"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, f"{name}-config", str(cluster["namespace"])),
        "data": {CONFIG_KEY: pod_spec(spec).config_yaml()},
    }


def secret_name(name: str) -> str:
    return f"{name}-secrets"


def render_secret(spec: JobSpec, name: str) -> dict[str, Any] | None:
    """The run's secrets as a Secret: created by the client, never printed (None if none)."""
    if not spec.secrets:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, secret_name(name), str(spec.config["cluster"]["namespace"])),
        "type": "Opaque",
        "stringData": dict(sorted(spec.secrets.items())),
    }


def pod_image(cfg: dict[str, Any]) -> str:
    """``container.image`` where set (the same section as on Slurm), else ``cluster.image``."""
    box = cfg.get("container") or {}
    image = str(box.get("image") or cfg["cluster"]["image"])
    return image.removeprefix("docker://").replace("#", "/", 1)


def render_mpijob(spec: JobSpec, name: str) -> dict[str, Any]:
    cluster = spec.config["cluster"]
    res = spec.resources
    namespace = str(cluster["namespace"])
    per_node = int(res["tasks_per_node"])
    gpus = int(res["gpus_per_node"])
    grace = int(cluster["grace_period_s"])
    mount = str(cluster["checkpoint_mount"])

    worker_resources: dict[str, Any] = {
        "requests": {"cpu": str(int(res["cpus_per_task"]) * per_node)},
    }
    memory = memory_quantity(res.get("mem"))
    if memory:
        worker_resources["requests"]["memory"] = memory
        worker_resources["limits"] = {"memory": memory}
    if gpus:
        worker_resources.setdefault("limits", {})["nvidia.com/gpu"] = gpus

    volume: dict[str, Any] = {"name": "run"}
    if cluster.get("checkpoint_pvc"):
        volume["persistentVolumeClaim"] = {"claimName": str(cluster["checkpoint_pvc"])}
    else:  # one node: a scratch volume (checkpoints do not outlive the pod)
        volume["emptyDir"] = {}

    image: dict[str, Any] = {"image": pod_image(spec.config)}
    if cluster.get("image_pull_policy"):
        image["imagePullPolicy"] = str(cluster["image_pull_policy"])
    worker_container: dict[str, Any] = {"name": "worker", **image}
    workdir = (spec.config.get("container") or {}).get("workdir")
    if workdir:
        worker_container["workingDir"] = str(workdir)
    if cluster.get("worker_command"):
        worker_container["command"] = [str(c) for c in cluster["worker_command"]]
    worker_container["resources"] = worker_resources
    worker_container["volumeMounts"] = [
        {"name": "run", "mountPath": mount},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    launcher_container: dict[str, Any] = {
        "name": "launcher",
        **image,
        "command": mpirun_command(spec, name),
        "resources": copy.deepcopy(LAUNCHER_RESOURCES),
    }
    if workdir:
        launcher_container["workingDir"] = str(workdir)
    if spec.secrets:
        launcher_container["env"] = [
            {"name": k, "valueFrom": {"secretKeyRef": {"name": secret_name(name), "key": k}}}
            for k in sorted(spec.secrets)
        ]

    def pod(role: str, container: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"terminationGracePeriodSeconds": grace}
        if cluster.get("service_account"):
            body["serviceAccountName"] = str(cluster["service_account"])
        body["containers"] = [container]
        if volumes:
            body["volumes"] = volumes
        labels = dict(_labels(spec), **{LABEL_MPIJOB: name, LABEL_ROLE: role})
        return {"metadata": {"labels": labels}, "spec": body}

    worker_volumes = [
        volume,
        {"name": "config", "configMap": {"name": f"{name}-config"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    run_policy: dict[str, Any] = {
        "cleanPodPolicy": str(cluster["clean_pod_policy"]),
        "backoffLimit": int(cluster["backoff_limit"]),
    }
    if res.get("time"):
        run_policy["activeDeadlineSeconds"] = parse_time_limit(str(res["time"]))
    if cluster.get("ttl_seconds_after_finished") is not None:
        run_policy["ttlSecondsAfterFinished"] = int(cluster["ttl_seconds_after_finished"])
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": _metadata(spec, name, namespace),
        "spec": {
            "slotsPerWorker": per_node,
            "mpiImplementation": str(cluster["mpi_implementation"]),
            "runPolicy": run_policy,
            "mpiReplicaSpecs": {
                "Launcher": {
                    "replicas": 1,
                    "restartPolicy": "OnFailure",
                    "template": pod("launcher", launcher_container, []),
                },
                "Worker": {
                    "replicas": int(res["nodes"]),
                    "restartPolicy": "Never",
                    "template": pod("worker", worker_container, worker_volumes),
                },
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (the embedded config) as literal blocks; no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(docs: list[dict[str, Any]], header: Sequence[str] = ()) -> str:
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header)
    body = yaml.dump_all(
        docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000
    )
    return comments + "---\n" + body if comments else body


def header(spec: JobSpec, name: str) -> list[str]:
    cluster = spec.config["cluster"]
    pod_run_dir, _ = pod_paths(spec)
    lines = [
        f"hpc-launch plan (k8s launcher): MPIJob {shell_word(cluster['namespace'])}/{name}",
        f"{spec.resources['nodes']} worker(s) x {spec.resources['tasks_per_node']} rank(s);"
        f" run directory in the pods: {shell_word(pod_run_dir)}",
    ]
    if not cluster.get("checkpoint_pvc"):
        lines.append(
            "no cluster.checkpoint_pvc: checkpoints live on an emptyDir (lost with the pod)"
        )
    uri = spec.tracking_uri
    if uri and pod_tracking_uri(spec) is None:
        lines.append(
            "tracking URI holds credentials: not passed to the pods (give them MLflow's own"
            " MLFLOW_TRACKING_* variables)"
        )
    if spec.secrets:
        lines.append(
            f"Secret {cluster['namespace']}/{secret_name(name)} (keys"
            f" {' '.join(sorted(spec.secrets))}) is created at submit, not shown: with kubectl,"
            " create it first"
        )
    lines.append(
        f"apply: kubectl apply -f <this file>   (rank command: {shell_join(cluster['command'])})"
    )
    return lines
