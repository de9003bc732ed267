"""The kubernetes client's requests, checked against a local fake API server.

No cluster is reachable from the test machines: a kubeconfig written by each test
points the official client at an ``http.server`` thread that records the resource
path, HTTP method and body of every request (see ``k8s_helpers.FakeApiServer``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from k8s_helpers import FakeApiServer, hpc_launch, pod, status, write_kubeconfig

from hpc.rundir import records

# The client (kubernetes 3x on urllib3 1.26) calls urllib3's deprecated getheader(s).
pytestmark = pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")

NS = "team-a"
NAME = "digits-run-1"
MPIJOBS = f"/apis/kubeflow.org/v2beta1/namespaces/{NS}/mpijobs"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer().start()
    yield fake
    fake.stop()


@pytest.fixture
def kubeconfig(server: FakeApiServer, workdir: Path) -> Path:
    return write_kubeconfig(workdir / "kubeconfig", server.url)


def submit(workdir: Path, kubeconfig: Path, *extra: str) -> object:
    args = ["cluster=k8s", f"cluster.namespace={NS}", "wait=false", f"run_dir={workdir}/run-1"]
    return hpc_launch([*args, *extra], workdir, KUBECONFIG=str(kubeconfig))


def test_submit_sends_configmap_then_mpijob_and_records_the_run(
    server: FakeApiServer, kubeconfig: Path, workdir: Path
) -> None:
    args = ["cluster=k8s", f"cluster.namespace={NS}", "wait=false", f"run_dir={workdir}/run-1"]
    dry = hpc_launch([*args, "dry_run=true"], workdir)
    proc = submit(workdir, kubeconfig)
    assert proc.returncode == 0, proc.stderr
    assert f"{NAME}: started" in proc.stderr
    assert server.calls() == [
        ("POST", CONFIGMAPS),
        ("POST", MPIJOBS),
        ("PATCH", f"{CONFIGMAPS}/{NAME}-config"),
    ]
    cm_req, job_req, patch_req = server.requests
    planned = [d for d in yaml.safe_load_all(dry.stdout) if d]
    assert cm_req.body == planned[0], "the ConfigMap sent is the one dry_run prints"
    assert job_req.body == planned[1], "the MPIJob sent is the one dry_run prints"
    assert all(r.headers.get("authorization") == "Bearer test-token" for r in server.requests)
    assert job_req.headers["content-type"].startswith("application/json")
    owner = patch_req.body["metadata"]["ownerReferences"][0]
    created = server.objects[f"{MPIJOBS}/{NAME}"]
    assert owner == {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "name": NAME,
        "uid": created["metadata"]["uid"],
        "blockOwnerDeletion": False,
    }
    assert "patch" in patch_req.headers["content-type"]
    # the run record and the files the plan wrote
    run = workdir / "run-1"
    record = records.load(run)
    assert record["launcher"] == "k8s" and record["job_id"] == NAME
    assert record["state"] == "PENDING"
    assert record["extra"]["namespace"] == NS and record["extra"]["mpijob"] == NAME
    assert record["checkpoint_dir"] == "/checkpoints/digits/run-1/checkpoints"
    assert (run / "mpijob.yaml").read_text() == dry.stdout
    assert (run / "config.yaml").exists()
    index = (workdir / ".state" / "runs.jsonl").read_text()
    assert str(run) in index


def test_status_logs_wait_and_cancel(
    server: FakeApiServer, kubeconfig: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert submit(workdir, kubeconfig).returncode == 0
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    from hpc.launchers.kubernetes.client import handle_from_record

    run = workdir / "run-1"
    job = handle_from_record(run)
    job.poll_s = job.status_ttl_s = 0
    server.requests.clear()

    # pending: the pods say why
    server.pods = [pod(f"{NAME}-worker-0", NAME, "worker", waiting="ImagePullBackOff")]
    assert job.status() == "PENDING"
    assert job.message and "ImagePullBackOff" in job.message and f"{NAME}-worker-0" in job.message
    assert server.calls() == [
        ("GET", f"{MPIJOBS}/{NAME}"),
        ("GET", f"/api/v1/namespaces/{NS}/pods"),
    ]
    assert server.requests[1].query["labelSelector"] == [f"hpc-launch/mpijob={NAME}"]

    server.pods = [pod(f"{NAME}-worker-0", NAME, "worker", unschedulable="0/3 nodes: GPU")]
    assert job.status() == "PENDING" and "Unschedulable" in (job.message or "")

    # running, then logs of the launcher pod
    server.mpijob_status = {
        "conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]
    }
    server.pods = [
        pod(f"{NAME}-launcher-abcde", NAME, "launcher"),
        pod(f"{NAME}-worker-0", NAME, "worker"),
    ]
    server.log_text = "epoch 1/8 ...\nfinal accuracy 0.95 (world size 2)\n"
    assert job.status() == "RUNNING"
    assert records.load(run)["state"] == "RUNNING"
    server.requests.clear()
    assert list(job.logs()) == ["epoch 1/8 ...", "final accuracy 0.95 (world size 2)"]
    assert server.calls() == [
        ("GET", f"/api/v1/namespaces/{NS}/pods"),
        ("GET", f"/api/v1/namespaces/{NS}/pods/{NAME}-launcher-abcde/log"),
    ]
    assert server.requests[0].query["labelSelector"] == [
        f"hpc-launch/mpijob={NAME},hpc-launch/role=launcher"
    ]

    # succeeded: wait returns 0 and the record says COMPLETED
    server.mpijob_status = {
        "conditions": [
            {
                "type": "Succeeded",
                "status": "True",
                "message": "MPIJob team-a/digits-run-1 succeeded",
            }
        ]
    }
    assert job.wait() == 0
    record = records.load(run)
    assert record["state"] == "COMPLETED" and record["exit_code"] == 0

    # cancel deletes the MPIJob (pods go with it) and the ConfigMap
    server.requests.clear()
    job.cancel()
    assert server.calls() == [
        ("DELETE", f"{MPIJOBS}/{NAME}"),
        ("DELETE", f"{CONFIGMAPS}/{NAME}-config"),
    ]
    assert server.requests[0].body["propagationPolicy"] == "Background"
    assert records.load(run)["state"] == "CANCELLED"
    assert job.status() == "CANCELLED"  # gone from the API server
    job.cancel()  # idempotent: 404s are fine


def test_status_is_cached_briefly_for_progress_redraws(
    server: FakeApiServer, kubeconfig: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert submit(workdir, kubeconfig).returncode == 0
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    from hpc.launchers.kubernetes.client import handle_from_record

    job = handle_from_record(workdir / "run-1")
    server.requests.clear()
    states = {job.status() for _ in range(20)}
    assert states == {"PENDING"}
    assert server.calls().count(("GET", f"{MPIJOBS}/{NAME}")) == 1


def test_deadline_and_exit_code(
    server: FakeApiServer, kubeconfig: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert submit(workdir, kubeconfig, "resources.time=00:10:00").returncode == 0
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    from hpc.launchers.kubernetes.client import handle_from_record

    job = handle_from_record(workdir / "run-1")
    job.poll_s = job.status_ttl_s = 0
    server.mpijob_status = {
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "DeadlineExceeded",
                "message": "too long",
            }
        ]
    }
    server.pods = [pod(f"{NAME}-launcher-x", NAME, "launcher", exit_code=137)]
    assert job.wait() == 137
    record = records.load(workdir / "run-1")
    assert record["state"] == "TIMEOUT" and record["exit_code"] == 137
    assert record["message"] == "too long"
    job_body = next(r.body for r in server.requests if r.method == "POST" and "mpijobs" in r.path)
    assert job_body["spec"]["runPolicy"]["activeDeadlineSeconds"] == 600


def test_missing_operator_is_said_plainly_and_leaves_nothing(
    server: FakeApiServer, kubeconfig: Path, workdir: Path
) -> None:
    server.overrides[("POST", MPIJOBS)] = lambda req: status(
        404, "NotFound", "the server could not find the requested resource"
    )
    proc = submit(workdir, kubeconfig)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "MPI operator installed" in lines[0], proc.stderr
    assert server.calls()[-1] == ("DELETE", f"{CONFIGMAPS}/{NAME}-config")  # cleaned up
    assert not (workdir / "run-1").exists() and not (workdir / ".state").exists()


def test_missing_namespace_names_the_key(
    server: FakeApiServer, kubeconfig: Path, workdir: Path
) -> None:
    server.overrides[("POST", CONFIGMAPS)] = lambda req: status(
        404, "NotFound", f'namespaces "{NS}" not found'
    )
    proc = submit(workdir, kubeconfig)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"hpc-launch: error: cluster.namespace: create configmaps/{NAME}-config: HTTP 404:"
        f' namespaces "{NS}" not found'
    ]


def test_name_collision_is_one_line(server: FakeApiServer, kubeconfig: Path, workdir: Path) -> None:
    server.objects[f"{CONFIGMAPS}/{NAME}-config"] = {"metadata": {"name": f"{NAME}-config"}}
    proc = submit(workdir, kubeconfig)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "HTTP 409" in lines[0], proc.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_cluster_is_one_line(workdir: Path) -> None:
    kubeconfig = write_kubeconfig(workdir / "kc", f"http://127.0.0.1:{_closed_port()}")
    proc = submit(workdir, kubeconfig)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hpc-launch: error: cluster: no Kubernetes cluster reachable at")
    assert not (workdir / "run-1").exists() and not (workdir / ".state").exists()


def test_no_cluster_configured_is_one_line(workdir: Path) -> None:
    env = {"KUBECONFIG": str(workdir / "absent"), "HOME": str(workdir)}
    proc = hpc_launch(["cluster=k8s", "wait=false"], workdir, **env)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        pytest.skip("running inside a cluster")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "hpc-launch: error: cluster: no Kubernetes cluster configured: no kubeconfig"
        " (KUBECONFIG or ~/.kube/config) and not running inside a cluster"
    ]


def test_unknown_context_names_the_key(kubeconfig: Path, workdir: Path) -> None:
    proc = submit(workdir, kubeconfig, "cluster.context=prod")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: cluster.context:" in lines[0], proc.stderr


def test_context_from_config_is_used(server: FakeApiServer, workdir: Path) -> None:
    other = FakeApiServer().start()
    try:
        config = json.loads(write_kubeconfig(workdir / "kc", server.url).read_text())
        config["clusters"].append({"name": "other", "cluster": {"server": other.url}})
        config["contexts"].append(
            {"name": "other-ctx", "context": {"cluster": "other", "user": "tester"}}
        )
        (workdir / "kc").write_text(json.dumps(config))
        proc = submit(workdir, workdir / "kc", "cluster.context=other-ctx")
        assert proc.returncode == 0, proc.stderr
        assert server.requests == [] and len(other.requests) == 3
        assert records.load(workdir / "run-1")["extra"]["context"] == "other-ctx"
    finally:
        other.stop()


def test_cli_follows_the_job_with_wait(
    server: FakeApiServer, kubeconfig: Path, workdir: Path
) -> None:
    server.mpijob_status = {
        "conditions": [{"type": "Failed", "status": "True", "message": "launcher failed"}]
    }
    server.pods = [pod(f"{NAME}-launcher-q", NAME, "launcher", exit_code=3)]
    args = ["cluster=k8s", f"cluster.namespace={NS}", "wait=true", f"run_dir={workdir}/run-1"]
    proc = hpc_launch(args, workdir, KUBECONFIG=str(kubeconfig))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"hpc-launch: {NAME}: FAILED: launcher failed"
    record = records.load(workdir / "run-1")
    assert record["state"] == "FAILED" and record["exit_code"] == 3


def test_secrets_are_sent_as_a_secret_never_in_the_manifest(
    server: FakeApiServer, kubeconfig: Path, workdir: Path
) -> None:
    """Secret-looking env values and the URI's password go into a Secret the launcher
    pod reads by name; the printed manifest, config.yaml and job.json never hold them."""
    secrets = [
        "+cluster.env.DB_PASSWORD=pw-db-123",
        "+nccl.env.NCCL_API_TOKEN=tok-nccl-456",
        "+cluster.env.PLAIN_SETTING=visible",
        "tracking.uri=https://bob:pw-mlflow-789@mlflow.example/",
    ]
    args = ["cluster=k8s", f"cluster.namespace={NS}", "wait=false", f"run_dir={workdir}/run-1"]
    dry = hpc_launch([*args, *secrets, "dry_run=true"], workdir)
    assert dry.returncode == 0, dry.stderr
    proc = submit(workdir, kubeconfig, *secrets)
    assert proc.returncode == 0, proc.stderr
    values = ("pw-db-123", "tok-nccl-456", "pw-mlflow-789")
    assert not [v for v in values if v in dry.stdout + dry.stderr + proc.stdout + proc.stderr]
    assert server.calls() == [
        ("POST", CONFIGMAPS),
        ("POST", f"/api/v1/namespaces/{NS}/secrets"),
        ("POST", MPIJOBS),
        ("PATCH", f"{CONFIGMAPS}/{NAME}-config"),
        ("PATCH", f"/api/v1/namespaces/{NS}/secrets/{NAME}-secrets"),
    ]
    cm_req, secret_req, job_req = server.requests[:3]
    planned = [d for d in yaml.safe_load_all(dry.stdout) if d]
    assert cm_req.body == planned[0] and job_req.body == planned[1]
    assert secret_req.body["metadata"]["name"] == f"{NAME}-secrets"
    assert secret_req.body["stringData"] == {
        "DB_PASSWORD": "pw-db-123",
        "MLFLOW_TRACKING_PASSWORD": "pw-mlflow-789",
        "MLFLOW_TRACKING_USERNAME": "bob",
        "NCCL_API_TOKEN": "tok-nccl-456",
    }
    assert not [v for v in values if v in json.dumps(cm_req.body) + json.dumps(job_req.body)]
    launcher = job_req.body["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in launcher["containers"][0]["env"]}
    assert set(env) == set(secret_req.body["stringData"])
    assert all(ref["name"] == f"{NAME}-secrets" for ref in env.values())
    command = launcher["containers"][0]["command"]
    assert "PLAIN_SETTING=visible" in command and "DB_PASSWORD" in command  # -x by name
    run = workdir / "run-1"
    for name in ("config.yaml", "job.json", "mpijob.yaml"):
        assert not [v for v in values if v in (run / name).read_text()], name
    assert (run / "secrets.env").stat().st_mode & 0o777 == 0o600
