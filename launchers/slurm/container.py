"""The ``container`` section on Slurm: Pyxis, Apptainer or OCI around the srun step.

Only the ranks run in the container. The batch shell stays outside: it traps the
preemption signal and forwards it to the srun step (srun passes it to the task, the
container's process: Pyxis execs it, Apptainer's starter forwards signals, Slurm's OCI
support sends it through ``RunTimeKill``), requeues with ``scontrol`` on the host (the
image needs none), and runs the watchdog and the records. Placement and the NCCL
variables are set by ``hpc.run`` in the rank itself, so inside the container.

The launch dir, the run dir and the checkpoint dir are mounted at the same path inside
(:func:`hpc.spec.container.required_mounts`). Whether the image can import hpc-launch's
runtime cannot be checked without running it; an OCI bundle's rootfs is looked at.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hpc
from hpc.accounting.host import ON_HOST_ENV
from hpc.defaults import EXIT_GRACE_S
from hpc.quoting import shell_join, shell_word
from hpc.spec import container
from hpc.spec.container import SITE_DIR, Mount
from hpc.spec.errors import ConfigError
from hpc.spec.jobspec import JobSpec

RUNTIMES = ("pyxis", "apptainer", "oci")


@dataclass
class ContainerStep:
    """What the section adds to the batch script."""

    srun_options: list[str] = field(default_factory=list)  # after srun's own options
    wrapper: list[str] = field(default_factory=list)  # apptainer exec ... IMAGE
    inner: list[str] = field(default_factory=list)  # the rank's command in the container
    prepare: list[str] = field(default_factory=list)  # shell lines before the step
    beside: list[str] = field(default_factory=list)  # started beside the step (indented)
    after: list[str] = field(default_factory=list)  # once the step ended (indented)
    notes: list[str] = field(default_factory=list)  # shown at submit and in the plan
    ranks_per_task: int = 1  # >1: one task per node starts the node's ranks (OCI)

    @property
    def command(self) -> list[str]:
        return [*self.wrapper, *self.inner]


def framework_root() -> Path:
    """The directory that holds the ``hpc`` package here (``install=host`` mounts it)."""
    return Path(hpc.__file__).resolve().parent.parent


def pyxis_image(image: str) -> str:
    """Enroot's form: ``docker://`` dropped, ``host/path:tag`` as ``host#path:tag``."""
    image = image.removeprefix("docker://")
    if container.is_image_file(image) or "#" in image:
        return image
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return f"{first}#{rest}"
    return image


def apptainer_image(image: str) -> str:
    """A path as is; a registry reference as ``docker://`` (Apptainer's default is a file)."""
    if container.is_image_file(image) or "://" in image:
        return image
    return f"docker://{image.replace('#', '/', 1)}"


def step(
    spec: JobSpec, worker: list[str], host_python: str, run_root: Path | None = None
) -> ContainerStep:
    """The container pieces for ``worker`` (``[python, -m, hpc.run, CONFIG]``): pure.

    ``run_root``: the directory every run of the script lives in (a sweep's dir)."""
    cfg = spec.config
    run_dir = run_root or spec.run_dir
    box = cfg["container"]
    kind = container.runtime(cfg)
    image = str(box["image"])
    workdir = str(box.get("workdir") or spec.workdir)
    needed = [("(launch directory)", str(spec.workdir)), (spec.run_dir_key, str(run_dir))]
    explicit = (cfg.get("checkpoint") or {}).get("dir")  # else under each run dir
    if explicit and not container.covered(str(spec.checkpoint_dir), [str(run_dir)]):
        needed.append(("checkpoint.dir", str(spec.checkpoint_dir)))
    user = container.mounts(cfg)
    install = str(box.get("install") or "none")
    site = ""
    extra: list[Mount] = []
    if install == "pip":
        site = f"{run_dir}/{SITE_DIR}"
    elif install == "host":
        root = str(framework_root())
        extra.append(Mount(root, root, "ro"))
        site = root
    python = str(box.get("python") or "python3")
    inner = [python, *worker[1:]]
    if site:
        inner = ["env", f"PYTHONPATH={site}", *inner]
    out = ContainerStep(inner=inner)
    if kind == "oci":
        # The bundle's config.json holds the mounts (checked in validate); srun adds none.
        out.srun_options = [f"--container={image}"]
        out.notes.append(
            f"container (oci): bundle {image}; its config.json mounts the run dir and the "
            "launch dir at the same paths (checked); Slurm passes the step's environment in"
        )
        _ranks_per_node(cfg, out, python, site)
    else:
        added, shown = container.required_mounts(needed, user)
        binds = [m.spec() for m in [*added, *user, *extra]]
        out.notes.append(
            f"container ({kind}): {image}; mounted at the same path inside: {'; '.join(shown)}"
        )
        if kind == "pyxis":
            out.srun_options = _pyxis_options(box, image, binds, workdir)
        else:
            out.wrapper = _apptainer_words(cfg, image, binds, workdir)
            # Apptainer keeps the image's PATH, LD_LIBRARY_PATH ...: named ones come in so
            out.prepare += [
                f'export APPTAINERENV_{name}="${{{name}}}"' for name in box.get("env") or []
            ]
    out.notes.append(_runtime_note(kind, install, spec, site))
    if box.get("host_sampler", True) and (cfg.get("accounting") or {}).get("enabled", True):
        _host_sampler(spec, out, host_python)
    if install == "pip":
        out.prepare += _pip_install(spec, out, python, site, host_python)
    return out


def _ranks_per_node(cfg: dict[str, Any], out: ContainerStep, python: str, site: str) -> None:
    """OCI: one container per node. Slurm 22.05's slurmstepd runs one task per node in a
    ``--container`` step ("_modify_config: unexpected number of tasks 2 > 1"), so with
    more ranks per node the step has one task per node and ``hpc.runtime.node_ranks``
    starts the node's ranks inside (any Slurm version: one bundle start per node)."""
    per_node = int(cfg["resources"]["tasks_per_node"])
    if per_node < 2:
        return
    grace = float(cfg["cluster"].get("exit_grace_s", EXIT_GRACE_S))
    starter = [python, "-m", "hpc.runtime.node_ranks", str(per_node), f"--grace={grace:g}", "--"]
    if site:
        starter = ["env", f"PYTHONPATH={site}", *starter]
    rank = out.inner[2:] if site else out.inner  # the ranks inherit PYTHONPATH
    out.inner = [*starter, *rank]
    out.ranks_per_task = per_node
    out.notes.append(
        f"container (oci): one task per node; hpc.runtime.node_ranks starts its {per_node} "
        "ranks in the container (Slurm 22.05 runs one task per node in a container step)"
    )


def _pyxis_options(box: dict[str, Any], image: str, binds: list[str], workdir: str) -> list[str]:
    options = [
        f"--container-image={pyxis_image(image)}",
        f"--container-mounts={','.join(binds)}",
        f"--container-workdir={workdir}",
    ]
    if box.get("env"):
        options.append(f"--container-env={','.join(str(n) for n in box['env'])}")
    options.append("--container-writable" if box.get("writable") else "--container-readonly")
    return options


def _apptainer_words(cfg: dict[str, Any], image: str, binds: list[str], workdir: str) -> list[str]:
    box = cfg["container"]
    words = ["apptainer", "exec"]
    flag = container.GPU_FLAGS[str(box.get("gpu") or "nvidia")]
    if flag and int(cfg["resources"]["gpus_per_node"]):
        words.append(flag)
    words += ["--bind", ",".join(binds), "--pwd", workdir]
    if box.get("writable"):
        words.append("--writable-tmpfs")
    return [*words, apptainer_image(image)]


def _host_sampler(spec: JobSpec, out: ContainerStep, host_python: str) -> None:
    """The node's accounting sampler outside the container (images without NVML)."""
    res = spec.resources
    nodes = int(res["nodes"])
    words = ["srun", "--overlap", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1"]
    if int(res["gpus_per_node"]):
        words.append(f"--gpus-per-node={res['gpus_per_node']}")
    words += [host_python, "-m", "hpc.accounting.host"]
    out.prepare.append(f"export {ON_HOST_ENV}=1  # the ranks leave accounting to the host side")
    out.beside = [
        "  # container.host_sampler: the node's accounting sampler on the host, beside the step",
        f'  {shell_join(words)} "$HPC_RUN_DIR" &',
        "  sampler=$!",
    ]
    out.after = [  # USR1: srun passes it on (a TERM would kill the task at once)
        '  kill -USR1 "$sampler" 2>/dev/null; (sleep 30; kill "$sampler" 2>/dev/null) &',
        '  wait "$sampler" 2>/dev/null',
    ]
    out.notes.append("container: the accounting sampler runs on the host side of the container")


def _runtime_note(kind: str, install: str, spec: JobSpec, site: str) -> str:
    if install == "pip":
        return (
            f"container: hpc-launch's runtime is pip-installed into {site} "
            f"from {container.wheel(spec.config)} before the step (the image needs pip)"
        )
    if install == "host":
        return f"container: hpc-launch's runtime is mounted from {framework_root()} (read-only)"
    if kind == "oci":
        return "container: the bundle's rootfs holds hpc-launch's runtime (checked)"
    return (
        f"container: the image must be able to import hpc-launch's runtime "
        f"({spec.config['container'].get('python') or 'python3'} -m hpc.run); not checked "
        "(that needs the image run); a stock image (NGC) does not: set "
        "container.install=pip (container.wheel=...) or container.install=host"
    )


def _pip_install(
    spec: JobSpec, out: ContainerStep, python: str, site: str, host_python: str
) -> list[str]:
    """One task on one node installs the runtime into the run dir (every node sees it)."""
    pip = [python, "-m", "pip", "install", "--quiet", "--target", f"{site}.tmp"]
    pip.append(container.wheel(spec.config))
    words = ["srun", "--nodes=1", "--ntasks=1", *out.srun_options, *out.wrapper, *pip]
    site_word = shell_word(site)
    finish = f'{shell_word(host_python)} -m hpc.launchers.slurm.job_steps finish "$HPC_RUN_DIR" 1'
    return [
        "# container.install=pip: the framework's runtime into the run dir, once",
        f"if [ ! -d {site_word} ]; then",
        f"  rm -rf {site_word}.tmp && {shell_join(words)} && mv {site_word}.tmp {site_word} || {{",
        f'    echo "hpc-launch: container.install=pip failed"; {finish}; exit 1; }}',
        "fi",
    ]


# -- validation (may read the filesystem: local images and bundles) --------------------------
def validate(cfg: dict[str, Any]) -> None:
    kind = container.runtime(cfg)
    if kind == "none":
        if (cfg.get("container") or {}).get("image"):
            raise ConfigError(
                "container.runtime",
                "is none but container.image is set: pick container=pyxis, apptainer or oci",
            )
        return
    image = str(cfg["container"]["image"])
    if kind == "pyxis" and image.endswith((".sif", ".simg")):
        raise ConfigError("container.image", f"{image!r}: Pyxis takes a .sqsh file or a reference")
    if kind == "apptainer" and image.endswith((".sqsh", ".squashfs")):
        raise ConfigError(
            "container.image", f"{image!r}: Apptainer takes a .sif file or a reference"
        )
    local = kind in ("pyxis", "apptainer") and container.is_image_file(image)
    if local and not Path(image).is_file():
        raise ConfigError("container.image", f"{image!r} does not exist")
    if kind == "oci":
        _validate_bundle(cfg, image)


def _validate_bundle(cfg: dict[str, Any], bundle: str) -> None:
    path = Path(bundle)
    if not path.is_absolute() or not (path / "config.json").is_file():
        raise ConfigError(
            "container.image", f"{bundle!r} is not an OCI bundle (a directory with config.json)"
        )
    if cfg["container"].get("mounts"):
        raise ConfigError(
            "container.mounts",
            f"runtime oci takes its mounts from {bundle}/config.json; set them there",
        )
    if cfg["container"].get("workdir"):
        raise ConfigError(
            "container.workdir", f"runtime oci takes it from {bundle}/config.json (process.cwd)"
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        targets = [
            str(m["destination"])
            for m in config.get("mounts") or []
            if str(m.get("source", "")) == str(m.get("destination", ""))
        ]
        rootfs = path / str((config.get("root") or {}).get("path") or "rootfs")
        binds = bind_mounts(config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(
            "container.image", f"{bundle}/config.json does not read ({exc})"
        ) from None
    run_key = "run_dir" if cfg.get("run_dir") else "output_root"
    for key, where in (
        (run_key, cfg.get("run_dir") or cfg["output_root"]),
        ("(launch directory)", "."),
    ):
        place = os.path.abspath(os.path.expanduser(str(where)))
        if not container.covered(place, targets):
            raise ConfigError(
                key,
                f"{place!r} is not mounted at the same path by {bundle}/config.json "
                "(add a bind mount with source = destination)",
            )
    install = cfg["container"].get("install", "none")
    if install == "host" and not container.covered(str(framework_root()), targets):
        raise ConfigError(
            "container.install",
            f"host: {bundle}/config.json must bind {framework_root()} at the same path",
        )
    if install == "none" and not has_runtime(rootfs, binds):
        raise ConfigError(
            "container.image",
            f"{rootfs} has no hpc-launch runtime (no hpc package in its site-packages): "
            "install it in the bundle, or set container.install=host",
        )


# Where an image keeps the ``hpc`` package (container paths), and, below a bound directory
# (a venv or an install prefix mounted from the host), where a prefix keeps it.
_RUNTIME_IN_IMAGE = (
    "/usr/lib/python3*/*-packages/hpc/run.py",
    "/usr/local/lib/python3*/*-packages/hpc/run.py",
    "/opt/*/lib/python3*/site-packages/hpc/run.py",
    "/usr/lib/python3*/*-packages/hpc_launch-*.dist-info",
    "/usr/local/lib/python3*/*-packages/hpc_launch-*.dist-info",
    "/opt/*/lib/python3*/site-packages/hpc_launch-*.dist-info",
)
_RUNTIME_IN_PREFIX = tuple(
    f"{venv}lib/python3*/site-packages/{what}"
    for venv in ("", "*/", ".*/")  # the bound dir is the venv, or holds it (a checkout's .venv)
    for what in ("hpc/run.py", "hpc_launch-*.dist-info")
)


def bind_mounts(config: dict[str, Any]) -> list[tuple[str, str]]:
    """``(destination, source)`` of a bundle config's bind mounts."""
    out = []
    for m in config.get("mounts") or []:
        options = [str(o) for o in m.get("options") or []]
        if m.get("type") == "bind" or "bind" in options or "rbind" in options:
            out.append((str(m["destination"]).rstrip("/") or "/", str(m.get("source", ""))))
    return out


def has_runtime(rootfs: Path, binds: list[tuple[str, str]] | None = None) -> bool:
    """Whether a bundle holds the ``hpc`` package (or an installed hpc-launch): in its
    rootfs, or in a host directory its config.json binds (``/usr``, a venv ...)."""
    binds = binds or []

    def on_host(inside: str) -> str:
        best = max(
            (d for d, _ in binds if inside == d or inside.startswith(d.rstrip("/") + "/")),
            key=len,
            default=None,
        )
        if best is None:
            return str(rootfs) + inside
        source = dict(binds)[best]
        return source + inside[len(best.rstrip("/")) :]

    candidates = [on_host(p) for p in _RUNTIME_IN_IMAGE]
    candidates += [f"{source}/{p}" for _, source in binds for p in _RUNTIME_IN_PREFIX]
    return any(glob.glob(c) for c in candidates)
