"""Credentials reach MLflow and the workers but are never printed or written down
(issue 11/4), against a real ``mlflow server --app-name basic-auth``.

A ``user:password@`` tracking URI and values under secret-looking keys
(``+nccl.env.NCCL_API_TOKEN``, ``+nccl.env.MY_DB_PASSWORD``) travel in the run's
mode-0600 ``secrets.env``; the rest of the run directory, the output, MLflow's
params and the state index hold none of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_tracking_outage import MlflowServer

from hpc.launchers.local import free_port

from support import hpc, hpc_launch

pytestmark = pytest.mark.slow

ADMIN, PASSWORD = "admin", "pw-Adm1n-s3cret-7391"
TOKEN, DB_PASSWORD = "tok-nccl-5550123", "db-pw-8812-xyz"
SECRET_ARGS = [f"+nccl.env.NCCL_API_TOKEN={TOKEN}", f"+nccl.env.MY_DB_PASSWORD={DB_PASSWORD}"]
VALUES = (PASSWORD, TOKEN, DB_PASSWORD)
STEPS = 46  # 2 epochs x 23 steps


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[MlflowServer]:
    directory = tmp_path / "mlflow"
    directory.mkdir()
    ini = directory / "auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{directory / 'auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = MlflowServer(
        directory,
        free_port(),
        extra_args=("--app-name", "basic-auth"),
        extra_env={
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-csrf",
        },
    )
    server.start()
    server.wait_healthy()
    yield server
    server.stop()


def credentialed(server: MlflowServer, password: str = PASSWORD) -> str:
    return server.url.replace("http://", f"http://{ADMIN}:{password}@")


def leaks(texts: dict[str, str], values: tuple[str, ...] = VALUES) -> list[str]:
    return [f"{name}: {v}" for name, text in texts.items() for v in values if v in text]


def run_files(*dirs: Path) -> dict[str, str]:
    """Every file of the run (and the state index) except the owner-only secrets.env."""
    out = {}
    for base in dirs:
        for path in base.rglob("*"):
            if path.is_file() and path.name != "secrets.env":
                out[str(path)] = path.read_text(errors="replace")
    return out


@contextlib.contextmanager
def admin_env() -> Iterator[None]:
    """MLflow's credential variables for this process only while checking (never for jobs)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_run_in_mlflow(server: MlflowServer, run_dir: Path) -> None:
    with admin_env():
        _check_run_in_mlflow(server, run_dir)


def _check_run_in_mlflow(server: MlflowServer, run_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    record = json.loads((run_dir / "job.json").read_text())
    assert record["mlflow_run_id"], "no MLflow run recorded"
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(1, STEPS + 1))
    params = run.data.params
    assert params["job.epochs"] == "2" and params["tracking.uri"] == server.url
    assert not leaks({"params": json.dumps(params), "tags": json.dumps(run.data.tags)})
    assert record["extra"]["tracking"]["state"] == "sent"


def test_credentialed_uri_and_secret_env_never_written_but_used(
    auth_server: MlflowServer, workdir: Path
) -> None:
    run_dir = workdir / "run"
    args = [f"run_dir={run_dir}", "job.epochs=2", f"tracking.uri={credentialed(auth_server)}"]
    dry = hpc_launch([*args, *SECRET_ARGS, "dry_run=true"], workdir)
    cfg = hpc_launch([*args, *SECRET_ARGS, "--cfg"], workdir)
    assert dry.returncode == 0 and cfg.returncode == 0, dry.stderr + cfg.stderr
    proc = hpc_launch([*args, *SECRET_ARGS], workdir, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = {
        "dry run": dry.stdout + dry.stderr,
        "--cfg": cfg.stdout,
        "run": proc.stdout + proc.stderr,
    }
    assert not leaks(out), leaks(out)
    assert not leaks(run_files(run_dir, workdir / ".state"))
    secrets = run_dir / "secrets.env"
    assert secrets.stat().st_mode & 0o777 == 0o600
    assert all(v in secrets.read_text() for v in VALUES)
    assert "View run" in (run_dir / "logs" / "rank0.log").read_text()  # MLflow's own line
    check_run_in_mlflow(auth_server, run_dir)


def test_refused_credentials_are_said_and_sync_sends_later(
    auth_server: MlflowServer, workdir: Path
) -> None:
    run_dir = workdir / "run"
    wrong = "pw-wrong-4471"
    proc = hpc_launch(
        [f"run_dir={run_dir}", "job.epochs=2", f"tracking.uri={credentialed(auth_server, wrong)}"],
        workdir,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output  # training is never stopped by tracking
    assert not leaks({"run": output}, (wrong,)) and not leaks(run_files(run_dir), (wrong,))
    assert "MLflow: authentication failed" in output
    final = output.strip().splitlines()[-1]
    assert "COMPLETED" in final and "metrics not in MLflow yet" in final
    assert f"hpc sync {run_dir}" in final
    note = json.loads((run_dir / "job.json").read_text())["extra"]["tracking"]
    assert note["state"] == "unauthenticated" and note["unsent"] > 0
    assert f"hpc sync {run_dir}" in note["message"]
    # The user fixes the password (MLflow's own variable wins over the run's file).
    synced = hpc(["sync", str(run_dir)], workdir, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    assert synced.returncode == 0, synced.stderr
    check_run_in_mlflow(auth_server, run_dir)


WORKER = """
import hashlib, os
seen = [hashlib.sha256(os.environ.get(k, "").encode()).hexdigest()
        for k in ("NCCL_API_TOKEN", "MY_DB_PASSWORD", "MLFLOW_TRACKING_PASSWORD")]
with open(os.path.join(os.environ["HPC_RUN_DIR"], f"seen.{os.environ['RANK']}"), "w") as fh:
    fh.write(" ".join(seen))
"""


def digest(*values: str) -> str:
    return " ".join(hashlib.sha256(v.encode()).hexdigest() for v in values)


def test_workers_see_the_secret_values(workdir: Path) -> None:
    script = workdir / "worker.py"
    script.write_text(WORKER)
    run_dir = workdir / "run"
    uri = f"http://bob:{PASSWORD}@127.0.0.1:9/"
    proc = hpc_launch(
        [f"run_dir={run_dir}", f"job.entrypoint={script}", f"tracking.uri={uri}", *SECRET_ARGS],
        workdir,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):
        seen = (run_dir / f"seen.{rank}").read_text()
        assert seen == digest(TOKEN, DB_PASSWORD, PASSWORD), f"rank {rank}"
    assert not leaks(run_files(run_dir))


# -- on the Slurm test cluster ------------------------------------------------------------------
SLURM_ARGS = ["cluster=slurm", "wait=true", "job.name=hc-cred", "job.epochs=2"]


@pytest.mark.slurm
def test_slurm_run_authenticates_and_writes_no_secret(
    auth_server: MlflowServer, workdir: Path
) -> None:
    from slurm_helpers import require_cluster

    require_cluster(min_nodes=1)
    run_dir = workdir / "run"
    args = [*SLURM_ARGS, f"run_dir={run_dir}", f"tracking.uri={credentialed(auth_server)}"]
    proc = hpc_launch([*args, *SECRET_ARGS], workdir, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not leaks({"run": proc.stdout + proc.stderr})
    files = run_files(run_dir, workdir / ".state")
    assert any(name.endswith(".out") for name in files) and any(
        name.endswith("job.sbatch") for name in files
    )
    assert not leaks(files), leaks(files)
    assert (run_dir / "secrets.env").stat().st_mode & 0o777 == 0o600
    check_run_in_mlflow(auth_server, run_dir)


@pytest.mark.slurm
def test_slurm_run_while_server_down_then_sync_with_the_runs_credentials(
    auth_server: MlflowServer, workdir: Path
) -> None:
    from slurm_helpers import require_cluster

    require_cluster(min_nodes=1)
    auth_server.stop()
    run_dir = workdir / "run"
    args = [*SLURM_ARGS, f"run_dir={run_dir}", f"tracking.uri={credentialed(auth_server)}"]
    proc = hpc_launch([*args, "tracking.flush_timeout_s=2"], workdir, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert "metrics not in MLflow yet" in final and f"hpc sync {run_dir}" in final
    auth_server.start()
    auth_server.wait_healthy()
    synced = hpc(["sync", str(run_dir)], workdir)  # credentials: the run's secrets.env only
    assert synced.returncode == 0, synced.stderr
    assert not leaks({"sync": synced.stdout + synced.stderr})
    check_run_in_mlflow(auth_server, run_dir)
