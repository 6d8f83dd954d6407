"""The load generator: bounded async HTTP load against 127.0.0.1, closed loop or Poisson open loop.

Closed loop: `concurrency` clients each send a request, wait for its answer and send the next,
for `warmup_s + duration_s`; throughput counts the answers that arrive inside the measured window
(after the warm-up, so queues have filled), latency percentiles use the requests that started in
it. Open loop: requests leave at fixed arrival times (a Poisson process drawn from a seed, so two
servers get the identical sequence) whatever the server does; throughput is images over the time
from the first arrival to the last answer. Both stop issuing at their bound and wait (bounded) for
what is in flight, so the next measurement starts on an idle server.

    .venv/bin/python -c "from bench.load import poisson_arrivals; print(poisson_arrivals(2.0, 5, seed=0))"
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

Body = dict


@dataclass(frozen=True)
class Answer:
    started: float  # seconds since the load began
    seconds: float  # latency
    status: int  # HTTP status, 0 for a transport error or timeout
    images: int  # images in the answer (0 unless 200)


@dataclass
class LoadResult:
    answers: list[Answer] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 0.0)  # measured interval, seconds since the load began

    @property
    def measured(self) -> list[Answer]:
        """Answers that completed inside the window (throughput)."""
        start, end = self.window
        return [a for a in self.answers if start <= a.started + a.seconds <= end]

    def summary(self) -> dict:
        start, end = self.window
        done = [a for a in self.measured if a.status == 200]
        started_inside = [a.seconds for a in self.answers if start <= a.started <= end and a.status == 200]
        errors = sum(1 for a in self.answers if a.status != 200)
        latencies = np.array(started_inside or [np.nan])
        return {
            "images_per_s": sum(a.images for a in done) / max(end - start, 1e-9),
            "requests": len(done),
            "errors": errors,
            "p50_s": float(np.percentile(latencies, 50)),
            "p95_s": float(np.percentile(latencies, 95)),
            "p99_s": float(np.percentile(latencies, 99)),
            "window_s": end - start,
        }


def poisson_arrivals(rate_per_s: float, count: int, seed: int) -> np.ndarray:
    """`count` arrival times (seconds from 0) of a Poisson process, from its own PCG64 stream."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.cumsum(rng.exponential(1.0 / rate_per_s, count))


async def _send(client: httpx.AsyncClient, url: str, body: Body, origin: float) -> Answer:
    started = time.perf_counter()
    try:
        response = await client.post(url, json=body)
        status = response.status_code
        images = len(response.json().get("images", [])) if status == 200 else 0
    except (httpx.HTTPError, ValueError):
        status, images = 0, 0
    return Answer(started - origin, time.perf_counter() - started, status, images)


def client(connections: int, timeout_s: float, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """The load generators' HTTP client: one pooled connection per concurrent request (a shared
    connection would serialise them)."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, timeout=timeout_s, headers=headers)


async def closed_loop(url: str, make_body: Callable[[int], Body], concurrency: int, duration_s: float,
                      warmup_s: float, timeout_s: float = 120.0) -> LoadResult:
    """`concurrency` clients in lock-step request/answer loops; `make_body(i)` builds request i."""
    result = LoadResult(window=(warmup_s, warmup_s + duration_s))
    issued = 0
    async with client(concurrency, timeout_s) as http:
        origin = time.perf_counter()

        async def user() -> None:
            nonlocal issued
            while time.perf_counter() - origin < warmup_s + duration_s:
                issued += 1
                result.answers.append(await _send(http, url, make_body(issued), origin))

        await asyncio.wait_for(asyncio.gather(*(user() for _ in range(concurrency))),
                               warmup_s + duration_s + timeout_s)
    return result


async def open_loop(url: str, bodies: list[Body], arrivals: np.ndarray, timeout_s: float = 300.0) -> LoadResult:
    """Send bodies[i] at arrivals[i] seconds, never waiting for answers; the window ends at the last
    answer, so a server that falls behind shows a longer window and a lower throughput."""
    async with client(len(bodies), timeout_s) as http:
        origin = time.perf_counter()

        async def arrive(body: Body, at: float) -> Answer:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - origin)))
            return await _send(http, url, body, origin)

        answers = await asyncio.wait_for(
            asyncio.gather(*(arrive(body, at) for body, at in zip(bodies, arrivals))), arrivals[-1] + timeout_s)
    last = max(a.started + a.seconds for a in answers)
    return LoadResult(answers=list(answers), window=(float(arrivals[0]), last))
