"""benchmarks/gpu_check.py on a machine without a GPU: it runs every check, each one
SKIPs with its reason, no traceback, exit 0 (its GPU verdicts need a GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
CHECKS = (
    "nvml_discovery",
    "nvsmi_placement",
    "nvml_sampler",
    "nccl_init",
    "async_staging",
    "step_overhead",
)


def _has_gpu() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


@pytest.mark.skipif(_has_gpu(), reason="a GPU machine gives real verdicts, not SKIPs")
def test_without_a_gpu_every_check_skips(tmp_path):
    out = tmp_path / "verdicts.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name in CHECKS:
        (line,) = [ln for ln in lines if ln.split()[1:2] == [name]]
        assert line.startswith("SKIP"), line
        assert len(line.split(None, 2)[2]) > 10, line  # one line of evidence: the reason
    assert lines[-1].startswith("gpu_check: 0 PASS, 0 FAIL, 6 SKIP")
    verdicts = json.loads(out.read_text())
    assert [v["check"] for v in verdicts] == list(CHECKS)
    assert {v["status"] for v in verdicts} == {"SKIP"}
