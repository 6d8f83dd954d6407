"""What progress streaming costs: served diffusion throughput at concurrency 32 for plain JSON answers,
streamed answers with progress events only (`preview_every: 0`) and streamed answers with a preview every 5
steps (`preview_every: 5`, each preview one VAE decode of the request's latents through the decoder's
batcher, encoded as a PNG in the encoder threads).

One server (the defaults) on 127.0.0.1; a warm-up, then `--repeats` rounds in which each mode runs a closed
loop of `--clients` clients for `--seconds` (modes interleaved, so drifts of a loaded machine fall on all of
them alike). Requests: `{"model": "diffusion", "class": i % 9, "seed": i, "steps": 30}`, one image each. Per
mode: images per second (median of the rounds and their spread), p50/p95 latency to the final image, p50
latency to the first event a client sees (streams only), and the decoder's rows per run over the whole
measurement (previews share runs with other requests' decodes).

    flock /tmp/atelier-bench.lock .venv/bin/python -m bench.streaming --seconds 20 --repeats 3 \
        --out bench/results/streaming.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from pathlib import Path

import httpx
import numpy as np

from bench.load import Answer, client
from harness.serving import AtelierServer, metric_value

log = logging.getLogger("bench.streaming")

MODES = {"plain": None, "stream, no previews": 0, "stream, preview every 5": 5}


def body(index: int, preview_every: int | None) -> dict:
    request = {"model": "diffusion", "class": index % 9, "seed": index, "steps": 30}
    return request if preview_every is None else {**request, "stream": True, "preview_every": preview_every}


async def send(http: httpx.AsyncClient, url: str, request: dict, origin: float) -> tuple[Answer, float | None]:
    """(the answer, seconds to its first event: None for a plain request)."""
    started = time.perf_counter()
    first = None
    status = images = 0
    try:
        if not request.get("stream"):
            response = await http.post(url, json=request)
            status = response.status_code
            images = len(response.json()["images"]) if status == 200 else 0
        else:
            async with http.stream("POST", url, json=request) as response:
                status, event = response.status_code, None
                async for line in response.aiter_lines():
                    first = first if first is not None else time.perf_counter() - started
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "result":
                        images = len(json.loads(line[6:])["images"])
                    elif event == "error":
                        status = 0
            status = status if images else 0
    except (httpx.HTTPError, ValueError):
        status, images = 0, 0
    return Answer(started - origin, time.perf_counter() - started, status, images), first


async def closed_loop(url: str, preview_every: int | None, clients: int, seconds: float) -> dict:
    answers, firsts, issued = [], [], 0
    async with client(clients, 120.0) as http:
        origin = time.perf_counter()

        async def user() -> None:
            nonlocal issued
            while time.perf_counter() - origin < seconds:
                issued += 1
                answer, first = await send(http, url, body(issued, preview_every), origin)
                answers.append(answer)
                if first is not None:
                    firsts.append(first)

        await asyncio.gather(*(user() for _ in range(clients)))
    done = [a for a in answers if a.status == 200 and a.started + a.seconds <= seconds]
    latencies = [a.seconds for a in answers if a.status == 200]
    return {"images_per_s": sum(a.images for a in done) / seconds, "errors": sum(a.status != 200 for a in answers),
            "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95)),
            "first_event_p50_s": float(np.percentile(firsts, 50)) if firsts else None}


def decoder_rows(server: AtelierServer) -> tuple[float, float]:
    text = server.metrics()
    return (metric_value(text, "atelier_batch_rows_sum", function="vae.decode"),
            metric_value(text, "atelier_batch_rows_count", function="vae.decode"))


def measure(args: argparse.Namespace) -> dict:
    rounds: dict[str, list[dict]] = {mode: [] for mode in MODES}
    decoder: dict[str, list[float]] = {mode: [0.0, 0.0] for mode in MODES}
    with AtelierServer() as server:
        url = server.url + "/v1/generate"
        asyncio.run(closed_loop(url, 5, args.clients, args.warmup))
        for repeat in range(args.repeats):
            for mode, preview_every in MODES.items():
                rows0, runs0 = decoder_rows(server)
                rounds[mode].append(asyncio.run(closed_loop(url, preview_every, args.clients, args.seconds)))
                rows1, runs1 = decoder_rows(server)
                decoder[mode][0] += rows1 - rows0
                decoder[mode][1] += runs1 - runs0
                log.info("round %d %s: %s", repeat, mode, rounds[mode][-1])
    summary = {}
    for mode, results in rounds.items():
        rates = [r["images_per_s"] for r in results]
        summary[mode] = {
            "images_per_s": round(statistics.median(rates), 2), "spread": round(max(rates) - min(rates), 2),
            "p50_s": round(statistics.median(r["p50_s"] for r in results), 3),
            "p95_s": round(statistics.median(r["p95_s"] for r in results), 3),
            "first_event_p50_s": (round(statistics.median(r["first_event_p50_s"] for r in results), 3)
                                  if results[0]["first_event_p50_s"] is not None else None),
            "errors": sum(r["errors"] for r in results),
            "decoder_rows_per_run": round(decoder[mode][0] / max(decoder[mode][1], 1), 2)}
    return {"clients": args.clients, "seconds": args.seconds, "repeats": args.repeats, "modes": summary,
            "rounds": rounds}


def table(result: dict) -> str:
    lines = ["| mode | img/s (spread) | p50 s | p95 s | first event p50 s | decoder rows/run | errors |",
             "|---|---|---|---|---|---|---|"]
    for mode, row in result["modes"].items():
        first = "-" if row["first_event_p50_s"] is None else f"{row['first_event_p50_s']:.3f}"
        lines.append(f"| {mode} | {row['images_per_s']:.2f} ({row['spread']:.2f}) | {row['p50_s']:.2f} | "
                     f"{row['p95_s']:.2f} | {first} | {row['decoder_rows_per_run']:.2f} | {row['errors']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    result = measure(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
