"""Admission and priorities under ordinary load and under a batch flood, against one served Atelier.

Phases (one server on 127.0.0.1, started here with its defaults unless --url is given):
1. burst: `--burst` concurrent one-image dcgan requests (a new user's first try);
2. mixed: a closed loop of `--users` users sending diffusion requests of 10, 25 or 50 steps (guidance 3,
   one image) for `--seconds`; meanwhile /metrics is sampled every 100 ms for the two admission gauges,
   whose peak is the queue this ordinary load builds (what the budget, ATELIER_MAX_QUEUE_SECONDS, must
   stay above so that it never refuses it);
3. flood: the interactive request (diffusion, 25 steps, one image) one at a time, unloaded and then
   beside `--flood` closed-loop batch clients (`priority: batch`, 8 images of 25 steps each), which
   saturate the server; interactive p95 under the flood ÷ unloaded, and the batch images done.
Pass: no refusal in phases 1-2, nothing but 200 (or 429 for batch) in phase 3, interactive p95 under
the flood at most 2x unloaded, and at least one batch request done. Prints one JSON report.

    BENTOML_DO_NOT_TRACK=True .venv/bin/python -m bench.admission
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

import httpx
import numpy as np

from bench import load
from harness.serving import AtelierServer, metric_value

log = logging.getLogger("bench.admission")

MIXED_STEPS = (10, 25, 50)
INTERACTIVE = {"model": "diffusion", "class": 3, "steps": 25}
BATCH = {"model": "diffusion", "class": 5, "steps": 25, "n": 8, "priority": "batch"}
TIMEOUT_S = 120.0


async def post(http: httpx.AsyncClient, url: str, body: dict) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        status = (await http.post(url + "/v1/generate", json=body)).status_code
    except httpx.HTTPError:
        status = 0
    return status, time.perf_counter() - started


def percentile(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(seconds, q)), 3) if seconds else float("nan")


async def burst(url: str, count: int) -> dict:
    async with load.client(count, TIMEOUT_S) as http:
        answers = await asyncio.gather(*(post(http, url, {"model": "dcgan", "class": i % 9, "seed": i})
                                         for i in range(count)))
    statuses = [status for status, _ in answers]
    return {"requests": count, "ok": statuses.count(200), "refused": statuses.count(429),
            "other": sorted({s for s in statuses if s not in (200, 429)}),
            "p95_s": percentile([s for status, s in answers if status == 200], 95)}


async def sample_gauges(url: str, stop: asyncio.Event) -> dict[str, float]:
    peaks = {"atelier_predicted_wait_seconds": 0.0, "atelier_pending_work_seconds": 0.0}
    async with httpx.AsyncClient(timeout=10) as http:
        while not stop.is_set():
            text = (await http.get(url + "/metrics")).text
            for name in peaks:
                peaks[name] = max(peaks[name], metric_value(text, name))
            await asyncio.sleep(0.1)
    return {name: round(value, 3) for name, value in peaks.items()}


async def mixed(url: str, users: int, seconds: float) -> dict:
    rng = np.random.Generator(np.random.PCG64(7))
    statuses: list[int] = []
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def user(index: int) -> None:
        sent = 0
        while time.perf_counter() < deadline:
            body = {"model": "diffusion", "class": int(rng.integers(9)), "seed": index * 10_000 + sent,
                    "steps": int(rng.choice(MIXED_STEPS)), "guidance": 3.0}
            status, took = await post(http, url, body)
            statuses.append(status)
            latencies.append(took)
            sent += 1

    stop = asyncio.Event()
    async with load.client(users, TIMEOUT_S) as http:
        sampler = asyncio.create_task(sample_gauges(url, stop))
        await asyncio.gather(*(user(i) for i in range(users)))
        stop.set()
        peaks = await sampler
    return {"users": users, "seconds": seconds, "requests": len(statuses), "ok": statuses.count(200),
            "refused": statuses.count(429), "other": sorted({s for s in statuses if s not in (200, 429)}),
            "p95_s": percentile(latencies, 95), "peak_gauges_s": peaks}


async def interactive_alone(url: str, count: int) -> list[tuple[int, float]]:
    async with load.client(1, TIMEOUT_S) as http:
        return [await post(http, url, {**INTERACTIVE, "seed": seed}) for seed in range(count)]


async def flood(url: str, batch_clients: int, interactive_count: int) -> dict:
    unloaded = await interactive_alone(url, interactive_count)
    stop = asyncio.Event()
    batch_answers: list[tuple[int, float]] = []

    async def batch_user(index: int) -> None:
        seed = 50_000 + index * 1000
        while not stop.is_set():
            batch_answers.append(await post(http, url, {**BATCH, "seed": seed}))
            seed += 1

    async with load.client(batch_clients, TIMEOUT_S) as http:
        users = [asyncio.create_task(batch_user(i)) for i in range(batch_clients)]
        await asyncio.sleep(3.0)  # the flood builds up before the interactive user starts
        loaded = await interactive_alone(url, interactive_count)
        stop.set()
        await asyncio.gather(*users)
    unloaded_p95 = percentile([s for status, s in unloaded if status == 200], 95)
    loaded_p95 = percentile([s for status, s in loaded if status == 200], 95)
    batch_statuses = [status for status, _ in batch_answers]
    return {"batch_clients": batch_clients, "interactive_requests": interactive_count,
            "interactive_unloaded_p95_s": unloaded_p95, "interactive_flooded_p95_s": loaded_p95,
            "interactive_p95_ratio": round(loaded_p95 / unloaded_p95, 2),
            "interactive_other": sorted({s for s, _ in unloaded + loaded if s != 200}),
            "batch_ok": batch_statuses.count(200), "batch_refused": batch_statuses.count(429),
            "batch_other": sorted({s for s in batch_statuses if s not in (200, 429)}),
            "batch_p95_s": percentile([s for status, s in batch_answers if status == 200], 95)}


async def measure(url: str, args: argparse.Namespace) -> dict:
    result = {"burst": await burst(url, args.burst), "mixed": await mixed(url, args.users, args.seconds),
              "flood": await flood(url, args.flood, args.interactive)}
    described = httpx.get(url + "/v1/models", timeout=10).json()
    result["settings"] = {**described["batching"], **described["admission"]}
    result["cost_ms"] = {function: stats["cost_ms"] for function, stats in described["engine"].items()}
    burst_, mixed_, flood_ = result["burst"], result["mixed"], result["flood"]
    result["ok"] = bool(burst_["ok"] == burst_["requests"] and mixed_["refused"] == 0 and not mixed_["other"]
                        and not flood_["interactive_other"] and not flood_["batch_other"]
                        and flood_["interactive_p95_ratio"] <= 2.0 and flood_["batch_ok"] > 0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server; default: start one with its defaults")
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--flood", type=int, default=8, help="closed-loop batch clients (8 images each)")
    parser.add_argument("--interactive", type=int, default=20, help="interactive requests, unloaded and flooded")
    parser.add_argument("--set", action="append", default=[], metavar="ATELIER_X=VALUE",
                        help="a setting for the server started here (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.url:
        result = asyncio.run(measure(args.url, args))
    else:
        with AtelierServer(env=dict(setting.split("=", 1) for setting in args.set)) as server:
            result = asyncio.run(measure(server.url, args))
    log.info(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
