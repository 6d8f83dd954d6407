"""Does a row's output depend on its batch? Each committed graph (onnxruntime CPU, the service's session
options) runs 64 random rows one at a time and then in batches of 2..64; prints the largest difference of
any row from its run alone, per batch size; then the denoiser under other session options (a lower graph
optimisation level, the NCHWc layout transformer off) with its ms per run. Why interpolation runs
diffusion's endpoints alone (service/creative.py `run_interpolation`, docs/CREATIVE.md), and what that
costs: an 8-frame diffusion interpolation (30 steps) with every frame at once and in
`run_interpolation`'s phases, median of 5.

    PYTHONPATH=. .venv/bin/python docs/creative/batch_invariance.py
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import onnxruntime as ort

from service import creative, pipelines
from service.config import load_config
from service.engine import Engine
from service.registry import Registry, session_options

ROWS = 64
BATCHES = (2, 4, 8, 12, 16, 32, 64)


def feeds(rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    return {
        "dcgan/generator.onnx": {"z": rng.standard_normal((ROWS, 128)).astype(np.float32),
                                 "class_id": (np.arange(ROWS) % 9).astype(np.int64)},
        "vae/encoder.onnx": {"image": rng.uniform(-1, 1, (ROWS, 3, 32, 32)).astype(np.float32)},
        "vae/decoder.onnx": {"latent": rng.standard_normal((ROWS, 4, 8, 8)).astype(np.float32)},
        "diffusion/denoiser.onnx": {"latent": rng.standard_normal((ROWS, 4, 8, 8)).astype(np.float32),
                                    "timestep": rng.random(ROWS).astype(np.float32),
                                    "class_id": (np.arange(ROWS) % 9).astype(np.int64),
                                    "text_embedding": rng.standard_normal((ROWS, 384)).astype(np.float32)},
    }


def worst_differences(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[int, float]:
    alone = [session.run(None, {name: value[i:i + 1] for name, value in feed.items()})[0][0] for i in range(ROWS)]
    worst = {}
    for batch in BATCHES:
        together = session.run(None, {name: value[:batch] for name, value in feed.items()})[0]
        worst[batch] = max(float(np.abs(together[i] - alone[i]).max()) for i in range(batch))
    return worst


def ms_per_run(session: ort.InferenceSession, feed: dict[str, np.ndarray], batch: int, runs: int = 20) -> float:
    rows = {name: value[:batch] for name, value in feed.items()}
    session.run(None, rows)
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, rows)
    return (time.perf_counter() - started) / runs * 1e3


def main() -> None:
    config = load_config({})
    graphs = feeds(np.random.default_rng(0))
    for graph, feed in graphs.items():
        session = ort.InferenceSession(str(config.models_dir / graph), session_options(config),
                                       providers=["CPUExecutionProvider"])
        print(f"{graph}: max |row in a batch - row alone| by batch size: "
              + ", ".join(f"{batch}: {difference:.1e}" for batch, difference in worst_differences(session, feed).items()))
    extended = session_options(config)
    extended.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    for variant, options, disabled in (("the service's options", session_options(config), []),
                                       ("optimisation level extended", extended, []),
                                       ("NchwcTransformer off", session_options(config), ["NchwcTransformer"])):
        session = ort.InferenceSession(str(config.models_dir / "diffusion/denoiser.onnx"), options,
                                       providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        feed = graphs["diffusion/denoiser.onnx"]
        worst = worst_differences(session, feed)
        print(f"denoiser, {variant}: " + ", ".join(f"{batch}: {difference:.1e}" for batch, difference in worst.items())
              + "; ms per run at 2/16/64 rows: " + "/".join(f"{ms_per_run(session, feed, b):.1f}" for b in (2, 16, 64)))

    asyncio.run(interpolation_cost())


async def interpolation_cost(repeats: int = 5) -> None:
    config = load_config({})
    engine = Engine(Registry.load(config), config)
    await engine.warm_up()
    start = pipelines.GenerateRequest(model="diffusion", seed=3, prompt="a red heart")
    frames = await creative.interpolation_frames(engine, start, pipelines.GenerateRequest(
        model="diffusion", seed=9, prompt="a red heart"), 8)

    async def together(requests):
        return await asyncio.gather(*(pipelines.generate(engine, request) for request in requests))

    seconds = {"all frames at once": [], "endpoints alone first": []}
    for _ in range(repeats):
        for way, run in (("all frames at once", together(frames)),
                         ("endpoints alone first", creative.run_interpolation(frames, together))):
            started = time.perf_counter()
            await run
            seconds[way].append(time.perf_counter() - started)
    print("8-frame diffusion interpolation, 30 steps: " + ", ".join(
        f"{way} {np.median(times):.3f} s" for way, times in seconds.items()))
    await engine.stop()


if __name__ == "__main__":
    main()
