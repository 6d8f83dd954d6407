"""Hardening against hostile and careless clients (issue 17), against a real server: worst-case uploads
do not stall the event loop, random paths do not grow /metrics, no input gets a 500 and an unexpected
failure answers cleanly on a connection that stays open, strict request schemas with one error shape
per protocol, gRPC bound to the HTTP host. The server is `tests.planted_fault:Atelier`: the real
service, where one magic prompt raises an exception no handler expects.

    .venv/bin/python -m pytest tests/test_hardening.py -q
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import ipaddress
import json
import random
import statistics
import struct
import time
import zlib

import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc
import yaml
from PIL import Image, PngImagePlugin
from tritonclient.utils import InferenceServerException

from harness.serving import ROOT, AtelierServer, metric_value
from service import uploads
from service.config import load_config
from service.errors import InvalidInput
from tests.planted_fault import FAULT_PROMPT

# the bound for a health check or a one-image dcgan answer while a worst-case upload is processed
ANSWER_BOUND_MS = 100.0


# warming up takes ~10 s on an idle 2-core machine and minutes beside a training job and other test servers
READY_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def faulty():
    with AtelierServer(service="tests.planted_fault:Atelier", ready_timeout=READY_TIMEOUT) as running:
        yield running


# --- hostile uploads, built here ----------------------------------------------------------------------

def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def progressive_jpeg(side: int, scans: int) -> bytes:
    """A plain white side x side progressive JPEG whose last scan is repeated until the file has `scans`
    scans: libjpeg decodes every one over the whole image (a repeated refinement scan is only warned about),
    so the cost grows with the count while the file stays ~100 kB."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (255, 255, 255)).save(buffer, format="JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    end = data.rindex(b"\xff\xd9")  # EOI
    last_scan = data[starts[-1]:end]
    return data[:end] + last_scan * (scans - len(starts)) + data[end:]


def png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    """A small valid PNG with one more chunk before its image data."""
    plain = png(Image.new("RGB", (8, 8), (10, 20, 30)))
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return plain[:33] + chunk + plain[33:]  # after the 8-byte signature and the 25-byte IHDR chunk


# zlib data that inflates past Pillow's 1 MiB bound for text and ICC chunks, in ~1 kB
PAST_PILLOW_LIMIT = zlib.compress(b"a" * (PngImagePlugin.MAX_TEXT_CHUNK + 16), 9)
INFLATING_CHUNKS = {"zTXt": png_with_chunk(b"zTXt", b"comment\0\0" + PAST_PILLOW_LIMIT),
                    "iCCP": png_with_chunk(b"iCCP", b"icc\0\0" + PAST_PILLOW_LIMIT),
                    "iTXt": png_with_chunk(b"iTXt", b"comment\0\1\0\0\0" + PAST_PILLOW_LIMIT)}


# --- uploads, in process ------------------------------------------------------------------------------

def test_a_jpeg_of_more_scans_than_the_limit_is_refused_before_decoding():
    hostile = progressive_jpeg(1024, uploads.MAX_JPEG_SCANS + 50)
    with pytest.raises(InvalidInput, match=f"JPEG of {uploads.MAX_JPEG_SCANS + 50} scans"):
        uploads.decode_image(hostile)
    assert uploads.decode_image(progressive_jpeg(1024, uploads.MAX_JPEG_SCANS)).shape == (32, 32, 3)


@pytest.mark.parametrize("size", [(16384, 1024), (1024, 16384)])
def test_a_thin_image_is_reduced_before_it_is_padded_to_a_square(size, monkeypatch):
    padded = []
    real_pad = uploads.ImageOps.pad
    monkeypatch.setattr(uploads.ImageOps, "pad",
                        lambda image, side, **options: padded.append(side) or real_pad(image, side, **options))
    decoded = uploads.decode_image(png(Image.new("RGB", size, (200, 30, 30))))
    assert decoded.shape == (32, 32, 3) and max(max(side) for side in padded) <= uploads.PREPARED_SIDE
    # the strip keeps its colour across its long side and the white canvas across its short one
    middle = decoded[16, :] if size[0] > size[1] else decoded[:, 16]
    across = decoded[:, 16] if size[0] > size[1] else decoded[16, :]
    assert (np.abs(middle.astype(int) - (200, 30, 30)) <= 16).all() and (across[0] == 255).all()


@pytest.mark.parametrize("kind", sorted(INFLATING_CHUNKS))
def test_a_png_whose_metadata_chunk_inflates_past_pillows_limit_is_a_400(kind):
    with pytest.raises(InvalidInput, match="text or ICC chunk too large"):
        uploads.decode_image(INFLATING_CHUNKS[kind])


def test_uploads_past_the_decoding_queue_are_refused_with_429(monkeypatch):
    monkeypatch.setattr(uploads, "_waiting_decodes", uploads.MAX_WAITING_DECODES)
    with pytest.raises(uploads.Overloaded, match="waiting to be decoded"):
        asyncio.run(uploads.decoded_into(None, png(Image.new("RGB", (8, 8))), None))


# --- 1. the event loop keeps answering while worst-case uploads are processed -------------------------

async def answer_ms(client: httpx.AsyncClient, method: str, path: str, **kwargs) -> float:
    started = time.perf_counter()
    response = await client.request(method, path, **kwargs)
    assert response.status_code == 200, (path, response.text[:200])
    return (time.perf_counter() - started) * 1000


async def probe_pairs(client: httpx.AsyncClient, count: int) -> tuple[list[float], list[float]]:
    """`count` pairs of /livez and a one-image dcgan generation, timed, with no upload in flight."""
    livez, dcgan = [], []
    for seed in range(count):
        livez.append(await answer_ms(client, "GET", "/livez"))
        dcgan.append(await answer_ms(client, "POST", "/v1/generate", json={"model": "dcgan", "seed": seed}))
    return livez, dcgan


async def probe_during_uploads(server: AtelierServer, payloads: list[bytes]) -> tuple[list[float], list[float]]:
    """Upload every payload at once (OpenAI variations on diffusion, 2 steps), then time /livez and a
    one-image dcgan generation, one after the other, for as long as an upload is still unanswered:
    (livez ms, dcgan ms) of the pairs answered while uploads were in flight."""
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        uploads_sent = [asyncio.ensure_future(client.post(
            "/v1/images/variations", files={"image": ("upload", payload)},
            data={"model": "diffusion", "steps": "2", "seed": "1"})) for payload in payloads]
        livez, dcgan = [], []
        while not all(upload.done() for upload in uploads_sent):
            livez_ms = await answer_ms(client, "GET", "/livez")
            dcgan_ms = await answer_ms(client, "POST", "/v1/generate", json={"model": "dcgan", "seed": len(livez)})
            if not all(upload.done() for upload in uploads_sent):  # both answers came while an upload was in flight
                livez.append(livez_ms)
                dcgan.append(dcgan_ms)
        for upload in uploads_sent:
            assert (await upload).status_code == 200, (await upload).text[:300]
    return livez, dcgan


def summarise(livez: list[float], dcgan: list[float]) -> dict[str, float]:
    summary = {}
    for name, times in (("livez", livez), ("dcgan", dcgan)):
        summary.update({f"{name}_median_ms": round(statistics.median(times), 1),
                        f"{name}_p90_ms": round(statistics.quantiles(times, n=10)[-1], 1),
                        f"{name}_max_ms": round(max(times), 1)})
    return summary


def test_health_and_a_dcgan_image_answer_within_100_ms_while_worst_case_uploads_are_decoded(faulty):
    """The accepted worst cases: a 4096² progressive JPEG of MAX_JPEG_SCANS scans (~0.3-0.5 s of decoding
    here) and a 16384x1024 PNG strip, three of each, which the decoding thread takes one by one, so for
    seconds. Before decoding left the event loop, every answer in that time waited for a whole decode
    (measured with this test before the fix: 14 pairs answered in the window, the slowest dcgan after 9.4 s).

    The bounds are the issue's 100 ms for 9 answers in 10 and 500 ms for any, each plus what the same
    probes take with no upload in flight, measured just before: on a machine this loaded by other work
    (a training job, other test servers) the server's own scheduling noise is not the upload's doing."""
    async def measure():
        async with httpx.AsyncClient(base_url=faulty.url, timeout=120) as client:
            quiet = await probe_pairs(client, 30)
        return quiet, await probe_during_uploads(faulty, worst * 3)

    worst = [progressive_jpeg(4096, uploads.MAX_JPEG_SCANS), png(Image.new("RGB", (16384, 1024), (200, 30, 30)))]
    quiet, (livez, dcgan) = asyncio.run(measure())
    assert len(livez) >= 10, f"only {len(livez)} probes answered while uploads were in flight"
    baseline, during = summarise(*quiet), summarise(livez, dcgan)
    print(f"answers with no upload: {baseline}; while {len(livez)} pairs were answered during the uploads: {during}")
    for name in ("livez", "dcgan"):
        assert during[f"{name}_p90_ms"] <= ANSWER_BOUND_MS + baseline[f"{name}_p90_ms"], (baseline, during)
        assert during[f"{name}_max_ms"] <= 5 * ANSWER_BOUND_MS + baseline[f"{name}_max_ms"], (baseline, during)


def test_a_jpeg_of_too_many_scans_is_refused_by_the_server_with_a_400(faulty):
    response = httpx.post(faulty.url + "/v1/images/variations", timeout=60,
                          files={"image": ("upload", progressive_jpeg(4096, 1000))}, data={"model": "diffusion"})
    assert response.status_code == 400 and "scans" in response.json()["error"]["message"]


# --- 2. metric labels stay bounded -------------------------------------------------------------------

PATH_FAMILIES = ("/{}", "/v1/{}", "/v1/images/{}", "/v2/models/{}/ready", "/v2/models/{}/infer", "/v2/{}/{}",
                 "/static/{}", "/v1/generate/{}")
METHODS = ("GET", "POST", "PUT", "DELETE")


def random_token(rng: random.Random) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789-_.~", k=rng.randint(1, 24)))


def test_a_thousand_random_paths_leave_the_metrics_page_within_5_percent(faulty):
    """Every family of path and method is sent once first, so that the label sets a bounded labelling makes
    exist before the count; then 1,000 random paths. Labelled by raw path, each would add a label set of a
    histogram and a counter (~3 kB) and the page would grow by megabytes."""
    rng = random.Random(17)
    with httpx.Client(base_url=faulty.url, timeout=30) as client:
        for family in PATH_FAMILIES:
            for method in METHODS:
                client.request(method, family.format(*[random_token(rng)] * family.count("{}")))
        before = client.get("/metrics").text
        sent = [(rng.choice(METHODS), rng.choice(PATH_FAMILIES).format(*[random_token(rng)] * 2))
                for _ in range(1000)]
        for method, path in sent:
            assert client.request(method, path).status_code < 500
        after = client.get("/metrics").text
    growth = (len(after) - len(before)) / len(before)
    print(f"/metrics {len(before)} -> {len(after)} bytes ({growth:+.2%}) after 1,000 random paths")
    assert abs(growth) <= 0.05
    assert metric_value(after, "bentoml_service_request_total", endpoint="unmatched") >= 500
    tokens = {path.rsplit("/", 1)[-1] for _, path in sent if len(path.rsplit("/", 1)[-1]) >= 12}
    assert not [token for token in tokens if token in after]  # no raw path became a label


# --- 3. no 500 from input; an unexpected failure answers cleanly --------------------------------------

def server_log_lines(server: AtelierServer) -> list[dict]:
    return [json.loads(line) for line in server.log_path.read_text(errors="replace").splitlines()
            if line.startswith("{")]


@pytest.mark.parametrize("path,body,shape", [
    ("/v1/generate", {"model": "dcgan", "prompt": FAULT_PROMPT}, "json"),
    ("/v1/images/generations", {"model": "dcgan", "prompt": FAULT_PROMPT}, "openai"),
    ("/v2/models/dcgan/infer", {"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [1]},
                                           {"name": "prompt", "shape": [1], "datatype": "BYTES",
                                            "data": [FAULT_PROMPT]}]}, "json"),
])
def test_after_a_forced_internal_error_the_same_keep_alive_connection_still_works(faulty, path, body, shape):
    request_id = f"planted-{random.Random(path).randrange(10**9)}"
    connection = http.client.HTTPConnection("127.0.0.1", faulty.port, timeout=60)
    connection.request("POST", path, body=json.dumps(body),
                       headers={"content-type": "application/json", "x-request-id": request_id})
    failed = connection.getresponse()
    answer = json.loads(failed.read())
    assert failed.status == 500 and failed.getheader("x-request-id") == request_id
    assert failed.getheader("connection", "").lower() != "close"
    assert answer == ({"error": "internal error"} if shape == "json" else
                      {"error": {"message": "internal error", "type": "server_error", "param": None, "code": None}})
    local_address = connection.sock.getsockname()
    connection.request("GET", "/v1/models")  # the same connection: the server kept it open
    followed = connection.getresponse()
    assert followed.status == 200 and json.loads(followed.read())["models"]
    assert connection.sock.getsockname() == local_address
    connection.close()
    logged = [line for line in server_log_lines(faulty) if line.get("request_id") == request_id and "exception" in line]
    assert len(logged) == 1 and "planted fault" in logged[0]["exception"]  # one line, with its traceback, once
    assert "Exception in ASGI application" not in faulty.log_path.read_text(errors="replace")


def test_a_forced_internal_error_over_grpc_is_internal_and_the_channel_still_works(faulty):
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{faulty.grpc_port}")
    seed = triton_grpc.InferInput("seed", [1], "INT64")
    seed.set_data_from_numpy(np.array([4], np.int64))
    prompt = triton_grpc.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([FAULT_PROMPT.encode()], object))
    with pytest.raises(InferenceServerException) as failed:
        client.infer("dcgan", [seed, prompt])
    assert "INTERNAL" in str(failed.value.status()) and failed.value.message() == "internal error"
    assert client.infer("dcgan", [seed]).as_numpy("image").shape == (1, 32, 32, 3)


@pytest.mark.parametrize("declared", ["9" * 5000, "99999999999999999999999", "\u00b2", "-1", "1e3", "0x10"])
def test_an_absurd_inference_header_content_length_is_a_400(faulty, declared):
    response = httpx.post(faulty.url + "/v2/models/dcgan/infer", content=b'{"inputs": []}', timeout=30,
                          headers={"inference-header-content-length": declared.encode("latin-1")})
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]
    assert len(response.text) < 400  # the value is not echoed whole


@pytest.mark.parametrize("kind", sorted(INFLATING_CHUNKS))
def test_an_upload_whose_metadata_chunk_inflates_past_pillows_limit_is_a_400_on_every_upload_route(faulty, kind):
    openai = httpx.post(faulty.url + "/v1/images/variations", files={"image": ("x.png", INFLATING_CHUNKS[kind])},
                        data={"model": "diffusion"}, timeout=30)
    assert openai.status_code == 400 and "chunk" in openai.json()["error"]["message"]
    encoded = base64.b64encode(INFLATING_CHUNKS[kind]).decode()
    assist = httpx.post(faulty.url + "/v1/img2img", json={"image": encoded}, timeout=30)
    assert assist.status_code == 400 and "chunk" in assist.json()["error"]


@pytest.mark.parametrize("name", ["\u00b3", "\u0663", "\uff13", "\U0001d7db", "3\u00b3"])  # ³ ٣ ３ 𝟛
def test_a_class_named_by_a_unicode_digit_is_a_400(faulty, name):
    generated = httpx.post(faulty.url + "/v1/generate", json={"model": "dcgan", "class": name}, timeout=30)
    as_query = httpx.get(faulty.url + "/v1/image.png", params={"model": "dcgan", "class": name}, timeout=30)
    for response in (generated, as_query):
        assert response.status_code == 400 and "unknown class" in response.json()["error"]


# --- 6. strict schemas, one error shape per protocol --------------------------------------------------

@pytest.mark.parametrize("body", [{"n": "3"}, {"n": True}, {"n": 2.0}, {"class": True}, {"seed": "7"},
                                  {"guidance": "2"}, {"guidance": False}])
def test_strings_and_booleans_are_not_coerced_into_numbers(faulty, body):
    response = httpx.post(faulty.url + "/v1/generate", json={"model": "dcgan", **body}, timeout=30)
    assert response.status_code == 400 and response.json()["error"].startswith("invalid request")
    openai = httpx.post(faulty.url + "/v1/images/generations", json={"model": "dcgan", "prompt": "x", **body},
                        timeout=30)
    assert openai.status_code == 400 and openai.json()["error"]["type"] == "invalid_request_error"


def test_form_fields_are_text_and_still_parsed_as_numbers(faulty):
    response = httpx.post(faulty.url + "/v1/images/variations", timeout=60, data={"model": "diffusion", "n": "2",
                          "steps": "2", "seed": "5"}, files={"image": ("x.png", png(Image.new("RGB", (40, 40))))})
    assert response.status_code == 200 and len(response.json()["data"]) == 2


@pytest.mark.parametrize("query", ["eta=1", "sed=4", "model=dcgan&n=2"])
def test_unknown_query_parameters_are_refused(faulty, query):
    response = httpx.get(f"{faulty.url}/v1/image.png?{query}", timeout=30)
    assert response.status_code == 400 and "unknown query parameter" in response.json()["error"]


@pytest.mark.parametrize("data,shape", [([[1, 2], [3]], [3]), ([[1, 2], [3, 4, 5]], [2, 2]), ([[1], 2], [2]),
                                        ([[[1]], [[2]]], [2, 1])])
def test_ragged_oip_json_data_is_refused(faulty, data, shape):
    body = {"inputs": [{"name": "seed", "shape": shape, "datatype": "INT64", "data": data}]}
    response = httpx.post(faulty.url + "/v2/models/dcgan/infer", json=body, timeout=30)
    assert response.status_code == 400 and "seed" in response.json()["error"]


@pytest.mark.parametrize("method,path,content,status", [
    ("GET", "/no/such/route", None, 404), ("GET", "/v1/generate", None, 405), ("DELETE", "/v1/models", None, 405),
    ("POST", "/v1/generate", b"{not json", 400), ("POST", "/v1/generate", b"x" * ((1 << 20) + 1), 413),
    ("POST", "/v2/models/dcgan/infer", b"[1, 2", 400), ("POST", "/v2/models/dcgan/infer", b"x" * ((1 << 20) + 1), 413),
    ("GET", "/v1/images/no-such-route", None, 404), ("GET", "/v1/images/generations", None, 405),
    ("POST", "/v1/images/generations", b"{not json", 400),
    ("POST", "/v1/images/generations", b"x" * (9 << 20), 413),
])
def test_every_error_status_has_its_protocols_shape_and_a_request_id(faulty, method, path, content, status):
    response = httpx.request(method, faulty.url + path, content=content, timeout=30,
                             headers={"content-type": "application/json", "x-request-id": "shape-check"})
    assert response.status_code == status and response.headers["x-request-id"] == "shape-check"
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    if path.startswith("/v1/images/"):
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    else:
        assert isinstance(error, str) and error
    if status == 405:
        assert response.headers.get("allow")


def test_undecodable_protobuf_is_invalid_argument_naming_no_python_class(faulty):
    with grpc.insecure_channel(f"127.0.0.1:{faulty.grpc_port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as failed:
            infer(b"\xff\xff\xff\xff not a protobuf", timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest" in failed.value.details()
    assert not any(word in failed.value.details() for word in ("Error", "Exception", "<class", "google."))


# --- 5. gRPC listens where HTTP does ------------------------------------------------------------------

def test_grpc_listens_on_the_http_host_only(faulty):
    """The harness serves HTTP with --host 127.0.0.1: gRPC must not listen on every interface."""
    processes = [psutil.Process(faulty.process.pid), *psutil.Process(faulty.process.pid).children(recursive=True)]
    listening = [connection.laddr for process in processes for connection in process.net_connections("tcp")
                 if connection.status == psutil.CONN_LISTEN and connection.laddr.port == faulty.grpc_port]
    addresses = {ipaddress.ip_address(address.ip) for address in listening}
    # gRPC may bind an IPv6 socket to the IPv4-mapped loopback (::ffff:127.0.0.1): loopback all the same
    assert addresses and all((address.ipv4_mapped or address).is_loopback for address in addresses), addresses


def test_grpc_host_is_configurable():
    assert load_config({}).grpc_host is None  # the HTTP server's host
    assert load_config({"ATELIER_GRPC_HOST": "0.0.0.0"}).grpc_host == "0.0.0.0"


def test_deployments_set_grpc_to_every_interface_as_their_http_is():
    kustomization = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    literals = [literal for generator in kustomization["configMapGenerator"] for literal in generator["literals"]]
    assert "ATELIER_GRPC_HOST=0.0.0.0" in literals
    for bentofile in ("bentofile.yaml", "bentofile.gpu.yaml"):
        envs = {env["name"]: env["value"] for env in yaml.safe_load((ROOT / bentofile).read_text())["envs"]}
        assert envs["ATELIER_GRPC_HOST"] == "0.0.0.0", bentofile


KEY = "hardening-key"


@pytest.fixture(scope="module")
def keyed():
    with AtelierServer(env={"ATELIER_API_KEY": KEY, "ATELIER_GRPC_HOST": "0.0.0.0"}, ready_timeout=READY_TIMEOUT) as running:
        yield running


def test_bentomls_own_pages_need_the_key_too_and_only_probes_metrics_and_the_playground_are_open(keyed):
    for path in ("/docs.json", "/schema.json", "/openapi.json", "/docs", "/no/such/page"):
        refused = httpx.get(keyed.url + path, timeout=30)
        assert refused.status_code == 401 and refused.json() == {"error": "missing or wrong API key"}, path
        assert "x-request-id" in refused.headers
    assert httpx.get(keyed.url + "/docs.json", headers={"authorization": f"Bearer {KEY}"}, timeout=30).status_code == 200
    # the playground's page and files (a browser cannot send a key to load a page; the page sends it to the API)
    for path in ("/livez", "/healthz", "/readyz", "/metrics", "/", "/playground.css", "/playground.js"):
        assert httpx.get(keyed.url + path, timeout=30).status_code == 200, path


def test_an_explicit_grpc_host_is_where_grpc_listens(keyed):
    processes = [psutil.Process(keyed.process.pid), *psutil.Process(keyed.process.pid).children(recursive=True)]
    listening = {connection.laddr.ip for process in processes for connection in process.net_connections("tcp")
                 if connection.status == psutil.CONN_LISTEN and connection.laddr.port == keyed.grpc_port}
    # gRPC takes 0.0.0.0 as "every interface" and may listen on the dual-stack :: for it
    assert listening and all(ipaddress.ip_address(address).is_unspecified for address in listening), listening
