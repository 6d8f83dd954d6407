"""How much of a crude sketch img2img keeps, by strength and sampler (docs/CREATIVE.md): the layout distance
(mean |difference|, 0..255, after a Gaussian blur of radius 4 and 12x8 cells, as tests/test_sketch_assist.py
measures it) between the answers (4 seeds, at the sketch's size) and the sketch, in process with the
committed models. Prints one line per sketch and sampler.

    PYTHONPATH=. .venv/bin/python docs/creative/sketch_strength.py
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
from PIL import Image, ImageFilter

from make_samples import sketches
from service import pipelines, uploads
from service.config import load_config
from service.engine import Engine
from service.registry import Registry

STRENGTHS = (0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.75, 1.0)
SAMPLERS = ("dpmpp_2m", "euler", "ddim")
SEED, IMAGES, STEPS = 4, 4, 30


def coarse(image: Image.Image) -> np.ndarray:
    blurred = image.convert("RGB").filter(ImageFilter.GaussianBlur(4))
    return np.asarray(blurred.resize((12, 8), Image.Resampling.BOX), dtype=float)


async def main() -> None:
    config = load_config({})
    engine = Engine(Registry.load(config), config)
    for prompt, upload in sketches():
        edit = uploads.decode_edit(upload, None)
        reference = coarse(Image.open(io.BytesIO(upload)))
        for sampler in SAMPLERS:
            distances = []
            for strength in STRENGTHS:
                request = pipelines.GenerateRequest(model="diffusion", n=IMAGES, seed=SEED, prompt=prompt, steps=STEPS,
                                                    sampler=sampler, init_image=edit.image, strength=strength)
                answers = uploads.restore_aspect((await pipelines.generate(engine, request)).images, edit.size)
                distances.append(np.mean([np.abs(coarse(Image.fromarray(a)) - reference).mean() for a in answers]))
            print(f"{prompt!r} {sampler}: " + " ".join(f"{s:g}:{d:.1f}" for s, d in zip(STRENGTHS, distances)))
    await engine.stop()


if __name__ == "__main__":
    asyncio.run(main())
