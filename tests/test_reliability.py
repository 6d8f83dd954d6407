"""Reliability of the served Atelier (issue 10): access, limits, timeouts, logs, overload, drain on
SIGTERM, start-up integrity and recovery from a killed worker. Real `bentoml serve` subprocesses on
127.0.0.1 (harness/serving.py); every wait is bounded.

    .venv/bin/python -m pytest -q tests/test_reliability.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import logging
import psutil
import pytest

from bench import overload
from service.transports.oip_http import MAX_BODY_BYTES
from service.uploads import MAX_UPLOAD_BYTES
from harness.serving import BENTOML, ROOT, AtelierServer, free_port, metric_value

log = logging.getLogger(__name__)
KEY = "reliability-key"
AUTH = {"authorization": f"Bearer {KEY}"}
LONG_DIFFUSION = {"model": "diffusion", "n": 16, "steps": 250, "seed": 3}  # 3.0 s of denoising on 2 cores


@pytest.fixture(scope="module")
def guarded():
    """API key, a 1.5 s request timeout (LONG_DIFFUSION takes twice that), an admission budget of 0.5 s of
    queued work (refusals come within a second of overload, and admitted requests finish well inside the
    timeout). Module-scoped: the last test in this file kills its worker."""
    env = {"ATELIER_API_KEY": KEY, "ATELIER_REQUEST_TIMEOUT_SECONDS": "1.5", "ATELIER_MAX_QUEUE_SECONDS": "0.5"}
    with AtelierServer(env=env) as running:
        yield running


def json_log_lines(server: AtelierServer) -> list[dict]:
    lines = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_api_key_guards_every_route_but_health_and_metrics(guarded):
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic " + KEY}):
        refused = httpx.get(guarded.url + "/v1/models", headers=headers, timeout=10)
        assert refused.status_code == 401 and refused.json() == {"error": "missing or wrong API key"}
        assert httpx.post(guarded.url + "/v1/generate", json={"model": "dcgan"}, headers=headers,
                          timeout=10).status_code == 401
    assert httpx.get(guarded.url + "/v1/models", headers=AUTH, timeout=10).status_code == 200
    for path in ("/livez", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(guarded.url + path, timeout=10).status_code == 200, path


def test_oversized_body_is_refused_with_413_before_it_is_read(guarded):
    # (service.api is not imported for its limits: its gRPC protos would clash with tritonclient's in test_oip)
    for path, limit in (("/v1/generate", MAX_BODY_BYTES), ("/v2/models/dcgan/infer", MAX_BODY_BYTES),
                        ("/v1/images/edits", 2 * MAX_UPLOAD_BYTES + 65536)):  # image + mask + fields
        # Content-Length announces one byte too many; only the headers are sent, and the answer comes anyway
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as raw:
            raw.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=b\r\n"
                        f"authorization: Bearer {KEY}\r\ncontent-length: {limit + 1}\r\n\r\n".encode())
            head = raw.recv(4096).decode(errors="replace")
        assert head.startswith("HTTP/1.1 413"), (path, head[:300])
    for path in ("/v1/generate", "/v2/models/dcgan/infer"):
        # a chunked body (no Content-Length) is cut off as soon as it passes the limit
        chunks = (b"x" * 65536 for _ in range(4 * MAX_BODY_BYTES // 65536))
        response = httpx.post(guarded.url + path, content=chunks, headers=AUTH, timeout=30)
        assert response.status_code == 413, (path, response.text[:200])


def test_request_past_the_timeout_gets_a_clean_504_and_its_steps_stop(guarded):
    started = time.monotonic()
    response = httpx.post(guarded.url + "/v1/generate", json=LONG_DIFFUSION, headers=AUTH, timeout=30)
    assert response.status_code == 504, response.text
    assert "longer than 1.5 s" in response.json()["error"]
    assert time.monotonic() - started < 8
    at_answer = metric_value(guarded.metrics(), "atelier_batch_rows_sum", function="diffusion.denoise")
    time.sleep(1.0)
    settled = metric_value(guarded.metrics(), "atelier_batch_rows_sum", function="diffusion.denoise")
    assert settled - at_answer <= 2 * 32, f"{settled - at_answer} rows after the 504"  # 32 rows per step


def test_error_responses_carry_no_stack_trace_or_internal_path(guarded):
    answers = [
        httpx.get(guarded.url + "/v1/models", timeout=10),  # 401
        httpx.post(guarded.url + "/v1/generate", json={"model": "nope"}, headers=AUTH, timeout=10),  # 404
        httpx.post(guarded.url + "/v1/generate", json={"n": "x"}, headers=AUTH, timeout=10),  # 400
        httpx.post(guarded.url + "/v1/generate", content=b"{", headers={**AUTH, "content-type": "application/json"},
                   timeout=10),
        httpx.post(guarded.url + "/v2/models/dcgan/infer", content=b"\xff\x00", headers=AUTH, timeout=10),
        httpx.post(guarded.url + "/v2/models/dcgan/infer", json={"inputs": [{"name": "seed", "shape": [10**12],
                   "datatype": "INT64", "data": [1]}]}, headers=AUTH, timeout=10),
        httpx.post(guarded.url + "/v1/generate", json=LONG_DIFFUSION, headers=AUTH, timeout=30),  # 504
        httpx.delete(guarded.url + "/v1/generate", headers=AUTH, timeout=10),  # 405
    ]
    for answer in answers:
        assert 400 <= answer.status_code < 600 and answer.status_code != 500, (answer.status_code, answer.text)
        for leak in ("Traceback", 'File "', ".py", str(ROOT), "site-packages"):
            assert leak not in answer.text, (answer.status_code, answer.text)


def test_access_and_error_logs_are_json_lines_with_the_request_id(guarded):
    sent = httpx.post(guarded.url + "/v1/generate", json={"model": "dcgan", "seed": 1}, timeout=30,
                      headers={**AUTH, "x-request-id": "spec-request-7"})
    generated = httpx.get(guarded.url + "/v1/models", timeout=10)  # 401, with an id the server made up
    assert sent.headers["x-request-id"] == "spec-request-7"
    assert len(generated.headers["x-request-id"]) == 32
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = {line.get("request_id"): line for line in json_log_lines(guarded) if line["logger"] == "atelier.access"}
        if {"spec-request-7", generated.headers["x-request-id"]} <= set(lines):
            break
        time.sleep(0.2)
    assert lines["spec-request-7"]["path"] == "/v1/generate" and lines["spec-request-7"]["status"] == 200
    assert lines[generated.headers["x-request-id"]]["status"] == 401
    assert all({"time", "level", "message"} <= set(line) for line in lines.values())


def test_overload_at_four_times_capacity_refuses_with_retry_after_and_stays_healthy(guarded):
    """The short, functional version of `python -m bench.overload` (30 s there, 8 s here): refusals are
    429s with Retry-After, counted in the metrics, nothing else fails and the server stays ready. The
    admitted latency under overload is a benchmark figure (bench/overload.py, docs/RELIABILITY.md)."""
    # 4 closed-loop clients stay inside the 0.5 s budget, so the capacity they measure is not cut by refusals
    args = argparse.Namespace(clients=4, seconds=8.0, factor=4.0, unloaded=12, capacity_seconds=4.0, budget=0.5)
    result = asyncio.run(overload.measure(guarded.url, args, lambda: guarded.process.poll() is None, AUTH))
    log.info("overload: %s", result)
    assert result["server_alive"] and result["other_statuses"] == [], result
    assert result["refused"] > 0 and result["refused_without_retry_after"] == 0, result
    assert result["metrics_429_counted"] == result["refused"], result
    assert httpx.get(guarded.url + "/readyz", timeout=5).status_code == 200  # saturation is not unreadiness


def worker_pid(server: AtelierServer) -> int:
    children = psutil.Process(server.process.pid).children()
    assert len(children) == 1, children
    return children[0].pid


def test_killed_worker_is_replaced_and_answers_again_within_30_s(guarded):
    """Light load (one dcgan request every 0.2 s) while the worker holding the Engine gets SIGKILL."""
    killed = worker_pid(guarded)
    kill_at_s = 2.0

    async def light_load(seconds: float) -> list[tuple[float, float, int | str]]:
        outcomes = []

        async def one(client: httpx.AsyncClient, sent: float) -> None:
            try:
                response = await client.post(guarded.url + "/v1/generate", json={"model": "dcgan"}, headers=AUTH)
                status: int | str = response.status_code
                if status != 200:
                    assert "error" in response.json(), response.text  # 429/5xx with a JSON body
                if status in (429, 503):
                    assert response.headers["retry-after"]
            except httpx.TransportError as error:
                status = type(error).__name__
            outcomes.append((sent, time.monotonic() - start - sent, status))

        async with httpx.AsyncClient(timeout=30) as client:
            start, tasks = time.monotonic(), []
            while (sent := time.monotonic() - start) < seconds:
                if sent >= kill_at_s and not killed_at:
                    os.kill(killed, signal.SIGKILL)
                    killed_at.append(sent)
                tasks.append(asyncio.create_task(one(client, sent)))
                await asyncio.sleep(0.2)
            await asyncio.gather(*tasks)
        return sorted(outcomes)

    killed_at: list[float] = []
    outcomes = asyncio.run(light_load(12.0))
    assert worker_pid(guarded) != killed
    recovered = [sent + took for sent, took, status in outcomes if status == 200 and sent > killed_at[0]]
    assert recovered and min(recovered) - killed_at[0] <= 30.0, outcomes
    assert all(status == 200 for sent, _, status in outcomes if sent < killed_at[0] - 0.5), outcomes
    for sent, took, status in outcomes:
        # No hang: a transport error comes at once. A request sent while no worker runs waits in the
        # listening socket's backlog (the socket belongs to `bentoml serve`, which outlives its worker)
        # and is answered by the replacement: 200, or a 429 + Retry-After when the backlog arrives at
        # once and its predicted completion passes the admission budget.
        assert status in (200, 429) or (isinstance(status, str) and took < 2.0) or status >= 500, outcomes
    log.info("kill -9 at %.1f s: first success %.1f s later; outcomes %s", killed_at[0],
             min(recovered) - killed_at[0], outcomes)
    assert httpx.get(guarded.url + "/readyz", timeout=5).status_code == 200


async def sigterm_during(server: AtelierServer, bodies: list[dict], after_s: float) -> dict:
    """SIGTERM to `bentoml serve` only (what the kubelet sends to PID 1) while `bodies` are in flight;
    then a probe and a new request. Returns what every client saw and the process exit code."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        in_flight = [asyncio.create_task(client.post(server.url + "/v1/generate", json=body)) for body in bodies]
        for _ in range(int(after_s / 0.05)):  # until all are admitted (not a verdict: the assert below is)
            if metric_value(server.metrics(), "atelier_inflight") == len(bodies):
                break
            await asyncio.sleep(0.05)
        assert metric_value(server.metrics(), "atelier_inflight") == len(bodies)
        os.kill(server.process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.3)
        ready = await client.get(server.url + "/readyz", timeout=5)
        late = await client.post(server.url + "/v1/generate", json={"model": "dcgan"}, timeout=5)
        answers = await asyncio.gather(*in_flight)
        answered_s = time.monotonic() - signalled
    exit_code = await asyncio.to_thread(server.process.wait, 60)
    return {"ready": ready, "late": late, "answers": answers, "answered_s": answered_s, "exit_code": exit_code,
            "exit_s": time.monotonic() - signalled}


def test_sigterm_finishes_20_in_flight_requests_refuses_new_ones_with_503_and_exits_0():
    with AtelierServer() as server:
        # 200 steps: seconds of work, so all 20 are still running when the signal comes
        bodies = [{"model": "diffusion", "steps": 200, "seed": seed, "class": seed % 9} for seed in range(20)]
        seen = asyncio.run(sigterm_during(server, bodies, after_s=10.0))
        drained = [line for line in json_log_lines(server) if line["message"] == "drained"]
    log.info("SIGTERM with 20 in flight: all answered %.1f s and exit %d %.1f s after it; %s", seen["answered_s"],
             seen["exit_code"], seen["exit_s"], drained)
    assert seen["ready"].status_code == 503
    assert seen["late"].status_code == 503 and seen["late"].headers["retry-after"]
    assert "draining" in seen["late"].json()["error"]
    assert [answer.status_code for answer in seen["answers"]] == [200] * 20
    assert all(len(answer.json()["images"]) == 1 for answer in seen["answers"])
    assert seen["exit_code"] == 0 and seen["exit_s"] < 25 + 10
    assert drained and drained[0]["cancelled"] == 0


def test_request_still_running_at_the_drain_limit_ends_as_a_503_and_the_server_exits_0():
    env = {"ATELIER_DRAIN_SECONDS": "1", "ATELIER_WARMUP": "false"}
    with AtelierServer(env=env) as server:
        seen = asyncio.run(sigterm_during(server, [LONG_DIFFUSION], after_s=10.0))
    (answer,) = seen["answers"]
    assert answer.status_code == 503 and "drain limit 1 s" in answer.json()["error"]
    assert answer.headers["retry-after"]
    assert seen["answered_s"] < 5 and seen["exit_code"] == 0


def broken_models(tmp_path: Path, model: str) -> Path:
    """A models dir whose `model` is a private copy (to break) and the others link to models/."""
    models = tmp_path / "models"
    models.mkdir()
    for directory in (ROOT / "models").iterdir():
        if directory.is_dir():
            if directory.name == model:
                shutil.copytree(directory, models / model)
            else:
                (models / directory.name).symlink_to(directory)
    return models


def tamper(models: Path) -> str:
    with open(models / "vae" / "decoder.onnx", "ab") as graph:
        graph.write(b"\0")
    return "vae/decoder.onnx: sha256 differs"


def remove(models: Path) -> str:
    (models / "diffusion" / "denoiser.onnx").unlink()
    return "diffusion/denoiser.onnx: listed in the manifest but missing"


def garble(models: Path) -> str:
    (models / "dcgan" / "manifest.json").write_text("{not json")
    return "dcgan/manifest.json: unreadable manifest"


@pytest.mark.parametrize("model, damage", [("vae", tamper), ("diffusion", remove), ("dcgan", garble)],
                         ids=["tampered-file", "missing-file", "unreadable-manifest"])
def test_start_up_fails_with_non_zero_exit_naming_the_damaged_file(tmp_path, model, damage):
    models = broken_models(tmp_path, model)
    expected = damage(models)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "ATELIER_MODELS_DIR": str(models),
           "BENTOML_HOME": str(tmp_path / "home")}
    done = subprocess.run([str(BENTOML), "serve", "service:Atelier", "--host", "127.0.0.1", "--port", str(free_port())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert expected in done.stderr + done.stdout, (done.stderr + done.stdout)[-3000:]
