"""CUDA check on a lent GPU machine: providers, fp16 parity, per-function and end-to-end speed.

Run where onnxruntime-gpu is installed (see docs/PERFORMANCE.md, "GPU"):

    python bench/gpu_check.py --out gpu.json

It loads the registry three ways (CPU fp32, CUDA fp32, CUDA fp16), reports the provider each
session really runs on, the max abs difference of every function's outputs against CPU fp32,
rows/s per function at batch 1, 16 and 64, and images/s of the diffusion pipeline (30 steps,
guidance 3) at concurrency 1 and 32 through the Engine's continuous batcher.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service import pipelines  # noqa: E402
from service.config import load_config  # noqa: E402
from service.engine import Engine  # noqa: E402
from service.registry import Registry  # noqa: E402

log = logging.getLogger("gpu_check")

# name: (providers, ATELIER_FP16)
VARIANTS = {"cpu_fp32": (("CPUExecutionProvider",), "off"),
            "cuda_fp32": (("CUDAExecutionProvider", "CPUExecutionProvider"), "off"),
            "cuda_fp16": (("CUDAExecutionProvider", "CPUExecutionProvider"), "on")}


def example_inputs(session: ort.InferenceSession, batch: int, rng: np.random.Generator) -> dict:
    feeds = {}
    for value in session.get_inputs():
        shape = [batch if i == 0 else (d if isinstance(d, int) else 8) for i, d in enumerate(value.shape)]
        if value.name == "class_id":
            feeds[value.name] = rng.integers(0, 9, shape).astype(np.int64)
        elif value.name in ("input_ids",):
            feeds[value.name] = rng.integers(1000, 2000, shape).astype(np.int64)
        elif value.name == "attention_mask":
            feeds[value.name] = np.ones(shape, np.int64)
        elif value.name == "timestep":
            feeds[value.name] = rng.uniform(0.01, 0.99, shape).astype(np.float32)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def rows_per_second(session: ort.InferenceSession, feeds: dict, batch: int, seconds: float = 1.0) -> float:
    session.run(None, feeds)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feeds)
        runs += 1
    return runs * batch / (time.perf_counter() - started)


async def pipeline_images_per_second(engine: Engine, concurrencies: tuple[int, ...], rounds: int = 2) -> dict:
    """One event loop for every measurement: the Engine's batchers belong to the loop they started in."""
    result = {}
    for concurrency in concurrencies:
        started = time.perf_counter()
        for r in range(rounds):
            await asyncio.gather(*(pipelines.generate(engine, pipelines.GenerateRequest(
                model="diffusion", seed=1000 * r + i, class_id=i % 9, steps=30)) for i in range(concurrency)))
        result[str(concurrency)] = round(concurrency * rounds / (time.perf_counter() - started), 2)
    await engine.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    report = {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
              "python": platform.python_version(), "variants": {}}
    outputs: dict[str, dict] = {}
    for variant, (providers, fp16) in VARIANTS.items():
        config = dataclasses.replace(load_config({}), providers=providers, use_fp16=fp16)
        registry = Registry.load(config)
        entry = {"providers": registry.describe(), "rows_per_s": {}, "max_abs_vs_cpu_fp32": {}}
        outputs[variant] = {}
        for model in registry.models.values():
            for function, session in model.sessions.items():
                key = f"{model.name}.{function}"
                feeds = example_inputs(session, 16, np.random.default_rng(0))
                outputs[variant][key] = session.run(None, feeds)
                if variant != "cpu_fp32":
                    entry["max_abs_vs_cpu_fp32"][key] = float(max(
                        np.max(np.abs(a - b)) for a, b in zip(outputs[variant][key], outputs["cpu_fp32"][key])))
                entry["rows_per_s"][key] = {
                    str(batch): round(rows_per_second(session, example_inputs(session, batch, np.random.default_rng(1)),
                                                      batch), 1) for batch in (1, 16, 64)}
        engine = Engine(registry, config)
        entry["diffusion_30_steps_images_per_s"] = asyncio.run(pipeline_images_per_second(engine, (1, 32)))
        report["variants"][variant] = entry
        log.info("%s: %s", variant, json.dumps(entry)[:400])
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
