"""Value rules for a composed job config, checked before anything runs.

Types and unknown keys are enforced by the schema in :mod:`hpc.spec`; this module
checks what types cannot say. Every failure is a one-line ConfigError naming the key.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from hpc.config import ConfigError
from hpc.spec import CLUSTER_SCHEMAS

_TIME_RE = re.compile(
    r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"
)
_MEM_RE = re.compile(r"^[1-9]\d*[KMGT]?$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SLURM_WORD_RE = re.compile(r"^[A-Za-z0-9_.,:@+-]+$")


def parse_time_limit(text: str) -> int:
    """Seconds in a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``)."""
    match = _TIME_RE.match(text.strip())
    if not match:
        raise ValueError(f"time limit {text!r} does not parse (use HH:MM:SS or D-HH:MM:SS)")
    g = match.groupdict()
    if g["days"] is not None:
        days, hours = int(g["days"]), int(g["dh"])
        minutes, seconds = int(g["dm"] or 0), int(g["ds"] or 0)
    elif g["c"] is not None:
        days, hours, minutes, seconds = 0, int(g["a"]), int(g["b"]), int(g["c"])
    elif g["b"] is not None:
        days, hours, minutes, seconds = 0, 0, int(g["a"]), int(g["b"])
    else:
        days, hours, minutes, seconds = 0, 0, int(g["a"]), 0
    if minutes >= 60 or seconds >= 60 or (g["days"] is not None and hours >= 24):
        raise ValueError(f"time limit {text!r} has a field out of range")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"time limit {text!r} must be positive")
    return total


def local_gpu_count() -> int:
    """GPUs on this machine through NVML (light import); 0 where there is no driver."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def validate(cfg: dict[str, Any]) -> None:
    """Check every value rule; raise ConfigError on the first violation."""
    _validate_job(cfg["job"])
    _validate_resources(cfg["resources"])
    kind = cfg["cluster"].get("kind")
    if kind not in CLUSTER_SCHEMAS:
        raise ConfigError("cluster.kind", f"unknown launcher {kind!r} (one of {_names()})")
    _validate_preemption(cfg)
    _validate_node_setup(cfg)
    _positive(cfg, "checkpoint.every_steps")
    _at_least(cfg, "checkpoint.keep", 1)
    _validate_tracking(cfg["tracking"])
    grace = cfg["cluster"].get("exit_grace_s")
    if grace is not None and not 1 <= grace <= 86400:  # NaN fails too
        raise ConfigError("cluster.exit_grace_s", f"must be 1 to 86400 seconds, got {grace!r}")
    for key in ("output_root",):
        if not str(cfg[key]).strip():
            raise ConfigError(key, "must not be empty")
    if cfg.get("resume"):
        resume = Path(cfg["resume"])
        if not (resume / "job.json").is_file():
            raise ConfigError("resume", f"{str(resume)!r} is not a run directory (no job.json)")
    if kind == "local":
        _validate_local(cfg)


def _names() -> str:
    return ", ".join(sorted(CLUSTER_SCHEMAS))


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _positive(cfg: dict[str, Any], key: str) -> None:
    _at_least(cfg, key, 1)


def _at_least(cfg: dict[str, Any], key: str, minimum: int) -> None:
    value = _get(cfg, key)
    if value is None or value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value!r}")


def _validate_job(job: dict[str, Any]) -> None:
    cfg = {"job": job}
    for key in ("name", "entrypoint"):
        if not str(job.get(key) or "").strip():
            raise ConfigError(f"job.{key}", "is missing")
    if not _NAME_RE.match(job["name"]):
        raise ConfigError("job.name", f"{job['name']!r} must match {_NAME_RE.pattern}")
    _validate_entrypoint(job["entrypoint"])
    if job.get("seed") is not None and job["seed"] < 0:
        raise ConfigError("job.seed", f"must be >= 0, got {job['seed']!r}")
    for key in ("epochs", "batch_size", "hidden"):
        if key in job:
            _positive(cfg, f"job.{key}")
    if "lr" in job and not job["lr"] > 0:
        raise ConfigError("job.lr", f"must be > 0, got {job['lr']!r}")


def _validate_entrypoint(entrypoint: str) -> None:
    """``pkg.module:function`` must be importable; ``script.py`` must exist."""
    if entrypoint.endswith(".py") and ":" not in entrypoint:
        if not Path(entrypoint).is_file():
            raise ConfigError("job.entrypoint", f"script {entrypoint!r} does not exist")
        return
    module, _, func = entrypoint.partition(":")
    bad_func = bool(func) and not func.isidentifier()
    if not module or not re.match(r"^[A-Za-z_][\w.]*$", module) or bad_func:
        raise ConfigError(
            "job.entrypoint", f"{entrypoint!r} is not 'package.module:function' or 'script.py'"
        )
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError("job.entrypoint", f"module {module!r} cannot be found")


def _validate_resources(res: dict[str, Any]) -> None:
    cfg = {"resources": res}
    for key in ("nodes", "tasks_per_node", "cpus_per_task"):
        _positive(cfg, f"resources.{key}")
    _at_least(cfg, "resources.gpus_per_node", 0)
    if res["gpus_per_node"] and res["tasks_per_node"] != res["gpus_per_node"]:
        raise ConfigError(
            "resources.tasks_per_node",
            f"is {res['tasks_per_node']} but gpus_per_node is {res['gpus_per_node']}: "
            "one task per GPU",
        )
    if res.get("time") is not None:
        try:
            parse_time_limit(str(res["time"]))
        except ValueError as exc:
            raise ConfigError("resources.time", str(exc)) from None
    if res.get("mem") is not None and not _MEM_RE.match(str(res["mem"])):
        raise ConfigError("resources.mem", f"{res['mem']!r} is not a size like 16G or 500M")
    for key in ("partition", "account", "qos", "constraint"):
        value = res.get(key)
        if value is not None and not _SLURM_WORD_RE.match(str(value)):
            raise ConfigError(f"resources.{key}", f"{value!r} contains characters Slurm rejects")


def _validate_preemption(cfg: dict[str, Any]) -> None:
    from hpc.runtime.preemption import signal_number

    pre = cfg["preemption"]
    try:
        signum = signal_number(pre["signal"])
    except ValueError as exc:
        raise ConfigError("preemption.signal", str(exc)) from None
    if signum in (9, 19):  # SIGKILL, SIGSTOP cannot be caught
        raise ConfigError("preemption.signal", f"{pre['signal']!r} cannot be caught")
    if pre["lead_s"] < 0:
        raise ConfigError("preemption.lead_s", f"must be >= 0, got {pre['lead_s']}")
    limit = cfg["resources"].get("time")
    if limit and pre["lead_s"] >= parse_time_limit(str(limit)):
        raise ConfigError(
            "preemption.lead_s", f"{pre['lead_s']}s is not shorter than the time limit {limit}"
        )
    if pre["max_restarts_without_progress"] < 0:
        raise ConfigError("preemption.max_restarts_without_progress", "must be >= 0")


def _validate_node_setup(cfg: dict[str, Any]) -> None:
    from hpc.nccl import PROFILES

    profile = cfg["nccl"]["profile"]
    if profile not in PROFILES:
        raise ConfigError(
            "nccl.profile", f"unknown profile {profile!r} (one of {', '.join(sorted(PROFILES))})"
        )
    for key in cfg["nccl"].get("env") or {}:
        if not re.match(r"^[A-Z_][A-Z0-9_]*$", str(key)):
            raise ConfigError(f"nccl.env.{key}", "is not an environment variable name")
    topo = cfg["placement"].get("topo_file")
    if topo and not Path(topo).is_file():
        raise ConfigError("placement.topo_file", f"{topo!r} does not exist")
    layer = cfg["placement"].get("link_layer")
    if layer is not None and layer not in ("InfiniBand", "Ethernet"):
        raise ConfigError("placement.link_layer", f"{layer!r} is not InfiniBand or Ethernet")
    if not cfg["accounting"]["interval_s"] > 0:
        raise ConfigError("accounting.interval_s", "must be > 0")


def _validate_tracking(tracking: dict[str, Any]) -> None:
    uri = tracking.get("uri")
    if uri is not None and not re.match(r"^([a-z][a-z0-9+.-]*:|/|\./|\w)", str(uri)):
        raise ConfigError("tracking.uri", f"{uri!r} is not a URI or path")
    if not str(tracking.get("experiment") or "").strip():
        raise ConfigError("tracking.experiment", "must not be empty")


def _validate_local(cfg: dict[str, Any]) -> None:
    res = cfg["resources"]
    if res["nodes"] != 1:
        raise ConfigError("resources.nodes", f"the local launcher runs 1 node, got {res['nodes']}")
    if res["gpus_per_node"]:
        have = local_gpu_count()
        if res["gpus_per_node"] > have:
            raise ConfigError(
                "resources.gpus_per_node",
                f"asks for {res['gpus_per_node']} GPUs but this machine has {have}",
            )
    cpus = len(os.sched_getaffinity(0))
    if res["tasks_per_node"] > max(64, 4 * cpus):
        raise ConfigError(
            "resources.tasks_per_node",
            f"{res['tasks_per_node']} local workers on {cpus} CPUs is not sensible",
        )
