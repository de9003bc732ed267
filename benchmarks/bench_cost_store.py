"""Benchmark: ``hpc cost ingest`` into the accounting store, and a report over the store.

Uses the generator and the pandas baseline of ``bench_cost.py`` (same rows, same window,
same prices). Each command runs in its own subprocess, so peak RSS is its own:

* ingest of the generated file into a fresh store: wall, rows/s, peak RSS (target
  <= 300 MiB, flat from 1M to 20M rows); then the same ingest again (idempotent: no
  new or updated rows);
* ``hpc cost report --store`` (window, prices, ``--by account``, JSON) vs the pandas
  baseline on the generated file (targets: <= 1 s, >= 10x faster), totals compared;
* ``hpc cost report --sacct FILE`` on the same file, for reference (``bench_cost.py``).

    python benchmarks/bench_cost_store.py [--rows 1000000] [--keep FILE] [--store PATH]
                                          [--no-pandas] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cost import CPU_RATE, GPU_RATE, PANDAS_BASELINE, PRICES, WINDOW, _measure, generate


def _compare(report: dict, expected: dict) -> list[str]:
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
    return bad


def _same(a: list[dict], b: list[dict]) -> bool:
    """Equal rows, numbers up to 1e-9 relative (DuckDB's parallel sums and Arrow's add
    in different orders: the last printed digit may differ)."""

    def close(x: object, y: object) -> bool:
        if isinstance(x, float | int) and isinstance(y, float | int):
            return abs(x - y) <= 1e-9 * max(1.0, abs(y))
        return x == y

    if len(a) != len(b):
        return False
    pairs = zip(a, b, strict=True)
    return all(r.keys() == s.keys() and all(close(r[k], s[k]) for k in r) for r, s in pairs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="sacct rows to generate")
    ap.add_argument("--keep", type=Path, help="write/keep the generated file here")
    ap.add_argument("--store", type=Path, help="store file (default: a temporary one)")
    ap.add_argument("--no-pandas", action="store_true", help="skip the pandas baseline")
    ap.add_argument("--no-file", action="store_true", help="skip the file-direct report")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each report (best is kept)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="bench_cost_store_")
    data = args.keep or Path(tmp.name) / "sacct.psv"
    if not data.exists():
        t0 = time.perf_counter()
        generate(data, args.rows)
        print(
            f"generated {args.rows:,} rows ({data.stat().st_size / 2**20:.0f} MiB) "
            f"in {time.perf_counter() - t0:.1f} s: {data}"
        )
    store = args.store or Path(tmp.name) / "cost.duckdb"
    for p in (store, Path(str(store) + ".wal")):
        p.unlink(missing_ok=True)
    prices = Path(tmp.name) / "prices.yaml"
    prices.write_text(PRICES, encoding="utf-8")
    py = [sys.executable, "-m", "hpc.cost.cli"]
    ingest = [*py, "ingest", "--sacct", str(data), "--store", str(store)]
    wall, rss, _, cpu = _measure(ingest)
    print(
        f"ingest          : wall {wall:6.2f} s  CPU {cpu:6.2f} s  peak RSS {rss:6.0f} MiB  "
        f"{args.rows / wall:,.0f} rows/s  store {store.stat().st_size / 2**20:.0f} MiB"
    )
    wall2, rss2, _, _ = _measure([*ingest, "--cluster", "default"])
    print(f"re-ingest       : wall {wall2:6.2f} s  peak RSS {rss2:6.0f} MiB")
    common = ["--prices", str(prices), "--start", WINDOW[0], "--end", WINDOW[1]]
    common += ["--format", "json", "--by", "account"]
    results = {}
    results["hpc cost report --store"] = min(
        (_measure([*py, "report", "--store", str(store), *common]) for _ in range(args.repeat)),
        key=lambda r: r[0],
    )
    if not args.no_file:
        results["hpc cost report --sacct"] = min(
            (_measure([*py, "report", "--sacct", str(data), *common]) for _ in range(args.repeat)),
            key=lambda r: r[0],
        )
    if not args.no_pandas:
        base_cmd = [sys.executable, "-c", PANDAS_BASELINE, str(data), *WINDOW]
        base_cmd += [str(GPU_RATE), str(CPU_RATE)]
        results["pandas baseline"] = min(
            (_measure(base_cmd) for _ in range(args.repeat)), key=lambda r: r[0]
        )
    for name, r in results.items():
        print(f"{name:24}: wall {r[0]:6.2f} s  CPU {r[3]:6.2f} s  peak RSS {r[1]:6.0f} MiB")
    ours = results["hpc cost report --store"]
    report = json.loads(ours[2])
    total = report["total"]
    print(
        f"total: {total['jobs']:,} jobs, {total['gpu_hours']:,.1f} GPU-h, "
        f"{total['cpu_hours']:,.1f} CPU-h, cost {total['cost']:,.2f}"
    )
    bad: list[str] = []
    if "hpc cost report --sacct" in results:
        direct = json.loads(results["hpc cost report --sacct"][2])
        if not _same(direct["rows"] + [direct["total"]], report["rows"] + [total]):
            bad.append("store and file reports differ (beyond float summation order)")
    if "pandas baseline" in results:
        base = results["pandas baseline"]
        bad += _compare(report, json.loads(base[2]))
        print(f"store report vs pandas: {base[0] / ours[0]:.1f}x faster")
    print("totals identical" if not bad else "MISMATCH:\n  " + "\n  ".join(bad[:20]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
