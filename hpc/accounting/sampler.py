"""Node-local accounting sampler: NVML GPU metrics + psutil CPU/RSS, written as JSONL.

One sampler runs per node (the runtime starts it on local rank 0 in a background
thread). Every ``interval_s`` it appends one ``sample`` record and flushes; it fsyncs
every ``fsync_every_s`` and at stop. Each start appends a ``header`` record first, so a
requeued job that reuses the file shows one header per start.

Without NVML (no driver, no GPU) it records CPU-only samples with ``gpus: 0`` and the
header says why; it never invents GPU numbers. A metric the driver does not support is
written as ``null``.

Records (one JSON object per line)::

    {"type": "header", "version": 1, "t": 1700000000.0, "mode": "nvml" | "cpu-only",
     "reason": "...", "gpus": 2, "devices": [...], "host": "...", "pid": 1, ...}
    {"type": "sample", "t": ..., "gpus": [{"index": 0, "util": 97, "mem": 123,
     "power_w": 301.2, "energy_mj": 123456, "procs": 1, "sm_active": 81.5,
     "sm_occupancy": 40.2}], "cpu_s": 1.9, "cpu_percent": 190.0, "rss": 123456, "procs": 3}
    {"type": "idle", "t": ..., "device": "gpu0", ...}   (hpc.accounting.idle)

Per GPU, ``util`` is NVML's utilization.gpu (the share of time any kernel ran),
``procs`` the compute processes NVML sees on it, and ``sm_active``/``sm_occupancy``
GPM's SM activity and occupancy (Hopper and later; absent where GPM is not offered).
    {"type": "error", "t": ..., "error": "..."}
    {"type": "stop", "t": ..., "samples": 10, "sampler_cpu_s": 0.01}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from hpc.accounting.gpm import Gpm
from hpc.accounting.idle import IdleDetector, IdlePolicy, event_record
from hpc.accounting.prometheus import TextfileWriter
from hpc.files import write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class SamplerConfig:
    """What to sample, how often and where to write."""

    path: Path
    interval_s: float = 1.0
    fsync_every_s: float = 30.0
    pids: Collection[int] | None = None  # a fixed set of the job's processes ...
    root_pid: int | None = None  # ... or the process tree under this pid (default: own)
    tree_refresh_s: float = 10.0  # how often the process tree is re-walked
    gpu_indices: list[int] | None = None  # NVML indices; default: CUDA_VISIBLE_DEVICES/all
    job_id: str | None = None
    # ... or this user's processes whose environment holds NAME=VALUE (re-found every
    # tree_refresh_s): the ranks in a container, seen from the host (hpc.accounting.host).
    env_match: tuple[str, str] | None = None
    # accounting.idle ({window_s, below_util, action}): events go into the JSONL file and
    # into idle-<file stem>.json beside it (what the Session reads); None: off.
    idle: dict[str, Any] | None = None
    # accounting.prometheus_textfile: a node_exporter textfile directory; labels for it.
    prometheus_dir: str | None = None
    labels: dict[str, str] | None = None


class _Processes:
    """CPU seconds and RSS of the job's processes, from psutil."""

    def __init__(
        self,
        pids: Collection[int] | None,
        root_pid: int | None,
        refresh_s: float,
        env_match: tuple[str, str] | None = None,
    ):
        self._fixed = list(pids) if pids is not None else None
        self._env_match = env_match
        self._root = root_pid if root_pid is not None else os.getpid()
        self._refresh_s = refresh_s
        self._procs: dict[int, psutil.Process] = {}
        self._last_cpu: dict[int, float] = {}
        self._walked = -1e18

    def _refresh(self, now: float) -> None:
        if self._fixed is not None:
            wanted = self._fixed
        else:
            if now - self._walked < self._refresh_s and self._procs:
                return
            self._walked = now
            if self._env_match is not None:
                wanted = _matching(self._env_match)
            else:
                try:
                    root = psutil.Process(self._root)
                    wanted = [root.pid] + [c.pid for c in root.children(recursive=True)]
                except psutil.Error:
                    wanted = []
        for pid in wanted:
            if pid not in self._procs:
                try:
                    self._procs[pid] = psutil.Process(pid)
                except psutil.Error:
                    continue
        if self._fixed is None:
            for pid in list(self._procs):
                if pid not in wanted:
                    del self._procs[pid]

    def sample(self, now: float) -> tuple[float, int, int]:
        """(CPU seconds since the last call, total RSS bytes, live process count)."""
        self._refresh(now)
        cpu = 0.0
        rss = 0
        for pid, proc in list(self._procs.items()):
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    mem = proc.memory_info().rss
            except psutil.Error:
                del self._procs[pid]
                self._last_cpu.pop(pid, None)
                continue
            total = times.user + times.system
            # A process seen for the first time is the job's since birth: count it all.
            cpu += max(0.0, total - self._last_cpu.get(pid, 0.0))
            self._last_cpu[pid] = total
            rss += mem
        return cpu, rss, len(self._procs)


def _matching(env_match: tuple[str, str]) -> list[int]:
    """This user's processes (not this one) whose environment holds ``NAME=VALUE``."""
    name, value = env_match
    uid, me = os.getuid(), os.getpid()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or proc.uids().real != uid:
                continue
            if proc.environ().get(name) == value:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


class _Nvml:
    """The NVML side; every call that the driver refuses gives ``None``."""

    def __init__(self, gpu_indices: list[int] | None):
        import pynvml  # noqa: PLC0415 (lazy: optional nvidia-ml-py)

        self.nv = pynvml
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        indices, self.selection = _select_devices(count, gpu_indices, pynvml)
        self.handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in indices]
        self.unsupported: set[str] = set()
        self.gpm = Gpm(pynvml, self.handles)

    def devices(self) -> list[dict[str, Any]]:
        out = []
        for index, handle in self.handles:
            out.append(
                {
                    "index": index,
                    "name": self._call("name", self.nv.nvmlDeviceGetName, handle),
                    "uuid": self._call("uuid", self.nv.nvmlDeviceGetUUID, handle),
                    "memory_total": getattr(
                        self._call("memory", self.nv.nvmlDeviceGetMemoryInfo, handle),
                        "total",
                        None,
                    ),
                }
            )
        return out

    def _call(self, metric: str, fn: Any, handle: Any) -> Any:
        if metric in self.unsupported:
            return None
        try:
            return fn(handle)
        except self.nv.NVMLError as exc:
            if isinstance(exc, self.nv.NVMLError_NotSupported):
                self.unsupported.add(metric)
            return None

    def sample(self) -> list[dict[str, Any]]:
        nv = self.nv
        out = []
        for index, h in self.handles:
            util = self._call("util", nv.nvmlDeviceGetUtilizationRates, h)
            mem = self._call("memory", nv.nvmlDeviceGetMemoryInfo, h)
            power = self._call("power", nv.nvmlDeviceGetPowerUsage, h)
            energy = self._call("energy", nv.nvmlDeviceGetTotalEnergyConsumption, h)
            # absent from some nvidia-ml-py versions (and fakes): then not sampled
            running = getattr(nv, "nvmlDeviceGetComputeRunningProcesses", None)
            procs = None if running is None else self._call("procs", running, h)
            out.append(
                {
                    "index": index,
                    "util": None if util is None else int(util.gpu),
                    "mem": None if mem is None else int(mem.used),
                    "power_w": None if power is None else power / 1000.0,
                    "energy_mj": None if energy is None else int(energy),
                    "procs": None if procs is None else len(procs),
                    **self.gpm.sample(index, h),
                }
            )
        return out

    def close(self) -> None:
        self.gpm.close()
        with contextlib.suppress(self.nv.NVMLError):
            self.nv.nvmlShutdown()


def _select_devices(count: int, wanted: list[int] | None, nv: Any) -> tuple[list[int], str]:
    if wanted is not None:
        bad = [i for i in wanted if not 0 <= i < count]
        if bad:
            raise ValueError(f"GPU indices {bad} not among the {count} NVML devices")
        return list(wanted), "gpu_indices given"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() == "":
        return list(range(count)), "all NVML devices"
    uuids = {}
    for i in range(count):
        with contextlib.suppress(nv.NVMLError):
            uuids[str(nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i)))] = i
    picked: list[int] = []
    for item in (v.strip() for v in visible.split(",")):
        if item.isdigit() and int(item) < count:
            picked.append(int(item))
        else:
            match = [i for u, i in uuids.items() if item and u.startswith(item)]
            if len(match) != 1:
                return list(range(count)), f"CUDA_VISIBLE_DEVICES={visible!r} unresolved: all"
            picked.append(match[0])
    return picked, f"CUDA_VISIBLE_DEVICES={visible}"


class Sampler:
    """Background sampler; use as a context manager or call start()/stop()."""

    def __init__(self, config: SamplerConfig):
        self.config = config
        self.path = Path(config.path)
        self.samples = 0
        self.thread_cpu_s = 0.0  # CPU time used by the sampler thread itself
        self.mode = "cpu-only"
        self.reason = ""
        self._nvml: _Nvml | None = None
        self._procs = _Processes(
            config.pids, config.root_pid, config.tree_refresh_s, config.env_match
        )
        self._fh: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_fsync = 0.0
        self._last_sample: float | None = None
        self._errors: set[str] = set()
        self._lock = threading.Lock()
        policy = IdlePolicy.from_config(config.idle)
        self._idle = IdleDetector(policy) if policy.active else None
        self.idle_events: list[dict[str, Any]] = []
        self.idle_path = self.path.with_name(f"idle-{self.path.stem}.json")
        self._prom: TextfileWriter | None = None
        if config.prometheus_dir:
            node = int(self.path.stem[4:]) if self.path.stem[4:].isdigit() else 0
            self._prom = TextfileWriter(
                Path(config.prometheus_dir), config.job_id, node, dict(config.labels or {})
            )

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        """Probe NVML, open the file and write the header (no thread started)."""
        try:
            self._nvml = _Nvml(self.config.gpu_indices)
            if not self._nvml.handles:
                self.reason = "NVML found no GPU"
                self._nvml.close()
                self._nvml = None
            else:
                self.mode, self.reason = "nvml", self._nvml.selection
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors
            self._nvml = None
            self.reason = f"NVML unavailable: {exc or type(exc).__name__}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.idle_path.unlink(missing_ok=True)  # a start judges its own samples only
        exists = self.path.exists() and self.path.stat().st_size > 0
        needs_newline = exists and _last_byte(self.path) != b"\n"
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open
        if needs_newline:  # a previous run died mid-line: keep our records parseable
            self._fh.write("\n")
        devices = self._nvml.devices() if self._nvml else []
        self._write(
            {
                "type": "header",
                "version": FORMAT_VERSION,
                "t": time.time(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "mode": self.mode,
                "reason": self.reason,
                "gpus": len(devices),
                "devices": devices,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "root_pid": None
                if self.config.pids is not None
                else self.config.root_pid or os.getpid(),
                "pids": None if self.config.pids is None else sorted(self.config.pids),
                **({"env_match": "=".join(self.config.env_match)} if self.config.env_match else {}),
                "interval_s": self.config.interval_s,
                "job_id": self.config.job_id or os.environ.get("HPC_JOB_ID"),
                "restart_count": _int_env("HPC_RESTART_COUNT"),
            }
        )
        self._fsync()

    def start(self) -> Sampler:
        self.open()
        self._thread = threading.Thread(target=self._loop, name="hpc-accounting", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.config.interval_s))
            self._thread = None
        with self._lock:
            if self._fh is None:
                return
            self._write(
                {
                    "type": "stop",
                    "t": time.time(),
                    "samples": self.samples,
                    "sampler_cpu_s": round(self.thread_cpu_s, 6),
                }
            )
            self._fsync()
            self._fh.close()
            self._fh = None
        if self._prom is not None:
            with contextlib.suppress(OSError):
                self._prom.remove()
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sampling --------------------------------------------------------------------
    def sample_once(self) -> dict[str, Any]:
        """Take and write one sample now (the thread calls this every interval)."""
        now = time.time()
        record: dict[str, Any] = {"type": "sample", "t": now}
        record["gpus"] = self._nvml.sample() if self._nvml else []
        cpu_s, rss, nprocs = self._procs.sample(time.monotonic())
        dt = None if self._last_sample is None else now - self._last_sample
        record["cpu_s"] = round(cpu_s, 4)
        record["cpu_percent"] = round(100.0 * cpu_s / dt, 2) if dt else None
        record["rss"] = rss
        record["procs"] = nprocs
        self._last_sample = now
        with self._lock:
            if self._fh is None:
                return record
            self._write(record)
            self.samples += 1
            if self._idle is not None:
                self._check_idle(record)
            if time.monotonic() - self._last_fsync >= self.config.fsync_every_s:
                self._fsync()
        if self._prom is not None:
            try:
                self._prom.write(record, self.path.parent.parent)
            except OSError as exc:
                self._note_error(exc)
        return record

    def _check_idle(self, record: dict[str, Any]) -> None:
        """(under the lock) Record the idle events this sample completes."""
        assert self._idle is not None
        events = self._idle.feed(record)
        for event in events:
            doc = event_record(event)
            self._write(doc)
            self.idle_events.append(doc)
            log.warning("hpc-launch: %s", event.line())
        if events:
            action = self._idle.policy.action
            body = {"action": action, "host": socket.gethostname(), "events": self.idle_events}
            write_atomic(self.idle_path, json.dumps(body, indent=1) + "\n")

    def _loop(self) -> None:
        interval = self.config.interval_s
        cpu0 = time.thread_time()
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # never take the training down
                self._note_error(exc)
            self.thread_cpu_s = time.thread_time() - cpu0
            next_t += interval
            delay = next_t - time.monotonic()
            if delay < 0:  # overran (suspended, overloaded): do not burst to catch up
                next_t, delay = time.monotonic(), 0.0
            if self._stop.wait(delay):
                break
        self.thread_cpu_s = time.thread_time() - cpu0

    def _note_error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text in self._errors:
            return
        self._errors.add(text)
        with self._lock:
            if self._fh is not None:
                self._write({"type": "error", "t": time.time(), "error": text})

    def _write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def _fsync(self) -> None:
        os.fsync(self._fh.fileno())
        self._last_fsync = time.monotonic()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


from hpc.accounting.summary import summarize  # noqa: E402  (re-exported: read a file back)

__all__ = ["FORMAT_VERSION", "Sampler", "SamplerConfig", "summarize"]
