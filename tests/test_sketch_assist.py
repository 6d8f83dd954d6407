"""Sketch assist on a real served Atelier: `/v1/img2img` and `/v1/inpaint` (service/transports/assist_api.py).

A crude sketch (three filled shapes on a 96x64 canvas) goes in; strength 0 gives it back, strength 1 forgets
it, and in between the coarse layout survives less the higher the strength. The same sketch through OIP's
`img2img` and `inpaint` models gives the same images. The distances are logged:

    .venv/bin/python -m pytest tests/test_sketch_assist.py -q -o log_cli=true --log-cli-level=INFO
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import struct

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image, ImageDraw, ImageFilter
from tritonclient.grpc import service_pb2, service_pb2_grpc

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


def test_strength_zero_returns_the_sketch_at_its_own_aspect_recorded_as_a_composite(server):
    [image] = images_of(post(server, "/v1/img2img", image=b64(sketch()), strength=0.0))
    assert image.size == SIZE
    parameters = json.loads(image.text["parameters"])
    assert parameters["upload_sha256"] == hashlib.sha256(sketch()).hexdigest() and parameters["composite"] is True
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


# --- the same over the Open Inference Protocol: models `img2img` and `inpaint` (service/transports/oip.py) ---

def sketch_pixels(flipped: bool = False) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(sketch(flipped))).convert("RGB"))  # (64, 96, 3)


def oip_inputs(module, seeds, pixels: np.ndarray, mask: np.ndarray | None = None, prompt: str | None = None) -> list:
    """tritonclient inputs: `seed`, `image` (N, H, W, 3) uint8, and `mask` (N, H, W) bool and `prompt` when given."""
    tensors = []
    for name, array, datatype in (("seed", np.array(seeds, np.int64), "INT64"), ("image", pixels, "UINT8"),
                                  ("mask", mask, "BOOL"),
                                  ("prompt", None if prompt is None else np.array([prompt.encode()] * len(seeds),
                                                                                  object), "BYTES")):
        if array is not None:
            tensor = module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
    return tensors


def test_oip_img2img_gives_the_json_routes_image_at_the_inputs_aspect(server):
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    try:
        result = client.infer("img2img", oip_inputs(triton_http, [4], sketch_pixels()[None], prompt="a red heart"),
                              parameters={"steps": 10, "strength": 0.3})
    finally:
        client.close()
    over_oip = result.as_numpy("image")
    assert over_oip.shape == (1, 64, 96, 3) and over_oip.dtype == np.uint8
    [over_json] = images_of(post(server, "/v1/img2img", image=b64(sketch()), strength=0.3))
    assert np.array_equal(over_oip[0], np.asarray(over_json.convert("RGB")))  # a sketch, one image, both protocols


def test_oip_inpaint_over_grpc_matches_the_json_route(server):
    repaint = np.zeros((1, 64, 96), bool)
    repaint[:, :, 48:] = True  # the right half
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        result = client.infer("inpaint", oip_inputs(triton_grpc, [4, 5], np.stack([sketch_pixels()] * 2),
                                                    np.concatenate([repaint] * 2), prompt="a red heart"),
                              parameters={"steps": 10})
    finally:
        client.close()
    over_grpc = result.as_numpy("image")
    assert over_grpc.shape == (2, 64, 96, 3) and not np.array_equal(over_grpc[0], over_grpc[1])  # seeds 4 and 5
    mask = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (48, 0, 96, 64))
    [over_json, _] = images_of(post(server, "/v1/inpaint", image=b64(sketch()), mask=b64(png_of(mask)), n=2))
    assert np.array_equal(over_grpc[0], np.asarray(over_json.convert("RGB")))


def test_oip_sketch_assist_models_describe_their_tensors(server):
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        img2img, inpaint, diffusion = (client.get_model_metadata(name) for name in ("img2img", "inpaint", "diffusion"))
    finally:
        client.close()
    def tensors(metadata, kind="inputs"):
        return {t["name"]: (t["datatype"], t["shape"]) for t in metadata[kind]}
    assert tensors(img2img)["image"] == ("UINT8", [-1, -1, -1, 3]) and "mask" not in tensors(img2img)
    assert tensors(inpaint)["mask"] == ("BOOL", [-1, -1, -1])
    assert tensors(inpaint, "outputs")["image"] == ("UINT8", [-1, -1, -1, 3])
    assert img2img["versions"] == diffusion["versions"]
    assert "strength" in img2img["parameters"] and "strength" not in diffusion["parameters"]


def oip_json(model: str, *inputs: tuple[str, str, list, list], **parameters) -> tuple[str, dict]:
    body = {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}
                       for name, datatype, shape, data in inputs]}
    return f"/v2/models/{model}/infer", {**body, "parameters": parameters} if parameters else body


SEED = ("seed", "INT64", [1], [4])
PIXELS = ("image", "UINT8", [1, 2, 3, 3], [200] * 18)
BAD_OIP = {
    "image without its channel axis": (oip_json("img2img", SEED, ("image", "UINT8", [1, 2, 9], [0] * 18)),
                                       "must have shape \\[N, H, W, 3\\], got \\[1, 2, 9\\]"),
    "RGBA image": (oip_json("img2img", SEED, ("image", "UINT8", [1, 2, 2, 4], [0] * 16)), "\\[N, H, W, 3\\]"),
    "image of no pixels": (oip_json("img2img", SEED, ("image", "UINT8", [1, 0, 3, 3], [])), "no pixels"),
    "image rows differ from seeds": (oip_json("img2img", ("seed", "INT64", [2], [4, 5]), PIXELS), "same length"),
    "pixel out of range": (oip_json("img2img", SEED, ("image", "UINT8", [1, 1, 1, 3], [0, 0, 300])), "out of range"),
    "a claimed size the data lacks": (oip_json("img2img", SEED, ("image", "UINT8", [1, 50000, 50000, 3], [0] * 3)),
                                      "needs 7500000000 elements, got 3"),
    "mask missing": (oip_json("inpaint", SEED, PIXELS), "missing input 'mask'"),
    "mask of the wrong size": (oip_json("inpaint", SEED, PIXELS, ("mask", "BOOL", [1, 3, 2], [True] * 6)),
                               "'mask' is 3x2 \\(height x width\\) but 'image' is 2x3"),
    "mask not boolean": (oip_json("inpaint", SEED, PIXELS, ("mask", "UINT8", [1, 2, 3], [1] * 6)), "must be BOOL"),
    "strength out of bounds": (oip_json("img2img", SEED, PIXELS, strength=1.5), "strength must be between 0 and 1"),
    "strength on a generating model": (oip_json("diffusion", SEED, strength=0.5), "parameter 'strength' is for"),
    "image on a generating model": (oip_json("diffusion", SEED, PIXELS), "has no input 'image'"),
}


@pytest.mark.parametrize("case", BAD_OIP)
def test_bad_oip_sketch_assist_input_is_400_with_a_reason_and_the_server_stays_healthy(server, case):
    (path, body), reason = BAD_OIP[case]
    response = httpx.post(server.url + path, json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert re.search(reason, response.json()["error"]), response.json()
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200


def test_bad_oip_sketch_assist_input_over_grpc_is_invalid_argument(server):
    request = service_pb2.ModelInferRequest(model_name="inpaint", raw_input_contents=[
        struct.pack("<q", 4), bytes(2 * 3 * 3), bytes(3 * 2)])
    for name, datatype, shape in (("seed", "INT64", [1]), ("image", "UINT8", [1, 2, 3, 3]), ("mask", "BOOL", [1, 3, 2])):
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as failure:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'mask' is 3x2" in failure.value.details()
