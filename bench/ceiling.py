"""The ceiling: the committed graphs in an in-process onnxruntime loop, no server, no HTTP.

Sessions get the service's own options (`service.registry.session_options`), so the only thing
between this loop and a served request is the serving itself. A point runs one batch size until
`seconds` have passed (and at least 3 runs) and keeps the median run time. Diffusion images cost
`steps` denoiser runs of 2 rows per image (classifier-free guidance) plus one decoder row, so
its ceiling at b images per batch is b / (steps * t_denoise(2b) + t_decode(b)).

    .venv/bin/python -m bench.ceiling
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.config import Config
from service.registry import session_options

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
GRAPHS = {"dcgan.generate": "dcgan/generator.onnx", "diffusion.denoise": "diffusion/denoiser.onnx",
          "vae.decode": "vae/decoder.onnx"}


def open_sessions(threads: int = 0, models_dir: Path = MODELS_DIR) -> dict[str, ort.InferenceSession]:
    options = session_options(Config(intra_op_threads=threads))
    return {function: ort.InferenceSession(str(models_dir / path), options, providers=["CPUExecutionProvider"])
            for function, path in GRAPHS.items()}


def feed(function: str, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of `rows` rows, drawn like the service's: noise, a class, a mid-schedule timestep."""
    if function == "dcgan.generate":
        return {"z": rng.standard_normal((rows, 128), np.float32), "class_id": rng.integers(0, 9, rows)}
    latent = rng.standard_normal((rows, 4, 8, 8), np.float32)
    if function == "vae.decode":
        return {"latent": latent}
    return {"latent": latent, "timestep": rng.uniform(0.002, 0.995, rows).astype(np.float32),
            "class_id": rng.integers(0, 10, rows), "text_embedding": np.zeros((rows, 384), np.float32)}


def run_seconds(session: ort.InferenceSession, function: str, rows: int, seconds: float) -> float:
    """Median seconds of one run of `rows` rows."""
    inputs = feed(function, rows, np.random.default_rng(rows))
    session.run(None, inputs)  # first run of a shape pays allocations
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        started = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def gan_images_per_s(sessions: dict[str, ort.InferenceSession], batch: int, seconds: float) -> float:
    return batch / run_seconds(sessions["dcgan.generate"], "dcgan.generate", batch, seconds)


def diffusion_images_per_s(sessions: dict[str, ort.InferenceSession], images: int, steps: float,
                           seconds: float) -> float:
    """Images/s of `images` images sampled together for `steps` steps with guidance, then decoded."""
    denoise = run_seconds(sessions["diffusion.denoise"], "diffusion.denoise", 2 * images, seconds)
    decode = run_seconds(sessions["vae.decode"], "vae.decode", images, seconds / 2)
    return images / (steps * denoise + decode)


def sweep(sessions: dict[str, ort.InferenceSession], batches: list[int], steps: float,
          seconds: float) -> dict[str, dict[int, float]]:
    """Images/s per batch size; diffusion batches count images (2 denoiser rows each)."""
    return {
        "dcgan": {b: gan_images_per_s(sessions, b, seconds) for b in batches},
        "diffusion": {b: diffusion_images_per_s(sessions, b, steps, seconds) for b in batches if 2 * b <= 64},
    }


def function_rows_per_s(sessions: dict[str, ort.InferenceSession], rows: int, seconds: float) -> dict[str, float]:
    """Rows/s of each graph at one batch size (the utilisation table uses batch 32)."""
    return {function: rows / run_seconds(session, function, rows, seconds) for function, session in sessions.items()}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    found = sweep(open_sessions(), [1, 2, 4, 8, 16, 32, 64], steps=10, seconds=1.0)
    for model, points in found.items():
        log.info("%s: %s", model, {b: round(v, 1) for b, v in points.items()})
