"""The pre-flight check: one task per node, before any rank starts training.

``python -m hpc.runtime.preflight CONFIG_FILE`` runs on every node of the job (the
launcher starts it as one task per node, bounded in time) and checks what would
otherwise fail minutes into the run, or never loudly:

* ``run_dir``, ``checkpoint.dir``: both directories are writable from this node (a
  file is written, fsynced, read back and removed);
* ``space``: the checkpoint directory's file system has room for two more checkpoints
  of the size of the newest one (no checkpoint yet: nothing to estimate from);
* ``gpus``: on a node with the NVIDIA driver, NVML answers and has the GPUs the plan
  gives the node (``resources.gpus_per_node``, and every index in
  ``CUDA_VISIBLE_DEVICES``); nodes without the driver are CPU nodes;
* ``hcas``: every HCA named in ``nccl.env.NCCL_IB_HCA`` exists on this node, and a
  profile that selects RDMA HCAs (``infiniband``, ``roce``, ...) finds an active one;
* ``rendezvous``: the rendezvous host resolves, and on the first node the rendezvous
  port is free to listen on.

Each node prints one line, ``hpc-launch: preflight ok on NODE`` or ``hpc-launch:
preflight FAILED on NODE: CHECK: DETAIL; ...``, and exits 0 or
:data:`~hpc.exitcodes.PREFLIGHT_FAILED`. The launcher reads these lines (a node that
printed none did not answer in time). Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpc.exitcodes import PREFLIGHT_FAILED
from hpc.nccl import PROFILES
from hpc.runtime import rank_discovery
from hpc.runtime.checkpoint import LATEST

OK_PREFIX = "hpc-launch: preflight ok on "
FAILED_PREFIX = "hpc-launch: preflight FAILED on "
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


@dataclass(frozen=True)
class Finding:
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


def check_writable(directory: Path, node: str, key: str = "run_dir") -> Finding | None:
    """``directory`` (created if missing) takes a file written, fsynced and read back."""
    probe = directory / f".preflight-{node}-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, node.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if probe.read_bytes() != node.encode():
            return Finding(key, f"{directory}: a file written there reads back different")
    except OSError as exc:
        return Finding(key, f"{directory} is not writable ({exc.strerror or exc})")
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def checkpoint_bytes(checkpoint_dir: Path) -> int:
    """The size of the newest committed checkpoint (0 when there is none)."""
    try:
        name = (checkpoint_dir / LATEST).read_text().strip()
    except OSError:
        return 0
    newest = checkpoint_dir / name
    total = 0
    for root, _dirs, files in os.walk(newest):
        for file in files:
            with contextlib.suppress(OSError):  # removed while we look
                total += os.stat(os.path.join(root, file)).st_size
    return total


def check_space(checkpoint_dir: Path, free: Callable[[Path], int] | None = None) -> Finding | None:
    need = 2 * checkpoint_bytes(checkpoint_dir)
    if not need:
        return None
    where = checkpoint_dir if checkpoint_dir.exists() else checkpoint_dir.parent
    try:
        have = free(where) if free else shutil.disk_usage(where).free
    except OSError as exc:
        return Finding("space", f"cannot read the free space of {where} ({exc.strerror or exc})")
    if have < need:
        return Finding(
            "space",
            f"{where} has {have / 2**30:.2f} GiB free; two checkpoints of the newest's "
            f"size need {need / 2**30:.2f} GiB",
        )
    return None


def check_gpus(expected: int, environ: Mapping[str, str]) -> Finding | None:
    if not expected or not NVIDIA_DRIVER.exists():
        return None  # a CPU node: nothing to ask NVML
    try:
        import pynvml  # noqa: PLC0415 - only on GPU nodes

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVMLError and a missing library alike
        return Finding("gpus", f"NVML does not answer ({exc})")
    visible = [v for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    missing = [v for v in visible if v.strip().isdigit() and int(v) >= count]
    if count < expected or missing:
        shown = f"; CUDA_VISIBLE_DEVICES names {','.join(missing)}" if missing else ""
        return Finding("gpus", f"NVML sees {count} GPU(s), the plan needs {expected}{shown}")
    return None


def named_hcas(value: str) -> list[str]:
    """The HCAs an ``NCCL_IB_HCA`` value asks for (none for a ``^`` exclusion list)."""
    value = value.strip()
    if not value or value.startswith("^"):
        return []
    names = (part.split(":", 1)[0].strip() for part in value.lstrip("=").split(","))
    return [name for name in names if name]


def check_hcas(nccl: Mapping[str, Any], sysfs_root: Path = Path("/")) -> Finding | None:
    base = sysfs_root / "sys/class/infiniband"
    present = sorted(p.name for p in base.glob("*")) if base.is_dir() else []
    env = {str(k): str(v) for k, v in (nccl.get("env") or {}).items()}
    wanted = named_hcas(env.get("NCCL_IB_HCA", ""))
    if wanted:
        # NCCL matches a name without the '=' prefix as a prefix of the device's name.
        exact = env["NCCL_IB_HCA"].lstrip().startswith("=")
        missing = [
            w for w in wanted if not any(p == w or (not exact and p.startswith(w)) for p in present)
        ]
        if missing:
            return Finding(
                "hcas",
                f"nccl.env.NCCL_IB_HCA names {','.join(missing)}, not on this node "
                f"(present: {','.join(present) or 'none'})",
            )
        return None
    profile = PROFILES.get(str(nccl.get("profile", "default")))
    if profile is not None and profile.set_ib_hca and not any(_active(base / p) for p in present):
        return Finding(
            "hcas",
            f"nccl.profile={nccl.get('profile')} selects RDMA HCAs; none is active on this "
            f"node (present: {','.join(present) or 'none'})",
        )
    return None


def _active(device: Path) -> bool:
    for state in device.glob("ports/*/state"):
        try:
            if "ACTIVE" in state.read_text():
                return True
        except OSError:
            pass
    return False


def check_rendezvous(addr: str, port: int, first_node: bool) -> Finding | None:
    try:
        socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Finding("rendezvous", f"host {addr} does not resolve ({exc})")
    if not first_node:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as exc:
            why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            return Finding("rendezvous", f"port {port} cannot be listened on ({why})")
    return None


def run_checks(
    cfg: Mapping[str, Any],
    run_dir: Path,
    node: str,
    rendezvous: tuple[str, int, bool] | None,
    environ: Mapping[str, str],
) -> list[Finding]:
    """Every check for this node; the findings of those that failed."""
    checkpoint = cfg.get("checkpoint") or {}
    checkpoint_dir = Path(checkpoint.get("dir") or run_dir / "checkpoints")
    gpus = int((cfg.get("resources") or {}).get("gpus_per_node") or 0)
    found = [
        check_writable(run_dir, node),
        check_writable(checkpoint_dir, node, "checkpoint.dir")
        if checkpoint_dir != run_dir
        else None,
        check_space(checkpoint_dir),
        check_gpus(gpus, environ),
        check_hcas(cfg.get("nccl") or {}),
        check_rendezvous(*rendezvous) if rendezvous else None,
    ]
    return [f for f in found if f is not None]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hpc.runtime.preflight CONFIG_FILE", file=sys.stderr)
        return 2
    env = rank_discovery.from_env()
    node = env.node_name()
    try:
        cfg = yaml.safe_load(Path(args[0]).read_text(encoding="utf-8")) or {}
        info = env.rank_info()
        rendezvous = (info.master_addr, info.master_port, info.node_rank == 0)
        run_dir = Path(os.environ.get("HPC_RUN_DIR") or Path(args[0]).parent)
        findings = run_checks(cfg, run_dir, node, rendezvous, os.environ)
    except Exception as exc:  # a check that cannot run is a failed node too
        findings = [Finding("preflight", f"{type(exc).__name__}: {exc}")]
    if findings:
        print(FAILED_PREFIX + f"{node}: " + "; ".join(map(str, findings)), flush=True)
        return PREFLIGHT_FAILED
    print(OK_PREFIX + node, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
