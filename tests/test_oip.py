"""Open Inference Protocol v2 end to end, with the published clients against the real served Atelier:
tritonclient over HTTP (binary tensors, as it sends by default, and JSON) and over gRPC (raw
contents), Triton's own protobuf stubs for typed `contents` and for requests no client would build,
and the OpenAI SDK for the one-image-through-every-protocol check.

    .venv/bin/python -m pytest tests/test_oip.py -q
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from harness.serving import ROOT, AtelierServer, metric_value
from service import manifest

FEW_STEPS = {"steps": 4}  # diffusion at 4 steps keeps each request well under a second on 2 cores


@pytest.fixture(scope="module")
def http_client(server):
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_stub(server):
    """Triton's generated stub: sends exactly the protobuf a test builds, malformed or not."""
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def inputs_for(module, seeds, class_ids=None, prompts=None, binary=True) -> list:
    """tritonclient inputs: `seed`, and `class_id` / `prompt` when given, one row per image."""
    tensors = []
    for name, values, datatype in (("seed", seeds, "INT64"), ("class_id", class_ids, "INT64"),
                                   ("prompt", prompts, "BYTES")):
        if values is None:
            continue
        array = np.array([v.encode() for v in values], object) if datatype == "BYTES" else np.array(values, np.int64)
        tensor = module.InferInput(name, [len(values)], datatype)
        if module is triton_http:
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def oip_images(client, model: str, seeds, class_ids=None, prompts=None, binary=True, **parameters) -> np.ndarray:
    module = triton_http if isinstance(client, triton_http.InferenceServerClient) else triton_grpc
    outputs = [triton_http.InferRequestedOutput("image", binary_data=binary)] if module is triton_http else None
    result = client.infer(model, inputs_for(module, seeds, class_ids, prompts, binary), outputs=outputs,
                          parameters=parameters or None)
    return result.as_numpy("image")


def test_server_is_live_ready_and_describes_itself_over_both_transports(http_client, grpc_client):
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert http_client.is_model_ready("diffusion") and grpc_client.is_model_ready("dcgan", served_version("dcgan"))
    http_metadata = http_client.get_server_metadata()
    grpc_metadata = grpc_client.get_server_metadata(as_json=True)
    assert http_metadata["name"] == grpc_metadata["name"] == "atelier"
    assert "binary_tensor_data" in http_metadata["extensions"]


def served_version(model: str) -> str:
    """The committed manifest's version: models are republished with new versions (dcgan 2.0.0)."""
    return manifest.read(ROOT / "models" / model).version


@pytest.mark.parametrize("model", ["dcgan", "diffusion"])
def test_model_metadata_lists_typed_tensors_over_both_transports(http_client, grpc_client, model):
    over_http = http_client.get_model_metadata(model)
    over_grpc = grpc_client.get_model_metadata(model, as_json=True)
    for metadata in (over_http, over_grpc):
        assert metadata["name"] == model and metadata["versions"] == [served_version(model)]
        inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]}
        assert inputs == {"seed": ("INT64", [-1]), "class_id": ("INT64", [-1]), "prompt": ("BYTES", [-1])}
        image = metadata["outputs"][0]
        # 32x32, or 128x128 with the parameter upscale: 4
        assert (image["name"], image["datatype"], [int(d) for d in image["shape"]]) == ("image", "UINT8",
                                                                                      [-1, -1, -1, 3])
    assert ("steps" in over_http["parameters"]) == (model == "diffusion") and "upscale" in over_http["parameters"]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_upscale_4_is_the_json_apis_cascade_over_both_transports(server, http_client, grpc_client, transport):
    """upscale: 4 on every protocol: the same 128 px pixels as /v1/generate's for the same seed and class."""
    client = http_client if transport == "http" else grpc_client
    images = oip_images(client, "dcgan", seeds=[5, 6], class_ids=[2, 2], upscale=4)
    assert images.shape == (2, 128, 128, 3)
    body = httpx.post(server.url + "/v1/generate", json={"model": "dcgan", "n": 2, "seed": 5, "class": 2, "upscale": 4,
                                                          "output": "raw"}, timeout=60).json()
    expected = np.stack([np.frombuffer(base64.b64decode(item["raw_base64"]), np.uint8).reshape(128, 128, 3)
                         for item in body["images"]])
    np.testing.assert_array_equal(images, expected)
    refused = httpx.post(server.url + "/v2/models/dcgan/infer", json={**seed_json(), "parameters": {"upscale": 2}},
                         timeout=30)
    assert refused.status_code == 400 and "upscale" in refused.json()["error"]


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("model", ["dcgan", "diffusion"])
def test_infer_returns_one_uint8_image_per_seed(http_client, grpc_client, transport, model):
    client = http_client if transport == "http" else grpc_client
    images = oip_images(client, model, seeds=[3, 4, 5], class_ids=[2, 2, -1], **FEW_STEPS)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert not np.array_equal(images[0], images[1])  # each row has its own seed, so its own noise
    assert images.std() > 5  # a picture, not a constant


def test_versioned_paths_answer_like_the_unversioned_ones(server, http_client):
    assert http_client.get_model_metadata("vae", "1.0.0")["name"] == "vae"
    body = {"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [1]}]}
    answer = httpx.post(server.url + "/v2/models/vae/versions/1.0.0/infer", json=body, timeout=60).json()
    assert answer["model_version"] == "1.0.0" and answer["outputs"][0]["shape"] == [1, 32, 32, 3]


def test_same_seed_gives_same_image_through_every_protocol(server, http_client, grpc_client, grpc_stub):
    """One request (diffusion, seed 7, class 2, a prompt, 4 steps), six ways: all pixel-identical."""
    request = {"seed": 7, "class": 2, "prompt": "a red heart", **FEW_STEPS}
    images = {}
    generated = httpx.post(server.url + "/v1/generate", json={"model": "diffusion", **request, "output": "raw"},
                           timeout=60).json()["images"][0]
    images["json"] = np.frombuffer(base64.b64decode(generated["raw_base64"]), np.uint8).reshape(generated["shape"])
    row = {"seeds": [7], "class_ids": [2], "prompts": ["a red heart"]}
    images["oip_http_binary"] = oip_images(http_client, "diffusion", **row, **FEW_STEPS)[0]
    images["oip_http_json"] = oip_images(http_client, "diffusion", **row, binary=False, **FEW_STEPS)[0]
    images["oip_grpc_raw"] = oip_images(grpc_client, "diffusion", **row, **FEW_STEPS)[0]
    typed = typed_contents_request("diffusion", seeds=[7], class_ids=[2], prompts=[b"a red heart"], steps=4)
    answer = grpc_stub.ModelInfer(typed, timeout=60)
    images["oip_grpc_typed"] = np.frombuffer(answer.raw_output_contents[0], np.uint8).reshape(answer.outputs[0].shape)[0]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    png = client.images.generate(model="diffusion", prompt="a red heart", extra_body={"seed": 7, "class": 2, "steps": 4})
    images["openai"] = np.asarray(Image.open(io.BytesIO(base64.b64decode(png.data[0].b64_json))).convert("RGB"))
    for name, image in images.items():
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8, name
        assert np.array_equal(image, images["json"]), f"{name} differs from /v1/generate"


def typed_contents_request(model: str, seeds, class_ids=(), prompts=(), steps: int = 4) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.parameters["steps"].int64_param = steps
    request.inputs.add(name="seed", datatype="INT64", shape=[len(seeds)]).contents.int64_contents.extend(seeds)
    if class_ids:
        request.inputs.add(name="class_id", datatype="INT64", shape=[len(class_ids)]).contents.int64_contents.extend(
            class_ids)
    if prompts:
        request.inputs.add(name="prompt", datatype="BYTES", shape=[len(prompts)]).contents.bytes_contents.extend(prompts)
    return request


# Malformed requests: (HTTP request, expected status, gRPC request, expected code, words of the message)
def seed_json(**overrides) -> dict:
    return {"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [7], **overrides}]}


def binary_request(header: dict, binary: bytes, header_length: int | None = None) -> dict:
    encoded = json.dumps(header).encode()
    length = len(encoded) if header_length is None else header_length
    return {"content": encoded + binary, "headers": {"Inference-Header-Content-Length": str(length)}}


def raw_request(model="dcgan", version="", inputs=(("seed", "INT64", [1]),), raw=(struct.pack("<q", 7),), **kw):
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, raw_input_contents=list(raw))
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    for name, value in kw.items():
        request.parameters[name].string_param = value
    return request


BINARY_SEED = {"inputs": [{"name": "seed", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}]}
MALFORMED = {
    "wrong datatype": ({"json": seed_json(datatype="FP32", data=[7.0])}, 400,
                       raw_request(inputs=[("seed", "FP32", [1])], raw=[struct.pack("<f", 7)]), "INVALID_ARGUMENT",
                       "must be INT64, got FP32"),
    "shape and data size differ": ({"json": seed_json(shape=[2])}, 400,
                                   raw_request(inputs=[("seed", "INT64", [2])]), "INVALID_ARGUMENT", "needs"),
    "binary size beyond the body": (binary_request(BINARY_SEED, struct.pack("<q", 7)), 400,
                                    raw_request(raw=[struct.pack("<q", 7)] * 2), "INVALID_ARGUMENT",
                                    "beyond|2 entries for 1 inputs"),
    "header length beyond the body": (binary_request(seed_json(), b"", header_length=10_000), 400,
                                      raw_request(inputs=[("prompt", "BYTES", [1]), ("seed", "INT64", [1])],
                                                  raw=[struct.pack("<I", 99) + b"short", struct.pack("<q", 7)]),
                                      "INVALID_ARGUMENT", "within the|beyond the tensor"),
    "unknown model": ({"json": seed_json(), "path": "/v2/models/stable-diffusion/infer"}, 404,
                      raw_request(model="stable-diffusion"), "NOT_FOUND", "unknown model 'stable-diffusion'"),
    "unknown version": ({"json": seed_json(), "path": "/v2/models/dcgan/versions/9/infer"}, 404,
                        raw_request(version="9"), "NOT_FOUND", "no version '9'"),
    "missing input": ({"json": {"inputs": [{"name": "class_id", "shape": [1], "datatype": "INT64", "data": [1]}]}},
                      400, raw_request(inputs=[("class_id", "INT64", [1])]), "INVALID_ARGUMENT",
                      "missing input 'seed'"),
    "unknown parameter": ({"json": {**seed_json(), "parameters": {"stepz": 4}}}, 400,
                          raw_request(stepz="4"), "INVALID_ARGUMENT", "unknown parameter 'stepz'"),
    "not JSON": ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
                 raw_request(inputs=[("seed", "INT64", [-1])]), "INVALID_ARGUMENT", "invalid inference request|negative"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_request_gets_protocol_error_and_server_stays_healthy(server, grpc_stub, http_client, case):
    http_request, status, grpc_request, code, words = MALFORMED[case]
    http_request = dict(http_request)
    path = http_request.pop("path", "/v2/models/dcgan/infer")
    response = httpx.post(server.url + path, timeout=10, **http_request)
    assert response.status_code == status and re.search(words, response.json()["error"]), response.text
    with pytest.raises(grpc.RpcError) as failure:
        grpc_stub.ModelInfer(grpc_request, timeout=10)
    assert failure.value.code().name == code and re.search(words, failure.value.details()), failure.value
    assert http_client.is_server_ready() and len(oip_images(http_client, "dcgan", seeds=[1])) == 1


def test_published_clients_surface_the_error_message(http_client, grpc_client):
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as over_http:
        http_client.infer("nope", inputs_for(triton_http, [1]))
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as over_grpc:
        grpc_client.infer("nope", inputs_for(triton_grpc, [1]))
    assert over_http.value.status() == "404" and over_grpc.value.status() == "StatusCode.NOT_FOUND"


def test_concurrent_grpc_and_http_requests_share_engine_batches(server, http_client, grpc_client):
    """One gRPC and one HTTP diffusion request, one row each per step (guidance 1: no unconditional
    row). Alone, each would make 1-row runs; more than 1 row per run means they shared runs."""
    before = server.metrics()
    grpc_done = []
    grpc_client.async_infer("diffusion", inputs_for(triton_grpc, [21], [3]),
                            callback=lambda result, error: grpc_done.append((result, error)),
                            parameters={"steps": 30, "guidance": 1.0})
    http_image = oip_images(http_client, "diffusion", seeds=[22], class_ids=[3], steps=30, guidance=1.0)
    deadline = time.monotonic() + 60
    while not grpc_done and time.monotonic() < deadline:
        time.sleep(0.05)
    result, error = grpc_done[0]
    assert error is None and result.as_numpy("image").shape == http_image.shape == (1, 32, 32, 3)
    after = server.metrics()

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    rows = delta("atelier_batch_rows_sum", function="diffusion.denoise")
    runs = delta("atelier_batch_rows_count", function="diffusion.denoise")
    assert delta("atelier_requests_total", protocol="oip_grpc") == 1
    assert delta("atelier_requests_total", protocol="oip_http") == 1
    assert rows == 60 and rows / runs > 1.0, f"{rows} rows in {runs} runs"


@pytest.fixture(scope="module")
def guarded_server():
    """A server with an API key and room for one request in flight (no warm-up: starts faster)."""
    with AtelierServer(env={"ATELIER_API_KEY": "test-key", "ATELIER_MAX_INFLIGHT": "1",
                            "ATELIER_WARMUP": "false"}) as running:
        yield running


def test_grpc_needs_the_api_key_except_for_health(guarded_server):
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{guarded_server.grpc_port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        with pytest.raises(InferenceServerException, match="API key") as refused:
            client.get_model_metadata("dcgan")
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        key = {"authorization": "Bearer test-key"}
        assert client.get_model_metadata("dcgan", headers=key, as_json=True)["name"] == "dcgan"
        assert client.infer("dcgan", inputs_for(triton_grpc, [1]), headers=key).as_numpy("image").shape[0] == 1
    finally:
        client.close()


def test_requests_beyond_the_inflight_limit_are_refused_on_both_transports(guarded_server):
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{guarded_server.grpc_port}")
    key = {"authorization": "Bearer test-key"}
    try:
        busy = client.async_infer("diffusion", inputs_for(triton_grpc, [1]), callback=lambda *_: None, headers=key,
                                  parameters={"steps": 200, "guidance": 1.0})
        deadline = time.monotonic() + 10
        while metric_value(guarded_server.metrics(), "atelier_inflight") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(InferenceServerException, match="in flight") as refused:
            client.infer("dcgan", inputs_for(triton_grpc, [1]), headers=key)
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        response = httpx.post(guarded_server.url + "/v2/models/dcgan/infer", json=seed_json(),
                              headers={"authorization": "Bearer test-key"}, timeout=10)
        assert response.status_code == 429 and "in flight" in response.json()["error"]
        assert response.headers["retry-after"]
        busy.cancel()  # a client that gives up cancels the remaining steps
        deadline = time.monotonic() + 10
        while metric_value(guarded_server.metrics(), "atelier_inflight") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        # ...and is counted as a client that went away (499), not as a server error
        after = guarded_server.metrics()
        assert metric_value(after, "atelier_requests_total", model="diffusion", protocol="oip_grpc", status="499") == 1
        assert metric_value(after, "atelier_requests_total", status="500") == 0
        assert client.infer("dcgan", inputs_for(triton_grpc, [1]), headers=key).as_numpy("image").shape[0] == 1
    finally:
        client.close()


# The fenced ```bash and ```python blocks of docs/PROTOCOLS.md and of README's protocol section:
# the examples readers copy.
README_PROTOCOLS = re.search(r"### Standard protocols\n(.*?)\n###? ", (ROOT / "README.md").read_text(), re.S)[1]
DOC_EXAMPLES = re.findall(r"```(bash|python)\n(.*?)```",
                          (ROOT / "docs" / "PROTOCOLS.md").read_text() + README_PROTOCOLS, re.S)


@pytest.mark.parametrize("language,code", DOC_EXAMPLES, ids=[f"{lang}-{i}" for i, (lang, _) in enumerate(DOC_EXAMPLES)])
def test_protocols_doc_example_runs_against_the_server(server, tmp_path: Path, language, code):
    code = code.replace("localhost:3000", server.url.removeprefix("http://"))
    code = code.replace("localhost:8001", f"127.0.0.1:{server.grpc_port}")
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "32, 32" in done.stdout, done.stdout  # every example prints an image shape or size


def test_grpc_calls_get_a_request_id_back_as_over_http(grpc_stub):
    _, call = grpc_stub.ServerLive.with_call(service_pb2.ServerLiveRequest(), metadata=[("x-request-id", "trace-42")])
    assert dict(call.initial_metadata())["x-request-id"] == "trace-42"
    with pytest.raises(grpc.RpcError) as failure:
        grpc_stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="nope"))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert re.fullmatch(r"[0-9a-f]{32}", dict(failure.value.initial_metadata())["x-request-id"])
