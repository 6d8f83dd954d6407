"""Soak: moderate load on a served Atelier for minutes; report the worker's RSS growth and the errors.

Starts `bentoml serve` on 127.0.0.1 (harness/serving.py) and runs `--clients` closed-loop clients, each
cycling through the kinds of request users send (dcgan, gmm with a prompt, vae, diffusion by prompt and
by class, PNG and raw output), so every batcher, the text encoder and the PNG encoder stay busy. The worker's RSS
(the child of `bentoml serve` that holds the Engine) is sampled every `--sample-seconds`; the baseline
is the RSS after `--warmup-seconds` of the same load, the result the last sample. The warm-up must
outlast BentoML's traffic timeout (ATELIER_REQUEST_TIMEOUT_SECONDS + 5 = 65 s by default): BentoML
keeps ~4.7 KiB per request for that long after answering it, so RSS climbs for that long, then
stays flat (measured; service/api.py's BENTOML_TIMEOUT_MARGIN_SECONDS says why); onnxruntime's arenas settle sooner. Pass: RSS growth < 5 % and 0 errors. Not part of CI (10 minutes).

    BENTOML_DO_NOT_TRACK=True .venv/bin/python -m bench.soak --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
import time

import httpx
import psutil

from harness.serving import AtelierServer

log = logging.getLogger("bench.soak")

BODIES = (
    {"model": "dcgan", "n": 4},
    {"model": "gmm", "prompt": "a smiling cat"},
    {"model": "vae", "n": 2, "output": "raw"},
    {"model": "diffusion", "prompt": "a red heart", "steps": 20},
    {"model": "diffusion", "class": 3, "steps": 30, "sampler": "ddim", "n": 2},
)
MAX_RSS_GROWTH = 0.05


def worker_rss(server: AtelierServer) -> int:
    (worker,) = psutil.Process(server.process.pid).children()
    return worker.memory_info().rss


async def soak(server: AtelierServer, args: argparse.Namespace) -> dict:
    counts = {"requests": 0, "errors": 0}
    errors: dict[str, int] = {}
    deadline = time.monotonic() + args.minutes * 60
    samples: list[tuple[float, int]] = []

    async def user(index: int, http: httpx.AsyncClient) -> None:
        for seed, body in zip(itertools.count(index * 1_000_000), itertools.cycle(BODIES[index % len(BODIES):] + BODIES[:index % len(BODIES)])):
            if time.monotonic() >= deadline:
                return
            try:
                response = await http.post(server.url + "/v1/generate", json={**body, "seed": seed})
                outcome = None if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as error:
                outcome = type(error).__name__
            counts["requests"] += 1
            if outcome:
                counts["errors"] += 1
                errors[outcome] = errors.get(outcome, 0) + 1

    async def sampler(started: float) -> None:
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - started, worker_rss(server)))
            log.info("t=%5.0f s  rss=%6.1f MiB  requests=%d errors=%d", samples[-1][0], samples[-1][1] / 2**20,
                     counts["requests"], counts["errors"])
            await asyncio.sleep(args.sample_seconds)

    async with httpx.AsyncClient(timeout=60) as http:
        started = time.monotonic()
        await asyncio.gather(sampler(started), *(user(i, http) for i in range(args.clients)))
    samples.append((time.monotonic() - started, worker_rss(server)))
    baseline = next(rss for t, rss in samples if t >= min(args.warmup_seconds, samples[-1][0]))
    growth = samples[-1][1] / baseline - 1
    return {"minutes": args.minutes, "clients": args.clients, **counts, "error_kinds": errors,
            "rss_baseline_mib": round(baseline / 2**20, 1), "rss_end_mib": round(samples[-1][1] / 2**20, 1),
            "rss_max_mib": round(max(rss for _, rss in samples) / 2**20, 1), "rss_growth_pct": round(100 * growth, 2),
            "ok": counts["errors"] == 0 and growth < MAX_RSS_GROWTH}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2, help="closed-loop clients (default 2: the in-flight limit)")
    parser.add_argument("--warmup-seconds", type=float, default=120.0, help="load before the RSS baseline")
    parser.add_argument("--sample-seconds", type=float, default=15.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with AtelierServer(env={"ATELIER_MAX_INFLIGHT": str(max(args.clients, 2))}) as server:
        result = asyncio.run(soak(server, args))
    log.info(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
