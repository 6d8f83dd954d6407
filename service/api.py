"""The BentoML service **Atelier**: one process, one Engine, every route.

BentoML provides the server, workers, `/livez`, `/readyz`, `/metrics` and the Bento; the routes
are a FastAPI app mounted on the service (full control of status codes and error bodies, and
an OpenAPI schema at /openapi.json). Request models (pydantic) live here and nowhere else.

    BENTOML_DO_NOT_TRACK=True .venv/bin/bentoml serve service:Atelier --port 3000
    curl -s localhost:3000/v1/generate -H 'content-type: application/json' \
         -d '{"model": "diffusion", "prompt": "a red heart", "seed": 7}'
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import json
import logging
import signal
import time
from typing import Annotated, Literal

import bentoml
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict, Field

from service import logs, metrics, oip_grpc, oip_http, openai_images, pipelines, uploads
from service.config import load_config
from service.engine import Engine
from service.errors import (AtelierError, InvalidInput, NotReady, Overloaded, RequestTimeout, Unauthenticated,
                            http_status)
from service.registry import Registry, verified_manifests

log = logging.getLogger("atelier")
access_log = logging.getLogger("atelier.access")

OPEN_PATHS = ("/livez", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")
RETRY_AFTER_SECONDS = "1"

# An OpenAI edit uploads an image and a mask of up to uploads.MAX_UPLOAD_BYTES each, plus a few fields.
OPENAI_MAX_BODY_BYTES = 2 * uploads.MAX_UPLOAD_BYTES + (1 << 16)

# max_body_size: FastAPI answers 413 past it, from Content-Length before reading the body, else as soon
# as the streamed bytes pass it; the JSON API's bodies are as small as OIP's
app = FastAPI(title="Atelier", version="1.0.0", max_body_size=oip_http.MAX_BODY_BYTES,
              description="Generative-art model server: GAN, VAE + GMM prior and latent diffusion on onnxruntime.")
app.include_router(oip_http.router)
app.include_router(openai_images.router, max_body_size=OPENAI_MAX_BODY_BYTES)


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: Annotated[str, Field(max_length=64, description="dcgan, vae, gmm or diffusion")] = "diffusion"
    class_: Annotated[int | str | None, Field(alias="class", description="class id 0..8 or its name")] = None
    prompt: Annotated[str | None, Field(min_length=1, max_length=pipelines.MAX_PROMPT_CHARS)] = None
    n: Annotated[int, Field(ge=1, le=pipelines.MAX_IMAGES)] = 1
    seed: Annotated[int | None, Field(ge=0, lt=pipelines.SEED_LIMIT, description="random when absent")] = None
    steps: Annotated[int, Field(ge=1, le=pipelines.MAX_STEPS)] = 30
    guidance: Annotated[float, Field(ge=0.0, le=20.0)] = 3.0
    sampler: Literal["dpmpp_2m", "euler", "ddim", "ddpm"] = "dpmpp_2m"
    eta: Annotated[float, Field(ge=0.0, le=1.0, description="DDIM stochasticity")] = 0.0
    output: Literal["png", "raw"] = "png"


class GeneratedImage(BaseModel):
    seed: int
    class_id: int | None
    png_base64: str | None = None
    raw_base64: str | None = Field(None, description="uint8 RGB, row-major (height, width, 3)")
    shape: list[int]


class GenerateResponse(BaseModel):
    model: str
    version: str
    ai_generated: bool = True
    parameters: dict
    images: list[GeneratedImage]


def resolve_class(value: int | str | None, classes: list[str]) -> int | None:
    if value is None or isinstance(value, int):
        return value
    lowered = [c.lower() for c in classes]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    if value.isdigit():
        return int(value)
    raise InvalidInput(f"unknown class {value!r}; classes are 0..{len(classes) - 1} or {classes}")


def png_bytes(image: np.ndarray, generated: pipelines.Generated, seed: int, provenance: dict) -> bytes:
    """A PNG whose text chunks say what made it: model, version, seed, parameters, AI-generated."""
    info = PngInfo()
    for key, value in {**provenance, "model": generated.model, "version": generated.version, "seed": str(seed),
                       "parameters": json.dumps(generated.parameters, sort_keys=True),
                       "ai_generated": "true"}.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


async def client_gone(request: Request) -> None:
    """Completes when the HTTP client disconnects (its body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# BentoML's own per-request timeout (traffic.timeout) leaves a timer armed for that long after every
# answer (bentoml/_internal/server/http/traffic.py never cancels it), holding the request's context and
# tracing spans, ~4.7 KiB: at 600 s a 10-minute soak grew the worker's RSS by 10 %. Ours (a clean 504
# that cancels the steps) fires first; BentoML's stays a backstop a few seconds later.
BENTOML_TIMEOUT_MARGIN_SECONDS = 5


@bentoml.service(name="Atelier", workers=1,
                 traffic={"timeout": load_config().request_timeout_seconds + BENTOML_TIMEOUT_MARGIN_SECONDS},
                 # RequestContext writes one JSON access line per request, with its request id; BentoML's
                 # own text line for the same request would cost as much again and say less
                 logging={"access": {"enabled": False}},
                 endpoints={"livez": "/livez", "readyz": "/readyz"})
@bentoml.asgi_app(app, path="/")
class Atelier:
    @bentoml.on_deployment
    def verify_models() -> None:
        """Once, in the `bentoml serve` process before any worker starts: a tampered, missing or unlisted
        model file, or an unreadable manifest, stops the server with a non-zero exit and the file's name.
        The same error in a worker's __init__ would only be respawned by circus, forever, serving nothing."""
        verified_manifests(load_config().models_dir)

    def __init__(self) -> None:
        logs.configure()
        self.config = load_config()
        app.state.api_key = self.config.api_key
        app.state.atelier = self  # how the OIP and OpenAI routers (other modules) reach the service
        if self.config.prometheus_multiproc_dir:
            metrics.forget_dead_workers(self.config.prometheus_multiproc_dir)
        self.registry = Registry.load(self.config)  # raises, naming the file, on any mismatch
        self.engine = Engine(self.registry, self.config)
        self.ready = False
        self.inflight = 0
        self.inflight_tasks: set[asyncio.Task] = set()
        self.draining = self.drain_expired = False

    @bentoml.on_startup
    async def warm_up(self) -> None:
        # gRPC in this (the HTTP server's) event loop, so both transports share the Engine's batches
        self.grpc_server = await oip_grpc.start(self, app.version)
        if self.config.warmup:
            await self.engine.warm_up()
        self.drain_on_sigterm()
        self.ready = True
        log.info("Atelier ready: %s", json.dumps(self.registry.describe()))

    @bentoml.on_shutdown
    async def shut_down(self) -> None:
        self.ready = False
        await oip_grpc.stop(self.grpc_server)  # drains running RPCs (bounded) before the Engine stops
        await self.engine.stop()

    def __is_ready__(self) -> bool:
        return self.ready

    def drain_on_sigterm(self) -> None:
        """Put a drain in front of uvicorn's SIGTERM handler (installed before start-up hooks run). Left to
        uvicorn, SIGTERM closes this worker's listener at once while `bentoml serve` (circus) still holds the
        socket: new connections, /readyz probes included, hang in its backlog until the process exits."""
        loop = asyncio.get_running_loop()
        uvicorn_exit = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame) -> None:
            loop.call_soon_threadsafe(self.start_draining, lambda: uvicorn_exit(signum, None))

        signal.signal(signal.SIGTERM, on_sigterm)

    def start_draining(self, exit_server) -> None:
        if not self.draining:  # `bentoml serve` forwards SIGTERM, and a process-group kill sends another
            self.draining, self.ready = True, False
            self.drain_task = asyncio.get_running_loop().create_task(self.drain(exit_server))

    async def drain(self, exit_server) -> None:
        """Not ready, new requests 503 + Retry-After (the socket still answers), in-flight ones get up to
        drain_seconds; then the stragglers end as 503s and uvicorn's own graceful shutdown runs."""
        started = time.monotonic()
        log.info("SIGTERM: draining", extra={"inflight": self.inflight, "drain_seconds": self.config.drain_seconds})
        while self.inflight and time.monotonic() - started < self.config.drain_seconds:
            await asyncio.sleep(0.05)
        self.drain_expired = bool(self.inflight_tasks)
        for task in self.inflight_tasks:
            task.cancel()
        log.info("drained", extra={"seconds": round(time.monotonic() - started, 3),
                                   "cancelled": len(self.inflight_tasks)})
        exit_server()

    @contextlib.asynccontextmanager
    async def admitted(self, route: str, model: str, protocol: str):
        """Admission control and the request metrics every route shares."""
        # the label is the client's model name only when it names a model: a label per unknown name
        # would let any client grow the metrics without bound (seen when fuzzing)
        model = model if model in pipelines.MODELS else "unknown"
        if not self.ready:
            raise NotReady("models are loading or the server is draining; retry shortly")
        if self.inflight >= self.config.max_inflight:
            metrics.REQUESTS.labels(route, model, "429", protocol).inc()
            raise Overloaded(f"{self.inflight} requests in flight (limit {self.config.max_inflight}); retry later")
        self.inflight += 1
        metrics.INFLIGHT.inc()
        task = asyncio.current_task()
        self.inflight_tasks.add(task)
        started, status = time.perf_counter(), "200"
        try:
            yield
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError) and self.drain_expired:
                status = "503"
                raise NotReady(f"the server shut down before this request finished "
                               f"(drain limit {self.config.drain_seconds:g} s); retry") from None
            status = str(http_status(error))
            raise
        finally:
            self.inflight_tasks.discard(task)
            self.inflight -= 1
            metrics.INFLIGHT.dec()
            metrics.REQUESTS.labels(route, model, status, protocol).inc()
            metrics.REQUEST_SECONDS.labels(route, model, protocol).observe(time.perf_counter() - started)

    async def run(self, request: pipelines.GenerateRequest, http: Request | None = None) -> pipelines.Generated:
        """The one code path of every transport: admission, pipeline, cancellation on disconnect."""
        work = pipelines.generate(self.engine, request)
        try:
            async with asyncio.timeout(self.config.request_timeout_seconds):
                generated = await (pipelines.run_cancellable(work, client_gone(http)) if http is not None else work)
        except TimeoutError:
            raise RequestTimeout(f"the request took longer than {self.config.request_timeout_seconds:g} s; "
                                 "its remaining steps were cancelled") from None
        metrics.IMAGES.labels(request.model).inc(len(generated.images))
        return generated

    def provenance(self, model: str) -> dict:
        training = self.engine.manifest(model)["training"]
        return {"Software": "Atelier", "data_source": training.get("data", {}).get("source", training.get("source", "")),
                "license": training.get("license", "")}

    def encode_images(self, generated: pipelines.Generated, output: str) -> list[GeneratedImage]:
        provenance = self.provenance(generated.model)
        out = []
        for image, seed, class_id in zip(generated.images, generated.seeds, generated.class_ids):
            payload = (png_bytes(image, generated, seed, provenance) if output == "png" else image.tobytes())
            encoded = base64.b64encode(payload).decode()
            out.append(GeneratedImage(seed=seed, class_id=class_id, shape=list(image.shape),
                                      **({"png_base64": encoded} if output == "png" else {"raw_base64": encoded})))
        return out


# The JSON routes are module functions that reach the service through `app.state.atelier` (as the OIP and
# OpenAI routers do), not methods: BentoML injects a method's `self` through a synchronous FastAPI
# dependency, which costs every request a hop through the thread pool (seen in a profile under load).
def service_of(request: Request) -> Atelier:
    return request.app.state.atelier


@app.post("/v1/generate", response_model=GenerateResponse)
async def generate(body: GenerateBody, request: Request) -> GenerateResponse:
    """Generate n images from a model, by class, prompt (theme) or neither, with a seed."""
    atelier = service_of(request)
    async with atelier.admitted("/v1/generate", body.model, "json"):
        seed = body.seed if body.seed is not None else int(np.random.default_rng().integers(2**31))
        plain = pipelines.GenerateRequest(
            model=body.model, n=body.n, seed=seed, prompt=body.prompt, steps=body.steps, guidance=body.guidance,
            sampler=body.sampler, eta=body.eta,
            class_id=resolve_class(body.class_, atelier.engine.manifest("dcgan")["classes"]))
        generated = await atelier.run(plain, request)
    return GenerateResponse(model=generated.model, version=generated.version, parameters=generated.parameters,
                            images=atelier.encode_images(generated, body.output))


@app.get("/v1/image.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def image_png(request: Request, model: str = "diffusion",
                    class_: Annotated[str | None, Query(alias="class")] = None,
                    prompt: Annotated[str | None, Query(min_length=1, max_length=pipelines.MAX_PROMPT_CHARS)] = None,
                    seed: Annotated[int, Query(ge=0, lt=pipelines.SEED_LIMIT)] = 0,
                    steps: Annotated[int, Query(ge=1, le=pipelines.MAX_STEPS)] = 30,
                    guidance: Annotated[float, Query(ge=0.0, le=20.0)] = 3.0,
                    sampler: Literal["dpmpp_2m", "euler", "ddim", "ddpm"] = "dpmpp_2m") -> Response:
    """One image as a PNG file (for curl and <img> tags)."""
    atelier = service_of(request)
    async with atelier.admitted("/v1/image.png", model, "json"):
        plain = pipelines.GenerateRequest(
            model=model, seed=seed, prompt=prompt, steps=steps, guidance=guidance, sampler=sampler,
            class_id=resolve_class(class_, atelier.engine.manifest("dcgan")["classes"]))
        generated = await atelier.run(plain, request)
    return Response(png_bytes(generated.images[0], generated, seed, atelier.provenance(model)), media_type="image/png")


@app.get("/v1/models")
async def models(request: Request) -> dict:
    """Manifests, the execution provider each model runs on, batching settings and live stats."""
    atelier = service_of(request)
    described = atelier.registry.describe()
    return {"models": [{**m.manifest, **described[name]} for name, m in atelier.registry.models.items()],
            "batching": {"max_batch": atelier.config.max_batch, "gather_ms": atelier.config.gather_ms,
                         "diffusion": atelier.config.diffusion_batching},
            "engine": atelier.engine.stats()}


@app.exception_handler(AtelierError)
async def atelier_error(request: Request, error: AtelierError) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if isinstance(error, (Overloaded, NotReady)) else None
    return JSONResponse({"error": str(error)}, status_code=http_status(error), headers=headers)


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in error.errors()]
    return JSONResponse({"error": "invalid request: " + "; ".join(problems)}, status_code=422)


@app.exception_handler(Exception)
async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return JSONResponse({"error": "internal error"}, status_code=500)


class RequestContext:
    """Every response carries an x-request-id (the client's, if short and printable) and leaves one JSON
    access line with it; with ATELIER_API_KEY set, every route but health and metrics needs
    `Authorization: Bearer <key>` (compared in constant time).

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs each request
    in an extra task behind two memory streams, which a profile of GAN load at concurrency 32 showed at
    ~8 % of the worker's samples, a quarter of its event loop's busy time."""

    def __init__(self, asgi_app) -> None:
        self.app = asgi_app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = logs.request_id(headers.get("x-request-id"))
        logs.REQUEST_ID.set(request_id)  # the route runs in this task: its error logs carry the id
        started, status = time.perf_counter(), 500

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        key = getattr(app.state, "api_key", None)
        offered = headers.get("authorization", "").removeprefix("Bearer ").strip()
        try:
            if key and scope["path"] not in OPEN_PATHS and not hmac.compare_digest(offered.encode(), key.encode()):
                refusal = await atelier_error(Request(scope), Unauthenticated("missing or wrong API key"))
                await refusal(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            access_log.info("%s %s %d", scope["method"], scope["path"], status,
                            extra={"method": scope["method"], "path": scope["path"], "status": status,
                                   "ms": round((time.perf_counter() - started) * 1000, 1)})


app.add_middleware(RequestContext)
