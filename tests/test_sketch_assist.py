"""Sketch assist on a real served Atelier: `/v1/img2img` and `/v1/inpaint` (service/transports/assist_api.py).

A crude sketch (three filled shapes on a 96x64 canvas) goes in; strength 0 gives it back, strength 1 forgets
it, and in between the coarse layout survives less the higher the strength. The distances are logged:

    .venv/bin/python -m pytest tests/test_sketch_assist.py -q -o log_cli=true --log-cli-level=INFO
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from tests.test_uploads import bomb_png

log = logging.getLogger(__name__)

SIZE = (96, 64)  # (width, height): not square, so the answer's aspect is checked
SETTINGS = {"model": "diffusion", "prompt": "a red heart", "steps": 10, "seed": 4}


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sketch(flipped: bool = False) -> bytes:
    """A red disc, a blue bar and a green triangle on white, as a person might scribble them."""
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((6, 8, 42, 44), fill=(220, 30, 40))
    draw.rectangle((56, 6, 88, 26), fill=(30, 60, 210))
    draw.polygon([(50, 60), (92, 60), (71, 32)], fill=(40, 170, 60))
    return png_of(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else image)


def b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


def post(server, route: str, **body) -> httpx.Response:
    return httpx.post(server.url + route, json={**SETTINGS, **body}, timeout=60)


def images_of(response: httpx.Response) -> list[Image.Image]:
    assert response.status_code == 200, response.text
    return [Image.open(io.BytesIO(base64.b64decode(item["png_base64"]))) for item in response.json()["images"]]


def coarse(image: Image.Image) -> np.ndarray:
    """The layout without the details: blurred, then 12x8 cells."""
    blurred = image.convert("RGB").filter(ImageFilter.GaussianBlur(4))
    return np.asarray(blurred.resize((12, 8), Image.Resampling.BOX), dtype=float)


def layout_distance(image: Image.Image, reference: bytes) -> float:
    return float(np.abs(coarse(image) - coarse(Image.open(io.BytesIO(reference)))).mean())


def test_strength_zero_returns_the_sketch_at_its_own_aspect(server):
    [image] = images_of(post(server, "/v1/img2img", image=b64(sketch()), strength=0.0))
    assert image.size == SIZE
    distance = layout_distance(image, sketch())
    log.info("strength 0: layout distance %.2f to the sketch (0..255)", distance)
    assert distance < 12  # the VAE's reconstruction of the 32x32 copy, blurred


def test_strength_one_ignores_the_sketch(server):
    ours = images_of(post(server, "/v1/img2img", image=b64(sketch()), strength=1.0))[0]
    mirrored = images_of(post(server, "/v1/img2img", image=b64(sketch(flipped=True)), strength=1.0))[0]
    between = float(np.abs(np.asarray(ours, float) - np.asarray(mirrored, float)).mean())
    sketches = layout_distance(Image.open(io.BytesIO(sketch())), sketch(flipped=True))
    log.info("strength 1: mean |a - b| %.2f between outputs of a sketch and its mirror image "
             "(the two sketches' layout distance: %.2f)", between, sketches)
    assert between < sketches / 4


def test_intermediate_strengths_keep_the_coarse_layout_less_as_strength_grows(server):
    strengths = (0.0, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
    distances = []
    for strength in strengths:
        images = images_of(post(server, "/v1/img2img", image=b64(sketch()), strength=strength, n=4))
        distances.append(float(np.mean([layout_distance(image, sketch()) for image in images])))
    log.info("layout distance to the sketch by strength (mean of 4 seeds): %s",
             ", ".join(f"{s:g}: {d:.2f}" for s, d in zip(strengths, distances)))
    assert all(a <= b + 1.0 for a, b in zip(distances, distances[1:])), distances  # grows (1.0 of noise)
    assert distances[0] < distances[2] < distances[-1] / 2, distances  # 0.3 still keeps the layout
    assert distances[-1] - distances[0] > 40, distances  # and 1 has lost it


def test_inpaint_keeps_the_unmasked_side_and_records_the_upload(server):
    mask = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (48, 0, 96, 64))  # repaint the right half
    response = post(server, "/v1/inpaint", image=b64(sketch()), mask=b64(png_of(mask)), n=2)
    first, second = images_of(response)
    original = np.asarray(Image.open(io.BytesIO(sketch())), float)
    left, right = np.asarray(first, float)[:, :40], np.asarray(first, float)[:, 56:]
    assert first.size == SIZE
    assert np.abs(left - original[:, :40]).mean() < np.abs(right - original[:, 56:]).mean()
    assert not np.array_equal(np.asarray(first), np.asarray(second))  # seeds 4 and 5
    parameters = json.loads(first.text["parameters"])
    assert parameters["upload_sha256"] == hashlib.sha256(sketch()).hexdigest() and parameters["composite"] is True
    assert response.json()["parameters"]["composite"] is True and first.text["ai_generated"] == "true"


def test_class_only_model_is_refused_an_image(server):
    response = post(server, "/v1/img2img", image=b64(sketch()), model="dcgan")
    assert response.status_code == 400 and "only the diffusion model" in response.json()["error"]


@pytest.mark.parametrize("route,body,status,reason", [
    ("/v1/img2img", {"image": b64(b"not an image")}, 400, "not a PNG"),
    ("/v1/img2img", {"image": "%%% not base64"}, 400, "not valid base64"),
    ("/v1/img2img", {"image": b64(sketch())[:200]}, 400, "truncated or corrupt|not a PNG"),
    ("/v1/img2img", {"image": b64(bomb_png(50_000, 50_000))}, 400, "declares"),
    ("/v1/img2img", {"image": b64(sketch()), "strength": 1.5}, 400, "strength"),
    ("/v1/img2img", {"image": b64(sketch()), "strength": -0.1}, 400, "strength"),
    ("/v1/img2img", {"image": b64(sketch()), "model": "sdxl"}, 404, "unknown model 'sdxl'"),
    ("/v1/img2img", {}, 400, "image"),
    ("/v1/inpaint", {"image": b64(sketch())}, 400, "mask"),
    ("/v1/inpaint", {"image": b64(sketch()), "mask": b64(png_of(Image.new("RGBA", (32, 32))))}, 400,
     "mask is 32x32 but the image is 96x64"),
    ("/v1/inpaint", {"image": b64(sketch()), "mask": b64(png_of(Image.new("RGB", SIZE)))}, 400, "alpha channel"),
])
def test_bad_input_is_a_client_error_with_a_reason_and_the_server_stays_healthy(server, route, body, status, reason):
    response = post(server, route, **body)
    assert response.status_code == status, response.text
    assert re.search(reason, response.json()["error"]), response.json()
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
