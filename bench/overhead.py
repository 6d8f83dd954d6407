"""Per-request overhead: the server CPU one small HTTP request costs outside its ONNX runs.

One server on 127.0.0.1 with one onnxruntime thread (`ATELIER_INTRA_OP_THREADS=1`), so the CPU time
inside `Session.run` is the wall time of the runs (`atelier_batch_seconds_sum`, summed over the model
functions). A warm-up, then `--repeats` windows of a closed loop of `--clients` clients sending
one-image dcgan requests (`POST /v1/generate {"model": "dcgan", "class": i % 9, "seed": i}`) for
`--seconds`; per window, the worker processes' CPU time (user + system, from psutil) and /metrics are
read before and after. Per request: the worker's CPU, the CPU inside runs, and the rest (the HTTP
path: parsing, validation, admission, metrics, PNG encoding, logging, the event loop), in
microseconds, with requests per second; the median over windows and their spread (max - min).
The event loop's own CPU (the worker's main thread) is reported beside it: it does not depend on
the runs' wall time, which other work on the cores (the clients, here) stretches.

`--profile out.svg` (flamegraph), `.txt` (collapsed stacks, one line per stack) or `.json`
(speedscope) adds one more window with `py-spy record` attached to the worker (not counted in the
figures, since sampling costs CPU too); py-spy lives in a venv of its own:

    python3.11 -m venv .cache/pyspy-venv && .cache/pyspy-venv/bin/pip install py-spy==0.4.3
    BENTOML_DO_NOT_TRACK=True .venv/bin/python -m bench.overhead --seconds 20 --profile .cache/overhead.txt
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import time
from pathlib import Path

import psutil

from bench.load import closed_loop
from harness.serving import ROOT, AtelierServer, metric_value

log = logging.getLogger("bench.overhead")

PYSPY = ROOT / ".cache" / "pyspy-venv" / "bin" / "py-spy"
PROFILE_FORMATS = {".svg": "flamegraph", ".txt": "raw", ".json": "speedscope"}


def body(index: int) -> dict:
    return {"model": "dcgan", "class": index % 9, "seed": index}


def workers(server: AtelierServer) -> list[psutil.Process]:
    """The worker processes of `bentoml serve` (one with the default workers=1): the HTTP path runs there."""
    return psutil.Process(server.process.pid).children()


def cpu_seconds(processes: list[psutil.Process]) -> tuple[float, float]:
    """(CPU seconds of the processes, of their main threads alone: the event loop that serves HTTP)."""
    total = main = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
        main += sum(t.user_time + t.system_time for t in process.threads() if t.id == process.pid)
    return total, main


def snapshot(server: AtelierServer) -> tuple[float, float, float, float]:
    """(wall clock, worker CPU seconds, its event loop's, seconds inside ONNX runs), the /metrics scrape
    read last so that its own cost falls outside the window."""
    cpu, loop = cpu_seconds(workers(server))
    wall = time.perf_counter()
    runs = metric_value(server.metrics(), "atelier_batch_seconds_sum")
    return wall, cpu, loop, runs


def window(server: AtelierServer, clients: int, seconds: float) -> dict:
    wall0, cpu0, loop0, runs0 = snapshot(server)
    result = asyncio.run(closed_loop(server.url + "/v1/generate", body, clients, seconds, warmup_s=0.0))
    wall1, cpu1, loop1, runs1 = snapshot(server)
    ok = sum(answer.status == 200 for answer in result.answers)
    per_request = 1e6 / max(ok, 1)
    return {"requests": ok, "errors": len(result.answers) - ok, "requests_per_s": round(ok / (wall1 - wall0), 1),
            "cpu_us": round((cpu1 - cpu0) * per_request, 1), "runs_us": round((runs1 - runs0) * per_request, 1),
            "outside_runs_us": round((cpu1 - cpu0 - (runs1 - runs0)) * per_request, 1),
            "event_loop_us": round((loop1 - loop0) * per_request, 1)}


def summarise(windows: list[dict]) -> dict:
    """Median and spread (max - min) of each per-request figure over the windows."""
    keys = ("outside_runs_us", "event_loop_us", "cpu_us", "runs_us", "requests_per_s")
    return {key: {"median": round(statistics.median(w[key] for w in windows), 1),
                  "spread": round(max(w[key] for w in windows) - min(w[key] for w in windows), 1)} for key in keys}


def profile(server: AtelierServer, clients: int, seconds: float, out: Path) -> None:
    """One more window with py-spy sampling the worker (all threads, without pausing it)."""
    (worker,) = workers(server)
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([str(PYSPY), "record", "--pid", str(worker.pid), "--duration", str(int(seconds)),
                            "--rate", "250", "--nonblocking", "--threads", "--format", PROFILE_FORMATS[out.suffix],
                            "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    asyncio.run(closed_loop(server.url + "/v1/generate", body, clients, seconds, warmup_s=0.0))
    _, errors = spy.communicate(timeout=60)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')[-2000:]}")
    log.info("profile: %s", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="also record a py-spy profile: .svg, .txt or .json")
    parser.add_argument("--set", action="append", default=[], metavar="ATELIER_X=VALUE",
                        help="another setting for the server started here (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.profile is not None and args.profile.suffix not in PROFILE_FORMATS:
        parser.error(f"--profile must end in one of {', '.join(PROFILE_FORMATS)}")
    env = {"ATELIER_INTRA_OP_THREADS": "1", **dict(setting.split("=", 1) for setting in args.set)}
    with AtelierServer(env=env) as server:
        asyncio.run(closed_loop(server.url + "/v1/generate", body, args.clients, args.warmup, warmup_s=0.0))
        windows = [window(server, args.clients, args.seconds) for _ in range(args.repeats)]
        if args.profile is not None:
            profile(server, args.clients, args.seconds, args.profile)
    log.info(json.dumps({"clients": args.clients, "seconds": args.seconds, "settings": env,
                         "per_request": summarise(windows), "windows": windows}))


if __name__ == "__main__":
    main()
