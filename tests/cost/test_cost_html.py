"""The HTML report: self-contained, opens in headless Chromium without console errors, and a
screenshot shows its three charts.

Skipped (with the reason) when Chromium is absent, unless HPC_TEST_BROWSER is set, in which
case a missing browser fails. The screenshot is left in pytest's tmp_path (or in
$HPC_TEST_ARTIFACTS when that is set), never in the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from hpc.cost.cli import main

HEAD = "JobID|JobIDRaw|User|Account|Partition|State|Submit|Start|End|Elapsed|NCPUS|AllocTRES"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("HPC_TEST_BROWSER"):
        pytest.fail("HPC_TEST_BROWSER is set but no chromium on PATH", pytrace=False)
    pytest.skip(
        "chromium not installed (apt-get install chromium); set HPC_TEST_BROWSER=1 "
        "to make this a failure"
    )


def make_inputs(tmp: Path) -> list[str]:
    rows, t0 = [], datetime(2024, 5, 1)
    runs = tmp / "runs"
    for i in range(40):
        start = t0 + timedelta(hours=7 * i)
        end = start + timedelta(hours=3 + i % 17)
        gpus = (1, 2, 4, 8)[i % 4]
        jid = str(5000 + i)
        s, e = start.strftime("%Y-%m-%dT%H:%M:%S"), end.strftime("%Y-%m-%dT%H:%M:%S")
        rows.append(
            f"{jid}|{jid}|user{i % 6}|{('ml', 'physics', 'bio')[i % 3]}|gpu|COMPLETED|"
            f"{s}|{s}|{e}|01:00:00|{4 * gpus}|cpu={4 * gpus},gres/gpu:h100={gpus},"
            f"gres/gpu={gpus}"
        )
        if i % 3:  # some jobs carry the framework's own accounting
            run = runs / f"run-{jid}"
            run.mkdir(parents=True)
            util = 10 + (i * 37) % 90
            recs = [{"type": "header", "t": 0, "mode": "nvml", "gpus": gpus}] + [
                {
                    "type": "sample",
                    "t": 60.0 * k,
                    "gpus": [
                        {"index": g, "util": util, "mem": 2**30, "energy_mj": 10**6 * k}
                        for g in range(gpus)
                    ],
                }
                for k in (1, 2, 3)
            ]
            (run / "acc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            (run / "job.json").write_text(
                json.dumps({"job_id": jid, "accounting_file": "acc.jsonl"})
            )
    rows.append(
        "5999|5999|<b>x</b>|ml|gpu|RUNNING|2024-05-12T00:00:00|2024-05-12T00:00:00|"
        "Unknown|01:00:00|32|cpu=32,gres/gpu=8"
    )
    (tmp / "s.psv").write_text(HEAD + "\n" + "\n".join(rows) + "\n")
    (tmp / "p.yaml").write_text(
        "currency: EUR\ngpu_hour: {default: 2.0, by_gpu_type: {h100: 4.0}}\ncpu_hour: 0.01\n"
    )
    return [
        "--sacct",
        str(tmp / "s.psv"),
        "--accounting",
        str(runs),
        "--prices",
        str(tmp / "p.yaml"),
        "--end",
        "2024-05-14",
    ]


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    pytest.importorskip("plotly", reason="plotly (the HTML report's charts) is not installed")
    chrome = browser()
    out = tmp_path / "report.html"
    assert (
        main(
            [
                "report",
                *make_inputs(tmp_path),
                "--format",
                "html",
                "--by",
                "account",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    html = out.read_text(encoding="utf-8")
    # self-contained: no external scripts, styles or fonts
    assert not re.search(r"<(script|link)[^>]+(src|href)=", html)
    assert "\\u0026lt;b\\u0026gt;x" in html  # user text escaped for plotly and <script>
    assert "<b>x</b>" not in html

    shot = Path(os.environ.get("HPC_TEST_ARTIFACTS") or tmp_path) / "cost_report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    common = [
        chrome,
        *CHROME_FLAGS,
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--window-size=1280,2000",
    ]
    dom = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], "\n".join(console)  # no console errors (nor any other message)
    for chart in ("timeline", "util", "top"):  # each div was drawn by plotly
        assert re.search(rf'id="{chart}" class="chart js-plotly-plot"', dom.stdout), chart
    assert dom.stdout.count('class="main-svg"') >= 3
    assert "5999 · &lt;b&gt;x&lt;/b&gt; *" in dom.stdout  # running job marked, name escaped

    pic = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'p2'}", f"--screenshot={shot}", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pic.returncode == 0 and shot.stat().st_size > 40_000, pic.stderr[-2000:]
    try:
        from PIL import Image
    except ImportError:
        return
    img = Image.open(shot).convert("RGB")
    # the chart colours are on the picture: stacked bars (#4C78A8 ...) and the histogram
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20) or []}
    for hexcol in ("#4C78A8", "#F58518", "#54A24B"):
        rgb = tuple(int(hexcol[i : i + 2], 16) for i in (1, 3, 5))
        assert rgb in colours, hexcol
