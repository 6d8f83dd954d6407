"""OpenAI Images API compatibility, with the official `openai` SDK pointed at the real served Atelier.

    .venv/bin/python -m pytest tests/test_openai.py -q
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from service import uploads
from harness.serving import metric_value

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as sdk:
        yield sdk


def test_images_generate_returns_decodable_pngs_with_provenance(client):
    result = client.images.generate(model="diffusion", prompt="a red heart", n=2, size="32x32",
                                    response_format="b64_json", extra_body={"seed": 40, "steps": 4})
    assert result.created > 0 and len(result.data) == 2
    pngs = [base64.b64decode(item.b64_json) for item in result.data]
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    images = [Image.open(io.BytesIO(png)) for png in pngs]
    assert [image.size for image in images] == [(32, 32), (32, 32)]
    assert [image.text["seed"] for image in images] == ["40", "41"]  # image i has seed + i, as on /v1/generate
    assert images[0].text["ai_generated"] == "true" and images[0].text["model"] == "diffusion"
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_class_only_models_follow_the_prompt_theme(client):
    result = client.images.generate(model="dcgan", prompt="a slice of pizza", extra_body={"seed": 3})
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.size == (32, 32) and image.text["model"] == "dcgan"


def test_unknown_model_is_an_openai_not_found_error(client):
    with pytest.raises(openai.NotFoundError) as failure:
        client.images.generate(model="dall-e-3", prompt="a red heart")
    error = failure.value.body
    assert "unknown model 'dall-e-3'" in error["message"] and error["code"] == "model_not_found"


@pytest.mark.parametrize("field,value", [("size", "1024x1024"), ("response_format", "url"), ("n", 17)])
def test_unsupported_value_is_a_bad_request_naming_the_field(client, field, value):
    with pytest.raises(openai.BadRequestError) as failure:
        client.images.generate(model="diffusion", prompt="a red heart", **{field: value})
    assert failure.value.status_code == 400 and field in failure.value.body["message"]
    assert failure.value.body["type"] == "invalid_request_error"


def test_unknown_extra_field_is_refused_not_ignored(server):
    response = httpx.post(server.url + "/v1/images/generations", json={"prompt": "a cat", "stepz": 4}, timeout=10)
    assert response.status_code == 400 and "stepz" in response.json()["error"]["message"]


def test_openai_requests_are_counted_under_their_protocol_label(server, client):
    before = metric_value(server.metrics(), "atelier_requests_total", protocol="openai", status="200")
    client.images.generate(model="vae", prompt="anything", extra_body={"seed": 1})
    after = metric_value(server.metrics(), "atelier_requests_total", protocol="openai", status="200")
    assert after == before + 1


def red_disc_png(side: int = 64) -> bytes:
    """An emoji-like input: a red disc on white."""
    yy, xx = np.mgrid[:side, :side]
    disc = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side / 3) ** 2
    pixels = np.where(disc[..., None], np.array([220, 30, 40], np.uint8), np.uint8(255)).astype(np.uint8)
    return png_of(Image.fromarray(pixels))


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item.b64_json))).convert("RGB")).astype(int)


def test_edit_with_a_mask_repaints_only_the_transparent_area(client):
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 64, 32))  # repaint the top half, keep the bottom half
    result = client.images.edit(image=("disc.png", red_disc_png(), "image/png"),
                                mask=("mask.png", png_of(mask), "image/png"), prompt="a yellow star",
                                model="diffusion", n=2, size="32x32", response_format="b64_json",
                                extra_body={"seed": 11, "steps": 8})
    original = uploads.decode_image(red_disc_png()).astype(int)
    for item in result.data:
        edited = pixels(item)
        assert np.array_equal(edited[16:], original[16:])  # kept exactly, pixel for pixel
        assert np.abs(edited[:16] - original[:16]).mean() > 2  # repainted
    assert not np.array_equal(pixels(result.data[0])[:16], pixels(result.data[1])[:16])  # seeds 11 and 12


def test_edit_without_a_mask_stays_closer_to_the_image_at_lower_strength(client):
    original = uploads.decode_image(red_disc_png()).astype(int)
    distance = {}
    for strength in (0.2, 1.0):
        result = client.images.edit(image=("disc.png", red_disc_png(), "image/png"), prompt="a red ball",
                                    model="diffusion", extra_body={"seed": 5, "steps": 10, "strength": strength})
        distance[strength] = np.abs(pixels(result.data[0]) - original).mean()
    assert distance[0.2] < distance[1.0]


def test_variations_are_seeded_and_carry_the_input_hash_in_their_provenance(client):
    first, again = (client.images.create_variation(image=("disc.png", red_disc_png(), "image/png"), n=2,
                                                   model="diffusion", extra_body={"seed": 3, "steps": 6})
                    for _ in range(2))
    assert [item.b64_json for item in first.data] == [item.b64_json for item in again.data]
    assert first.data[0].b64_json != first.data[1].b64_json
    chunks = Image.open(io.BytesIO(base64.b64decode(first.data[0].b64_json))).text
    assert len(json.loads(chunks["parameters"])["init_image_sha256"]) == 64 and chunks["ai_generated"] == "true"


@pytest.mark.parametrize("files,data,reason", [
    ({}, {"prompt": "a cat"}, "image: a file is required"),
    ({"image": ("x.png", b"not an image", "image/png")}, {"prompt": "a cat"}, "not a PNG"),
    ({"image": ("x.png", red_disc_png(), "image/png"), "mask": ("m.png", red_disc_png(32), "image/png")},
     {"prompt": "a cat"}, "32x32 but the image is 64x64"),
    ({"image": ("x.png", red_disc_png(), "image/png")}, {"prompt": "a cat", "model": "dcgan"}, "only the diffusion"),
    ({"image": ("x.png", red_disc_png(), "image/png")}, {"prompt": "a cat", "strength": "2"}, "strength"),
])
def test_bad_edit_gets_an_openai_bad_request_naming_the_problem(server, files, data, reason):
    fields = {name: (None, value) for name, value in data.items()}  # multipart even without a file
    response = httpx.post(server.url + "/v1/images/edits", files={**fields, **files}, timeout=30)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]["message"]


def test_edit_that_is_not_multipart_is_a_bad_request(server):
    response = httpx.post(server.url + "/v1/images/edits", json={"prompt": "a cat"}, timeout=10)
    assert response.status_code == 400 and "multipart" in response.json()["error"]["message"]
