"""Atelier's Prometheus metrics (`atelier_*`), defined once; BentoML serves them at `/metrics`.

Plain `prometheus_client` is the right tool here (BentoML 1.4.40 marks `bentoml.metrics`
deprecated in favour of it): `bentoml serve` spawns every worker with `PROMETHEUS_MULTIPROC_DIR`
already in its environment, so `prometheus_client` picks its multiprocess (mmap file) values at
import, and BentoML's `/metrics` handler merges every process's files with `MultiProcessCollector`.
What multiprocess mode changes:
- Gauges need a `multiprocess_mode`: the default "all" exports one series per worker pid.
  "livesum" sums the live workers, which is what a pod-level gauge (in-flight, queue depth, the
  HPA's signal) means. But BentoML never tells prometheus_client that a worker died (no
  `mark_process_dead`), so a crashed worker's last values would stay in the sum until the server
  restarts: each worker calls `forget_dead_workers` once at start-up.
- Counters and histograms sum across workers and keep counting after a worker restarts.
- Nothing here may be exported from another registry: `/metrics` reads only the files.

    .venv/bin/python -c "import service.metrics as m, prometheus_client as p; \
m.IMAGES.labels(model='dcgan').inc(); print(p.generate_latest().decode())" | grep atelier_
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, multiprocess

# Seconds for a whole request: from a 5 ms GAN image to a minute of CPU diffusion.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Rows per ONNX run: powers of two plus the in-between sizes step-level batching produces.
_BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
# Seconds a submission queues or a run takes: one 1 ms denoiser step up to a second under overload.
_STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter(
    "atelier_requests",
    "Requests answered, by route, model, outcome status and protocol (http, grpc)",
    ["route", "model", "status", "protocol"],
)
REQUEST_SECONDS = Histogram(
    "atelier_request_seconds",
    "Seconds from request decoded to response encoded",
    ["route", "model", "protocol"],
    buckets=_REQUEST_BUCKETS,
)
INFLIGHT = Gauge(
    "atelier_inflight",
    "Requests being served now, summed over live workers",
    multiprocess_mode="livesum",
)
IMAGES = Counter("atelier_images", "Images produced", ["model"])
# The autoscaling signal (k8s/, docs/DEPLOY.md): stable names, no labels, one value per pod.
PREDICTED_WAIT_SECONDS = Gauge(
    "atelier_predicted_wait_seconds",
    "Predicted seconds of model work queued ahead of an interactive request arriving now (admission's prediction)",
    multiprocess_mode="livemax",
)
PENDING_WORK_SECONDS = Gauge(
    "atelier_pending_work_seconds",
    "Predicted seconds of model work admitted and not yet run, every priority, summed over live workers",
    multiprocess_mode="livesum",
)
BATCH_ROWS = Histogram(
    "atelier_batch_rows",
    "Rows per ONNX run, by model function",
    ["function"],
    buckets=_BATCH_ROW_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "atelier_queue_depth",
    "Rows waiting for an ONNX run, by model function, summed over live workers",
    ["function"],
    multiprocess_mode="livesum",
)
QUEUE_WAIT_SECONDS = Histogram(
    "atelier_queue_wait_seconds",
    "Seconds from a submission to the start of its ONNX run",
    ["function"],
    buckets=_STEP_BUCKETS,
)
BATCH_SECONDS = Histogram(
    "atelier_batch_seconds",
    "Seconds one ONNX run takes (in its thread, excluding queueing)",
    ["function"],
    buckets=_STEP_BUCKETS,
)
ROWS_CANCELLED = Counter(
    "atelier_rows_cancelled",
    "Rows withdrawn from a queue before their run because the caller went away",
    ["function"],
)


# prometheus_client names a live-mode gauge file gauge_<mode>_<pid>.db (livesum, livemax, ...).
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def forget_dead_workers(multiproc_dir: Path) -> list[int]:
    """Drop the live-gauge files of worker processes that no longer run; return their pids.

    Call once when a worker starts: a restarted worker then removes what the one it replaced left.
    """
    pids = {
        int(match[1]) for path in multiproc_dir.iterdir() if (match := _LIVE_GAUGE_FILE.fullmatch(path.name))
    }
    dead = sorted(pid for pid in pids if not _is_running(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(multiproc_dir))
    return dead


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 checks existence without touching the process
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
