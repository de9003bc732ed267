"""Checks before anything is submitted: the cluster config, then the rendered MPIJob.

1. ``check_config``: the ``cluster.*`` values of a k8s job that Kubernetes would
   reject or that cannot work (names, paths, a shared volume for several nodes).
2. ``check_mpijob``: the manifest against the MPIJob CRD's v2beta1
   ``openAPIV3Schema`` (jsonschema), plus the operator's and API server's rules the
   schema does not carry (pkg/apis/kubeflow/validation/validation.go): Launcher
   replicas 1, Worker replicas >= 1, cleanPodPolicy, restartPolicy, name lengths,
   and no unknown fields (the API server would silently prune them).

Every failure is a :class:`hpc.spec.compose.ConfigError` naming a config key where one
maps to the offending manifest field, else the manifest path.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

import yaml

from hpc.spec import container as container_section
from hpc.spec.errors import ConfigError

CRD_FILE = "mpijob-crd.yaml"
VERSION = "v2beta1"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
CLEAN_POD_POLICIES = ("None", "Running", "All")
MPI_IMPLEMENTATIONS = ("OpenMPI", "Intel", "MPICH")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
RESTART_POLICIES = ("Never", "OnFailure")
MANAGED_BY = ("kubeflow.org/mpi-operator", "kueue.x-k8s.io/multikueue")
RESERVED_ENV = ("HPC_RUN_DIR", "HPC_CONFIG_FILE", "HPC_LAUNCHER", "HPC_JOB_ID")

# Manifest paths (dotted, replica names literal) -> the config key that sets them.
_CONFIG_KEYS: list[tuple[str, str]] = [
    ("metadata.name", "job.name"),
    ("metadata.namespace", "cluster.namespace"),
    ("spec.runPolicy.cleanPodPolicy", "cluster.clean_pod_policy"),
    ("spec.runPolicy.backoffLimit", "cluster.backoff_limit"),
    ("spec.runPolicy.ttlSecondsAfterFinished", "cluster.ttl_seconds_after_finished"),
    ("spec.runPolicy.activeDeadlineSeconds", "resources.time"),
    ("spec.mpiImplementation", "cluster.mpi_implementation"),
    ("spec.slotsPerWorker", "resources.tasks_per_node"),
    ("spec.mpiReplicaSpecs.Worker.replicas", "resources.nodes"),
]
_POD_KEYS: list[tuple[str, str]] = [
    ("resources.requests.memory", "resources.mem"),
    ("resources.limits.memory", "resources.mem"),
    ("resources.requests.cpu", "resources.cpus_per_task"),
    ("resources.limits.nvidia.com/gpu", "resources.gpus_per_node"),
    ("imagePullPolicy", "cluster.image_pull_policy"),
    ("image", "cluster.image"),
    ("terminationGracePeriodSeconds", "cluster.grace_period_s"),
    ("serviceAccountName", "cluster.service_account"),
    ("claimName", "cluster.checkpoint_pvc"),
    ("mountPath", "cluster.checkpoint_mount"),
]


# -- config ---------------------------------------------------------------------------------
def check_container(cfg: dict[str, Any]) -> None:
    """The ``container`` section on Kubernetes: the pod is the container, so only its
    image (a registry reference) and workdir apply; the rest has a k8s way of its own."""
    box = cfg.get("container") or {}
    image = str(box.get("image") or "")
    if image and container_section.is_image_file(image):
        raise ConfigError("container.image", f"{image!r} is a local file; a pod needs a reference")
    unused = {
        "mounts": "the run dir lives on cluster.checkpoint_pvc",
        "env": "set variables with cluster.env",
        "writable": "a pod's root filesystem is writable",
        "install": "the pod image must hold hpc-launch's runtime",
    }
    for key, why in unused.items():
        if box.get(key) not in (None, [], False, "none"):
            raise ConfigError(f"container.{key}", f"is not used on Kubernetes ({why})")


def check_config(cfg: dict[str, Any]) -> None:
    """The k8s cluster values; raise ConfigError naming the key."""
    check_container(cfg)
    cluster = cfg["cluster"]
    image = str(cluster.get("image") or "")
    if not image.strip() or re.search(r"\s", image):
        raise ConfigError("cluster.image", f"{image!r} is not an image reference")
    _match(cluster, "namespace", DNS_LABEL, "a DNS label (lower-case letters, digits, '-')")
    for key in ("checkpoint_pvc", "service_account"):
        if cluster.get(key) is not None:
            _match(cluster, key, DNS_SUBDOMAIN, "a DNS subdomain name (lower-case, '-', '.')")
    mount = str(cluster.get("checkpoint_mount") or "")
    if not mount.startswith("/") or mount.rstrip("/") == "" or ":" in mount:
        raise ConfigError(
            "cluster.checkpoint_mount", f"{mount!r} must be an absolute path other than '/'"
        )
    if mount.rstrip("/") == "/etc/hpc-launch" or mount.rstrip("/") == "/dev/shm":
        raise ConfigError("cluster.checkpoint_mount", f"{mount!r} is used by hpc-launch itself")
    policy = cluster.get("image_pull_policy")
    if policy is not None and policy not in PULL_POLICIES:
        raise ConfigError(
            "cluster.image_pull_policy", f"{policy!r} is not one of {', '.join(PULL_POLICIES)}"
        )
    if not cluster.get("command"):
        raise ConfigError("cluster.command", "must name the program each rank runs")
    for key in ("backoff_limit", "ttl_seconds_after_finished"):
        value = cluster.get(key)
        if value is not None and value < 0:
            raise ConfigError(f"cluster.{key}", f"must be >= 0, got {value!r}")
    port = cluster.get("master_port")
    if not 1024 <= int(port) <= 65535:
        raise ConfigError("cluster.master_port", f"must be in 1024-65535, got {port!r}")
    lead = int((cfg.get("preemption") or {}).get("lead_s") or 0)
    grace = cluster.get("grace_period_s")
    if grace is None or grace < max(1, lead):
        need = f"preemption.lead_s ({lead})" if lead else "1"
        raise ConfigError(
            "cluster.grace_period_s",
            f"must be >= {need}: the pods need that long to checkpoint after SIGTERM,"
            f" got {grace!r}",
        )
    for name, value in (cluster.get("env") or {}).items():
        if not ENV_NAME.match(str(name)):
            raise ConfigError(f"cluster.env.{name}", "is not a valid environment variable name")
        if name in RESERVED_ENV:
            raise ConfigError(f"cluster.env.{name}", "is set by hpc-launch itself")
        if "\n" in str(value):
            raise ConfigError(f"cluster.env.{name}", "must not contain a newline")
    if int(cfg["resources"]["nodes"]) > 1 and not cluster.get("checkpoint_pvc"):
        raise ConfigError(
            "cluster.checkpoint_pvc",
            f"is required for {cfg['resources']['nodes']} nodes: the workers must share one"
            " volume for the run directory and checkpoints",
        )


def _match(cluster: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> None:
    value = str(cluster.get(key) or "")
    if not pattern.match(value) or len(value) > (63 if pattern is DNS_LABEL else 253):
        raise ConfigError(f"cluster.{key}", f"{value!r} is not {what}")


# -- manifest -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def crd_schema() -> dict[str, Any]:
    """v2beta1's ``openAPIV3Schema`` from the CRD shipped in this package."""
    text = resources.files(__package__).joinpath(CRD_FILE).read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for doc in yaml.load_all(text, Loader=loader):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            for version in doc["spec"]["versions"]:
                if version["name"] == VERSION:
                    return version["schema"]["openAPIV3Schema"]
    raise RuntimeError(f"{CRD_FILE}: no {VERSION} schema")  # pragma: no cover - shipped file


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema  # noqa: PLC0415 (lazy: jsonschema only to check a manifest)

    schema = crd_schema()
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def manifest_errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Every problem with an MPIJob document as (manifest path, message), schema first."""
    problems: list[tuple[str, str]] = []
    for error in sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path)):
        problems.append((_path(error.absolute_path), error.message))
    problems += _unknown_fields(doc, crd_schema(), "")
    problems += _operator_rules(doc)
    return problems


def check_mpijob(doc: dict[str, Any]) -> None:
    """Raise ConfigError for the first problem, naming the config key behind it."""
    problems = manifest_errors(doc)
    if problems:
        path, message = problems[0]
        raise ConfigError(config_key(path), f"{message} (MPIJob field {path})")


def config_key(path: str) -> str:
    """The config key that sets manifest field ``path`` (else ``manifest.<path>``)."""
    for prefix, key in _CONFIG_KEYS:
        if path == prefix or path.startswith(prefix + "."):
            return key
    match = re.match(r"spec\.mpiReplicaSpecs\.\w+\.template\.spec\.(.*)$", path)
    if match:
        rest = re.sub(r"^(containers|volumes)\.\d+\.", "", match.group(1))
        rest = re.sub(r"^(volumeMounts)\.\d+\.", "", rest)
        rest = re.sub(r"^persistentVolumeClaim\.", "", rest)
        for suffix, key in _POD_KEYS:
            if rest == suffix:
                return key
    if path.startswith("spec.mpiReplicaSpecs"):
        return "cluster"
    return f"manifest.{path}" if path else "manifest"


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts)


def _unknown_fields(node: Any, schema: dict[str, Any], path: str) -> list[tuple[str, str]]:
    """Fields a structural schema does not declare (the API server drops them silently)."""
    problems: list[tuple[str, str]] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return problems
    if isinstance(node, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if props is not None and key in props:
                problems += _unknown_fields(value, props[key], sub)
            elif isinstance(extra, dict):
                problems += _unknown_fields(value, extra, sub)
            elif props is not None and path != "metadata":
                problems.append((sub, f"unknown field {key!r}"))
    elif isinstance(node, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(node):
            problems += _unknown_fields(item, schema["items"], f"{path}.{i}")
    return problems


def _operator_rules(doc: dict[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    if doc.get("apiVersion") != "kubeflow.org/v2beta1" or doc.get("kind") != "MPIJob":
        problems.append(("apiVersion", "must be kubeflow.org/v2beta1 MPIJob"))
    replicas = spec.get("mpiReplicaSpecs") or {}
    for role in replicas:
        if role not in ("Launcher", "Worker"):
            problems.append((f"spec.mpiReplicaSpecs.{role}", "only Launcher and Worker exist"))
    launcher = replicas.get("Launcher")
    if launcher is None:
        problems.append(("spec.mpiReplicaSpecs.Launcher", "is required"))
    elif launcher.get("replicas", 1) != 1:
        problems.append(
            ("spec.mpiReplicaSpecs.Launcher.replicas", f"must be 1, got {launcher['replicas']!r}")
        )
    worker = replicas.get("Worker")
    if worker is not None and not (
        isinstance(worker.get("replicas"), int) and worker["replicas"] >= 1
    ):
        problems.append(
            (
                "spec.mpiReplicaSpecs.Worker.replicas",
                f"must be >= 1, got {worker.get('replicas')!r}",
            )
        )
    for role, rs in replicas.items():
        policy = (rs or {}).get("restartPolicy")
        if policy is not None and policy not in RESTART_POLICIES:
            problems.append(
                (f"spec.mpiReplicaSpecs.{role}.restartPolicy", f"{policy!r} is not Never/OnFailure")
            )
        pod = ((rs or {}).get("template") or {}).get("spec") or {}
        for i, container in enumerate(pod.get("containers") or []):
            base = f"spec.mpiReplicaSpecs.{role}.template.spec.containers.{i}"
            if not DNS_LABEL.match(str(container.get("name", ""))):
                problems.append((f"{base}.name", "container names must be DNS labels"))
            pull = container.get("imagePullPolicy")
            if pull is not None and pull not in PULL_POLICIES:
                problems.append(
                    (
                        f"{base}.imagePullPolicy",
                        f"{pull!r} is not one of {', '.join(PULL_POLICIES)}",
                    )
                )
        grace = pod.get("terminationGracePeriodSeconds")
        if isinstance(grace, int) and grace < 0:
            problems.append(
                (
                    f"spec.mpiReplicaSpecs.{role}.template.spec.terminationGracePeriodSeconds",
                    "must be >= 0",
                )
            )
    policy = (spec.get("runPolicy") or {}).get("cleanPodPolicy")
    if policy is not None and policy not in CLEAN_POD_POLICIES:
        problems.append(
            (
                "spec.runPolicy.cleanPodPolicy",
                f"{policy!r} is not one of {', '.join(CLEAN_POD_POLICIES)}",
            )
        )
    run_policy = spec.get("runPolicy") or {}
    for key, low in (
        ("backoffLimit", 0),
        ("ttlSecondsAfterFinished", 0),
        ("activeDeadlineSeconds", 1),
    ):
        value = run_policy.get(key)
        if isinstance(value, int) and value < low:
            problems.append((f"spec.runPolicy.{key}", f"must be >= {low}, got {value}"))
    managed = run_policy.get("managedBy")
    if managed is not None and managed not in MANAGED_BY:
        problems.append(
            ("spec.runPolicy.managedBy", f"{managed!r} is not one of {', '.join(MANAGED_BY)}")
        )
    slots = spec.get("slotsPerWorker")
    if isinstance(slots, int) and slots < 0:
        problems.append(("spec.slotsPerWorker", "must be >= 0"))
    if "sshAuthMountPath" in spec and not spec["sshAuthMountPath"]:
        problems.append(("spec.sshAuthMountPath", "must not be empty"))
    impl = spec.get("mpiImplementation")
    if impl is not None and impl not in MPI_IMPLEMENTATIONS:
        problems.append(
            ("spec.mpiImplementation", f"{impl!r} is not one of {', '.join(MPI_IMPLEMENTATIONS)}")
        )
    name = str(meta.get("name") or "")
    count = (worker or {}).get("replicas")
    workers = count if isinstance(count, int) and count > 0 else 1
    longest = f"{name}-worker-{max(workers - 1, 0)}"
    if not DNS_LABEL.match(name) or len(longest) > 63 or len(f"{name}-launcher") > 63:
        problems.append(
            ("metadata.name", f"{name!r} must be a DNS label leaving room for {longest!r} (63)")
        )
    namespace = meta.get("namespace")
    if namespace is not None and not DNS_LABEL.match(str(namespace)):
        problems.append(("metadata.namespace", f"{namespace!r} is not a DNS label"))
    return problems
