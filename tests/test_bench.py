"""The benchmark harness works end to end: `python -m bench smoke` starts every server variant,
drives each comparison once, and writes the report, its plots and its summary. A smoke check of
the harness, not a measurement: nothing here asserts a speed.

    .venv/bin/python -m pytest tests/test_bench.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys

from harness.serving import ROOT


def test_smoke_run_writes_the_report_with_every_comparison_and_plot(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "smoke", "--docs", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    page = (tmp_path / "PERFORMANCE.md").read_text()
    for heading in ("## Targets", "## 1. Ceiling", "## 2. Served vs ceiling", "## 6. GPU", "## 7. Findings"):
        assert heading in page
    summary = json.loads((tmp_path / "perf" / "summary.json").read_text())
    assert {target["name"].split(" (")[0] for target in summary["targets"]} >= {
        "served ÷ ceiling", "batching on ÷ off", "Atelier ÷ naive", "step-level ÷ request-level"}
    for plot in ("throughput_vs_concurrency.png", "batch_sizes.png"):
        assert (tmp_path / "perf" / plot).read_bytes().startswith(b"\x89PNG")
    assert "errors 0" in done.stdout and "errors 1" not in done.stdout  # every request answered
