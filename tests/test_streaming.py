"""Progress streaming on the real server: `/v1/generate` with `stream: true` (Atelier's events) and the OpenAI
routes with `stream` (the official SDK's streaming call), a client that goes away mid-stream, and bad values of
the new parameters.

    flock /tmp/atelier-bench.lock .venv/bin/python -m pytest tests/test_streaming.py -q
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from harness.serving import metric_value

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_events(lines) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs of a server-sent event stream, in order, as they arrive."""
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))
            name = None


def stream(server, body: dict) -> tuple[httpx.Response, list[tuple[str, dict]]]:
    with httpx.stream("POST", server.url + "/v1/generate", json={**body, "stream": True}, timeout=120) as response:
        return response, list(read_events(response.iter_lines())) if response.status_code == 200 else []


def pixels(png_base64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64))).convert("RGB"))


def test_the_stream_sends_every_step_in_order_and_previews_before_the_final_image(server):
    body = {"model": "diffusion", "prompt": "a red heart", "seed": 7, "steps": 12, "n": 2, "preview_every": 4}
    response, events = stream(server, body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "result" and "error" not in names
    assert events[0][1] == {"model": "diffusion", "seed": 7, "n": 2, "total": 12}
    progress = [data for name, data in events if name == "progress"]
    assert [data["step"] for data in progress] == list(range(1, 13))
    assert all(data["total"] == 12 for data in progress)
    elapsed = [data["elapsed"] for data in progress]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    previews = [(index, data) for index, (name, data) in enumerate(events) if name == "preview"]
    assert [data["step"] for _, data in previews] == [4, 8]
    for index, data in previews:  # each preview follows its own step's progress event
        assert events[index - 1] == ("progress", progress[data["step"] - 1])
        assert [image["seed"] for image in data["images"]] == [7, 8]
        preview = Image.open(io.BytesIO(base64.b64decode(data["images"][0]["png_base64"])))
        assert preview.size == (32, 32) and json.loads(preview.text["parameters"])["preview_step"] == data["step"]
    result = events[-1][1]
    assert [image["seed"] for image in result["images"]] == [7, 8]
    # the streamed result is the non-streaming answer (within onnxruntime's batch-dependent low bits: a preview's
    # decode may share the final decode's run)
    plain = httpx.post(server.url + "/v1/generate", json=body | {"preview_every": None}, timeout=120).json()
    for streamed, answered in zip(result["images"], plain["images"], strict=True):
        assert np.abs(pixels(streamed["png_base64"]).astype(int) - pixels(answered["png_base64"]).astype(int)).max() <= 2
    assert result["parameters"] == plain["parameters"]
    # the last preview is already close to the final image: it is the same sample, 4 steps earlier
    assert np.abs(pixels(previews[-1][1]["images"][0]["png_base64"]).astype(int)
                  - pixels(result["images"][0]["png_base64"]).astype(int)).mean() < 40


def test_the_result_event_carries_genomes_and_raw_output_as_the_plain_answer_does(server):
    _, events = stream(server, {"model": "diffusion", "class": 3, "seed": 9, "steps": 6, "genome": True,
                                "output": "raw", "preview_every": 0})
    assert "preview" not in [name for name, _ in events]
    [image] = events[-1][1]["images"]
    assert image["genome"].startswith("g1.") and image["raw_base64"] and image["png_base64"] is None
    again = httpx.post(server.url + "/v1/regenerate", json={"genome": image["genome"]}, timeout=60).json()
    assert np.array_equal(pixels(again["images"][0]["png_base64"]),
                          np.frombuffer(base64.b64decode(image["raw_base64"]), np.uint8).reshape(32, 32, 3))


def test_a_one_shot_model_streams_a_start_and_its_result(server):
    _, events = stream(server, {"model": "dcgan", "class": 2, "seed": 3})
    assert [name for name, _ in events] == ["start", "result"]
    assert events[0][1]["total"] == 0 and events[1][1]["images"][0]["seed"] == 3


def test_a_refused_stream_is_an_ordinary_json_error_before_any_event(server):
    response, _ = stream(server, {"model": "nope"})
    assert response.status_code == 404 and response.headers["content-type"] == "application/json"


def test_a_client_that_disconnects_mid_stream_cancels_the_remaining_steps(server):
    """n=16 with guidance: 32 denoise rows per step; 250 steps would take ~20 s on 2 cores."""
    before = server.metrics()
    disconnected_before = metric_value(before, "atelier_requests_total", route="/v1/generate", status="499")
    rows_before = metric_value(before, "atelier_batch_rows_sum", function="diffusion.denoise")
    body = {"model": "diffusion", "n": 16, "steps": 250, "seed": 1, "stream": True, "preview_every": 2}
    seen = []
    with httpx.stream("POST", server.url + "/v1/generate", json=body, timeout=60) as response:
        for name, data in read_events(response.iter_lines()):
            seen.append(name)
            if name == "preview":
                break  # leaving the block closes the connection mid-stream
    assert "preview" in seen and "result" not in seen
    deadline = time.monotonic() + 30  # a bound on the wait for the server to notice, not a verdict
    while (metric_value(server.metrics(), "atelier_requests_total", route="/v1/generate", status="499")
           == disconnected_before) and time.monotonic() < deadline:
        time.sleep(0.1)
    after = server.metrics()
    assert metric_value(after, "atelier_requests_total", route="/v1/generate", status="499") == disconnected_before + 1
    described = httpx.get(server.url + "/v1/models", timeout=10).json()
    assert described["admission"]["inflight"] == 0  # nothing left running for the client that went away
    assert described["engine"]["diffusion.denoise"]["queued_rows"] == 0
    # and they stay stopped. A run already under way when the client left may still finish (one step, 32 rows);
    # a later request's run comes after it, and from then on only later requests add rows.
    one_row = {"model": "diffusion", "steps": 1, "guidance": 1.0, "seed": 2}

    def denoise_rows() -> float:
        return metric_value(server.metrics(), "atelier_batch_rows_sum", function="diffusion.denoise") - rows_before

    at_disconnect = metric_value(after, "atelier_batch_rows_sum", function="diffusion.denoise") - rows_before
    httpx.post(server.url + "/v1/generate", json=one_row, timeout=60)
    settled = denoise_rows()
    assert settled <= at_disconnect + 32 + 1 and settled < 250 * 32 / 4, f"{settled} denoise rows ran"
    httpx.post(server.url + "/v1/generate", json=one_row, timeout=60)
    assert denoise_rows() == settled + 1


@pytest.mark.parametrize("body, words", [
    ({"preview_every": 5}, "preview_every needs stream: true"),
    ({"stream": True, "preview_every": -1}, "preview_every"),
    ({"stream": True, "preview_every": 251}, "preview_every"),
    ({"stream": True, "preview_every": "often"}, "preview_every"),
    ({"stream": "maybe"}, "stream"),
])
def test_bad_stream_parameters_are_400_with_a_message(server, body, words):
    response = httpx.post(server.url + "/v1/generate", json={"model": "diffusion", "steps": 4, **body}, timeout=30)
    assert response.status_code == 400 and words in response.json()["error"], response.text
    assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as sdk:
        yield sdk


def test_the_openai_sdk_streams_partial_images_then_the_final_image(client):
    events = list(client.images.generate(model="diffusion", prompt="a red heart", stream=True, partial_images=2,
                                         extra_body={"seed": 11, "steps": 9}))
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    for event in events:
        png = base64.b64decode(event.b64_json)
        assert png.startswith(PNG_SIGNATURE) and Image.open(io.BytesIO(png)).size == (32, 32)
        assert event.output_format == "png" and event.size == "32x32"
    plain = client.images.generate(model="diffusion", prompt="a red heart", extra_body={"seed": 11, "steps": 9})
    assert np.abs(pixels(events[-1].b64_json).astype(int) - pixels(plain.data[0].b64_json).astype(int)).max() <= 2
    assert events[-1].usage.total_tokens == 0


def test_the_openai_sdk_streams_an_edit(client):
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (220, 30, 30)).save(buffer, format="PNG")
    events = list(client.images.edit(image=("red.png", buffer.getvalue(), "image/png"), prompt="a red ball",
                                     stream=True, partial_images=1, extra_body={"seed": 3, "steps": 10}))
    assert [event.type for event in events] == ["image_edit.partial_image", "image_edit.completed"]


def test_openai_stream_errors_reach_the_sdk_as_api_errors(client):
    with pytest.raises(openai.BadRequestError, match="partial_images"):
        client.images.generate(model="diffusion", prompt="a cat", stream=True, partial_images=4)
    with pytest.raises(openai.BadRequestError, match="partial_images needs stream"):
        client.images.generate(model="diffusion", prompt="a cat", partial_images=2)
    with pytest.raises(openai.NotFoundError):
        list(client.images.generate(model="nope", prompt="a cat", stream=True))
