"""The application core every transport calls: admission, the one request path, drain, and encoding
with provenance. It knows no wire format: transports (`service/transports/`) decode into a plain
`pipelines.GenerateRequest`, call `ServingCore.generate` inside `ServingCore.admitted`, and encode
what comes back; the composition root (`api.py`) builds one core per worker and wires it to them.

    .venv/bin/python -m pytest tests/test_api.py tests/test_reliability.py -q
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from service import batcher, genomes, metrics, pipelines, rules
from service.admission import PRIORITY_OF, Admission
from service.config import Config
from service.credentials import Claim, ContentCredentials
from service.engine import Engine
from service.errors import ClientDisconnected, InvalidInput, ModelNotFound, NotReady, RequestTimeout, http_status
from service.registry import Registry

log = logging.getLogger("atelier")

ImageFormat = Literal["png", "raw"]
# PNG compression and C2PA signing run in these threads, off the event loop: ~0.1-0.5 ms per 32x32 image,
# which n=16 answers and many concurrent requests would otherwise add to every other request's wait.
ENCODER_THREADS = 2


@dataclass(frozen=True)
class EncodedImage:
    seed: int
    class_id: int | None
    shape: tuple[int, ...]  # (height, width, 3)
    format: ImageFormat
    data: bytes  # a PNG file with provenance chunks, or raw uint8 RGB, row-major


class ServingCore:
    def __init__(self, config: Config, registry: Registry, engine: Engine,
                 credentials: ContentCredentials | None = None):
        self.config = config
        self.registry = registry
        self.engine = engine
        self.admission = Admission(engine.batchers, config.max_queue_seconds, config.max_inflight)
        self.ready = False  # True once warmed up; False again while draining
        self.inflight_tasks: set[asyncio.Task] = set()
        self.draining = self.drain_expired = False
        # signs genome and session tokens; without ATELIER_GENOME_KEY they are valid in this process only
        self.signer = genomes.Signer.from_key(config.genome_key)
        self.credentials = credentials  # signs every PNG with C2PA Content Credentials; None: signing is off
        self.encoder = concurrent.futures.ThreadPoolExecutor(ENCODER_THREADS, thread_name_prefix="atelier-encode")

    # --- admission ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admitted(self, route: str, protocol: str,
                       requests: Sequence[pipelines.GenerateRequest]) -> AsyncIterator[None]:
        """Validation, admission by predicted wait (service/admission.py) and the request metrics every
        route shares, around the work of one client request (OIP: one plain request per row)."""
        # the label is the client's model name only when it names a model: a label per unknown name
        # would let any client grow the metrics without bound (seen when fuzzing)
        model = requests[0].model if requests[0].model in (*rules.MODELS, rules.UPSCALER, rules.STYLE_MODEL) else "unknown"
        started, status, ticket = time.perf_counter(), "200", None
        task = asyncio.current_task()
        try:
            for request in requests:
                self.check(request)
            if not self.ready:
                raise NotReady("models are loading or the server is draining; retry shortly")
            ticket = self.admission.admit(requests)
            batcher.TICKET.set(ticket)  # the batchers order and count this task's rows (and its subtasks') by it
            self.inflight_tasks.add(task)
            metrics.INFLIGHT.inc()
            yield
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError) and self.drain_expired:
                status = "503"
                raise NotReady(f"the server shut down before this request finished "
                               f"(drain limit {self.config.drain_seconds:g} s); retry") from None
            # a cancellation outside the drain is the client going away (a gRPC cancel or deadline): 499, as an
            # HTTP disconnect is, not a server error that would page someone
            status = "499" if isinstance(error, asyncio.CancelledError) else str(http_status(error))
            raise
        finally:
            metrics.REQUESTS.labels(route, model, status, protocol).inc()
            if ticket is not None:
                batcher.TICKET.set(None)
                self.admission.finish(ticket)
                self.inflight_tasks.discard(task)
                metrics.INFLIGHT.dec()
                metrics.REQUEST_SECONDS.labels(route, model, protocol).observe(time.perf_counter() - started)

    @property
    def inflight(self) -> int:
        return len(self.inflight_tasks)

    # --- the request path --------------------------------------------------------------------------

    def check(self, request: pipelines.GenerateRequest) -> None:
        """The shared request rules, with the requested model's own classes (ModelNotFound first)."""
        pipelines.validate(self.engine, request)

    def class_id(self, model: str, value: int | str | None) -> int | None:
        """A client's class, by id or by one of the model's class names (case-insensitive)."""
        if value is None or isinstance(value, int):
            return value
        if model not in rules.MODELS:
            raise ModelNotFound(f"unknown model {model!r}; available: {', '.join(rules.MODELS)}")
        classes = self.registry.manifest(model).classes
        lowered = [name.lower() for name in classes]
        if value.lower() in lowered:
            return lowered.index(value.lower())
        if value.isascii() and value.isdigit():  # "3"; not "³", which isdigit() accepts and int() refuses
            return int(value)
        raise InvalidInput(f"unknown class {value!r}; classes are 0..{len(classes) - 1} or {list(classes)}")

    async def generate(self, request: pipelines.GenerateRequest,
                       disconnected: Callable[[], Awaitable[None]] | None = None,
                       on_step: pipelines.OnStep | None = None) -> pipelines.Generated:
        """The one code path of every transport, inside `admitted` (which validated it): run the pipeline
        under the request timeout, and cancel its remaining steps if `disconnected` completes first.
        A streaming transport hears of each diffusion step through `on_step`."""
        work = pipelines.generate(self.engine, request, on_step)
        try:
            async with asyncio.timeout(self.config.request_timeout_seconds):
                generated = await (cancel_on(disconnected(), work) if disconnected is not None else work)
        except TimeoutError:
            raise RequestTimeout(f"the request took longer than {self.config.request_timeout_seconds:g} s; "
                                 "its remaining steps were cancelled") from None
        metrics.IMAGES.labels(request.model).inc(len(generated.images))
        return generated

    # --- encoding with provenance ------------------------------------------------------------------

    def provenance(self, model: str) -> dict[str, str]:
        manifest = self.registry.manifest(model)
        return {"Software": "Atelier", "data_source": manifest.data_source, "license": manifest.license}

    async def encode(self, generated: pipelines.Generated, image_format: ImageFormat = "png") -> list[EncodedImage]:
        """Each image as a PNG with provenance chunks (and Content Credentials, signed last, when signing is
        on) or raw bytes, encoded in the encoder threads."""
        return await asyncio.get_running_loop().run_in_executor(self.encoder, self.encode_now, generated,
                                                                image_format)

    async def encode_sheet(self, frames: Sequence[pipelines.Generated]) -> bytes:
        """One-image results side by side as one PNG (sheet_png), signed like every PNG, in the encoder threads."""
        sheet = sheet_of(frames)
        return (await self.encode(sheet))[0].data

    def encode_now(self, generated: pipelines.Generated, image_format: ImageFormat = "png") -> list[EncodedImage]:
        provenance = self.provenance(generated.model)
        return [EncodedImage(seed, class_id, image.shape, image_format,
                             self.signed(png_bytes(image, generated, seed, provenance), generated, seed)
                             if image_format == "png" else image.tobytes())
                for image, seed, class_id in zip(generated.images, generated.seeds, generated.class_ids)]

    def signed(self, png: bytes, generated: pipelines.Generated, seed: int) -> bytes:
        """The PNG with its Content Credentials, the last change made to it; unchanged when signing is off."""
        if self.credentials is None:
            return png
        claim = Claim(title=f"{generated.model} seed {seed}", model=generated.model, version=generated.version,
                      seed=seed, parameters=json.loads(json.dumps(generated.parameters, default=str)),
                      upload_sha256=generated.parameters.get("upload_sha256"))
        return self.credentials.sign_png(png, claim)

    def describe_models(self) -> dict:
        """Manifests, the execution provider each model runs on, batching settings and live stats."""
        described = self.registry.describe()
        return {"models": [{**model.manifest.raw, **described[name]} for name, model in self.registry.models.items()],
                "batching": {"max_batch": self.config.max_batch, "gather_ms": self.config.gather_ms,
                             "diffusion": self.config.diffusion_batching, "queue_order": self.config.queue_order,
                             "batch_fill": self.config.batch_fill},
                "admission": {"max_queue_seconds": self.config.max_queue_seconds,
                              "max_inflight": self.config.max_inflight, "inflight": self.inflight,
                              "predicted_wait_s": {name: round(self.admission.predicted_wait(level), 4)
                                                   for name, level in PRIORITY_OF.items()}},
                "content_credentials": (self.credentials.describe() if self.credentials is not None
                                        else {"enabled": False}),
                "engine": self.engine.stats()}

    # --- drain -------------------------------------------------------------------------------------

    def start_draining(self, exit_server: Callable[[], None]) -> None:
        if not self.draining:  # `bentoml serve` forwards SIGTERM, and a process-group kill sends another
            self.draining, self.ready = True, False
            self.drain_task = asyncio.get_running_loop().create_task(self.drain(exit_server))

    async def drain(self, exit_server: Callable[[], None]) -> None:
        """Not ready, new requests 503 + Retry-After (the socket still answers), in-flight ones get up to
        drain_seconds; then the stragglers end as 503s and `exit_server` (uvicorn's own graceful
        shutdown) runs."""
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


async def cancel_on(disconnected: Awaitable[None], work: Awaitable):
    """`work`'s result, unless `disconnected` (completes when the client goes away) finishes first:
    then `work` is cancelled, so its queued rows leave the batchers, and ClientDisconnected is raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected)
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            raise ClientDisconnected("client disconnected; remaining steps cancelled")
        return task.result()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


def png_bytes(image: np.ndarray, generated: pipelines.Generated, seed: int, provenance: dict[str, str]) -> bytes:
    """A PNG whose text chunks say what made it: model, version, seed, parameters, AI-generated."""
    info = PngInfo()
    for key, value in {**provenance, "model": generated.model, "version": generated.version, "seed": str(seed),
                       "parameters": json.dumps(generated.parameters, sort_keys=True),
                       "ai_generated": "true"}.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def animation_bytes(images: Sequence[np.ndarray], frame_ms: int, image_format: Literal["webp", "gif"]) -> bytes:
    """The frames as a looping animation: lossless WebP (exact pixels), or GIF for old viewers (a
    palette of at most 256 colours per frame)."""
    frames = [Image.fromarray(image) for image in images]
    buffer = io.BytesIO()
    options = {"lossless": True, "quality": 100} if image_format == "webp" else {"disposal": 1}
    frames[0].save(buffer, format=image_format.upper(), save_all=True, append_images=frames[1:], duration=frame_ms,
                   loop=0, **options)
    return buffer.getvalue()


def sheet_of(frames: Sequence[pipelines.Generated]) -> pipelines.Generated:
    """One-image results side by side as one image (a sprite sheet); its parameters list every frame's seed
    and parameters."""
    parameters = {"frames": [{"seed": frame.seeds[0], **frame.parameters} for frame in frames]}
    return pipelines.Generated(np.concatenate([frame.images[0] for frame in frames], axis=1)[None],
                               frames[0].seeds, frames[0].class_ids, frames[0].model, frames[0].version,
                               json.loads(json.dumps(parameters, default=str)))


async def generate_rows(core: ServingCore, rows: Sequence[pipelines.GenerateRequest]) -> list[pipelines.Generated]:
    """Several requests as one (OIP: a row per image), run concurrently so they share batches; a failed
    row, or the caller's cancellation, stops its siblings' remaining steps."""
    tasks = [asyncio.ensure_future(core.generate(row)) for row in rows]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
