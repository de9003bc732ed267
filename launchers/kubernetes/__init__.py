"""The Kubernetes launcher: the job as a Kubeflow MPIJob (kubeflow.org/v2beta1).

``plan`` renders a ConfigMap (the resolved config) and the MPIJob, checks both
against the shipped CRD schema and the operator's rules, and prints them as one
multi-document YAML (``kubectl apply -f`` takes it as is). ``submit`` creates them
through the official ``kubernetes`` client (:mod:`.client`), which is imported
only there: dry runs never load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpc.config import ConfigError
from hpc.jobspec import JobSpec
from hpc.launchers.base import Launcher, Plan
from hpc.launchers.kubernetes import manifest
from hpc.launchers.kubernetes.validate import check_config, check_mpijob

if TYPE_CHECKING:
    from hpc.launchers.kubernetes.client import KubernetesJob

MANIFEST_FILE = "mpijob.yaml"


class KubernetesLauncher(Launcher):
    name = "k8s"

    def plan(self, spec: JobSpec) -> Plan:
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
        from hpc.launchers.kubernetes.client import submit

        return submit(plan)


__all__ = ["MANIFEST_FILE", "KubernetesLauncher"]
