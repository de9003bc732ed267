"""The pre-flight checks one by one, against real file systems, sockets and sysfs trees
(hpc.runtime.preflight), and the batch shell's reading of a step's output."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpc.launchers.slurm.preflight import verdict
from hpc.runtime import preflight


@contextlib.contextmanager
def mounted(args: list[str], target: Path) -> Iterator[None]:
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def read_only(directory: Path) -> contextlib.AbstractContextManager[None]:
    """``directory`` bind-mounted read-only over itself: its files stay readable."""

    @contextlib.contextmanager
    def both() -> Iterator[None]:
        with mounted(["--bind", str(directory)], directory):
            proc = subprocess.run(
                ["mount", "-o", "remount,bind,ro", str(directory)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                pytest.skip(f"cannot remount read-only: {proc.stderr.strip()}")
            yield

    return both()


def test_a_read_only_run_dir_is_named(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}\n")
    assert preflight.check_writable(run_dir, "n1") is None
    with read_only(run_dir):
        finding = preflight.check_writable(run_dir, "n1")
    assert finding is not None and finding.check == "run_dir"
    assert str(run_dir) in finding.detail and "Read-only file system" in finding.detail
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]  # no probe left


def test_two_more_checkpoints_must_fit(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    with mounted(["-t", "tmpfs", "-o", "size=1m", "tmpfs"], fs):
        ckpt = fs / "checkpoints"
        assert preflight.check_space(ckpt) is None  # no checkpoint yet: nothing to estimate
        (ckpt / "step-40").mkdir(parents=True)
        (ckpt / "step-40" / "rank0.pt").write_bytes(b"x" * 300_000)
        (ckpt / "LATEST").write_text("step-40")
        assert preflight.checkpoint_bytes(ckpt) == 300_000
        finding = preflight.check_space(ckpt)  # 600 kB needed, ~700 kB free
        assert finding is None, finding
        (ckpt / "step-40" / "optim.pt").write_bytes(b"x" * 200_000)
        finding = preflight.check_space(ckpt)  # 1 MB needed, ~500 kB free
    assert finding is not None and finding.check == "space" and "GiB free" in finding.detail


def sysfs(root: Path, devices: dict[str, str]) -> Path:
    for name, state in devices.items():
        port = root / "sys/class/infiniband" / name / "ports" / "1"
        port.mkdir(parents=True)
        (port / "state").write_text(state + "\n")
    return root


def test_named_and_profile_hcas_must_exist(tmp_path: Path) -> None:
    root = sysfs(tmp_path, {"mlx5_0": "4: ACTIVE", "mlx5_1": "1: DOWN"})
    assert preflight.named_hcas("=mlx5_0:1,mlx5_1") == ["mlx5_0", "mlx5_1"]
    assert preflight.named_hcas("^mlx5_2") == []
    ok = {"profile": "default", "env": {"NCCL_IB_HCA": "=mlx5_0,mlx5_1"}}
    assert preflight.check_hcas(ok, root) is None
    assert preflight.check_hcas({"env": {"NCCL_IB_HCA": "mlx5"}}, root) is None  # a prefix
    missing = preflight.check_hcas({"env": {"NCCL_IB_HCA": "=mlx5_0,mlx5_9"}}, root)
    assert missing is not None and "names mlx5_9," in missing.detail
    assert "present: mlx5_0,mlx5_1" in missing.detail
    assert preflight.check_hcas({"env": {"NCCL_IB_HCA": "^mlx5_9"}}, root) is None
    assert preflight.check_hcas({"profile": "infiniband"}, root) is None  # mlx5_0 is active
    down = sysfs(tmp_path / "down", {"mlx5_1": "1: DOWN"})
    finding = preflight.check_hcas({"profile": "infiniband"}, down)
    assert finding is not None and "nccl.profile=infiniband" in finding.detail
    assert preflight.check_hcas({"profile": "default"}, tmp_path / "none") is None


def test_the_rendezvous_port_must_be_free_on_the_first_node() -> None:
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        finding = preflight.check_rendezvous("127.0.0.1", port, first_node=True)
        assert (
            finding is not None and f"port {port}" in finding.detail and "in use" in finding.detail
        )
        assert preflight.check_rendezvous("127.0.0.1", port, first_node=False) is None
    assert preflight.check_rendezvous("127.0.0.1", port, first_node=True) is None
    unknown = preflight.check_rendezvous("no-such-host.invalid", port, first_node=False)
    assert unknown is not None and "does not resolve" in unknown.detail


def test_a_node_that_prints_nothing_is_named() -> None:
    out = (
        "hpc-launch: preflight ok on n1\n"
        "srun: error: something\n"
        "hpc-launch: preflight FAILED on n3: hcas: nccl.env.NCCL_IB_HCA names mlx5_9\n"
    )
    assert verdict(["n1", "n2", "n3"], out, 124, 60) == {
        "n2": "no answer within 60s (fault.preflight_timeout_s)",
        "n3": "hcas: nccl.env.NCCL_IB_HCA names mlx5_9",
    }
    assert verdict(["n1"], "hpc-launch: preflight ok on n1\n", 0, 60) == {}
    assert verdict(["n2"], "", 1, 60) == {"n2": "no answer (the pre-flight step exited 1)"}
