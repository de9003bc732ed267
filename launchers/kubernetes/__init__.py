"""The Kubernetes launcher: the job as a Kubeflow MPIJob (kubeflow.org/v2beta1).

``plan`` renders a ConfigMap (the resolved config) and the MPIJob, checks both
against the shipped CRD schema and the operator's rules, and prints them as one
multi-document YAML (``kubectl apply -f`` takes it as is). ``submit`` creates them
through the official ``kubernetes`` client (:mod:`.client`), which is imported
only there: dry runs never load it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpc.launchers.base import NOTHING_DISCOVERED, JobHandle, Launcher, MachineFacts, Plan
from hpc.launchers.kubernetes import manifest
from hpc.launchers.kubernetes.validate import check_config, check_mpijob
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import JobSpec

if TYPE_CHECKING:
    from hpc.launchers.kubernetes.client import KubernetesJob

MANIFEST_FILE = "mpijob.yaml"


@dataclass
class K8sClusterConfig:
    """A Kubeflow MPIJob (kubeflow.org/v2beta1): one launcher pod runs mpirun, one worker
    pod per node runs the ranks. Checked by ``hpc.launchers.kubernetes.validate``."""

    kind: str = "k8s"
    image: str = "ghcr.io/hpc-launch/hpc-launch:latest"
    image_pull_policy: str | None = None  # Always, IfNotPresent, Never; None: cluster default
    # What each rank runs; the path of the job's config file is appended.
    command: list[str] = field(default_factory=lambda: ["python", "-m", "hpc.run"])
    # Worker container command (the sshd that mpirun reaches); empty: the image's entrypoint.
    worker_command: list[str] = field(default_factory=list)
    namespace: str = "default"
    context: str | None = None  # kubeconfig context; None: the current one (or in-cluster)
    service_account: str | None = None
    # Shared volume for the run directory and checkpoints; required for more than one node.
    checkpoint_pvc: str | None = None
    checkpoint_mount: str = "/checkpoints"  # where the volume is mounted in the workers
    mpi_implementation: str = "OpenMPI"  # OpenMPI, Intel or MPICH
    master_port: int = 29500  # torch.distributed rendezvous port on worker 0
    env: dict[str, str] = field(default_factory=dict)  # extra variables for every rank
    clean_pod_policy: str = "Running"  # None, Running or All
    backoff_limit: int = 3
    ttl_seconds_after_finished: int | None = 86400
    # terminationGracePeriodSeconds; must cover preemption.lead_s where that is set.
    grace_period_s: int = 120


class KubernetesLauncher(Launcher):
    schema = K8sClusterConfig
    name = "k8s"
    # The pod is the container: any runtime's image (a registry reference) is the pod image.
    container_runtimes = ("pyxis", "apptainer", "oci")

    def attach(self, record: dict[str, Any]) -> JobHandle:
        # lazy: kubernetes client only when used
        from hpc.launchers.kubernetes.client import handle_from_record  # noqa: PLC0415

        try:
            return handle_from_record(record["run_dir"])
        except ConfigError as exc:
            raise LookupError(
                f"{record['run_dir']}: cannot reach its Kubernetes cluster ({exc})"
            ) from None

    def plan(self, spec: JobSpec, facts: MachineFacts = NOTHING_DISCOVERED) -> Plan:
        check_config(spec.config)
        name = manifest.job_name(spec)
        try:
            configmap = manifest.render_configmap(spec, name)
            mpijob = manifest.render_mpijob(spec, name)
        except ValueError as exc:  # e.g. a memory size that does not convert
            raise ConfigError("resources.mem", str(exc)) from None
        check_mpijob(mpijob)
        text = manifest.to_yaml([configmap, mpijob], manifest.header(spec, name))
        return Plan(
            launcher=self.name,
            spec=spec,
            text=text,
            commands=[
                mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0][
                    "command"
                ]
            ],
            env=manifest.env_for_ranks(spec, name),
            files={spec.config_file.name: spec.config_yaml(), MANIFEST_FILE: text},
        )

    def submit(self, plan: Plan) -> KubernetesJob:
        # lazy: kubernetes client only when used
        from hpc.launchers.kubernetes.client import submit  # noqa: PLC0415

        return submit(plan)


__all__ = ["MANIFEST_FILE", "KubernetesLauncher"]
