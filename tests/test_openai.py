"""OpenAI Images API compatibility, with the official `openai` SDK pointed at the real served Atelier.

    .venv/bin/python -m pytest tests/test_openai.py -q
"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.serving import metric_value

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
