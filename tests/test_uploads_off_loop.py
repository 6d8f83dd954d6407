"""Upload preparation runs off the event loop (issue 17, item 1), checked without a clock: the app in process,
its CPU-heavy steps wrapped to record whether they ran on the thread that runs the event loop and whether the
request was admitted yet. Covered: sketch assist over JSON (the body's parse, its base64 and image decoding,
the results' resize to the upload's size), sketch assist over OIP (the pixel rows made into uploads, the
resize), interpolation between two uploads, and style transfer's tiling and AdaIN. Each test fails if its
work goes back on the loop, or no longer goes through the recorded step at all.

    .venv/bin/python -m pytest tests/test_uploads_off_loop.py -q
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import style, tiles, uploads
from service.config import load_config
from service.engine import Engine
from service.registry import Registry
from service.server import ServingCore
from service.transports import assist_api, oip_edits
from service.transports.http_app import create_app

SIZE = (96, 64)  # (width, height)


@pytest.fixture(scope="module")
def core():
    config = load_config({"ATELIER_WARMUP": "false"})
    registry = Registry.load(config)
    return ServingCore(config, registry, Engine(registry, config))


@pytest.fixture
def client(core):
    app = create_app()
    app.state.core = core
    core.ready = True
    with TestClient(app) as running:
        yield running


class Recorder:
    """Wraps functions so each call records (name, ran on the event loop's thread, inside admission)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, core: ServingCore):
        self.calls: list[tuple[str, bool, bool]] = []
        self.admitted = 0
        real_admitted = core.admitted

        @contextlib.asynccontextmanager
        async def counted(*args, **kwargs):
            async with real_admitted(*args, **kwargs):
                self.admitted += 1
                try:
                    yield
                finally:
                    self.admitted -= 1

        monkeypatch.setattr(core, "admitted", counted)
        self.monkeypatch = monkeypatch

    def wrap(self, owner, name: str) -> None:
        real: Callable = getattr(owner, name)

        def recorded(*args, **kwargs):
            self.calls.append((name, on_event_loop(), self.admitted > 0))
            return real(*args, **kwargs)

        self.monkeypatch.setattr(owner, name, recorded)

    def assert_off_loop(self, expected: dict[str, bool]) -> None:
        """Every expected step ran, none on the event loop's thread; `expected` maps each to whether it must
        run once admitted."""
        assert {name for name, _, _ in self.calls} >= set(expected), self.calls
        for name, on_loop, admitted in self.calls:
            assert not on_loop, f"{name} ran on the event loop: {self.calls}"
            if expected.get(name):
                assert admitted, f"{name} ran before admission: {self.calls}"


def on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop runs on this thread: a worker thread
        return False
    return True


def sketch_png(flipped: bool = False) -> bytes:
    from PIL import ImageDraw

    image = Image.new("RGB", SIZE, "white")
    ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill=(220, 30, 40))
    if flipped:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


def test_the_recorder_sees_work_done_on_the_event_loop(client, core, monkeypatch):
    """The check itself can fail: a step called from a route's own coroutine records `on the loop`."""
    recorder = Recorder(monkeypatch, core)
    recorder.wrap(core, "class_id")  # resolved by the route, on the loop
    client.post("/v1/img2img", json={"image": b64(sketch_png()), "steps": 2, "class": 1})
    assert ("class_id", True, False) in recorder.calls


@pytest.mark.parametrize("route", ["/v1/img2img", "/v1/inpaint"])
def test_sketch_assist_parses_decodes_and_resizes_off_the_event_loop(client, core, monkeypatch, route):
    recorder = Recorder(monkeypatch, core)
    recorder.wrap(assist_api, "parse")
    for name in ("from_base64", "decode_edit", "restore_aspect"):
        recorder.wrap(uploads, name)
    body = {"image": b64(sketch_png()), "steps": 2, "seed": 1}
    if route == "/v1/inpaint":
        mask = Image.new("RGBA", SIZE, (0, 0, 0, 255))
        mask.paste((0, 0, 0, 0), (48, 0, 96, 64))
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        body["mask"] = b64(buffer.getvalue())
    response = client.post(route, json=body)
    assert response.status_code == 200, response.text
    # the parse precedes admission (it holds what admission prices); the files are decoded once admitted
    recorder.assert_off_loop({"parse": False, "from_base64": True, "decode_edit": True, "restore_aspect": False})


def test_sketch_assist_refusals_still_come_from_the_decoding_thread(client, core, monkeypatch):
    recorder = Recorder(monkeypatch, core)
    recorder.wrap(assist_api, "parse")
    recorder.wrap(uploads, "from_base64")
    bad_json = client.post("/v1/img2img", content=b'{"image": ', headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "invalid request" in bad_json.json()["error"]
    bad_base64 = client.post("/v1/img2img", json={"image": "%%% not base64", "steps": 2})
    assert bad_base64.status_code == 400 and "not valid base64" in bad_base64.json()["error"]
    recorder.assert_off_loop({"parse": False, "from_base64": True})


@pytest.mark.parametrize("model", ["img2img", "inpaint"])
def test_oip_sketch_assist_makes_its_pixels_into_uploads_off_the_event_loop(client, core, monkeypatch, model):
    recorder = Recorder(monkeypatch, core)
    recorder.wrap(oip_edits, "pixel_edits")
    recorder.wrap(uploads, "restore_aspect")
    pixels = np.asarray(Image.open(io.BytesIO(sketch_png())).convert("RGB"))[None]  # (1, 64, 96, 3)
    inputs = [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [3]},
              {"name": "image", "shape": list(pixels.shape), "datatype": "UINT8", "data": pixels.ravel().tolist()}]
    if model == "inpaint":
        repaint = np.zeros((1, 64, 96), bool)
        repaint[:, :, 48:] = True
        inputs.append({"name": "mask", "shape": list(repaint.shape), "datatype": "BOOL",
                       "data": repaint.ravel().tolist()})
    response = client.post(f"/v2/models/{model}/infer", json={"inputs": inputs, "parameters": {"steps": 2}})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 64, 96, 3]
    recorder.assert_off_loop({"pixel_edits": True, "restore_aspect": False})


def test_oip_shape_refusals_come_before_admission(client, core, monkeypatch):
    recorder = Recorder(monkeypatch, core)
    recorder.wrap(oip_edits, "pixel_edits")
    inputs = [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [3]},
              {"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [0] * 12},
              {"name": "mask", "shape": [1, 3, 2], "datatype": "BOOL", "data": [True] * 6}]
    response = client.post("/v2/models/inpaint/infer", json={"inputs": inputs})
    assert response.status_code == 400 and "input 'mask' is 3x2" in response.json()["error"]
    assert recorder.calls == []  # refused from the shapes, nothing decoded


def test_interpolation_between_uploads_decodes_them_off_the_event_loop(client, core, monkeypatch):
    recorder = Recorder(monkeypatch, core)
    for name in ("from_base64", "decode_edit"):
        recorder.wrap(uploads, name)
    response = client.post("/v1/interpolate", json={"images": [b64(sketch_png()), b64(sketch_png(flipped=True))],
                                                    "frames": 3})
    assert response.status_code == 200, response.text
    recorder.assert_off_loop({"from_base64": True, "decode_edit": True})


def test_a_sketch_assist_body_past_the_limit_is_still_413(client):
    """The routes read their body themselves now: the router's body limit still answers first."""
    from service.transports.http_app import ASSIST_MAX_BODY_BYTES

    response = client.post("/v1/img2img", content=b"x" * (ASSIST_MAX_BODY_BYTES + 1),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and "error" in response.json()


def test_style_transfer_cuts_joins_and_restyles_features_off_the_event_loop(client, core, monkeypatch):
    """An uploaded style: both images cut into tiles, the tiles' features joined, the style's moments taken and
    AdaIN applied, then the decoder's tiles cut and joined; ~25 ms of array work for 512 px, none on the loop."""
    recorder = Recorder(monkeypatch, core)
    for name in ("cut", "join"):
        recorder.wrap(tiles.Tiling, name)
    for name in ("moments", "adain"):
        recorder.wrap(style, name)
    response = client.post("/v1/style", json={"image": b64(sketch_png()), "style_image": b64(sketch_png(True))})
    assert response.status_code == 200, response.text
    recorder.assert_off_loop({"cut": True, "join": True, "moments": True, "adain": True})
