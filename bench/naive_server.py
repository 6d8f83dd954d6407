"""The naive baseline: the server a user would write first, to measure Atelier against.

A small FastAPI app under uvicorn running the same trained weights in PyTorch eager (rebuilt from
the committed ONNX graphs by `export.from_onnx`, checked against onnxruntime at start-up),
one request at a time (a lock around the model), no batching across requests. It speaks the
subset of Atelier's `POST /v1/generate` the benchmark sends (dcgan or diffusion, class, n, seed,
steps, guidance) and answers the same JSON with base64 PNGs, so the same load drives both.
Diffusion runs DDIM with classifier-free guidance as one forward of 2n rows per step: the same
denoiser evaluations per image as Atelier's samplers, then one decode of n rows.

    .venv/bin/python -m bench.naive_server --port 3100
    curl -s 127.0.0.1:3100/v1/generate -H 'content-type: application/json' -d '{"model": "dcgan", "class": 1}'
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from harness.serving import stop_process_group, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
NULL_CLASS = 9  # the diffusion model's "no class" row
SCHEDULE = {"s": 0.008, "t_min": 0.002, "t_max": 0.995}  # models/diffusion/manifest.json


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: Literal["dcgan", "diffusion"] = "dcgan"
    class_: Annotated[int, Field(alias="class", ge=0, le=8)] = 0
    n: Annotated[int, Field(ge=1, le=16)] = 1
    seed: Annotated[int, Field(ge=0)] = 0
    steps: Annotated[int, Field(ge=1, le=250)] = 30
    guidance: Annotated[float, Field(ge=0.0, le=20.0)] = 3.0


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Cosine schedule, Nichol & Dhariwal 2021 eq. 17 (docs/INTERFACES.md)."""
    s = SCHEDULE["s"]
    return (torch.cos((t + s) / (1 + s) * torch.pi / 2) / np.cos(s / (1 + s) * np.pi / 2)) ** 2


def ddim_latents(denoiser: torch.nn.Module, body: GenerateBody, generator: torch.Generator) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12, eta = 0) with classifier-free guidance."""
    n = body.n
    x = torch.randn((n, 4, 8, 8), generator=generator)
    times = torch.linspace(SCHEDULE["t_max"], SCHEDULE["t_min"], body.steps + 1)
    classes = torch.cat([torch.full((n,), body.class_), torch.full((n,), NULL_CLASS)])
    text = torch.zeros((2 * n, 384))
    x0 = x
    for t_now, t_next in zip(times[:-1], times[1:]):
        eps_cond, eps_uncond = denoiser(torch.cat([x, x]), t_now.expand(2 * n), classes, text).chunk(2)
        eps = eps_uncond + body.guidance * (eps_cond - eps_uncond)
        ab_now, ab_next = alpha_bar(t_now), alpha_bar(t_next)
        x0 = (x - (1 - ab_now).sqrt() * eps) / ab_now.sqrt()
        x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
    return x0


def png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def build_app() -> FastAPI:
    from export.from_onnx import load_checked  # verifies every module against onnxruntime

    modules = load_checked()
    lock = threading.Lock()  # one request at a time: the naive server has no scheduler
    app = FastAPI(title="naive torch baseline")

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/v1/generate")
    def generate(body: GenerateBody) -> dict:
        generator = torch.Generator().manual_seed(body.seed)
        with lock, torch.inference_mode():
            if body.model == "dcgan":
                z = torch.randn((body.n, 128), generator=generator)
                images = modules["generate"](z, torch.full((body.n,), body.class_))
            else:
                images = modules["decode"](ddim_latents(modules["denoise"], body, generator))
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return {"model": body.model, "images": [{"seed": body.seed + i, "png_base64": png_base64(image)}
                                                for i, image in enumerate(pixels)]}

    return app


class NaiveServer:
    """The baseline as a subprocess on 127.0.0.1 (same life cycle as harness.serving.AtelierServer)."""

    def __init__(self, port: int, ready_timeout: float = 120.0):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None
        self.log_path = ROOT / ".cache" / f"naive-{port}.log"

    def __enter__(self) -> NaiveServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "bench.naive_server", "--port", str(self.port)],
                                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if wait_until_ready(self.process, self.url + "/health", self.ready_timeout,
                            lambda: self.log_path.read_text(errors="replace")[-3000:]):
            return self
        self.__exit__()
        raise TimeoutError(f"naive server not ready in {self.ready_timeout} s")

    def __exit__(self, *exc) -> None:
        stop_process_group(self.process, timeout=20)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # torch's default: one intra-op thread per core, as a user's script would get.
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
