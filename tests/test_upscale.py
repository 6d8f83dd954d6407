"""4x super-resolution as served: `upscale: 4` on /v1/generate (the base model's images through the SR
model's batcher) and `POST /v1/upscale` for an uploaded image (cut into 32 px tiles that share the same
batcher, joined back at 4x the upload's size), on a real Atelier with the committed models/sr.

    .venv/bin/python -m pytest tests/test_upscale.py -q
"""

from __future__ import annotations

import base64
import hashlib
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from service import pipelines, rules
from tests.test_uploads import bomb_png


def png_of(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


def pixels_of(item: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["png_base64"]))).convert("RGB"))


def upscale(server, payload: bytes, **body) -> httpx.Response:
    return httpx.post(server.url + "/v1/upscale", json={"image": b64(payload), **body}, timeout=60)


def gradient(width: int, height: int) -> Image.Image:
    """A smooth two-way colour ramp: nothing in it for an upscaler to sharpen, so every output pixel can be
    checked against bicubic (a misplaced or mis-cropped tile would show as a jump)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.stack([60 + 140 * x / width, 50 + 150 * y / height, 200 - 100 * (x + y) / (width + height)], -1)
    return Image.fromarray(np.round(image).astype(np.uint8))


# --- tiles, without a server ---

@pytest.mark.parametrize("height, width", [(32, 32), (20, 7), (33, 32), (70, 100), (128, 128)])
def test_tiles_join_back_into_the_whole_image(height, width):
    """With a nearest-neighbour stand-in for the upscaler, cutting into tiles and joining their centres
    gives exactly the whole image upscaled: every output pixel comes from the tile that owns it."""
    image = np.random.default_rng(height * width).uniform(-1, 1, (3, height, width)).astype(np.float32)
    tiling = pipelines.UPSCALE_TILES
    tiles = tiling.cut(image)
    assert tiles.shape == (np.prod(tiling.grid(height, width)), 3, 32, 32)
    nearest = tiles.repeat(4, axis=2).repeat(4, axis=3)
    np.testing.assert_array_equal(tiling.join(nearest, height, width),
                                  image.repeat(4, axis=1).repeat(4, axis=2))


def test_largest_upload_fits_one_run_of_the_default_batch():
    assert np.prod(pipelines.UPSCALE_TILES.grid(rules.MAX_UPSCALE_SIDE, rules.MAX_UPSCALE_SIDE)) <= 64


# --- served ---

def test_generate_with_upscale_4_returns_128_px_images(server):
    response = httpx.post(server.url + "/v1/generate", json={"model": "dcgan", "n": 2, "seed": 5, "upscale": 4},
                          timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["parameters"]["upscale"] == 4
    for item in body["images"]:
        assert item["shape"] == [128, 128, 3]
        assert pixels_of(item).shape == (128, 128, 3)


def test_upscaled_generation_is_the_upscaler_applied_to_the_plain_image(server):
    """The cascade is the base model's image, then the upscaler: /v1/upscale of the plain 32 px image
    gives the same 128 px image (a single tile: the same graph on the same input), and its 4x box
    reduction is close to the 32 px image it came from."""
    settings = {"model": "dcgan", "seed": 11, "class": 0}
    plain = httpx.post(server.url + "/v1/generate", json=settings, timeout=60).json()
    large = httpx.post(server.url + "/v1/generate", json={**settings, "upscale": 4}, timeout=60).json()
    assert "upscale" not in plain["parameters"]  # a plain image's parameters are as they were
    small = pixels_of(plain["images"][0])
    cascade = pixels_of(large["images"][0]).astype(int)
    response = upscale(server, base64.b64decode(plain["images"][0]["png_base64"]))
    assert response.status_code == 200, response.text
    uploaded = pixels_of(response.json()["images"][0]).astype(int)
    assert np.abs(uploaded - cascade).max() <= 1
    reduced = cascade.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3))
    assert np.abs(reduced - small).mean() < 4.0


def test_upscale_answers_4x_the_upload_at_its_aspect_with_provenance(server):
    upload = png_of(gradient(50, 20))
    response = upscale(server, upload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "sr" and body["images"][0]["shape"] == [80, 200, 3]
    png = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["png_base64"])))
    assert png.size == (200, 80) and png.text["model"] == "sr" and png.text["ai_generated"] == "true"
    assert body["parameters"]["upload_sha256"] == hashlib.sha256(upload).hexdigest()


def test_tiled_upload_has_no_seams(server):
    """A 100x70 ramp goes through 35 tiles; the answer stays within a few levels of bicubic everywhere,
    which a tile out of place, or one cropped at the wrong offset, would break by tens of levels."""
    image = gradient(100, 70)
    response = upscale(server, png_of(image))
    assert response.status_code == 200, response.text
    got = pixels_of(response.json()["images"][0]).astype(int)
    bicubic = np.asarray(image.resize((400, 280), Image.Resampling.BICUBIC)).astype(int)
    assert got.shape == bicubic.shape
    assert np.abs(got - bicubic)[8:-8, 8:-8].max() <= 6  # the outermost pixels: edge padding vs Pillow's own


def test_transparent_upload_is_upscaled_on_white(server):
    image = Image.new("RGBA", (24, 24), (0, 0, 0, 0))
    response = upscale(server, png_of(image))
    assert response.status_code == 200, response.text
    assert pixels_of(response.json()["images"][0]).min() >= 250


@pytest.mark.parametrize("body, reason", [
    ({"model": "dcgan", "upscale": 2}, "upscale"),
    ({"model": "dcgan", "upscale": "4"}, "upscale"),
    ({"model": "dcgan", "upscale": 4.0}, "upscale"),
])
def test_generate_refuses_upscale_factors_other_than_1_and_4(server, body, reason):
    response = httpx.post(server.url + "/v1/generate", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]


@pytest.mark.parametrize("payload, reason", [
    (b"not an image at all", "not a PNG, JPEG or WebP"),
    (png_of(Image.new("RGB", (40, 40), "red"))[:60], "corrupt"),
    (png_of(Image.new("RGB", (40, 40), "red"), "GIF"), "not a PNG, JPEG or WebP"),
    (png_of(Image.new("RGB", (40, 40), "red"), "BMP"), "not a PNG, JPEG or WebP"),
    (png_of(Image.new("RGB", (200, 100), "red")), f"at most {rules.MAX_UPSCALE_SIDE} px"),
    (bomb_png(30000, 30000), "pixels"),
])
def test_upscale_refuses_bad_uploads_with_a_reason(server, payload, reason):
    response = upscale(server, payload)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]


@pytest.mark.parametrize("body, status, reason", [
    ({"image": "@@@ not base64 @@@"}, 400, "base64"),
    ({"image": b64(png_of(Image.new("RGB", (8, 8)))), "scale": 8}, 400, "scale"),
    ({"image": b64(png_of(Image.new("RGB", (8, 8)))), "priority": "urgent"}, 400, "priority"),
    ({}, 400, "image"),
])
def test_upscale_refuses_malformed_bodies(server, body, status, reason):
    response = httpx.post(server.url + "/v1/upscale", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]


def test_upscale_refuses_a_huge_body_and_stays_healthy(server):
    response = httpx.post(server.url + "/v1/upscale", json={"image": "A" * (2 << 20)}, timeout=30)
    assert response.status_code == 413, response.text
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
    assert upscale(server, png_of(gradient(16, 16))).status_code == 200


def test_openai_size_128_is_the_same_cascade_as_upscale_4(server):
    settings = {"model": "dcgan", "prompt": "a red heart", "seed": 3}
    response = httpx.post(server.url + "/v1/images/generations", json={**settings, "size": "128x128"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["size"] == "128x128"
    openai = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))))
    native = httpx.post(server.url + "/v1/generate", json={**settings, "upscale": 4}, timeout=60).json()
    assert openai.shape == (128, 128, 3)
    np.testing.assert_array_equal(openai, pixels_of(native["images"][0]))


def test_openai_refuses_sizes_it_cannot_make(server):
    response = httpx.post(server.url + "/v1/images/generations",
                          json={"model": "dcgan", "prompt": "a red heart", "size": "64x64"}, timeout=30)
    assert response.status_code == 400, response.text
    assert "size" in response.json()["error"]["message"]


def test_image_png_takes_upscale_as_a_query_parameter(server):
    response = httpx.get(server.url + "/v1/image.png", params={"model": "dcgan", "seed": 2, "upscale": 4}, timeout=60)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (128, 128)
    refused = httpx.get(server.url + "/v1/image.png", params={"model": "dcgan", "upscale": 3}, timeout=30)
    assert refused.status_code == 400 and "upscale" in refused.json()["error"]
