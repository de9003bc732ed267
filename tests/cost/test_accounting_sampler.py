"""The accounting sampler: CPU-only here (no NVML), a fake NVML for the GPU path, summaries."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from hpc.accounting import Sampler, SamplerConfig, summarize


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.fixture
def busy_child() -> Any:
    """A child process that burns 1 s of CPU time (however loaded the machine), says so
    on stdout, then sleeps."""
    code = (
        "import time\nwhile time.process_time() < 1.0: pass\n"
        "print('burned', flush=True)\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    yield proc
    proc.kill()
    proc.wait()


def test_cpu_only_here_records_no_gpu_numbers(tmp_path: Path, busy_child: Any) -> None:
    if nvml_works():
        pytest.skip("NVML works on this machine: the CPU-only path is covered by the fake below")
    path = tmp_path / "acc.jsonl"
    with Sampler(SamplerConfig(path=path, interval_s=0.1, job_id="77")) as s:
        time.sleep(1.2)
    recs = records(path)
    head = recs[0]
    assert head["type"] == "header" and head["mode"] == "cpu-only" and head["gpus"] == 0
    assert head["reason"].startswith("NVML unavailable: ")
    assert head["job_id"] == "77"
    samples = [r for r in recs if r["type"] == "sample"]
    assert len(samples) >= 5 and s.samples == len(samples)
    assert all(r["gpus"] == [] for r in samples)
    assert all(r["rss"] > 0 and r["procs"] >= 1 for r in samples)
    assert recs[-1]["type"] == "stop"
    summary = summarize(path)
    assert summary["gpus"] == 0 and summary["gpu_hours"] == 0.0
    assert summary["gpu_util_mean"] is None and summary["energy_kwh"] is None
    assert summary["peak_gpu_memory_bytes"] is None and summary["restarts"] == 1
    assert summary["samples"] == len(samples) and summary["wall_s"] > 1.0
    assert summary["mode"] == "cpu-only"


def test_tracks_the_given_pids(tmp_path: Path, busy_child: Any) -> None:
    path = tmp_path / "acc.jsonl"
    with Sampler(SamplerConfig(path=path, interval_s=0.2, pids=[busy_child.pid])):
        assert busy_child.stdout.readline() == "burned\n"
        time.sleep(0.5)  # a sample after the burn
    summary = summarize(path)
    assert records(path)[0]["pids"] == [busy_child.pid]
    assert summary["cpu_hours"] * 3600 > 0.4  # the child burned ~1 s of CPU


def test_without_nvml_module_is_cpu_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    path = tmp_path / "acc.jsonl"
    s = Sampler(SamplerConfig(path=path))
    s.open()
    s.sample_once()
    s.stop()
    head = records(path)[0]
    assert head["mode"] == "cpu-only" and head["reason"].startswith("NVML unavailable")


class _Err(Exception):
    pass


class _NotSupported(_Err):
    pass


def fake_nvml(n: int = 2) -> types.ModuleType:
    """Enough of pynvml for the sampler: utilisation rises, energy counts up 1 kJ a call."""
    m = types.ModuleType("pynvml")
    state = {"calls": 0}
    m.NVMLError = _Err  # type: ignore[attr-defined]
    m.NVMLError_NotSupported = _NotSupported  # type: ignore[attr-defined]
    m.nvmlInit = lambda: None  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: n  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: "Fake GPU"  # type: ignore[attr-defined]
    m.nvmlDeviceGetUUID = lambda h: f"GPU-fake-{h}"  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        total=80 * 2**30, used=(h + 1) * 2**30
    )

    def util(h: int) -> types.SimpleNamespace:
        state["calls"] += 1
        return types.SimpleNamespace(gpu=50 + 10 * h, memory=5)

    def power(h: int) -> int:
        if h == 1:
            raise _NotSupported("not supported")
        return 250_000

    def energy(h: int) -> int:
        return 1_000_000 * state["calls"]

    m.nvmlDeviceGetUtilizationRates = util  # type: ignore[attr-defined]
    m.nvmlDeviceGetPowerUsage = power  # type: ignore[attr-defined]
    m.nvmlDeviceGetTotalEnergyConsumption = energy  # type: ignore[attr-defined]
    return m


def test_gpu_samples_with_fake_nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    path = tmp_path / "acc.jsonl"
    s = Sampler(SamplerConfig(path=path, job_id="9"))
    s.open()
    for _ in range(4):
        s.sample_once()
    s.stop()
    recs = records(path)
    assert recs[0]["mode"] == "nvml" and recs[0]["gpus"] == 2
    assert [d["uuid"] for d in recs[0]["devices"]] == ["GPU-fake-0", "GPU-fake-1"]
    sample = recs[1]["gpus"]
    assert sample[0]["power_w"] == 250.0 and sample[1]["power_w"] is None  # never invented
    summary = summarize(path)
    assert summary["gpus"] == 2 and summary["gpu_util_mean"] == pytest.approx(55.0)
    assert summary["peak_gpu_memory_bytes"] == 2 * 2**30
    # energy counter per GPU: first and last reading differ by 6 calls x 1 kJ
    assert summary["energy_kwh"] == pytest.approx(2 * 6 * 1000 / 3.6e6)
    assert summary["gpu_hours"] == pytest.approx(2 * summary["wall_s"] / 3600)


def test_cuda_visible_devices_selects_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-fake-3,1")
    s = Sampler(SamplerConfig(path=tmp_path / "a.jsonl"))
    s.open()
    s.stop()
    head = records(tmp_path / "a.jsonl")[0]
    assert [d["index"] for d in head["devices"]] == [3, 1] and head["gpus"] == 2


def test_requeued_job_appends_and_counts_starts(tmp_path: Path) -> None:
    path = tmp_path / "acc.jsonl"
    for _ in range(2):
        s = Sampler(SamplerConfig(path=path))
        s.open()
        s.sample_once()
        s.sample_once()
        s.stop()
    summary = summarize(path)
    assert summary["restarts"] == 2 and summary["samples"] == 4
    assert [r["type"] for r in records(path)].count("header") == 2


def test_torn_last_line_is_tolerated_and_a_new_start_repairs_it(tmp_path: Path) -> None:
    path = tmp_path / "acc.jsonl"
    s = Sampler(SamplerConfig(path=path))
    s.open()
    s.sample_once()
    s._fh.write('{"type":"sample","t":12')  # killed mid-write
    s._fh.flush()
    s._fh.close()
    s._fh = None
    assert summarize(path)["bad_lines"] == 1
    s2 = Sampler(SamplerConfig(path=path))
    s2.open()
    s2.sample_once()
    s2.stop()
    summary = summarize(path)
    assert summary["bad_lines"] == 1 and summary["restarts"] == 2 and summary["samples"] == 2


def test_garbage_in_the_middle_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "acc.jsonl"
    path.write_text('{"type":"header","t":1,"gpus":0}\nnot json\n{"type":"sample","t":2}\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: not a JSON record"):
        summarize(path)
    path.write_text('{"type":"sample","t":2}\n')
    with pytest.raises(ValueError, match=rf"^{path}:1: 'sample' record before any header"):
        summarize(path)


def test_sampler_modules_stay_light() -> None:
    code = (
        "import sys, hpc.accounting.sampler, hpc.cost.cli, hpc.cost.report, hpc.cost.sacct.reader\n"
        "bad = [m for m in ('torch', 'mlflow', 'pynvml', 'pandas') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
