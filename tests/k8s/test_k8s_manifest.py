"""The MPIJob plan: golden manifests, schema validity, dry-run hygiene, rendering rules."""

from __future__ import annotations

import copy
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k8s_helpers import SCHEMAS, check_golden, hpc_launch

from hpc.launchers.kubernetes import manifest
from hpc.launchers.kubernetes.validate import (
    CRD_FILE,
    check_mpijob,
    config_key,
    crd_schema,
    manifest_errors,
)
from hpc.spec.errors import ConfigError

# name -> overrides (run_dir is added by the test)
GOLDEN_CASES: dict[str, list[str]] = {
    "cpu_1node.yaml": ["cluster=k8s"],
    "gpu_2x4_pvc.yaml": [
        "cluster=k8s",
        "resources.nodes=2",
        "resources.tasks_per_node=4",
        "resources.gpus_per_node=4",
        "resources.cpus_per_task=8",
        "resources.mem=480G",
        "resources.time=1-12:00:00",
        "cluster.namespace=ml-team",
        "cluster.checkpoint_pvc=ckpt-shared",
        "cluster.checkpoint_mount=/mnt/ckpt",
        "cluster.image=registry.example.com/ml/hpc-launch:2.13-cu124",
        "cluster.image_pull_policy=IfNotPresent",
        "cluster.service_account=trainer",
        "cluster.clean_pod_policy=All",
        "cluster.backoff_limit=5",
        "cluster.ttl_seconds_after_finished=3600",
        "cluster.grace_period_s=300",
        "+cluster.env.NCCL_IB_HCA='mlx5_0,mlx5_1'",
        "tracking.uri=http://mlflow.ml-team.svc:5000",
    ],
    "quotes.yaml": [
        "cluster=k8s",
        "job.name=it.s_quoted",
        "tracking.experiment='team \"alpha\": it\\'s #1'",
        "+cluster.env.EXTRA_ARGS='--tag \"a b\" --x=it\\'s'",
        "+cluster.env.EMPTY=''",
        "cluster.command=[python3,-c,'import sys; print(\"rank\", sys.argv)']",
    ],
}


def normalise(text: str, workdir: Path) -> str:
    return text.replace(str(workdir), "WORKDIR")


def plan_text(workdir: Path, overrides: list[str]) -> str:
    proc = hpc_launch([*overrides, "dry_run=true", f"run_dir={workdir}/run-1"], workdir)
    assert proc.returncode == 0, proc.stderr
    # stderr: the cost estimate, then the composed job section (no warnings)
    estimate, header, *rest = proc.stderr.splitlines()
    assert estimate.startswith("hpc-launch: estimate: at most "), proc.stderr
    assert header.startswith("hpc-launch: config: job and your own keys"), proc.stderr
    assert all(line.startswith("  ") for line in rest), proc.stderr
    return proc.stdout


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_manifest(name: str, workdir: Path) -> None:
    text = plan_text(workdir, GOLDEN_CASES[name])
    check_golden(f"k8s/{name}", normalise(text, workdir))
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "MPIJob"]
    assert manifest_errors(docs[1]) == []
    assert not (workdir / "run-1").exists(), "a dry run must not create the run directory"
    assert not (workdir / ".state").exists()


def test_golden_files_are_schema_valid() -> None:
    for path in sorted((Path(__file__).parents[1] / "golden" / "k8s").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        mpijobs = [d for d in docs if d["kind"] == "MPIJob"]
        assert len(mpijobs) == 1, path
        assert manifest_errors(mpijobs[0]) == [], path


def test_gpu_manifest_values(workdir: Path) -> None:
    docs = [d for d in yaml.safe_load_all(plan_text(workdir, GOLDEN_CASES["gpu_2x4_pvc.yaml"]))]
    cm, job = [d for d in docs if d]
    spec = job["spec"]
    assert spec["slotsPerWorker"] == 4
    assert spec["runPolicy"] == {
        "cleanPodPolicy": "All",
        "backoffLimit": 5,
        "activeDeadlineSeconds": 36 * 3600,
        "ttlSecondsAfterFinished": 3600,
    }
    launcher = spec["mpiReplicaSpecs"]["Launcher"]
    worker = spec["mpiReplicaSpecs"]["Worker"]
    assert launcher["replicas"] == 1 and worker["replicas"] == 2
    lc = launcher["template"]["spec"]["containers"][0]
    wc = worker["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in str(lc["resources"])
    assert wc["resources"] == {
        "requests": {"cpu": "32", "memory": "480Gi"},
        "limits": {"memory": "480Gi", "nvidia.com/gpu": 4},
    }
    assert worker["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    cmd = lc["command"]
    assert cmd[:4] == ["mpirun", "--allow-run-as-root", "-np", "8"]
    assert cmd[cmd.index("--bind-to") : cmd.index("--bind-to") + 2] == ["--bind-to", "none"]
    exported = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-x"]
    assert "HPC_LAUNCHER=k8s" in exported
    assert "HPC_RUN_DIR=/mnt/ckpt/digits/run-1" in exported
    assert "HPC_CONFIG_FILE=/etc/hpc-launch/config.yaml" in exported
    assert "MLFLOW_TRACKING_URI=http://mlflow.ml-team.svc:5000" in exported
    assert "NCCL_IB_HCA=mlx5_0,mlx5_1" in exported
    volumes = {v["name"]: v for v in worker["template"]["spec"]["volumes"]}
    assert volumes["run"]["persistentVolumeClaim"] == {"claimName": "ckpt-shared"}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    for doc in (cm, job):
        assert doc["metadata"]["namespace"] == "ml-team"
        assert doc["metadata"]["labels"]["hpc-launch/run"] == "run-1"
        assert doc["metadata"]["labels"]["hpc-launch/job-name"] == "digits"
    pod_cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert pod_cfg["run_dir"] == "/mnt/ckpt/digits/run-1"
    assert pod_cfg["checkpoint"]["dir"] == "/mnt/ckpt/digits/run-1/checkpoints"
    assert pod_cfg["dry_run"] is False


def test_quoted_values_survive(workdir: Path) -> None:
    cm, job = [d for d in yaml.safe_load_all(plan_text(workdir, GOLDEN_CASES["quotes.yaml"])) if d]
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert cfg["tracking"]["experiment"] == 'team "alpha": it\'s #1'
    cmd = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["command"]
    assert 'EXTRA_ARGS=--tag "a b" --x=it\'s' in cmd
    assert "EMPTY=" in cmd
    assert cmd[-4:] == [
        "python3",
        "-c",
        'import sys; print("rank", sys.argv)',
        "/etc/hpc-launch/config.yaml",
    ]
    # job.name "it.s_quoted" is not a DNS label: names are derived, the label keeps it
    assert job["metadata"]["name"] == "it-s-quoted-run-1"
    assert job["metadata"]["labels"]["hpc-launch/job-name"] == "it.s_quoted"


def test_credentials_never_reach_the_manifest(workdir: Path) -> None:
    text = plan_text(workdir, ["cluster=k8s", "tracking.uri=https://alice:s3cret@mlflow.example/"])
    assert "s3cret" not in text
    job = [d for d in yaml.safe_load_all(text) if d][1]
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    # The URI without userinfo; the credentials come from the run's Secret, by name.
    assert "MLFLOW_TRACKING_URI=https://mlflow.example/" in launcher["command"]
    assert "MLFLOW_TRACKING_PASSWORD" in launcher["command"]  # mpirun -x NAME
    ref = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in launcher["env"]}
    assert ref["MLFLOW_TRACKING_PASSWORD"] == {
        "name": f"{job['metadata']['name']}-secrets",
        "key": "MLFLOW_TRACKING_PASSWORD",
    }
    assert "Secret" in text.splitlines()[3]  # said so in the header comment


def test_dry_run_imports_no_kubernetes_client(workdir: Path) -> None:
    code = (
        "import sys, io, contextlib\n"
        "from hpc.cli.launch import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    rc = main(['cluster=k8s', 'dry_run=true'])\n"
        "assert rc == 0 and 'kind: MPIJob' in buf.getvalue()\n"
        "heavy = [m for m in ('kubernetes', 'torch', 'mlflow', 'urllib3') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported on the dry-run path: {proc.stdout.strip()}"


# -- the CRD and the validator ----------------------------------------------------------------
def test_shipped_crd_is_the_fixture_and_the_recorded_upstream_file() -> None:
    from importlib import resources

    shipped = resources.files("hpc.launchers.kubernetes").joinpath(CRD_FILE).read_bytes()
    assert shipped == (SCHEMAS / "mpijob-crd.yaml").read_bytes()
    digest = hashlib.sha256(shipped).hexdigest()
    assert digest in (SCHEMAS / "SOURCES.md").read_text()
    assert crd_schema()["properties"]["spec"]["required"] == ["mpiReplicaSpecs"]


@pytest.mark.parametrize("example", ["pi.yaml", "tensorflow-benchmarks.yaml"])
def test_upstream_examples_pass_the_validator(example: str) -> None:
    doc = yaml.safe_load((SCHEMAS / "examples" / example).read_text())
    assert manifest_errors(doc) == []


@pytest.fixture(scope="module")
def valid_doc() -> dict:
    doc = yaml.safe_load((SCHEMAS / "examples" / "pi.yaml").read_text())
    assert manifest_errors(doc) == []
    return doc


def _set(doc: dict, path: str, value: object) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


_DELETE = object()
W = "spec.mpiReplicaSpecs.Worker"
L = "spec.mpiReplicaSpecs.Launcher"
BROKEN = [
    # (path, value, the path the first problem names, a word of its message)
    ("spec.mpiReplicaSpecs", _DELETE, "spec", "mpiReplicaSpecs"),  # schema: required
    ("spec.slotsPerWorker", "two", "spec.slotsPerWorker", "integer"),  # schema: type
    ("spec.mpiImplementation", "LAM", "spec.mpiImplementation", "LAM"),  # schema: enum
    (f"{W}.template.spec.containers.0.resources.limits.memory", "lots", None, "does not match"),
    (f"{L}.replicas", 2, f"{L}.replicas", "must be 1"),  # operator
    (f"{W}.replicas", 0, f"{W}.replicas", ">= 1"),
    (L, _DELETE, L, "required"),
    ("spec.runPolicy.cleanPodPolicy", "Sometimes", "spec.runPolicy.cleanPodPolicy", "Sometimes"),
    (f"{W}.restartPolicy", "Always", f"{W}.restartPolicy", "Never/OnFailure"),
    ("spec.runPolicy.backoffLimit", -1, "spec.runPolicy.backoffLimit", ">= 0"),
    ("spec.mpiReplicaSpecs.PS", {"replicas": 1}, "spec.mpiReplicaSpecs.PS", "only Launcher"),
    ("spec.slotsPerWorkers", 2, "spec.slotsPerWorkers", "unknown field"),  # pruned by the API
    (f"{W}.template.spec.containers.0.imagePolicy", "x", None, "unknown field"),
    ("metadata.name", "x" * 60, "metadata.name", "DNS label"),
    ("metadata.name", "Bad_Name", "metadata.name", "DNS label"),
]


@pytest.mark.parametrize(
    ("path", "value", "where", "word"), BROKEN, ids=[b[0] + "=" + str(b[1])[:12] for b in BROKEN]
)
def test_validator_rejects(
    valid_doc: dict, path: str, value: object, where: str | None, word: str
) -> None:
    problems = manifest_errors(_set(valid_doc, path, value))
    assert problems, "accepted a broken manifest"
    first_path, message = problems[0]
    if where is not None:
        assert first_path == where, problems
    assert word in message, problems
    with pytest.raises(ConfigError) as info:
        check_mpijob(_set(valid_doc, path, value))
    assert "\n" not in str(info.value)


def test_config_keys_for_manifest_paths() -> None:
    assert config_key("spec.runPolicy.cleanPodPolicy") == "cluster.clean_pod_policy"
    assert config_key("spec.mpiReplicaSpecs.Worker.replicas") == "resources.nodes"
    assert (
        config_key(f"{W}.template.spec.containers.0.resources.requests.memory") == "resources.mem"
    )
    assert config_key(f"{W}.template.spec.volumes.0.persistentVolumeClaim.claimName") == (
        "cluster.checkpoint_pvc"
    )
    assert config_key("spec.mpiReplicaSpecs.Launcher.replicas") == "cluster"
    assert config_key("spec.foo") == "manifest.spec.foo"


# -- rendering helpers ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mem", "quantity"),
    [
        ("16G", "16Gi"),
        ("500M", "500Mi"),
        ("16000", "16000Mi"),
        ("2T", "2Ti"),
        ("64k", "64Ki"),
        (None, None),
    ],
)
def test_memory_quantity(mem: str | None, quantity: str | None) -> None:
    assert manifest.memory_quantity(mem) == quantity


def test_long_job_names_fit_the_operators_pod_names(workdir: Path) -> None:
    long_name = "A" + "very_long.Job-name" * 6
    text = plan_text(workdir, ["cluster=k8s", f"job.name={long_name}"])
    job = [d for d in yaml.safe_load_all(text) if d][1]
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert len(f"{name}-launcher") <= 63 and name.endswith("-run-1")
    assert len(job["metadata"]["labels"]["hpc-launch/job-name"]) <= 63
    assert job["metadata"]["annotations"]["hpc-launch/job-name"] == long_name
