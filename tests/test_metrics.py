"""Specifications of `service.metrics` in prometheus multiprocess mode, the mode `bentoml serve`
runs its workers in (it sets PROMETHEUS_MULTIPROC_DIR for each).

    .venv/bin/python -m pytest tests/test_metrics.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess

from service.metrics import forget_dead_workers

REPO = Path(__file__).resolve().parent.parent


def run_worker(multiproc_dir: Path, code: str) -> int:
    """Run `code` in a fresh process in multiprocess mode, as a BentoML worker would; return its pid."""
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "PYTHONPATH": str(REPO)}
    script = f"import os, service.metrics as m\n{code}\nprint(os.getpid())"
    completed = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True
    )
    return int(completed.stdout.strip())


def collect(multiproc_dir: Path) -> CollectorRegistry:
    """What BentoML's /metrics handler does: merge every worker's files."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiproc_dir))
    return registry


def test_metrics_of_every_worker_are_merged_and_gauges_summed(tmp_path):
    for _ in range(2):
        run_worker(
            tmp_path,
            "m.IMAGES.labels(model='dcgan').inc(3); m.INFLIGHT.inc(2); "
            "m.QUEUE_DEPTH.labels(function='diffusion.denoise').set(5); "
            "m.BATCH_ROWS.labels(function='diffusion.denoise').observe(24)",
        )
    registry = collect(tmp_path)
    assert registry.get_sample_value("atelier_images_total", {"model": "dcgan"}) == 6
    assert registry.get_sample_value("atelier_inflight") == 4
    assert registry.get_sample_value("atelier_queue_depth", {"function": "diffusion.denoise"}) == 10
    assert registry.get_sample_value("atelier_batch_rows_count", {"function": "diffusion.denoise"}) == 2


def test_forget_dead_workers_drops_their_gauges_but_keeps_their_counts(tmp_path):
    dead_pid = run_worker(tmp_path, "m.IMAGES.labels(model='vae').inc(); m.INFLIGHT.inc(7)")
    live_file = tmp_path / f"gauge_livesum_{os.getpid()}.db"  # this test's process is alive
    live_file.write_bytes(b"")

    assert forget_dead_workers(tmp_path) == [dead_pid]
    assert live_file.exists()
    live_file.unlink()  # it held no values; the collector cannot read an empty file
    registry = collect(tmp_path)
    assert registry.get_sample_value("atelier_inflight") in (None, 0.0)
    assert registry.get_sample_value("atelier_images_total", {"model": "vae"}) == 1
