"""Overload: offer a served Atelier several times its measured capacity and check admission by
predicted wait (service/admission.py).

Three phases against one server (started here on 127.0.0.1 with its defaults unless --url is given):
1. unloaded: one request at a time, `--unloaded` requests; their p95 is the request's own service
   time (measured again after phase 3; the larger counts);
2. capacity: a closed loop of `--clients` clients for `--capacity-seconds`; capacity = answered
   requests per second;
3. overload: an open loop at `--factor` x capacity for `--seconds`. Requests leave on schedule
   whatever the server does; each gets a 60 s client timeout, so a hang counts as status 0.
Pass: the server never dies and answers nothing but 200 and 429; every 429 has a Retry-After; the
Retry-After of at least 90 % of refusals is within 2x of the wait that came true (the time until
every request admitted before the refusal had finished); and the admitted requests' p95 is at most
the admission budget plus their own service time. Prints one JSON report; exits 1 on a miss.

    BENTOML_DO_NOT_TRACK=True .venv/bin/python -m bench.overload --seconds 30 --factor 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass

import httpx
import numpy as np

from bench import load
from harness.serving import AtelierServer, metric_value
from service.config import Config

log = logging.getLogger("bench.overload")

# The default request of /v1/generate: the latency a user of the JSON API sees.
BODY = {"model": "diffusion", "prompt": "a red heart", "steps": 30}
CLIENT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Outcome:
    status: int  # 0: transport error or client timeout
    seconds: float
    retry_after: str | None
    sent: float = 0.0  # time.perf_counter() when it left


async def send(client: httpx.AsyncClient, url: str, seed: int) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post(url + "/v1/generate", json={**BODY, "seed": seed})
        return Outcome(response.status_code, time.perf_counter() - started, response.headers.get("retry-after"),
                       started)
    except httpx.HTTPError:
        return Outcome(0, time.perf_counter() - started, None, started)


async def unloaded(url: str, count: int, headers: dict[str, str] | None = None) -> list[Outcome]:
    async with load.client(1, CLIENT_TIMEOUT_S, headers) as http:
        return [await send(http, url, seed) for seed in range(count)]


async def closed_loop(url: str, clients: int, seconds: float,
                      headers: dict[str, str] | None = None) -> tuple[float, list[Outcome]]:
    """Requests per second with `clients` always waiting on an answer."""
    outcomes: list[Outcome] = []
    deadline = time.perf_counter() + seconds

    async def user(index: int) -> None:
        seed = index * 100_000
        while time.perf_counter() < deadline:
            outcomes.append(await send(http, url, seed))
            seed += 1

    async with load.client(clients, CLIENT_TIMEOUT_S, headers) as http:
        started = time.perf_counter()
        await asyncio.gather(*(user(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return sum(o.status == 200 for o in outcomes) / elapsed, outcomes


async def open_loop(url: str, rate: float, seconds: float, headers: dict[str, str] | None = None) -> list[Outcome]:
    """Requests leave every 1/rate s for `seconds`, answered or not (the overload a crowd makes)."""
    count = int(rate * seconds)
    async with load.client(count, CLIENT_TIMEOUT_S, headers) as http:
        started = time.perf_counter()
        tasks = []
        for index in range(count):
            await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(send(http, url, 1_000_000 + index)))
        return list(await asyncio.gather(*tasks))


def p95(outcomes: list[Outcome]) -> float:
    seconds = [o.seconds for o in outcomes if o.status == 200]
    return float(np.percentile(seconds, 95)) if seconds else float("nan")


def reference_p95(result: dict) -> float:
    """The unloaded p95, measured before and after the overload: the larger, so that other work on a
    shared machine, which slows every phase it overlaps, does not decide the verdict."""
    return max(result["unloaded_p95_s"], result["unloaded_after_p95_s"])


def realised_waits(overload: list[Outcome]) -> list[tuple[float, float]]:
    """(Retry-After, the wait that came true) per refusal: the time from the refusal until every request
    admitted before it had been answered, which is the work its prediction priced."""
    admitted = sorted((o.sent, o.sent + o.seconds) for o in overload if o.status == 200)
    pairs, latest, index = [], 0.0, 0
    for refusal in sorted((o for o in overload if o.status == 429 and o.retry_after), key=lambda o: o.sent):
        decided = refusal.sent + refusal.seconds
        while index < len(admitted) and admitted[index][0] <= refusal.sent:
            latest = max(latest, admitted[index][1])
            index += 1
        if latest > decided:
            pairs.append((float(refusal.retry_after), latest - decided))
    return pairs


def report(unloaded_outcomes: list[Outcome], unloaded_after: list[Outcome], capacity: float, factor: float,
           overload: list[Outcome], alive: bool, metrics_before: str, metrics_after: str, budget_s: float) -> dict:
    admitted = [o for o in overload if o.status == 200]
    refused = [o for o in overload if o.status in (429, 503)]
    other = [o for o in overload if o.status not in (200, 429)]
    counted = (metric_value(metrics_after, "atelier_requests_total", route="/v1/generate", status="429")
               - metric_value(metrics_before, "atelier_requests_total", route="/v1/generate", status="429"))
    pairs = realised_waits(overload)
    ratios = np.array([given / came_true for given, came_true in pairs]) if pairs else np.array([np.nan])
    result = {
        "unloaded_p95_s": round(p95(unloaded_outcomes), 3),
        "unloaded_after_p95_s": round(p95(unloaded_after), 3),
        "capacity_rps": round(capacity, 2),
        "offered_rps": round(capacity * factor, 2),
        "budget_s": budget_s,
        "sent": len(overload),
        "admitted": len(admitted),
        "refused": len(refused),
        "refused_without_retry_after": sum(o.retry_after is None for o in refused),
        "other_statuses": sorted({o.status for o in other}),
        "admitted_p95_s": round(p95(overload), 3),
        "admitted_p95_bound_s": round(budget_s + reference_p95({"unloaded_p95_s": p95(unloaded_outcomes),
                                                                 "unloaded_after_p95_s": p95(unloaded_after)}), 3),
        "refused_p95_s": round(float(np.percentile([o.seconds for o in refused], 95)), 3) if refused else None,
        "retry_after_vs_realised_wait": {
            "refusals_compared": len(pairs),
            "median_ratio": round(float(np.median(ratios)), 2),
            "p10_ratio": round(float(np.percentile(ratios, 10)), 2),
            "p90_ratio": round(float(np.percentile(ratios, 90)), 2),
            "within_2x": round(float(np.mean((ratios >= 0.5) & (ratios <= 2.0))), 3),
        },
        "metrics_429_counted": counted,
        "server_alive": alive,
    }
    result["ok"] = bool(alive and not other and refused and result["refused_without_retry_after"] == 0
                        and result["retry_after_vs_realised_wait"]["within_2x"] >= 0.9
                        and result["admitted_p95_s"] <= result["admitted_p95_bound_s"])
    return result


async def measure(url: str, args: argparse.Namespace, is_alive, headers: dict[str, str] | None = None) -> dict:
    """The three phases against `url`; `is_alive()` says whether the server process still runs."""
    first = await unloaded(url, args.unloaded, headers)
    capacity, _ = await closed_loop(url, args.clients, args.capacity_seconds, headers)
    before = httpx.get(url + "/metrics", timeout=10).text
    overload = await open_loop(url, capacity * args.factor, args.seconds, headers)
    alive = is_alive() and httpx.get(url + "/livez", timeout=5).status_code == 200
    after = httpx.get(url + "/metrics", timeout=10).text
    last = await unloaded(url, args.unloaded, headers)
    return report(first, last, capacity, args.factor, overload, alive, before, after, args.budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server; default: start one with its defaults")
    parser.add_argument("--budget", type=float, default=Config().max_queue_seconds,
                        help="the server's ATELIER_MAX_QUEUE_SECONDS (default: its default)")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients that measure capacity")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--unloaded", type=int, default=20)
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the report
    if args.url:
        result = asyncio.run(measure(args.url, args, lambda: True))
    else:
        with AtelierServer(env={"ATELIER_MAX_QUEUE_SECONDS": str(args.budget)}) as server:
            result = asyncio.run(measure(server.url, args, lambda: server.process.poll() is None))
    log.info(json.dumps({"factor": args.factor, "seconds": args.seconds, **result}))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
