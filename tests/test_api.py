"""The served Atelier, end to end over HTTP: a real `bentoml serve` subprocess (harness/serving.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.serving import ROOT, metric_value
from service import manifest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def generate(server, **body) -> dict:
    response = httpx.post(server.url + "/v1/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def pixels(image: dict) -> np.ndarray:
    if image.get("raw_base64"):
        return np.frombuffer(base64.b64decode(image["raw_base64"]), np.uint8).reshape(image["shape"])
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image["png_base64"]))).convert("RGB"))


def rows_per_run(metrics_text: str, function: str) -> tuple[float, float]:
    return (metric_value(metrics_text, "atelier_batch_rows_sum", function=function),
            metric_value(metrics_text, "atelier_batch_rows_count", function=function))


async def post_all(server, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(timeout=300) as client:
        responses = await asyncio.gather(*(client.post(server.url + "/v1/generate", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return [r.json() for r in responses]


def test_ready_and_readme_curl_returns_a_png_with_provenance(server):
    assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
    response = httpx.get(server.url + "/v1/image.png", params={"model": "diffusion", "prompt": "a red heart",
                                                             "seed": 7}, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (32, 32)
    assert image.text["ai_generated"] == "true"
    assert image.text["model"] == "diffusion" and image.text["seed"] == "7"
    assert '"prompt": "a red heart"' in image.text["parameters"]
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("model", ["dcgan", "vae", "gmm", "diffusion"])
def test_every_model_generates_n_distinct_images(server, model):
    result = generate(server, model=model, n=3, seed=11, steps=6, **({"class": "Food & Drink"} if model != "vae" else {}))
    images = [pixels(i) for i in result["images"]]
    assert [i["seed"] for i in result["images"]] == [11, 12, 13]
    assert all(i.shape == (32, 32, 3) for i in images)
    assert not np.array_equal(images[0], images[1])  # each image has its own noise
    assert result["ai_generated"] is True and result["version"] == manifest.read(ROOT / "models" / model).version


def test_same_request_twice_gives_identical_png_bytes(server):
    body = {"model": "diffusion", "prompt": "a future city", "seed": 5, "steps": 8, "sampler": "ddim"}
    first, second = generate(server, **body), generate(server, **body)
    assert first["images"][0]["png_base64"] == second["images"][0]["png_base64"]


def test_image_depends_on_seed_not_batch_mates(server):
    """Image i of a seed-s batch of 16 is the seed s+i image made alone, within 2/255 per pixel."""
    batch = generate(server, model="diffusion", n=16, seed=100, steps=10, output="raw", **{"class": 2})
    alone = generate(server, model="diffusion", n=1, seed=109, steps=10, output="raw", **{"class": 2})
    difference = np.abs(pixels(batch["images"][9]).astype(int) - pixels(alone["images"][0]).astype(int))
    assert difference.max() <= 2, difference.max()
    gan_batch = generate(server, model="dcgan", n=16, seed=100, output="raw", **{"class": 2})
    gan_alone = generate(server, model="dcgan", n=1, seed=109, output="raw", **{"class": 2})
    assert np.abs(pixels(gan_batch["images"][9]).astype(int) - pixels(gan_alone["images"][0]).astype(int)).max() <= 2


def test_concurrent_gan_requests_share_onnx_runs(server):
    before = rows_per_run(server.metrics(), "dcgan.generate")
    asyncio.run(post_all(server, [{"model": "dcgan", "seed": s, "class": s % 9} for s in range(48)]))
    after = rows_per_run(server.metrics(), "dcgan.generate")
    rows, runs = after[0] - before[0], after[1] - before[1]
    assert rows == 48
    assert rows / runs > 1.0, f"{rows} rows in {runs} runs"


def test_diffusion_requests_with_different_steps_and_samplers_share_runs_and_match_alone(server):
    bodies = [{"model": "diffusion", "seed": 40 + i, "steps": steps, "sampler": sampler, "output": "raw",
               "class": i % 9, "guidance": guidance}
              for i, (steps, sampler, guidance) in enumerate(
                  [(6, "ddim", 3.0), (9, "euler", 1.0), (12, "dpmpp_2m", 2.0), (7, "ddpm", 3.0)] * 3)]
    before = rows_per_run(server.metrics(), "diffusion.denoise")
    together = asyncio.run(post_all(server, bodies))
    after = rows_per_run(server.metrics(), "diffusion.denoise")
    rows, runs = after[0] - before[0], after[1] - before[1]
    assert rows / runs > 1.0, f"{rows} rows in {runs} runs"
    # each result equals the same request run alone: tolerance 2/255, batch composition changes
    # only the float summation order inside onnxruntime's kernels
    for body, result in zip(bodies[:4], together[:4]):
        alone = generate(server, **body)
        difference = np.abs(pixels(result["images"][0]).astype(int) - pixels(alone["images"][0]).astype(int))
        assert difference.max() <= 2, (body, difference.max())


def test_disconnected_client_stops_its_denoise_rows_within_two_steps(server):
    """n=16 with guidance: 32 rows per step, ~200 steps would take ~15 s on 2 cores."""
    rows_per_step = 32
    before = rows_per_run(server.metrics(), "diffusion.denoise")[0]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/generate", json={"model": "diffusion", "n": 16, "steps": 200, "seed": 1},
                   timeout=1.5)
    at_disconnect = rows_per_run(server.metrics(), "diffusion.denoise")[0]
    time.sleep(2.0)
    settled = rows_per_run(server.metrics(), "diffusion.denoise")[0]
    assert at_disconnect - before >= rows_per_step, "the request never started"
    assert settled - at_disconnect <= 2 * rows_per_step, f"{settled - at_disconnect} rows after the disconnect"
    assert settled - before < 200 * rows_per_step
    assert metric_value(server.metrics(), "atelier_requests_total", route="/v1/generate", status="499") >= 1


@pytest.mark.parametrize("body, status, words", [
    ({"model": "nope"}, 404, "unknown model"),
    ({"model": "dcgan", "n": 0}, 400, "n"),
    ({"model": "dcgan", "n": 10**6}, 400, "n"),
    ({"model": "diffusion", "steps": -1}, 400, "steps"),
    ({"model": "diffusion", "steps": "many"}, 400, "steps"),
    ({"model": "diffusion", "guidance": [1]}, 400, "guidance"),
    ({"model": "diffusion", "prompt": "x" * 5000}, 400, "prompt"),
    ({"model": "dcgan", "class": "dragons"}, 400, "unknown class"),
    ({"model": "dcgan", "class": 42}, 400, "class"),
    ({"model": "diffusion", "sampler": "magic"}, 400, "sampler"),
    ({"model": "dcgan", "surprise": 1}, 400, "surprise"),
])
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_healthy(server, body, status, words):
    response = httpx.post(server.url + "/v1/generate", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200


def test_malformed_json_is_a_4xx(server):
    response = httpx.post(server.url + "/v1/generate", content=b"{not json", timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()


def test_models_route_reports_manifests_providers_and_batching(server):
    body = httpx.get(server.url + "/v1/models", timeout=10).json()
    names = {m["name"] for m in body["models"]}
    assert names == {"dcgan", "vae", "gmm", "diffusion", "text", "sr", "style"}
    assert all("CPUExecutionProvider" in m["providers"] for m in body["models"] if m["functions"])
    assert body["batching"]["diffusion"] == "step" and body["engine"]["diffusion.denoise"]["runs"] >= 1


def test_service_never_imports_torch_while_serving_a_request():
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now raises
        "import asyncio\n"
        "from service.config import load_config\nfrom service.registry import Registry\n"
        "from service.engine import Engine\nfrom service import pipelines, rules\nimport service.api\n"
        "async def main():\n"
        "    engine = Engine(Registry.load(load_config()), load_config())\n"
        "    for model in rules.MODELS:\n"
        "        out = await pipelines.generate(engine, pipelines.GenerateRequest(model=model, prompt='a cat', steps=2))\n"
        "        assert out.images.shape == (1, 32, 32, 3)\n"
        "    from service.style import StyleRequest\n"
        "    out = await pipelines.generate(engine, StyleRequest(image=out.images[0].repeat(2, 0).repeat(2, 1), style='waves'))\n"
        "    assert out.images.shape == (1, 64, 64, 3)\n"
        "    await engine.stop()\n"
        "asyncio.run(main())\n"
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert sys.modules['torch'] is None and loaded == ['torch'], loaded\n"
        "print('torch-free')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "torch-free" in result.stdout, result.stderr[-2000:]


def test_bento_builds_offline_with_the_models(tmp_path):
    env = {"BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True", "PATH": str(ROOT / ".venv/bin")}
    result = subprocess.run([str(ROOT / ".venv/bin/bentoml"), "build", str(ROOT)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    bento = next((tmp_path / "bentos" / "atelier").glob("[!l]*"))  # the tag directory, not `latest`
    for name in ("dcgan", "vae", "gmm", "diffusion", "text", "sr", "style"):
        manifest = bento / "src" / "models" / name / "manifest.json"
        assert manifest.is_file(), manifest
        assert (bento / "src" / "models" / name / "manifest.json").read_bytes() == (ROOT / "models" / name /
                                                                                   "manifest.json").read_bytes()


def test_unknown_model_names_share_one_metrics_label(server):
    response = httpx.post(server.url + "/v1/generate", json={"model": "no-such-model\u2028x"}, timeout=30)
    assert response.status_code == 404
    page = server.metrics()
    assert "no-such-model" not in page  # a client cannot grow the metrics with names of its own
    assert metric_value(page, "atelier_requests_total", model="unknown", status="404") >= 1
