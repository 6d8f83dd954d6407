"""The comparisons: every variant of a comparison measured in one run, repeated, ratios per repetition.

Servers (all on 127.0.0.1, started once, stopped at the end): Atelier with its defaults, Atelier
with batching off (`ATELIER_MAX_BATCH=1`), Atelier with request-level diffusion batching, and
the naive torch server. Within a repetition every variant of a point runs back to back, in an
order rotated by repetition (no variant always goes first), so a ratio compares two measurements
taken seconds apart on the same machine; the spread over repetitions shows the noise.

1. ceiling: in-process onnxruntime sweep over batch sizes, then the best batch again each repetition;
2. closed loop (dcgan; diffusion at `DIFFUSION_STEPS` steps) at each concurrency: Atelier, batching
   off, naive;
3. mixed diffusion (steps 10/25/50, Poisson arrivals from one seed per repetition): step-level vs
   request-level batching;
   the step-level variants differ in how they order the queue (ATELIER_QUEUE_ORDER: age, remaining,
   arrival);
4. simulated accelerator: the same mixed workload in a closed loop on two servers whose ONNX runs are
   replaced by sleeps of fixed + per_row x rows (fitted from docs/perf/gpu_h100.json), step-level vs
   request-level: the scheduler, batcher and pipelines are real, the device is a cost model;
5. admission on the defaults (bench/admission.py): a 64-request burst, a 32-user mixed closed loop and
   a batch flood beside one interactive user;
6. tuning (full scale only): ORT threads, max_batch and gather_ms, one factor at a time, dcgan at 32.

    .venv/bin/python -m bench quick       # or: full, steps
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import admission, ceiling, load, utilisation
from bench.naive_server import NaiveServer
from harness.serving import AtelierServer, free_port

log = logging.getLogger(__name__)

DIFFUSION_STEPS = 10  # closed-loop diffusion: few steps, so a point costs seconds, not minutes
MIXED_STEPS = (10, 25, 50)
GUIDANCE = 3.0  # the service's default: two denoiser rows per image
OFFERED_FRACTION = 0.8  # mixed load offered at this fraction of the in-process ceiling (see offered_rate)
BATCHED_FUNCTIONS = ("dcgan.generate", "diffusion.denoise", "vae.decode")

# Server variants: name -> environment overrides (None = the naive torch server).
VARIANTS: dict[str, dict[str, str] | None] = {
    "atelier": {},
    "unbatched": {"ATELIER_MAX_BATCH": "1"},
    "naive": None,
    "request-level": {"ATELIER_DIFFUSION_BATCHING": "request"},
    "step-remaining": {"ATELIER_QUEUE_ORDER": "remaining"},
    "step-arrival": {"ATELIER_QUEUE_ORDER": "arrival"},
}
# The mixed comparison's servers and the mode each one is: "step" is the default (queue by request age).
MIXED_MODES = {"atelier": "step", "request-level": "request", "step-remaining": "step-remaining",
               "step-arrival": "step-arrival"}

# The simulated accelerator: a denoise run on the H100 (docs/perf/gpu_h100.json, cuda_fp32) costs
# fixed + per_row x rows, fitted below; the simulation runs it SIM_TIME_SCALE times slower, so that this
# 2-core host's Python work per step (which a GPU host has cores to spare for) stays small beside the
# device time. Scaling both terms keeps their ratio, which is what decides step- vs request-level.
GPU_RESULTS = Path(__file__).resolve().parent.parent / "docs" / "perf" / "gpu_h100.json"
SIM_TIME_SCALE = 10.0
SIM_USERS = 32
# One factor at a time around the defaults (threads 0 = every core, max_batch 64, gather 0 ms).
TUNING: dict[str, dict[str, str]] = {
    "defaults": {},
    "threads-1": {"ATELIER_INTRA_OP_THREADS": "1"},
    "max-batch-16": {"ATELIER_MAX_BATCH": "16"},
    "max-batch-32": {"ATELIER_MAX_BATCH": "32"},
    "gather-2ms": {"ATELIER_GATHER_MS": "2"},
    "ort-spinning": {"ATELIER_ORT_SPINNING": "true"},
}


@dataclass(frozen=True)
class Scale:
    name: str
    repetitions: int
    concurrencies: tuple[int, ...]
    gan_window_s: float
    gan_warmup_s: float
    diffusion_window_s: float
    diffusion_warmup_s: float
    ceiling_batches: tuple[int, ...]
    ceiling_seconds: float
    mixed_requests: int
    tuning: bool
    sim_window_s: float = 6.0
    admission_seconds: float = 20.0


QUICK = Scale("quick", 3, (32,), 3.0, 1.0, 5.0, 2.0, (1, 8, 32, 64), 0.4, 150, False)
FULL = Scale("full", 3, (1, 8, 32, 64), 6.0, 1.5, 10.0, 3.0, (1, 2, 4, 8, 16, 32, 64), 1.0, 300, True, 10.0, 30.0)
STEPS = Scale("steps", 3, (), 0, 0, 0, 0, (8, 16, 32), 0.4, 150, False)
# tests/test_bench.py: the whole harness end to end in about a minute; its numbers mean nothing
SMOKE = Scale("smoke", 1, (32,), 1.0, 0.3, 4.0, 1.0, (1, 8), 0.1, 6, False, 2.0, 3.0)
SCALES = {scale.name: scale for scale in (QUICK, FULL, STEPS, SMOKE)}


@dataclass
class Target:
    """A running server under test."""

    name: str
    url: str
    atelier: AtelierServer | None  # None for the naive server (no /metrics)

    def batch_histograms(self) -> dict[str, dict[str, float]]:
        return batch_histograms(self.atelier.metrics()) if self.atelier else {}


def batch_histograms(metrics_text: str) -> dict[str, dict[str, float]]:
    """`atelier_batch_rows` per batched function: {function: {le: cumulative count, "sum": rows,
    "count": runs}}, from a Prometheus text page."""
    pattern = re.compile(r'^atelier_batch_rows_(bucket|sum|count)\{function="([^"]+)"(?:,le="([^"]+)")?\} (\S+)$')
    found: dict[str, dict[str, float]] = {}
    for line in metrics_text.splitlines():
        match = pattern.match(line)
        if match and match[2] in BATCHED_FUNCTIONS:
            key = match[3] if match[1] == "bucket" else match[1]
            found.setdefault(match[2], {})[key] = found.get(match[2], {}).get(key, 0.0) + float(match[4])
    return found


def histogram_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    return {function: {key: value - before.get(function, {}).get(key, 0.0) for key, value in series.items()}
            for function, series in after.items()}


@contextlib.contextmanager
def running(variants: dict[str, dict[str, str] | None]) -> Iterator[dict[str, Target]]:
    """Start every variant (one after another: start-up is CPU-bound), warm it, stop them all on exit.
    Each Atelier has a BentoML home of its own (harness/serving.py), so their /metrics stay apart."""
    with contextlib.ExitStack() as stack:
        targets = {}
        for name, env in variants.items():
            started = time.perf_counter()
            if env is None:
                server = stack.enter_context(NaiveServer(free_port()))
                targets[name] = Target(name, server.url, None)
            else:
                # throughput past the latency knee is what is measured here, so no admission budget
                server = stack.enter_context(AtelierServer(env={"ATELIER_MAX_QUEUE_SECONDS": "600", **env}))
                targets[name] = Target(name, server.url, server)
            warm(targets[name])
            log.info("server %-14s up and warm in %4.1f s at %s %s", name, time.perf_counter() - started,
                     server.url, env or "")
        yield targets


def warm(target: Target) -> None:
    """A short burst at many batch sizes: onnxruntime's first run of each new shape is slow, and
    whichever server ran first would otherwise pay it inside a measurement."""
    url = target.url + "/v1/generate"
    asyncio.run(load.closed_loop(url, gan_body, 64, duration_s=1.0, warmup_s=0.0))
    asyncio.run(load.closed_loop(url, diffusion_body, 32, duration_s=1.5, warmup_s=0.0))


def gan_body(i: int) -> dict:
    return {"model": "dcgan", "class": i % 9, "seed": i}


def diffusion_body(i: int) -> dict:
    return {"model": "diffusion", "class": i % 9, "seed": i, "steps": DIFFUSION_STEPS, "guidance": GUIDANCE}


def mixed_bodies(count: int, seed: int) -> list[dict]:
    rng = np.random.Generator(np.random.PCG64(seed))
    return [{"model": "diffusion", "class": int(rng.integers(9)), "seed": i, "guidance": GUIDANCE,
             "steps": int(rng.choice(MIXED_STEPS))} for i in range(count)]


def rotated(names: list[str], repetition: int) -> list[str]:
    shift = repetition % len(names)
    return names[shift:] + names[:shift]


def measure(target: Target, run: Callable[[], load.LoadResult]) -> dict:
    """One load run against one server, with the batch sizes it caused and the client's CPU use."""
    before, cpu, wall = target.batch_histograms(), time.process_time(), time.perf_counter()
    result = run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {**result.summary(), "client_cpu_share": cpu / wall,
            "batch_rows": histogram_delta(before, target.batch_histograms())}


def closed_point(target: Target, model: str, concurrency: int, scale: Scale) -> dict:
    window, warmup = ((scale.gan_window_s, scale.gan_warmup_s) if model == "dcgan"
                      else (scale.diffusion_window_s, scale.diffusion_warmup_s))
    body = gan_body if model == "dcgan" else diffusion_body
    point = measure(target, lambda: asyncio.run(
        load.closed_loop(target.url + "/v1/generate", body, concurrency, window, warmup)))
    log.info("%-9s c=%-3d %-10s %7.1f img/s  p50 %6.3f s  p95 %6.3f s  errors %d", model, concurrency,
             target.name, point["images_per_s"], point["p50_s"], point["p95_s"], point["errors"])
    return point


def ceiling_point(sessions, best: dict[str, int], scale: Scale) -> dict[str, float]:
    """The in-process ceiling at each model's best batch, re-measured inside the repetition."""
    return {"dcgan": ceiling.gan_images_per_s(sessions, best["dcgan"], scale.ceiling_seconds),
            "diffusion": ceiling.diffusion_images_per_s(sessions, best["diffusion"], DIFFUSION_STEPS,
                                                        scale.ceiling_seconds)}


def closed_comparisons(targets: dict[str, Target], sessions, best: dict[str, int], scale: Scale) -> list[dict]:
    """Every (model, concurrency) point for Atelier, batching off and naive, each repetition."""
    rows = []
    names = ["atelier", "unbatched", "naive"]
    for repetition in range(scale.repetitions):
        roof = ceiling_point(sessions, best, scale)
        log.info("repetition %d: ceiling dcgan %.1f img/s (batch %d), diffusion %.1f img/s (batch %d)",
                 repetition, roof["dcgan"], best["dcgan"], roof["diffusion"], best["diffusion"])
        for model in ("dcgan", "diffusion"):
            for concurrency in scale.concurrencies:
                for name in rotated(names, repetition):
                    point = closed_point(targets[name], model, concurrency, scale)
                    rows.append({"repetition": repetition, "model": model, "concurrency": concurrency,
                                 "variant": name, "ceiling_images_per_s": roof[model], **point})
    return rows


def offered_rate(sessions, seconds: float, batches: tuple[int, ...]) -> tuple[float, float]:
    """(offered images/s, in-process ceiling images/s) for the mixed workload's mean step count."""
    mean_steps = float(np.mean(MIXED_STEPS))
    roof = max(ceiling.diffusion_images_per_s(sessions, b, mean_steps, seconds) for b in batches if 2 * b <= 64)
    return OFFERED_FRACTION * roof, roof


def mixed_comparison(targets: dict[str, Target], rate: float, scale: Scale) -> list[dict]:
    """Step-level (each queue order) vs request-level on one Poisson arrival sequence per repetition."""
    rows = []
    for repetition in range(scale.repetitions):
        seed = 1000 + repetition
        arrivals = load.poisson_arrivals(rate, scale.mixed_requests, seed)
        bodies = mixed_bodies(scale.mixed_requests, seed)
        for name in rotated([name for name in MIXED_MODES if name in targets], repetition):
            target = targets[name]
            point = measure(target, lambda: asyncio.run(load.open_loop(target.url + "/v1/generate", bodies, arrivals)))
            mode = MIXED_MODES[name]
            log.info("mixed     rate %.2f/s %-14s %6.2f img/s  p50 %6.2f s  p95 %6.2f s  p99 %6.2f s  errors %d",
                     rate, mode, point["images_per_s"], point["p50_s"], point["p95_s"], point["p99_s"],
                     point["errors"])
            rows.append({"repetition": repetition, "mode": mode, "offered_per_s": rate, "seed": seed, **point})
    return rows


def simulated_cost(results: Path = GPU_RESULTS) -> dict[str, float]:
    """Least-squares fit of the H100's denoise run time, ms = fixed + per_row x rows, from rows/s at batch
    1, 16 and 64, and the simulated device's figures (SIM_TIME_SCALE times both)."""
    rows_per_s = json.loads(results.read_text())["variants"]["cuda_fp32"]["rows_per_s"]["diffusion.denoise"]
    rows = np.array([int(b) for b in rows_per_s], float)
    ms = np.array([int(b) / v * 1e3 for b, v in rows_per_s.items()])
    per_row, fixed = np.polyfit(rows, ms, 1)
    return {"gpu_fixed_ms": float(fixed), "gpu_per_row_ms": float(per_row), "time_scale": SIM_TIME_SCALE,
            "fixed_ms": float(fixed) * SIM_TIME_SCALE, "per_row_ms": float(per_row) * SIM_TIME_SCALE}


def simulated_comparison(scale: Scale) -> dict:
    """Step-level vs request-level on the simulated accelerator: SIM_USERS closed-loop users of the mixed
    workload (each repetition its own draw of step counts), both variants back to back."""
    cost = simulated_cost()
    env = {"ATELIER_SIMULATED_COST_MS": f"{cost['fixed_ms']:.4f},{cost['per_row_ms']:.5f}"}
    log.info("simulated accelerator: H100 fit fixed %.3f ms + %.5f ms/row, simulated x%g: %.2f ms + %.4f ms/row",
             cost["gpu_fixed_ms"], cost["gpu_per_row_ms"], SIM_TIME_SCALE, cost["fixed_ms"], cost["per_row_ms"])
    rows = []
    with running({"sim-step": env, "sim-request": {**env, "ATELIER_DIFFUSION_BATCHING": "request"}}) as targets:
        for repetition in range(scale.repetitions):
            bodies = mixed_bodies(4096, 2000 + repetition)
            for name in rotated(["sim-step", "sim-request"], repetition):
                target = targets[name]
                point = measure(target, lambda: asyncio.run(load.closed_loop(
                    target.url + "/v1/generate", lambda i: bodies[i % len(bodies)], SIM_USERS,
                    scale.sim_window_s, scale.sim_window_s / 3)))
                mode = name.removeprefix("sim-")
                log.info("simulated c=%d %-8s %6.2f img/s  p50 %6.2f s  p95 %6.2f s  errors %d", SIM_USERS, mode,
                         point["images_per_s"], point["p50_s"], point["p95_s"], point["errors"])
                rows.append({"repetition": repetition, "mode": mode, "users": SIM_USERS, **point})
    return {"cost": cost, "rows": rows}


def admission_on_defaults(scale: Scale) -> dict:
    """bench/admission.py against a server on its defaults (admission included)."""
    args = argparse.Namespace(burst=64, users=32, seconds=scale.admission_seconds, flood=8,
                              interactive=20 if scale.admission_seconds >= 20 else 5)
    with AtelierServer() as server:
        result = asyncio.run(admission.measure(server.url, args))
    log.info("admission: burst %s, mixed %s, flood %s", result["burst"], result["mixed"], result["flood"])
    return result


def tuning_sweep(scale: Scale) -> list[dict]:
    """dcgan at concurrency 32 on one server per configuration, all measured in each repetition."""
    rows = []
    with running(dict(TUNING)) as targets:
        for repetition in range(scale.repetitions):
            for name in rotated(list(TUNING), repetition):
                point = closed_point(targets[name], "dcgan", 32, scale)
                rows.append({"repetition": repetition, "config": name, "env": TUNING[name], **point})
    return rows


def utilisation_inputs(sessions, seconds: float) -> dict:
    """FLOPs per row of each graph, rows/s at batch 32 in process, and the GEMM peak."""
    return {"flops_per_row": utilisation.graph_flops(), "rows_per_s_at_32": ceiling.function_rows_per_s(
        sessions, 32, seconds), "gemm_peak_gflops": utilisation.gemm_peak_gflops()}


def ceiling_sweep(sessions, scale: Scale) -> tuple[dict, dict[str, int]]:
    sweep = ceiling.sweep(sessions, list(scale.ceiling_batches), DIFFUSION_STEPS, scale.ceiling_seconds)
    best = {model: max(points, key=points.get) for model, points in sweep.items()}
    for model, points in sweep.items():
        log.info("ceiling %-9s %s (best batch %d)", model,
                 "  ".join(f"{b}: {v:.1f}" for b, v in points.items()), best[model])
    return sweep, best


def run(scale: Scale) -> dict:
    """The whole suite at one scale; returns the raw results (JSON-ready)."""
    started, load_before = time.perf_counter(), os.getloadavg()
    sessions = ceiling.open_sessions()
    sweep, best = ceiling_sweep(sessions, scale)
    results: dict = {"scale": asdict(scale), "ceiling": {"sweep": sweep, "best_batch": best}}
    results["utilisation"] = utilisation_inputs(sessions, scale.ceiling_seconds)
    rate, mixed_roof = offered_rate(sessions, scale.ceiling_seconds, scale.ceiling_batches)
    results["mixed_ceiling_images_per_s"] = mixed_roof
    with running(VARIANTS) as targets:
        results["closed"] = closed_comparisons(targets, sessions, best, scale)
        results["mixed"] = mixed_comparison(targets, rate, scale)
    results["simulated"] = simulated_comparison(scale)
    results["admission"] = admission_on_defaults(scale)
    results["tuning"] = tuning_sweep(scale) if scale.tuning else []
    results["utilisation"]["gemm_peak_gflops"] = max(results["utilisation"]["gemm_peak_gflops"],
                                                     utilisation.gemm_peak_gflops())
    results["wall_s"] = time.perf_counter() - started
    results["loadavg"] = {"start": load_before, "end": os.getloadavg()}
    return results


def run_steps(scale: Scale = STEPS) -> dict:
    """Only step-level vs request-level (issue 13's short command)."""
    started, load_before = time.perf_counter(), os.getloadavg()
    rate, roof = offered_rate(ceiling.open_sessions(), scale.ceiling_seconds, scale.ceiling_batches)
    with running({name: VARIANTS[name] for name in MIXED_MODES}) as targets:
        mixed = mixed_comparison(targets, rate, scale)
    return {"scale": asdict(scale), "mixed_ceiling_images_per_s": roof, "mixed": mixed,
            "simulated": simulated_comparison(scale),
            "wall_s": time.perf_counter() - started, "loadavg": {"start": load_before, "end": os.getloadavg()}}
