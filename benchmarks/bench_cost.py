"""Benchmark: ``hpc cost report`` on a 1,000,000-row parsable2 file vs a pandas baseline.

Generates a deterministic sacct file (allocations mixed with ``.batch``/``.extern``/``.0``
steps, array tasks, pending array ranges, typed and generic GPU TRES, RUNNING and PENDING
rows), then runs, each in its own subprocess so that peak RSS (``ru_maxrss`` of the child)
is the child's own:

* ``python -m hpc.cost.cli report --sacct F --format json --by account`` (with a window
  and a price table), and
* a straightforward pandas baseline: ``read_csv(sep="|")``, keep allocation rows, extract
  ``gres/gpu=N``, hours from Start/End clipped to the window, ``groupby("account").sum()``.

It prints both wall times and peak RSS, and checks that per-account jobs, GPU-hours,
CPU-hours and cost agree. pandas is a benchmark-only dependency.

    python benchmarks/bench_cost.py [--rows 1000000] [--keep FILE] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

FIELDS = (
    "JobID|JobIDRaw|User|Account|Partition|State|Submit|Start|End|Elapsed|NNodes|NCPUS|"
    "AllocTRES|NodeList|JobName"
)
WINDOW = ("2024-01-01T00:00:00", "2024-07-01T00:00:00")
GPU_RATE, CPU_RATE = 2.5, 0.01
PRICES = f"version: 1\ncurrency: EUR\ngpu_hour:\n  default: {GPU_RATE}\ncpu_hour: {CPU_RATE}\n"
T0 = datetime(2023, 12, 20, tzinfo=UTC)
NOW = "2024-06-20T12:00:00"  # submit/start times stay before this; RUNNING rows end Unknown


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def _elapsed(seconds: int) -> str:
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def generate(path: Path, rows: int, seed: int = 7) -> None:
    """Write ``rows`` sacct rows (header included) to ``path``."""
    rng = random.Random(seed)
    users = [f"user{i:03d}" for i in range(400)]
    accounts = [f"acct{i:02d}" for i in range(40)]
    parts = ["gpu", "gpu-long", "cpu", "debug", "bigmem"]
    states = ["COMPLETED"] * 14 + ["FAILED", "TIMEOUT", "CANCELLED by 1234", "NODE_FAIL"]
    now = datetime.fromisoformat(NOW).replace(tzinfo=UTC)
    span = int((now - T0).total_seconds())
    written = 0
    job = 1_000_000
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.write(FIELDS + "\n")
        while written < rows:
            job += rng.randint(1, 3)
            user = rng.choice(users)
            account = (
                accounts[int(user[4:]) % len(accounts)]
                if rng.random() < 0.9
                else (rng.choice(accounts))
            )
            part = rng.choice(parts)
            gpus = rng.choice([0, 1, 1, 2, 4, 8]) if part.startswith("gpu") else 0
            nodes = 2 if gpus == 8 and rng.random() < 0.3 else 1
            cpus = rng.choice([1, 4, 8, 16, 32]) * nodes
            if gpus:
                typed = rng.random() < 0.6
                gtype = rng.choice(["a100", "h100", "v100"])
                gres = (f"gres/gpu:{gtype}={gpus}," if typed else "") + f"gres/gpu={gpus},"
            else:
                gres = ""
            tres = f"billing={cpus + 10 * gpus},cpu={cpus},{gres}mem={4 * cpus}G,node={nodes}"
            submit = T0 + timedelta(seconds=rng.randrange(span))
            kind = rng.random()
            array_tasks = rng.randint(2, 6) if kind < 0.12 else 0
            ids = [f"{job}_{i}" for i in range(array_tasks)] if array_tasks else [str(job)]
            if kind > 0.985:  # pending job, or a pending array range
                jid = f"{job}_[0-{rng.randint(3, 50)}]" if rng.random() < 0.5 else str(job)
                out.write(
                    f"{jid}|{job}|{user}|{account}|{part}|PENDING|{_fmt(submit)}|Unknown|"
                    f"Unknown|00:00:00|1|{cpus}||None assigned|pend\n"
                )
                written += 1
                continue
            for n, jid in enumerate(ids):
                raw = job + n  # array tasks get job ids of their own, as in Slurm
                start = submit + timedelta(seconds=rng.randint(0, 7200))
                dur = rng.randint(30, 3 * 86400)
                end = start + timedelta(seconds=dur)
                running = end >= now or rng.random() < 0.01
                if start >= now:
                    start = now - timedelta(seconds=rng.randint(60, 3600))
                state = "RUNNING" if running else rng.choice(states)
                end_s = "Unknown" if running else _fmt(end)
                el = _elapsed(int(((now if running else end) - start).total_seconds()))
                nodelist = f"node[{rng.randint(1, 90):03d}-{rng.randint(91, 99):03d}]"
                common = f"{_fmt(start)}|{end_s}|{el}|{nodes}"
                out.write(
                    f"{jid}|{raw}|{user}|{account}|{part}|{state}|{_fmt(submit)}|{common}|"
                    f"{cpus}|{tres}|{nodelist}|train-{rng.randint(0, 99)}\n"
                )
                steps = [".batch", ".extern"] + ([".0"] if rng.random() < 0.5 else [])
                for step in steps:
                    stres = tres.replace(f"billing={cpus + 10 * gpus},", "")
                    out.write(
                        f"{jid}{step}|{raw}{step}||||{state}|{_fmt(start)}|{common}|{cpus}|"
                        f"{stres}|{nodelist}|{step[1:]}\n"
                    )
                written += 1 + len(steps)
            job += len(ids) - 1


PANDAS_BASELINE = r"""
import json, sys
import pandas as pd
path, w0, w1, gpu_rate, cpu_rate = sys.argv[1:6]
w0, w1 = pd.Timestamp(w0), pd.Timestamp(w1)
df = pd.read_csv(path, sep="|", dtype=str, keep_default_na=False)
df = df[~df["JobID"].str.contains(".", regex=False)]
df = df[df["State"] != "PENDING"]
start = pd.to_datetime(df["Start"], errors="coerce", format="%Y-%m-%dT%H:%M:%S")
end = pd.to_datetime(df["End"], errors="coerce", format="%Y-%m-%dT%H:%M:%S")
df = df[start.notna()]
start, end = start[start.notna()], end[start.notna()]
end = end.fillna(w1).clip(upper=w1)
hours = ((end - start.clip(lower=w0)).dt.total_seconds() / 3600).clip(lower=0)
inside = (start < w1) & ((end > w0) | ((end == start) & (start >= w0)))
gpus = df["AllocTRES"].str.extract(r"(?:^|,)gres/gpu=(\d+)")[0].fillna(0).astype(int)
out = pd.DataFrame({
    "account": df["Account"], "jobs": 1,
    "gpu_hours": gpus * hours, "cpu_hours": df["NCPUS"].astype(int) * hours,
})[inside]
out["cost"] = out["gpu_hours"] * float(gpu_rate) + out["cpu_hours"] * float(cpu_rate)
g = out.groupby("account").sum()
print(json.dumps({k: {c: float(v) for c, v in row.items()} for k, row in g.iterrows()}))
"""


def _measure(cmd: list[str]) -> tuple[float, float, str, float]:
    """(wall s, peak RSS MiB, stdout, CPU s) of ``cmd``, run from a fresh helper process so
    that RUSAGE_CHILDREN is this command's alone."""
    helper = (
        "import json, resource, subprocess, sys, time\n"
        "t0 = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t0\n"
        "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "rss, cpu = ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime\n"
        "print(json.dumps({'wall': wall, 'rss': rss, 'cpu': cpu, 'rc': p.returncode, "
        "'out': p.stdout, 'err': p.stderr}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", helper, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    res = json.loads(proc.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"command failed ({res['rc']}): {' '.join(cmd)}\n{res['err']}")
    return res["wall"], res["rss"], res["out"], res["cpu"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="write/keep the generated file here")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side (best is kept)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="bench_cost_")
    data = args.keep or Path(tmp.name) / "sacct.psv"
    if not data.exists():
        t0 = time.perf_counter()
        generate(data, args.rows)
        print(
            f"generated {args.rows:,} rows ({data.stat().st_size / 2**20:.0f} MiB) "
            f"in {time.perf_counter() - t0:.1f} s: {data}"
        )
    prices = Path(tmp.name) / "prices.yaml"
    prices.write_text(PRICES, encoding="utf-8")
    ours_cmd = [
        sys.executable,
        "-m",
        "hpc.cost.cli",
        "report",
        "--sacct",
        str(data),
        "--prices",
        str(prices),
        "--start",
        WINDOW[0],
        "--end",
        WINDOW[1],
        "--format",
        "json",
        "--by",
        "account",
    ]
    base_cmd = [
        sys.executable,
        "-c",
        PANDAS_BASELINE,
        str(data),
        *WINDOW,
        str(GPU_RATE),
        str(CPU_RATE),
    ]
    ours = min((_measure(ours_cmd) for _ in range(args.repeat)), key=lambda r: r[0])
    base = min((_measure(base_cmd) for _ in range(args.repeat)), key=lambda r: r[0])
    for name, r in (("hpc cost report", ours), ("pandas baseline", base)):
        print(f"{name} : wall {r[0]:6.2f} s  CPU {r[3]:6.2f} s  peak RSS {r[1]:6.0f} MiB")
    print(f"speed-up {base[0] / ours[0]:.2f}x, memory ratio {ours[1] / base[1]:.2f}")
    report = json.loads(ours[2])
    expected = json.loads(base[2])
    got = {r["key"]: r for r in report["rows"]}
    bad = []
    for key, row in expected.items():
        mine = got.get(key)
        if mine is None:
            bad.append(f"{key}: missing")
            continue
        for col in ("jobs", "gpu_hours", "cpu_hours", "cost"):
            if abs(mine[col] - row[col]) > 1e-6 * max(1.0, abs(row[col])):
                bad.append(f"{key}.{col}: ours {mine[col]} pandas {row[col]}")
    if set(got) - set(expected):
        bad.append(f"extra keys: {sorted(set(got) - set(expected))}")
    total = report["total"]
    print(
        f"total: {total['jobs']:,} jobs, {total['gpu_hours']:,.1f} GPU-h, "
        f"{total['cpu_hours']:,.1f} CPU-h, cost {total['cost']:,.2f}"
    )
    print("totals identical" if not bad else "MISMATCH:\n  " + "\n  ".join(bad[:20]))
    ok = not bad and base[0] / ours[0] >= 2 and ours[1] <= base[1] / 2
    print("targets (>= 2x faster, <= half the memory):", "met" if ok else "NOT met")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
