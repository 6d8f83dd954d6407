"""Style transfer: the tiles and AdaIN without a model, the served pipeline in-process on the committed
models/style (tiles that agree, the style transferred, the content kept, same request same pixels), and
POST /v1/style on a real Atelier (sizes, provenance, bad input).

    .venv/bin/python -m pytest tests/test_style.py -q
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import replace

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from harness import in_process
from service import pipelines, rules, style, uploads
from service.style import StyleRequest
from service.tiles import Tiling
from tests.test_upscale import b64, pixels_of, png_of


def scene(width: int, height: int) -> Image.Image:
    """Shapes on a ramp: edges and flat areas, something for a style to restyle and a structure to keep."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    ramp = np.stack([40 + 180 * x / width, 60 + 120 * y / height, 200 - 120 * x / width], -1)
    image = Image.fromarray(np.round(ramp).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.1, height * 0.2, width * 0.45, height * 0.8), fill=(230, 200, 40), outline=(20, 20, 20),
                 width=3)
    draw.rectangle((width * 0.55, height * 0.15, width * 0.9, height * 0.6), fill=(30, 90, 170))
    draw.line((0, height * 0.9, width, height * 0.7), fill=(250, 250, 250), width=5)
    return image


# --- tiles and AdaIN, without a model ---

@pytest.mark.parametrize("height, width", [(32, 32), (100, 37), (192, 192), (300, 200), (512, 512)])
def test_encoder_tiles_join_into_the_whole_image_features(height, width):
    """An 8x8 average pool stands in for the encoder: the joined tile centres equal the pool of the whole
    image (edge-padded to whole cells), so every feature cell comes from the tile that owns it."""
    image = np.random.default_rng(height * width).uniform(-1, 1, (3, height, width)).astype(np.float32)
    tiles = style.ENCODE.cut(image)
    assert tiles.shape == (np.prod(style.ENCODE.grid(height, width)), 3, 192, 192)
    pooled = tiles.reshape(len(tiles), 3, 24, 8, 24, 8).mean(axis=(3, 5))
    cells_high, cells_wide = -(-height // 8), -(-width // 8)
    padded = np.pad(image, [(0, 0), (0, cells_high * 8 - height), (0, cells_wide * 8 - width)], mode="edge")
    whole = padded.reshape(3, cells_high, 8, cells_wide, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(style.ENCODE.join(pooled, height, width), whole, atol=1e-6)


@pytest.mark.parametrize("cells_high, cells_wide", [(4, 4), (13, 5), (38, 25), (64, 64)])
def test_decoder_tiles_join_into_the_whole_image(cells_high, cells_wide):
    features = np.random.default_rng(cells_high).normal(size=(3, cells_high, cells_wide)).astype(np.float32)
    tiles = style.DECODE.cut(features)
    nearest = tiles.repeat(8, axis=2).repeat(8, axis=3)
    np.testing.assert_array_equal(style.DECODE.join(nearest, cells_high, cells_wide),
                                  features.repeat(8, axis=1).repeat(8, axis=2))


def test_a_tiling_scales_by_fractions_and_whole_numbers_alike():
    assert Tiling(192, 32).kept == 128 and style.ENCODE.grid(513, 128) == (5, 1)
    assert style.DECODE.grid(64, 64) == style.ENCODE.grid(512, 512) == (4, 4)


def test_adain_gives_the_style_statistics_at_full_strength_and_the_content_at_zero():
    rng = np.random.default_rng(0)
    content = rng.normal(3.0, 2.0, (40, 12, 9)).astype(np.float32)
    style_mean, style_std = rng.normal(size=(40, 1, 1)).astype(np.float32), rng.uniform(0.5, 2, (40, 1, 1)).astype(np.float32)
    mean, std = style.moments(style.adain(content, style_mean, style_std, 1.0))
    np.testing.assert_allclose(mean, style_mean, atol=1e-4)
    np.testing.assert_allclose(std, style_std, rtol=1e-3)
    np.testing.assert_allclose(style.adain(content, style_mean, style_std, 0.0), content, atol=1e-6)


# --- the served pipeline, in-process, on the committed model ---

@pytest.fixture(scope="module")
def engine():
    with in_process.engine() as running:
        yield running


def stylised(engine, request: StyleRequest) -> np.ndarray:
    return in_process.run(pipelines.generate(engine, request)).images[0]


CONTENT = np.asarray(scene(300, 200))


def test_the_built_in_styles_are_in_the_manifest_and_loaded(engine):
    manifest = engine.manifest("style")
    assert [entry["name"] for entry in manifest.raw["styles"]] == list(engine.styles)
    assert all(mean.shape == std.shape == (40, 1, 1) and (std > 0).all() for mean, std in engine.styles.values())


def test_wider_tile_margins_change_the_output_by_less_than_a_grey_level(engine, monkeypatch):
    """Seams: the same image with 64 px of context around each tile's centre instead of 32 differs by a
    fraction of a level on average (a tile out of place or a per-tile statistic would differ by tens)."""
    request = StyleRequest(image=CONTENT, style="mosaic")
    narrow = stylised(engine, request).astype(int)
    monkeypatch.setattr(style, "ENCODE", Tiling(192, 64, style.ENCODE.scale))
    monkeypatch.setattr(style, "DECODE", Tiling(24, 8, style.DECODE.scale))
    wide = stylised(engine, request).astype(int)
    assert narrow.shape == wide.shape == CONTENT.shape
    difference = np.abs(narrow - wide)
    assert difference.mean() < 1.0, difference.mean()


def test_the_style_is_transferred_and_the_structure_kept(engine):
    """The held-out photo in `strokes`, on the pretrained network's features: the Gram-matrix distance to the
    style drops by at least 30 % (the issue's bar; docs/STYLE.md has every pair), and the output's block-4
    features correlate with the photo's far more than an unrelated photo's do."""
    from export import perceptual, style_report
    from export import style as recipe

    taps = perceptual.FeatureTaps(recipe.LOSS_BLOCKS)
    photo = recipe.fit_long_side(recipe.skimage_rgb(recipe.HELD_OUT_PHOTO), 384)
    other = np.asarray(Image.fromarray(recipe.skimage_rgb(style_report.UNRELATED_PHOTO)).resize(photo.shape[1::-1]))
    output = stylised(engine, StyleRequest(image=photo, style="strokes"))
    photo_taps, style_taps, output_taps, other_taps = (style_report.taps_of(taps, x) for x in (
        photo, recipe.built_in_image("strokes"), output, other))
    drop = 1 - style_report.gram_distance(output_taps, style_taps) / style_report.gram_distance(photo_taps, style_taps)
    assert drop >= 0.30, drop
    related, unrelated = (style_report.feature_correlation(x, photo_taps) for x in (output_taps, other_taps))
    assert related > 3 * unrelated and related > 0.2, (related, unrelated)
    assert np.abs(output.astype(int) - photo).mean() > 10  # it is not the photo returned


def test_strength_zero_is_nearer_the_content_than_strength_one(engine):
    full = stylised(engine, StyleRequest(image=CONTENT, style="waves", strength=1.0)).astype(int)
    none = stylised(engine, StyleRequest(image=CONTENT, style="waves", strength=0.0)).astype(int)
    assert np.abs(none - CONTENT).mean() < np.abs(full - CONTENT).mean()


def test_an_uploaded_built_in_style_image_matches_the_built_in(engine):
    """The built-in statistics are what the service computes from the same image uploaded."""
    from export import style as recipe

    named = stylised(engine, StyleRequest(image=CONTENT, style="waves")).astype(int)
    upload = png_of(Image.fromarray(recipe.built_in_image("waves")))  # as a client would send it
    style_image, _ = uploads.decode_fitted(upload, "style_image", rules.STYLE_IMAGE_SIDE)
    uploaded = stylised(engine, StyleRequest(image=CONTENT, style_image=style_image, uploaded_style=True)).astype(int)
    assert np.abs(named - uploaded).max() <= 2


def test_same_request_same_pixels(engine):
    request = StyleRequest(image=CONTENT, style="strokes", strength=0.7)
    assert np.array_equal(stylised(engine, request), stylised(engine, replace(request)))


# --- POST /v1/style on a real server ---

def post_style(server, **body) -> httpx.Response:
    return httpx.post(server.url + "/v1/style", json=body, timeout=120)


def test_style_answers_the_content_size_with_provenance(server):
    upload = png_of(scene(120, 90))
    response = post_style(server, image=b64(upload), style="mosaic", strength=0.8)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "style" and body["images"][0]["shape"] == [90, 120, 3]
    assert body["parameters"] == {"style": "mosaic", "strength": 0.8, "composite": True,
                                  "upload_sha256": hashlib.sha256(upload).hexdigest()}
    png = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["png_base64"])))
    assert png.size == (120, 90) and png.text["model"] == "style" and png.text["ai_generated"] == "true"
    assert np.abs(pixels_of(body["images"][0]).astype(int) - np.asarray(scene(120, 90))).mean() > 10


def test_an_uploaded_style_is_recorded_by_its_hash(server):
    style_upload = png_of(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)))
    response = post_style(server, image=b64(png_of(scene(64, 64))), style_image=b64(style_upload))
    assert response.status_code == 200, response.text
    assert response.json()["parameters"]["style_sha256"] == hashlib.sha256(style_upload).hexdigest()


def test_a_large_upload_is_scaled_down_to_the_limit_at_its_aspect(server):
    response = post_style(server, image=b64(png_of(scene(1000, 600), "JPEG")), style="cosmos")
    assert response.status_code == 200, response.text
    assert response.json()["images"][0]["shape"] == [307, 512, 3]


@pytest.mark.parametrize("body, reason", [
    ({"style": "mosaic", "style_image": b64(png_of(scene(40, 40)))}, "either"),
    ({}, "either"),
    ({"style": "van gogh"}, "unknown style"),
    ({"style": "mosaic", "strength": 1.5}, "strength"),
    ({"style": "mosaic", "strength": "0.5"}, "strength"),
    ({"style": "mosaic", "colours": 3}, "colours"),
    ({"style": "mosaic", "priority": "urgent"}, "priority"),
    ({"style": 3}, "style"),
])
def test_style_refuses_malformed_bodies_with_a_reason(server, body, reason):
    response = post_style(server, image=b64(png_of(scene(64, 64))), **body)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]


@pytest.mark.parametrize("payload, reason", [
    (b"not an image at all", "not a PNG, JPEG or WebP"),
    (png_of(Image.new("RGB", (16, 40), "red")), f"{rules.MIN_STYLE_SIDE} to {rules.MAX_STYLE_SIDE} px"),
    (png_of(Image.new("RGB", (40, 40), "red"), "BMP"), "not a PNG, JPEG or WebP"),
])
def test_style_refuses_bad_uploads_with_a_reason(server, payload, reason):
    for body in ({"image": b64(payload), "style": "mosaic"},
                 {"image": b64(png_of(scene(64, 64))), "style_image": b64(payload)}):
        if "px" in reason and "style_image" in body:
            continue  # a small style image is allowed: only its statistics are used
        response = post_style(server, **body)
        assert response.status_code == 400, response.text
        assert reason in response.json()["error"]


def test_style_refuses_a_huge_body_and_stays_healthy(server):
    from service.transports.http_app import ASSIST_MAX_BODY_BYTES

    response = httpx.post(server.url + "/v1/style", json={"image": "A" * (ASSIST_MAX_BODY_BYTES + 1), "style": "mosaic"},
                          timeout=60)
    assert response.status_code == 413, response.text
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
    assert post_style(server, image=b64(png_of(scene(40, 40))), style="mosaic").status_code == 200


def test_style_uploads_are_decoded_upright_and_at_their_depth():
    """A phone photo stored sideways (EXIF orientation 6) comes out upright; a 16-bit grey PNG keeps its grey."""
    photo = Image.new("RGB", (80, 40), "red")
    exif = photo.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", exif=exif.tobytes())
    assert uploads.decode_fitted(buffer.getvalue(), "image", 512)[0].shape == (80, 40, 3)
    grey = png_of(Image.fromarray(np.full((40, 60), 30000, np.uint16)))
    assert abs(uploads.decode_fitted(grey, "image", 512)[0].mean() - 30000 / 257) < 1
