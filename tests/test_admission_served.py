"""Admission and priorities on the real server with its defaults (`bentoml serve`, 127.0.0.1): ordinary
concurrent load is admitted, and every transport takes `priority`."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as triton_grpc

from harness.serving import metric_value


def test_64_concurrent_one_image_gan_requests_are_all_admitted_with_the_defaults(server):
    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            answers = await asyncio.gather(*(client.post(server.url + "/v1/generate", json={"model": "dcgan", "seed": i})
                                             for i in range(64)))
        return [answer.status_code for answer in answers]

    refused_before = metric_value(server.metrics(), "atelier_requests_total", status="429")
    assert asyncio.run(burst()) == [200] * 64
    assert metric_value(server.metrics(), "atelier_requests_total", status="429") == refused_before


def test_the_autoscaling_gauges_are_exported(server):
    page = server.metrics()
    assert "atelier_predicted_wait_seconds " in page and "atelier_pending_work_seconds " in page


def test_batch_priority_gives_the_same_image_on_the_json_api(server):
    images = [httpx.post(server.url + "/v1/generate", timeout=60,
                         json={"model": "dcgan", "seed": 11, "priority": priority}).json()["images"][0]["png_base64"]
              for priority in ("interactive", "batch")]
    assert images[0] == images[1]  # priority decides when it runs, not what it draws (nor its provenance)


def test_oip_takes_priority_as_a_parameter_on_both_transports(server):
    seed = triton_grpc.InferInput("seed", [1], "INT64")
    seed.set_data_from_numpy(np.array([5], np.int64))
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        image = client.infer("dcgan", [seed], priority=2).as_numpy("image")  # Triton's levels: 2 and above = batch
    finally:
        client.close()
    body = {"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [5]}],
            "parameters": {"priority": "batch"}}
    answer = httpx.post(server.url + "/v2/models/dcgan/infer", json=body, timeout=60).json()
    assert np.array_equal(np.array(answer["outputs"][0]["data"], np.uint8).reshape(image.shape), image)
    metadata = httpx.get(server.url + "/v2/models/dcgan", timeout=10).json()
    assert "priority" in metadata["parameters"]


def test_openai_takes_priority_as_an_extra_field(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    result = client.images.generate(model="dcgan", prompt="a cat", extra_body={"seed": 3, "priority": "batch"})
    assert result.data[0].b64_json


@pytest.mark.parametrize("send", ["json", "oip_http"])
def test_an_unknown_priority_is_a_400(server, send):
    if send == "json":
        answer = httpx.post(server.url + "/v1/generate", json={"model": "dcgan", "priority": "urgent"}, timeout=30)
    else:
        answer = httpx.post(server.url + "/v2/models/dcgan/infer", timeout=30, json={
            "inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [1]}],
            "parameters": {"priority": "urgent"}})
    assert answer.status_code == 400 and "priority" in answer.json()["error"]
