"""Fuzzing the served Atelier: schemathesis over every operation of its OpenAPI schema (valid and
invalid requests), hypothesis over OIP v2 infer bodies, JSON and binary (the route reads its
body raw, so the schema cannot describe it), and hypothesis over the attack classes of issue 17
(docs/RELIABILITY.md): hostile uploads (metadata chunks that inflate, progressive JPEGs of many
scans, mangled headers), absurd headers, unknown and Unicode query parameters, type-confused JSON,
random paths and methods. Over 1,000 requests; not one may answer 5xx, every error answer has its
protocol's shape (`{"error": "..."}`, OpenAI's `{"error": {"message", ...}}` under /v1/images), and
the server must be healthy and generating afterwards.

Cost bound: a generated `steps` or `n` that is a valid integer is capped (steps <= 6, n <= 2)
before the request is sent, so a thousand requests take about a minute on 2 cores rather than
an hour at the limits; the limits themselves are tested in test_api.py.

    .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
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
    if record.fuzzers_done == len(SCHEMA_EXAMPLES) + 1 + HOSTILE_FUZZERS:  # every fuzzer of this module ran
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


# --- the attack classes of issue 17 -------------------------------------------------------------------

HOSTILE_EXAMPLES = 60  # per fuzzer below
HOSTILE_FUZZERS = 5


def assert_error_shape(response: httpx.Response, path: str) -> None:
    """An error answer has its protocol's body and the request id."""
    assert "x-request-id" in response.headers, path
    error = response.json()["error"]
    if path.startswith("/v1/images/"):
        assert isinstance(error, dict) and isinstance(error["message"], str), (path, response.text[:300])
    else:
        assert isinstance(error, str), (path, response.text[:300])


def record_answer(sent: Sent, response: httpx.Response, path: str, description: str) -> None:
    sent.record(response.status_code, description)
    if response.status_code >= 400:
        assert_error_shape(response, path)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@st.composite
def hostile_upload(draw) -> bytes:
    """A small PNG or JPEG, then mangled: extra chunks (text or ICC that inflate up to past Pillow's 1 MiB
    limit, or garbage), repeated JPEG scans, flipped or cut bytes, or random bytes with an image's magic."""
    kind = draw(st.sampled_from(["png", "jpeg", "progressive", "random"]))
    if kind == "random":
        return draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\0\0\0\0WEBP", b""])) + \
            draw(st.binary(max_size=200))
    buffer = io.BytesIO()
    size = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG" if kind == "png" else "JPEG",
                                               progressive=kind == "progressive")
    data = buffer.getvalue()
    if kind == "png" and draw(st.booleans()):
        chunk_kind = draw(st.sampled_from([b"zTXt", b"iCCP", b"iTXt", b"tEXt", b"eXIf", b"zzZz"]))
        inflated = zlib.compress(b"a" * draw(st.sampled_from([10, 1 << 20, (1 << 20) + 1, 3 << 20])), 9)
        payload = draw(st.sampled_from([b"k\0\0" + inflated, b"k\0\1\0\0\0" + inflated, b"k\0" + inflated]))
        data = data[:33] + png_chunk(chunk_kind, draw(st.one_of(st.just(payload), st.binary(max_size=64)))) + data[33:]
    if kind == "progressive" and draw(st.booleans()):
        end, scan = data.rindex(b"\xff\xd9"), data.rindex(b"\xff\xda")
        data = data[:end] + data[scan:end] * draw(st.integers(1, 80)) + data[end:]
    if draw(st.booleans()):  # flip a byte or cut the tail
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:] if draw(st.booleans()) else data[:at]
    return data


def test_no_hostile_upload_answers_5xx(server, sent):
    client = httpx.Client(timeout=60)

    @given(upload=hostile_upload(), route=st.sampled_from(["variations", "edits", "img2img", "inpaint"]))
    @settings(max_examples=HOSTILE_EXAMPLES, **SETTINGS)
    def fuzz(upload, route):
        settings_ = {"model": "diffusion", "steps": 2, "seed": 1}
        if route in ("variations", "edits"):
            path = f"/v1/images/{route}"
            files = {"image": ("upload", upload)} | ({"mask": ("mask", upload)} if route == "edits" else {})
            data = {key: str(value) for key, value in settings_.items()} | ({"prompt": "x"} if route == "edits" else {})
            response = client.post(server.url + path, files=files, data=data)
        else:
            path = f"/v1/{route}"
            encoded = base64.b64encode(upload).decode()
            body = settings_ | {"image": encoded} | ({"mask": encoded} if route == "inpaint" else {})
            response = client.post(server.url + path, json=body)
        record_answer(sent, response, path, f"{route} upload {upload[:80]!r}")

    fuzz()
    sent.fuzzers_done += 1


TEXT = st.text(st.characters(codec="latin-1"), max_size=40)  # what an HTTP header can carry


def test_no_absurd_header_answers_5xx(server, sent):
    client = httpx.Client(timeout=60)
    seed = struct.pack("<q", 3)
    header = json.dumps({"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64",
                                     "parameters": {"binary_data_size": len(seed)}}]}).encode()

    @given(length=st.one_of(TEXT, st.integers(-10, 10**40).map(str), st.just("9" * 5000)), request_id=TEXT,
           encoding=st.sampled_from(["identity", "gzip", "br", "\u00e9"]), content_type=TEXT)
    @settings(max_examples=HOSTILE_EXAMPLES, **SETTINGS)
    def fuzz(length, request_id, encoding, content_type):
        headers = {"inference-header-content-length": length.encode("latin-1"),
                   "x-request-id": request_id.encode("latin-1"), "content-encoding": encoding.encode("latin-1"),
                   "content-type": content_type.encode("latin-1")}
        try:
            response = client.post(f"{server.url}/v2/models/dcgan/infer", content=header + seed, headers=headers)
        except httpx.LocalProtocolError:  # the client itself refuses to send such a header
            return
        record_answer(sent, response, "/v2/models/dcgan/infer", f"headers {headers!r:.300}")

    fuzz()
    sent.fuzzers_done += 1


UNICODE_DIGITS = st.sampled_from(["\u00b3", "\u0663", "\uff13", "\U0001d7db", "\u2463", "3\u00b3", "\u0033\u0663"])


def test_no_query_string_answers_5xx(server, sent):
    client = httpx.Client(timeout=60)
    names = st.sampled_from(["model", "class", "prompt", "seed", "steps", "guidance", "sampler", "priority", "eta",
                             "n", "", "class[]", "\u00e9"])
    values = st.one_of(st.text(max_size=12), UNICODE_DIGITS, st.integers(-2**70, 2**70).map(str),
                       st.sampled_from(["dcgan", "true", "nan", "1e999", "-0", "Animals & Nature"]))

    @given(query=st.lists(st.tuples(names, values), max_size=5))
    @settings(max_examples=HOSTILE_EXAMPLES, **SETTINGS)
    def fuzz(query):
        query = [(name, value) for name, value in query if not (name == "steps" and value.isascii()
                                                                and value.isdigit() and int(value) > 6)]
        response = client.get(f"{server.url}/v1/image.png", params=[("model", "dcgan"), *query])
        record_answer(sent, response, "/v1/image.png", f"image.png {query!r}")

    fuzz()
    sent.fuzzers_done += 1


def test_no_type_confused_json_answers_5xx(server, sent):
    """Strings, booleans, floats, nulls and nesting where numbers go; class names of Unicode digits."""
    client = httpx.Client(timeout=60)
    confused = st.one_of(st.text(max_size=6), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                         st.none(), st.lists(st.integers(0, 3), max_size=2), st.integers(-3, 5), UNICODE_DIGITS,
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    fields = st.sampled_from(["n", "seed", "steps", "guidance", "class", "eta", "prompt", "sampler", "priority"])

    @given(body=st.dictionaries(fields, confused, max_size=4),
           path=st.sampled_from(["/v1/generate", "/v1/images/generations"]))
    @settings(max_examples=HOSTILE_EXAMPLES, **SETTINGS)
    def fuzz(body, path):
        body = {"model": "dcgan", **({"prompt": "x"} if path != "/v1/generate" else {}), **body}
        cheapen(body)
        response = client.post(server.url + path, json=body)
        record_answer(sent, response, path, f"{path} {body!r:.300}")

    fuzz()
    sent.fuzzers_done += 1


def test_no_path_or_method_answers_5xx(server, sent):
    client = httpx.Client(timeout=60)
    segment = st.text(st.characters(codec="ascii", categories=["L", "N"]) | st.sampled_from("-_.~"),
                      min_size=1, max_size=12)

    @given(prefix=st.sampled_from(["", "/v1", "/v1/images", "/v2", "/v2/models", "/v2/models/dcgan", "/v1/generate"]),
           segments=st.lists(segment, max_size=3), method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    @settings(max_examples=HOSTILE_EXAMPLES, **SETTINGS)
    def fuzz(prefix, segments, method):
        path = "/".join([prefix, *segments]) or "/"
        response = client.request(method, server.url + path, content=b"{}",
                                  headers={"content-type": "application/json"})
        if response.status_code >= 400 and path not in ("/livez", "/readyz", "/metrics", "/healthz"):
            record_answer(sent, response, path, f"{method} {path}")
        else:
            sent.record(response.status_code, f"{method} {path}")

    fuzz()
    sent.fuzzers_done += 1


def test_a_well_formed_binary_request_still_works_after_the_fuzzing(server):
    seed = struct.pack("<q", 5)
    header = json.dumps({"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64",
                                     "parameters": {"binary_data_size": len(seed)}}]}).encode()
    response = httpx.post(f"{server.url}/v2/models/dcgan/infer", content=header + seed, timeout=30,
                          headers={"inference-header-content-length": str(len(header))})
    assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [1, 32, 32, 3]
