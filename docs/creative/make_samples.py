"""Sample outputs of the creative tools from the committed models, in process (no server): an
interpolation strip per model, a family of bred children, and a 5-round session steered by a simulated
audience that likes red. Writes the PNGs next to this file (each 32x32 image scaled 3x, nearest).

    PYTHONPATH=. .venv/bin/python docs/creative/make_samples.py
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from service import creative, pipelines
from service.config import load_config
from service.engine import Engine
from service.registry import Registry

OUT = Path(__file__).resolve().parent
SCALE = 3
GAP = 2  # white pixels between images
log = logging.getLogger("make_samples")


def grid(rows: list[list[np.ndarray]]) -> Image.Image:
    """Rows of (32, 32, 3) images on white, scaled for reading."""
    side = 32 * SCALE
    width = max(len(row) for row in rows) * (side + GAP) - GAP
    canvas = Image.new("RGB", (width, len(rows) * (side + GAP) - GAP), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            tile = Image.fromarray(image).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (c * (side + GAP), r * (side + GAP)))
    return canvas


async def images_of(engine: Engine, requests: list[pipelines.GenerateRequest]) -> list[np.ndarray]:
    results = await asyncio.gather(*(pipelines.generate(engine, request) for request in requests))
    return [result.images[0] for result in results]


def redness(image: np.ndarray) -> float:
    pixels = image.astype(np.float32) / 255
    return float((pixels[..., 0] - (pixels[..., 1] + pixels[..., 2]) / 2).mean())


async def main() -> None:
    config = load_config({})
    engine = Engine(Registry.load(config), config)
    Request = pipelines.GenerateRequest
    rows = []
    for start, end in ((Request(model="dcgan", seed=3, class_id=2), Request(model="dcgan", seed=9, class_id=2)),
                       (Request(model="gmm", seed=4, class_id=0), Request(model="gmm", seed=12, class_id=0)),
                       (Request(model="diffusion", seed=1, prompt="a red heart", steps=20),
                        Request(model="diffusion", seed=2, prompt="a red heart", steps=20))):
        rows.append(await images_of(engine, await creative.interpolation_frames(engine, start, end, 10)))
    grid(rows).save(OUT / "interpolation.png")

    parents = [Request(model="gmm", seed=seed, class_id=3) for seed in (5, 6, 7)]
    children = await creative.offspring(engine, parents, 8, 0.2, seed=1)
    grid([await images_of(engine, parents), await images_of(engine, children)]).save(OUT / "breeding.png")

    session = await creative.start_session(engine, Request(model="dcgan", seed=0), 8)
    rounds = []
    for round_ in range(6):
        population = await images_of(engine, session.candidates())
        rounds.append(population)
        scores = [redness(image) for image in population]
        log.warning("round %d: mean redness %.3f", round_, np.mean(scores))
        if round_ < 5:
            session = creative.next_round(session, scores)
    grid(rounds).save(OUT / "session.png")
    await engine.stop()


if __name__ == "__main__":
    asyncio.run(main())
