"""Fuzzing the served Atelier: schemathesis over every operation of its OpenAPI schema (valid and
invalid requests), and hypothesis over OIP v2 infer bodies, JSON and binary (the route reads its
body raw, so the schema cannot describe it). Over 1,000 requests; not one may answer 5xx, and
the server must be healthy and generating afterwards.

Cost bound: a generated `steps` or `n` that is a valid integer is capped (steps <= 6, n <= 2)
before the request is sent, so a thousand requests take about a minute on 2 cores rather than
an hour at the limits; the limits themselves are tested in test_api.py.

    .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import json
import struct

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

SCHEMA_EXAMPLES = {GenerationMode.POSITIVE: 450, GenerationMode.NEGATIVE: 350}
OIP_EXAMPLES = 300
CHEAP = {"steps": 6, "n": 2}
SETTINGS = dict(deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=list(HealthCheck))


def cheapen(values) -> None:
    """Cap expensive but valid work in a generated body or query (see the module docstring)."""
    if isinstance(values, dict):
        for key, cap in CHEAP.items():
            if isinstance(values.get(key), int) and not isinstance(values.get(key), bool):
                values[key] = min(values[key], cap)


class Sent:
    """Every fuzzed request's status, for the count and for the message of a failure."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.fuzzers_done = 0

    def record(self, status: int, description: str) -> None:
        self.statuses.append(status)
        assert status < 500, f"{status} from {description}"


@pytest.fixture(scope="module")
def sent(server):
    record = Sent()
    yield record
    if record.fuzzers_done == len(SCHEMA_EXAMPLES) + 1:  # every fuzzer of this module ran
        assert len(record.statuses) >= 1000, f"only {len(record.statuses)} requests were sent"
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize("mode", list(SCHEMA_EXAMPLES), ids=str)
def test_no_openapi_operation_answers_5xx_to_generated_requests(server, sent, mode):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    session = requests.Session()

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=SCHEMA_EXAMPLES[mode], **SETTINGS)
    def fuzz(case):
        cheapen(case.body)
        cheapen(case.query)
        response = case.call(base_url=server.url, session=session, timeout=60)
        sent.record(response.status_code, f"{case.method} {case.formatted_path} {case.body!r:.300} {case.query}")

    fuzz()
    sent.fuzzers_done += 1


DATATYPES = ["INT64", "INT32", "UINT8", "FP32", "FP16", "FP64", "BYTES", "BOOL", "NONSENSE"]
NAMES = ["seed", "class_id", "prompt", "image", "extra"]


@st.composite
def oip_tensor(draw):
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    tensor = {"name": draw(st.sampled_from(NAMES)), "datatype": draw(st.sampled_from(DATATYPES)), "shape": shape}
    elements = st.one_of(st.integers(-2**64, 2**64), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(),
                         st.none())
    tensor["data"] = draw(st.one_of(st.lists(elements, max_size=6), st.lists(st.integers(0, 10), max_size=4),
                                    st.just([7]), elements))
    if draw(st.booleans()):
        tensor.pop("data")
        tensor["parameters"] = {"binary_data_size": draw(st.integers(-4, 64))}
    return tensor


@st.composite
def oip_request(draw):
    """(model, JSON header, binary tail, declared header length or None)."""
    header = {"inputs": draw(st.lists(oip_tensor(), max_size=3)),
              "parameters": draw(st.dictionaries(st.sampled_from(["steps", "guidance", "sampler", "eta", "stepz",
                                                                  "binary_data_output"]),
                                                 st.one_of(st.integers(-3, 8), st.floats(-1, 30), st.text(max_size=5),
                                                           st.booleans()), max_size=3))}
    if draw(st.booleans()):
        header["outputs"] = [{"name": draw(st.sampled_from(["image", "other"])),
                              "parameters": {"binary_data": draw(st.booleans())}}]
    tail = draw(st.binary(max_size=48))
    declared = draw(st.one_of(st.none(), st.just("exact"), st.integers(-5, 400).map(str), st.just("abc")))
    model = draw(st.sampled_from(["dcgan", "gmm", "vae", "diffusion", "nope"]))
    return model, header, tail, declared


def test_no_oip_infer_body_answers_5xx(server, sent):
    client = httpx.Client(timeout=60)

    @given(request=oip_request())
    @settings(max_examples=OIP_EXAMPLES, **SETTINGS)
    def fuzz(request):
        model, header, tail, declared = request
        head = json.dumps(header).encode()
        headers = {"content-type": "application/octet-stream" if declared else "application/json"}
        if declared is not None:
            headers["inference-header-content-length"] = declared if declared != "exact" else str(len(head))
        body = head + tail if declared is not None else head
        response = client.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers)
        sent.record(response.status_code, f"infer {model} {body[:300]!r} {headers}")
        if response.status_code >= 400:
            assert "error" in response.json()  # the protocol's error shape

    fuzz()
    sent.fuzzers_done += 1


def test_a_well_formed_binary_request_still_works_after_the_fuzzing(server):
    seed = struct.pack("<q", 5)
    header = json.dumps({"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64",
                                     "parameters": {"binary_data_size": len(seed)}}]}).encode()
    response = httpx.post(f"{server.url}/v2/models/dcgan/infer", content=header + seed, timeout=30,
                          headers={"inference-header-content-length": str(len(header))})
    assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [1, 32, 32, 3]
