"""Value rules for a composed job config, checked before anything runs.

Types and unknown keys are enforced by the schema in :mod:`hpc.spec.schema`; this module
checks what types cannot say. Every failure is a one-line ConfigError naming the key.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from hpc import entrypoints, registry
from hpc.nccl import PROFILES
from hpc.runtime.preemption import signal_number
from hpc.spec import container
from hpc.spec.errors import ConfigError
from hpc.spec.schema import job_schema_for

_TIME_RE = re.compile(
    r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"
)
_MEM_RE = re.compile(r"^[1-9]\d*[KMGT]?\Z", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_SLURM_WORD_RE = re.compile(r"^[A-Za-z0-9_.,:@+-]+\Z")

# Integers go to Slurm, torch and C libraries as 32-bit values; seeds go to numpy (0..2**32-1).
INT32_MAX = 2**31 - 1
INT_RANGES: dict[str, tuple[int, int]] = {"job.seed": (0, 2**32 - 1)}
# Slurm keeps a time limit as 32-bit minutes; 0xfffffffe/0xffffffff mean NO_VAL/INFINITE.
MAX_TIME_LIMIT_MINUTES = 0xFFFFFFFD
# Keys naming directories hpc-launch creates (or resumes in).
DIRECTORY_KEYS = ("output_root", "run_dir", "checkpoint.dir")
# Keys that are not "config" when a resume compares configs: where the run lives, how
# hpc-launch is called this time, and the list of allowed changes itself.
NON_CONFIG_KEYS = frozenset(
    {"run_dir", "resume", "output_root", "dry_run", "wait", "resume_allow_changes"}
)
# Filesystems that cannot hold a run directory.
_PSEUDO_FS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "pstore",
        "bpf",
        "mqueue",
        "hugetlbfs",
        "fusectl",
    }
)


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
    if total > MAX_TIME_LIMIT_MINUTES * 60:
        raise ValueError(
            f"time limit {text!r} exceeds Slurm's largest ({MAX_TIME_LIMIT_MINUTES} minutes)"
        )
    return total


def local_gpu_count() -> int:
    """GPUs on this machine through NVML (light import); 0 where there is no driver."""
    try:
        import pynvml  # noqa: PLC0415 (lazy: optional nvidia-ml-py, local GPU jobs only)
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


def check_local_gpus(requested: int, have: int) -> None:
    """The one rule for a job on this machine: no more GPUs than it has (``have``)."""
    if requested > have:
        raise ConfigError(
            "resources.gpus_per_node", f"asks for {requested} GPUs but this machine has {have}"
        )


def validate(cfg: dict[str, Any]) -> None:
    """Check every value rule; raise ConfigError on the first violation."""
    check_numbers(cfg)
    _validate_job(cfg["job"])
    _validate_resources(cfg["resources"])
    kind = cfg["cluster"].get("kind")
    if kind not in registry.available():
        raise ConfigError("cluster.kind", f"unknown launcher {kind!r} (one of {_names()})")
    _validate_preemption(cfg)
    _validate_node_setup(cfg)
    _positive(cfg, "checkpoint.every_steps")
    _at_least(cfg, "checkpoint.keep", 1)
    _validate_tracking(cfg["tracking"])
    _validate_fault(cfg.get("fault") or {})
    grace = cfg["cluster"].get("exit_grace_s")
    if grace is not None and not 1 <= grace <= 86400:  # NaN fails too
        raise ConfigError("cluster.exit_grace_s", f"must be 1 to 86400 seconds, got {grace!r}")
    for key in ("output_root",):
        if not str(cfg[key]).strip():
            raise ConfigError(key, "must not be empty")
    for key in DIRECTORY_KEYS:
        value = _get(cfg, key)
        if value is not None:
            check_directory(key, str(value))
    if cfg.get("resume"):
        resume = Path(cfg["resume"])
        if not (resume / "job.json").is_file():
            raise ConfigError("resume", f"{str(resume)!r} is not a run directory (no job.json)")
    _validate_allow_changes(cfg)
    try:
        launcher = registry.launcher_class(kind)
    except KeyError as exc:
        raise ConfigError("cluster.kind", str(exc.args[0])) from None
    _validate_container(cfg, launcher.container_runtimes)
    launcher().validate(cfg)


def _validate_container(cfg: dict[str, Any], runtimes: tuple[str, ...]) -> None:
    """The section's rules, then whether this launcher runs that runtime at all."""
    container.check(cfg)
    kind, name = container.runtime(cfg), cfg["cluster"]["kind"]
    if kind != "none" and kind not in runtimes:
        where = f"one of {', '.join(runtimes)}" if runtimes else "none: it runs no container"
        raise ConfigError("container.runtime", f"{kind!r} does not run on cluster={name} ({where})")
    if kind == "none" and (cfg.get("container") or {}).get("image") and not runtimes:
        raise ConfigError("container.image", f"cluster={name} runs no container (leave it unset)")


def is_config_key(key: str) -> bool:
    """Whether a changed ``key`` counts as a config change on resume."""
    return key.split(".", 1)[0].split("[", 1)[0] not in NON_CONFIG_KEYS


def flat_items(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` for every leaf of nested dicts (lists and empty dicts are leaves)."""
    if not isinstance(node, dict) or (prefix and not node):
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat_items(value, f"{prefix}{key}."))
    return out


def _validate_allow_changes(cfg: dict[str, Any]) -> None:
    allowed = cfg.get("resume_allow_changes") or []
    keys = flat_items(cfg)
    for i, key in enumerate(allowed):
        name = f"resume_allow_changes[{i}]"
        if not isinstance(key, str) or not is_config_key(key):
            raise ConfigError(name, f"{key!r} is not a config key that a resume can change")
        if key not in keys and not any(k.startswith(f"{key}.") for k in keys):
            raise ConfigError(name, f"{key!r} is not a key of this config")


def check_numbers(node: Any, prefix: str = "") -> None:
    """Every integer within its range (32-bit by default), every float finite.

    Outside ``job`` (whose own keys may mean anything) numbers must also be >= 0.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            check_numbers(value, f"{prefix}{key}.")
        return
    if isinstance(node, list):
        for i, value in enumerate(node):
            check_numbers(value, f"{prefix.rstrip('.')}[{i}].")
        return
    key = prefix.rstrip(".")
    if isinstance(node, bool) or not isinstance(node, int | float):
        return
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(key, f"must be a finite number, got {node!r}")
    low = -INT32_MAX - 1 if key.startswith("job.") else 0
    low, high = INT_RANGES.get(key, (low, INT32_MAX))
    if isinstance(node, int) and not low <= node <= high:
        raise ConfigError(key, f"must be in {low}..{high}, got {node}")
    if node < low:
        raise ConfigError(key, f"must be >= {low}, got {node!r}")


def check_directory(key: str, value: str) -> None:
    """``value`` is, or can be created as, a directory (checked without creating it)."""
    try:
        path = Path(os.path.expanduser(value)).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, ...
        raise ConfigError(key, f"{value!r} cannot be resolved ({exc})") from None
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is not a directory"
        if existing != path:
            what = f"is under {str(existing)!r}, which is not a directory"
        raise ConfigError(key, f"{value!r} {what}")
    fstype = _filesystem_type(existing)
    if fstype in _PSEUDO_FS:
        raise ConfigError(key, f"{value!r} is on a {fstype} filesystem, which cannot hold a run")
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{value!r} cannot be created ({str(existing)!r} is not writable)")


def _filesystem_type(path: Path) -> str | None:
    """The type of the filesystem ``path`` is on (the longest mount point in /proc/self/mounts)."""
    best, fstype = "", None
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ")
                inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, fields[2]
    except OSError:
        return None
    return fstype


def _names() -> str:
    return ", ".join(registry.available())


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
    for key in ("name", "entrypoint"):
        if not str(job.get(key) or "").strip():
            raise ConfigError(f"job.{key}", "is missing")
    if not _NAME_RE.match(job["name"]):
        raise ConfigError("job.name", f"{job['name']!r} must match {_NAME_RE.pattern}")
    _validate_entrypoint(job["entrypoint"])
    problem = entrypoints.args_problem(job.get("args"))
    if problem:
        raise ConfigError("job.args", problem)
    job_schema_for(job).check(job)  # the job's own rules, declared with its schema


def _validate_entrypoint(entrypoint: str) -> None:
    """``pkg.module:function`` and ``-m pkg.module`` must be findable from the working
    directory (where the job runs); ``script.py`` must exist."""
    try:
        entry = entrypoints.parse(entrypoint)
    except ValueError as exc:
        raise ConfigError("job.entrypoint", str(exc)) from None
    if entry.kind == "script":
        if not Path(entry.target).is_file():
            raise ConfigError("job.entrypoint", f"script {entry.target!r} does not exist")
        return
    if entry.kind == "module":
        problem = entrypoints.module_problem(entry.target)
        if problem:
            raise ConfigError("job.entrypoint", f"-m {entry.target}: {problem}")
        return
    if entrypoints.find_module(entry.target) is None:
        raise ConfigError("job.entrypoint", f"module {entry.target!r} cannot be found")


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


PREEMPTION_MODES = ("requeue", "resubmit")


def _validate_preemption(cfg: dict[str, Any]) -> None:

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
    if pre.get("mode", "requeue") not in PREEMPTION_MODES:
        raise ConfigError(
            "preemption.mode", f"{pre['mode']!r} is not one of {', '.join(PREEMPTION_MODES)}"
        )


def _validate_fault(fault: dict[str, Any]) -> None:
    """The watchdog's limits: timeouts of 1 s to 7 days, counts >= 0."""
    for key in (
        "stall_timeout_s", "first_step_timeout_s", "preflight_timeout_s", "node_probe_timeout_s"
    ):  # fmt: skip
        value = fault.get(key)
        if value is not None and not 1 <= value <= 7 * 86400:  # NaN fails too
            raise ConfigError(f"fault.{key}", f"must be 1 to 604800 seconds, got {value!r}")
    stall, first = fault.get("stall_timeout_s"), fault.get("first_step_timeout_s")
    if stall is not None and first is not None and first < stall:
        raise ConfigError(
            "fault.first_step_timeout_s",
            f"{first!r}s is shorter than fault.stall_timeout_s ({stall!r}s)",
        )
    for key in ("straggler_steps", "hang_requeues", "node_resubmits"):
        if fault.get(key) is not None and fault[key] < 0:
            raise ConfigError(f"fault.{key}", f"must be >= 0, got {fault[key]}")


def _validate_node_setup(cfg: dict[str, Any]) -> None:

    profile = cfg["nccl"]["profile"]
    if profile not in PROFILES:
        raise ConfigError(
            "nccl.profile", f"unknown profile {profile!r} (one of {', '.join(sorted(PROFILES))})"
        )
    for key in cfg["nccl"].get("env") or {}:
        if not re.match(r"^[A-Z_][A-Z0-9_]*\Z", str(key)):
            raise ConfigError(f"nccl.env.{key}", "is not an environment variable name")
    topo = cfg["placement"].get("topo_file")
    if topo and not Path(topo).is_file():
        raise ConfigError("placement.topo_file", f"{topo!r} does not exist")
    layer = cfg["placement"].get("link_layer")
    if layer is not None and layer not in ("InfiniBand", "Ethernet"):
        raise ConfigError("placement.link_layer", f"{layer!r} is not InfiniBand or Ethernet")
    if not cfg["accounting"]["interval_s"] > 0:
        raise ConfigError("accounting.interval_s", "must be > 0")
    idle = cfg["accounting"].get("idle") or {}
    if idle.get("action", "off") not in ("off", "warn", "stop"):
        raise ConfigError("accounting.idle.action", f"{idle['action']!r} is not off, warn or stop")
    if not float(idle.get("window_s", 1800.0)) > 0:
        raise ConfigError("accounting.idle.window_s", "must be > 0")
    if not 0 <= float(idle.get("below_util", 5.0)) <= 100:
        raise ConfigError("accounting.idle.below_util", "must be a percentage, 0 to 100")


def _validate_tracking(tracking: dict[str, Any]) -> None:
    uri = tracking.get("uri")
    if uri is not None and not re.match(r"^([a-z][a-z0-9+.-]*:|/|\./|\w)", str(uri)):
        raise ConfigError("tracking.uri", f"{uri!r} is not a URI or path")
    if not str(tracking.get("experiment") or "").strip():
        raise ConfigError("tracking.experiment", "must not be empty")
