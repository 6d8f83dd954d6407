"""What "same seed, same image" guarantees (README, docs/PROTOCOLS.md#determinism), in process on the
service's own sessions: the same request twice gives the same bytes; a row run inside a batch with other
rows differs from the same row run alone by at most 1 in 255 per channel (onnxruntime's CPU kernels are
not batch-invariant: the denoiser's output moves by ~1e-7 with the batch around a row).

    .venv/bin/python -m pytest tests/test_hardening_determinism.py -q
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service import pipelines
from service.config import load_config
from service.engine import Engine
from service.registry import Registry

TOLERANCE = 1  # uint8 levels per channel, the documented bound


@pytest.fixture(scope="module")
def engine():
    return Engine(Registry.load(load_config({})), load_config({}))


def together_and_alone(engine: Engine, model: str, n: int, seed: int, **settings) -> tuple[np.ndarray, np.ndarray]:
    """Images 0..n-1 of one request of n (its rows share every run), and the same images each asked alone."""
    async def both():
        together = await pipelines.generate(engine, pipelines.GenerateRequest(model=model, n=n, seed=seed, **settings))
        alone = [await pipelines.generate(engine, pipelines.GenerateRequest(model=model, n=1, seed=seed + i, **settings))
                 for i in range(n)]
        return together.images, np.concatenate([image.images for image in alone])

    return asyncio.run(both())


@pytest.mark.parametrize("model,settings", [("dcgan", {}), ("vae", {}), ("gmm", {"class_id": 3}),
                                            ("diffusion", {"steps": 12, "prompt": "a red heart"}),
                                            ("diffusion", {"steps": 12, "sampler": "ddpm", "class_id": 2})])
def test_an_image_in_a_batch_of_16_is_within_one_level_of_the_same_image_alone(engine, model, settings):
    together, alone = together_and_alone(engine, model, 16, 40, **settings)
    difference = np.abs(together.astype(int) - alone.astype(int))
    print(f"{model} {settings}: max {difference.max()}, {int((difference > 0).sum())} of {difference.size} "
          "channels differ")
    assert difference.max() <= TOLERANCE


@pytest.mark.parametrize("model", ["dcgan", "vae", "gmm", "diffusion"])
def test_the_same_request_twice_gives_the_same_bytes(engine, model):
    request = pipelines.GenerateRequest(model=model, n=4, seed=9, steps=8)
    first, second = (asyncio.run(pipelines.generate(engine, request)) for _ in range(2))
    assert first.images.tobytes() == second.images.tobytes()
