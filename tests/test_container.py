"""Containers (issue 16): the ``container`` section rendered per runtime, checked before
anything runs. No container runtime is needed: the scripts are golden text, and the
rules read only the config (and a local bundle's files). Nothing here starts a job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpc.registry import get_launcher
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import load_spec

from support import check_golden, hpc_launch


def normalise(text: str, workdir: Path) -> str:
    return text.replace(sys.executable, "PYTHON").replace(str(workdir), "WORKDIR")


def make_bundle(workdir: Path, *, runtime: bool = True, mounts: list[str] | None = None) -> Path:
    """A small OCI bundle: config.json (same-path binds) and a rootfs that holds ``hpc``."""
    bundle = workdir / "bundle"
    site = bundle / "rootfs/usr/lib/python3.11/site-packages/hpc"
    site.mkdir(parents=True)
    if runtime:
        (site / "run.py").write_text("")
    binds = mounts if mounts is not None else [str(workdir)]
    config = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": p, "source": p, "type": "bind", "options": ["rbind"]} for p in binds
        ],
    }
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def sif(workdir: Path) -> Path:
    image = workdir / "pytorch.sif"
    image.write_bytes(b"")
    return image


GOLDEN_CASES: dict[str, list[str]] = {
    "container_pyxis.sbatch": [
        "container=pyxis",
        "container.image=nvcr.io/nvidia/pytorch:24.05-py3",
        "container.mounts=[/datasets:/data:ro]",
        "container.env=[HF_TOKEN_FILE,NCCL_SOCKET_IFNAME]",
        "resources.gpus_per_node=2",
    ],
    "container_apptainer.sbatch": [
        "container=apptainer",
        "container.image=WORKDIR/pytorch.sif",
        "container.env=[PATH]",
        "container.writable=true",
        "resources.gpus_per_node=2",
    ],
    "container_oci.sbatch": ["container=oci", "container.image=WORKDIR/bundle"],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_container_scripts(name: str, workdir: Path) -> None:
    sif(workdir)
    make_bundle(workdir)
    overrides = [o.replace("WORKDIR", str(workdir)) for o in GOLDEN_CASES[name]]
    proc = hpc_launch(
        ["cluster=slurm", "dry_run=true", f"run_dir={workdir}/run", *overrides],
        workdir,
        MLFLOW_TRACKING_URI="",
    )
    assert proc.returncode == 0, proc.stderr
    text = normalise(proc.stdout, workdir)
    check_golden(name, text)
    step = next(ln for ln in text.splitlines() if ln.startswith("  srun --kill-on-bad-exit"))
    # The batch shell stays outside: it requeues (scontrol) and forwards the signal.
    assert "scontrol requeue" in text and "trap 'forward USR2' USR2" in text
    assert step.endswith("python3 -m hpc.run WORKDIR/run/config.yaml &")
    # the accounting sampler on the host side, beside the step; the ranks do not sample
    assert "srun --overlap --nodes=1 --ntasks=1 --ntasks-per-node=1" in text
    assert "export HPC_ACCOUNTING_ON_HOST=1" in text


def bad(workdir: Path, *overrides: str) -> tuple[int, str]:
    proc = hpc_launch(["cluster=slurm", "dry_run=true", *overrides], workdir)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["container=pyxis"], "container.image"),  # image missing
        (["container.runtime=docker", "container.image=x"], "container.runtime"),
        (
            ["container=pyxis", "container.image=ubuntu", "container.mounts=[/data]"],
            "container.mounts[0]",
        ),
        (
            [
                "container=pyxis",
                "container.image=ubuntu",
                "container.mounts=[/scratch/x:WORKDIR/run]",
            ],
            "run_dir",
        ),  # the run dir inside would be another directory
    ],
)
def test_bad_container_config_names_the_key(overrides: list[str], key: str, workdir: Path) -> None:
    code, err = bad(
        workdir, f"run_dir={workdir}/run", *(o.replace("WORKDIR", str(workdir)) for o in overrides)
    )
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"hpc-launch: error: {key}:"), err


def test_oci_bundle_that_does_not_mount_the_run_dir(workdir: Path) -> None:
    bundle = make_bundle(workdir, mounts=["/somewhere/else"])
    code, err = bad(workdir, f"run_dir={workdir}/run", "container=oci", f"container.image={bundle}")
    assert code == 2 and err.startswith("hpc-launch: error: run_dir:") and err.count("\n") == 1


def rule_error(tmp_path: Path, *overrides: str) -> ConfigError:
    os.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        spec = load_spec(["cluster=slurm", f"run_dir={tmp_path}/run", *overrides])
        get_launcher("slurm").plan(spec)
    return exc.value


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["container=apptainer", "container.image=/no/such.sif"], "container.image", "not exist"),
        (["container=pyxis", "container.image=/x/img.sif"], "container.image", "Pyxis"),
        (["container.image=ubuntu"], "container.runtime", "is none"),
        (["container=oci", "container.image=ubuntu"], "container.image", "OCI bundle"),
        (
            ["container=pyxis", "container.image=u", "container.mounts=[a:/b]"],
            "container.mounts[0]",
            "absolute",
        ),
        (
            ["container=pyxis", "container.image=u", "container.mounts=['/a:/b:rx']"],
            "container.mounts[0]",
            "ro or rw",
        ),
        (
            ["container=pyxis", "container.image=u", "container.env=[1BAD]"],
            "container.env[0]",
            "name",
        ),
        (
            ["container=pyxis", "container.image=u", "container.install=conda"],
            "container.install",
            "pip",
        ),
        (
            ["container=pyxis", "container.image=u", "container.workdir=rel"],
            "container.workdir",
            "absolute",
        ),
        (["container=pyxis", "container.image=u", "container.gpu=intel"], "container.gpu", "rocm"),
    ],
)
def test_more_container_rules(overrides: list[str], key: str, words: str, tmp_path: Path) -> None:
    error = rule_error(tmp_path, *overrides)
    assert error.key == key and words in str(error), str(error)


def test_oci_rootfs_without_the_runtime_offers_install(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    bundle = make_bundle(tmp_path, runtime=False)
    error = rule_error(tmp_path, "container=oci", f"container.image={bundle}")
    assert error.key == "container.image" and "container.install=host" in str(error)
    unbound = rule_error(
        tmp_path, "container=oci", f"container.image={bundle}", "container.install=host"
    )
    assert unbound.key == "container.install"  # the bundle must bind the host's package dir
    os.chdir(tmp_path)
    from hpc.launchers.slurm.container import framework_root

    bundle = make_bundle(
        tmp_path / "b", runtime=False, mounts=[str(tmp_path), str(framework_root())]
    )
    host = [f"container.image={bundle}", "container.install=host"]
    spec = load_spec(["cluster=slurm", f"run_dir={tmp_path}/run", "container=oci", *host])
    plan = get_launcher("slurm").plan(spec)
    assert "PYTHONPATH=" in plan.text and any("mounted from" in n for n in plan.notes)


def test_local_launcher_runs_no_container(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_spec(["container=pyxis", "container.image=ubuntu", f"run_dir={tmp_path}/run"])
    assert exc.value.key == "container.runtime" and "cluster=local" in str(exc.value)


def test_runtime_requirement_is_shown_and_pip_install_renders(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    pip = [
        "container.image=nvcr.io/nvidia/pytorch:24.05-py3",
        "container.install=pip",
        "container.wheel=/wheels/hpc_launch-0.1.0-py3-none-any.whl",
        "checkpoint.dir=/ckpt/x",
    ]
    spec = load_spec(["cluster=slurm", f"run_dir={tmp_path}/run", "container=pyxis", *pip])
    plan = get_launcher("slurm").plan(spec)
    assert any("pip-installed" in n for n in plan.notes)
    site = f"{tmp_path}/run/.container-site"
    assert f"--target {site}.tmp /wheels/hpc_launch-0.1.0-py3-none-any.whl" in plan.text
    assert f"env PYTHONPATH={site} python3 -m hpc.run" in plan.text
    # a checkpoint dir outside the run dir is mounted too, at the same path
    assert "/ckpt/x:/ckpt/x" in plan.text
    plain = load_spec(
        ["cluster=slurm", f"run_dir={tmp_path}/run2", "container=pyxis", "container.image=u"]
    )
    notes = get_launcher("slurm").plan(plain).notes
    assert any("not checked" in n and "container.install=pip" in n for n in notes)


def test_k8s_manifest_uses_container_image(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    pod = ["container.image=docker://nvcr.io/nvidia/pytorch:24.05-py3", "container.workdir=/work"]
    spec = load_spec(["cluster=k8s", f"run_dir={tmp_path}/run", "container=pyxis", *pod])
    plan = get_launcher("k8s").plan(spec)
    assert plan.text.count("image: nvcr.io/nvidia/pytorch:24.05-py3") == 2  # launcher, worker
    assert "workingDir: /work" in plan.text and "image: ghcr.io" not in plan.text.split("---")[-1]
    with pytest.raises(ConfigError) as exc:
        mounted = load_spec(["cluster=k8s", f"run_dir={tmp_path}/r", "container.mounts=[/a:/a]"])
        get_launcher("k8s").plan(mounted)
    assert exc.value.key == "container.mounts"


def test_hpc_sbatch_passes_pyxis_options_to_every_srun(workdir: Path) -> None:
    """``hpc-sbatch --container-image X job.sh``: sbatch never sees the Pyxis options (the
    wrapper stays on the host); each srun of the script gets them, unless it names its own."""
    from hpc.cli import sbatch

    argv = ["--container-image", "nvcr.io#nvidia/pytorch:24.05-py3", "--container-mounts=/d:/d"]
    argv += ["--container-writable", "-p", "gpu", "job.sh", "a b"]
    options, script, args, _ = sbatch.split_args(argv)
    assert script == "job.sh" and args == ["a b"]
    pyxis = [o for o in options if sbatch.is_pyxis(o)]
    assert [o for o in options if not sbatch.is_pyxis(o)] == ["-p", "gpu"]
    user = (
        b"#!/bin/bash\n#SBATCH --time=00:05:00\nsrun python -c 1\nsrun --container-image=own true\n"
    )
    text = sbatch.wrap(user, args, "job.sh", pyxis)
    start = text.index(b"HPC_SBATCH_ORIGINAL_")
    delimiter = text[start : start + len("HPC_SBATCH_ORIGINAL_") + 16]
    check_golden("hpc_sbatch_pyxis.sh", text.replace(delimiter, b"HPC_SBATCH_ORIGINAL_X").decode())
    bindir = workdir / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text(
        '#!/bin/sh\nprintf "%s|" "$@" >> "$SRUN_LOG"; echo >> "$SRUN_LOG"\n'
    )
    (bindir / "srun").chmod(0o755)
    (workdir / "wrapper.sh").write_bytes(text)
    log = workdir / "srun.log"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", SRUN_LOG=str(log))
    env.update(SLURM_JOB_ID="7", MASTER_ADDR="127.0.0.1", TMPDIR=str(workdir))
    proc = subprocess.run(
        ["bash", str(workdir / "wrapper.sh")], env=env, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls == [
        "--container-image=nvcr.io#nvidia/pytorch:24.05-py3|--container-mounts=/d:/d|"
        "--container-writable|python|-c|1|",
        "--container-image=own|true|",
    ]
    assert not list(workdir.glob("hpc-sbatch-*"))  # the original and the shim are removed


def test_hydra_plugin_takes_the_container_section(tmp_path: Path) -> None:
    """``hydra.launcher.container`` becomes the points' container section, as on the CLI."""
    from hydra_plugins.hpc_launch_plugin.launcher import framework_overrides

    os.chdir(tmp_path)
    box = {"runtime": "pyxis", "image": "nvcr.io/nvidia/pytorch:24.05-py3"}
    box |= {"mounts": ["/data:/data:ro"], "env": ["HF_HOME"], "install": "pip"}
    overrides = framework_overrides({"container": box}, "slurm")
    spec = load_spec([*overrides, f"run_dir={tmp_path}/run", "job=digits"])
    assert spec.config["container"] | box == spec.config["container"]
    text = get_launcher("slurm").plan(spec).text
    assert "--container-mounts=" in text and "/data:/data:ro" in text


def test_host_sampler_samples_the_ranks_it_finds_by_run_dir(tmp_path: Path) -> None:
    """``python -m hpc.accounting.host RUN_DIR``: this user's processes whose environment
    names the run dir (the ranks, seen from outside the container); SIGTERM stops it."""
    import signal
    import time

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("accounting: {enabled: true, interval_s: 0.1}\n")
    env = dict(os.environ, HPC_RUN_DIR=str(run_dir), SLURM_NODEID="1")
    rank = subprocess.Popen([sys.executable, "-c", "while True: pass"], env=env)
    side = dict(os.environ, SLURM_NODEID="1", HPC_JOB_ID="42")
    side.pop("HPC_RUN_DIR", None)
    sampler = subprocess.Popen(
        [sys.executable, "-m", "hpc.accounting.host", str(run_dir)], env=side
    )
    path = run_dir / "accounting" / "node1.jsonl"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            lines = path.read_text().splitlines() if path.exists() else []
            if sum('"type": "sample"' in ln or '"type":"sample"' in ln for ln in lines) >= 3:
                break
            time.sleep(0.1)
        sampler.send_signal(signal.SIGTERM)
        assert sampler.wait(timeout=20) == 0
    finally:
        rank.kill()
        rank.wait()
        if sampler.poll() is None:
            sampler.kill()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0]["type"] == "header" and records[0]["env_match"] == f"HPC_RUN_DIR={run_dir}"
    assert records[0]["job_id"] == "42" and records[-1]["type"] == "stop"
    samples = [r for r in records if r["type"] == "sample"]
    assert samples and max(s["cpu_s"] for s in samples) > 0  # the busy "rank" was found


def test_sweep_array_mounts_the_sweep_dir(workdir: Path) -> None:
    box = ["container=pyxis", "container.image=u", "job.lr=0.1,0.2"]
    proc = hpc_launch(
        ["-m", "cluster=slurm", "dry_run=true", f"output_root={workdir}/out", *box], workdir
    )
    assert proc.returncode == 0, proc.stderr
    note = next(ln for ln in proc.stdout.splitlines() if ln.startswith("# container (pyxis)"))
    mounted = note.split("inside: ", 1)[1].split("; ")
    assert len(mounted) == 2 and "/out/digits/sweep-" in mounted[1], note
