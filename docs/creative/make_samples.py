"""Sample outputs of the creative tools from the committed models, in process (no server): an
interpolation strip per model and one between two uploaded sketches, a family of bred children, a
5-round session steered by a simulated audience that likes red, and sketch assist (img2img) of two
crude sketches at several strengths. Writes the PNGs next to this file (each image scaled 3x, nearest).

    PYTHONPATH=. .venv/bin/python docs/creative/make_samples.py
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import io

import numpy as np
from PIL import Image, ImageDraw

from service import creative, pipelines, uploads
from service.config import load_config
from service.engine import Engine
from service.registry import Registry

OUT = Path(__file__).resolve().parent
SCALE = 3
GAP = 2  # white pixels between images
SKETCH_SIZE = (96, 64)  # (width, height): img2img answers at the upload's aspect and size
STRENGTHS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0)
log = logging.getLogger("make_samples")


def grid(rows: list[list[np.ndarray]]) -> Image.Image:
    """Rows of same-size (H, W, 3) images on a light grey canvas (so white images keep their edges), scaled."""
    height, width = (side * SCALE for side in rows[0][0].shape[:2])
    columns = max(len(row) for row in rows)
    canvas = Image.new("RGB", (columns * (width + GAP) - GAP, len(rows) * (height + GAP) - GAP), (200, 200, 200))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            tile = Image.fromarray(image).resize((width, height), Image.NEAREST)
            canvas.paste(tile, (c * (width + GAP), r * (height + GAP)))
    return canvas


def sketches() -> list[tuple[str, bytes]]:
    """Two crude sketches as PNG files, as a person might scribble them: (prompt, file)."""
    shapes = Image.new("RGB", SKETCH_SIZE, "white")  # tests/test_sketch_assist.py's sketch
    draw = ImageDraw.Draw(shapes)
    draw.ellipse((6, 8, 42, 44), fill=(220, 30, 40))
    draw.rectangle((56, 6, 88, 26), fill=(30, 60, 210))
    draw.polygon([(50, 60), (92, 60), (71, 32)], fill=(40, 170, 60))
    face = Image.new("RGB", SKETCH_SIZE, "white")
    draw = ImageDraw.Draw(face)
    draw.ellipse((22, 6, 74, 58), fill=(250, 200, 40))
    draw.ellipse((34, 20, 42, 30), fill=(60, 40, 20))
    draw.ellipse((54, 20, 62, 30), fill=(60, 40, 20))
    draw.arc((34, 26, 62, 50), 20, 160, fill=(60, 40, 20), width=3)
    files = []
    for image in (shapes, face):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return [("a red heart", files[0]), ("a smiling face", files[1])]


async def sketch_assist(engine: Engine) -> list[list[np.ndarray]]:
    """Each sketch, then /v1/img2img's answers at STRENGTHS (30 dpmpp_2m steps, seed 4), at the sketch's size."""
    rows = []
    for prompt, upload in sketches():
        edit = uploads.decode_edit(upload, None)
        row = [np.asarray(Image.open(io.BytesIO(upload)).convert("RGB"))]
        for strength in STRENGTHS:
            request = pipelines.GenerateRequest(model="diffusion", seed=4, prompt=prompt, init_image=edit.image,
                                                strength=strength, upload_sha256=edit.sha256)
            generated = await pipelines.generate(engine, request)
            row.append(uploads.restore_aspect(generated.images, edit.size)[0])
        rows.append(row)
    return rows


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
        frames = await creative.interpolation_frames(engine, start, end, 10)
        rows.append([generated.images[0] for generated in await creative.run_interpolation(
            frames, lambda requests: asyncio.gather(*(pipelines.generate(engine, r) for r in requests)))])
    uploaded = [uploads.decode_edit(upload, None).image for _, upload in sketches()]
    rows.append(await images_of(engine, await creative.upload_frames(engine, tuple(uploaded), 10)))
    grid(rows).save(OUT / "interpolation.png")
    grid(await sketch_assist(engine)).save(OUT / "sketch.png")

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
