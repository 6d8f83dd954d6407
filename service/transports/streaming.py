"""Progress streaming: a generation answered as server-sent events (`text/event-stream`) while it runs,
for `/v1/generate` with `stream: true` and the OpenAI routes with `stream` (docs/PROTOCOLS.md, "Streaming").

`EventStream` is the ASGI response both use. It admits the request (a refusal is an ordinary JSON error,
before any event), then runs the one request path, `core.generate`, hearing of every sampler step through
its `on_step` hook, and sends, in order: a start, one progress event per step, a preview after the chosen
steps (the step's estimate of the clean image, decoded by the VAE decoder's batcher, so previews share runs
with other decodes), and the final images with their provenance, as the non-streaming answer has them. What
an event looks like on the wire is the transport's (`Wire`): Atelier's own events for the JSON API, the
OpenAI SDK's `image_generation.*` / `image_edit.*` events for the OpenAI routes.

A client that goes away cancels the remaining steps, as on every route: `core.generate` watches the
connection, its rows leave the batchers and the request is counted as 499.

    curl -sN localhost:3000/v1/generate -H 'content-type: application/json' \
         -d '{"prompt": "a red heart", "seed": 7, "steps": 20, "stream": true, "preview_every": 5}'
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from starlette.responses import Response

from service import pipelines
from service.errors import AtelierError, ClientDisconnected
from service.server import EncodedImage, ImageFormat, ServingCore

log = logging.getLogger("atelier")

HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no")]  # nginx (and ingresses built on it) would otherwise buffer the stream


@dataclass(frozen=True)
class Started:
    request: pipelines.GenerateRequest  # with its seed fixed
    total: int  # sampler steps to come (0 for the one-shot models)


@dataclass(frozen=True)
class Progress:
    step: int  # 1-based
    total: int
    elapsed: float  # seconds since the stream started, when the step finished


@dataclass(frozen=True)
class Preview:
    step: int
    total: int
    index: int  # 0-based count of the previews sent before this one
    images: list[EncodedImage]


@dataclass(frozen=True)
class Finished:
    request: pipelines.GenerateRequest  # the one that ran, its seed fixed
    generated: pipelines.Generated
    images: list[EncodedImage]


@dataclass(frozen=True)
class Failed:
    error: Exception


Event = Started | Progress | Preview | Finished | Failed


class Wire(Protocol):
    """A transport's face of the stream: the bytes of each event, and the answer to a refused request."""

    def frame(self, event: Event) -> bytes: ...

    def refusal(self, error: AtelierError) -> Response: ...


def sse(event: str, data: dict) -> bytes:
    """One server-sent event: its type on the `event:` line, its JSON on one `data:` line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def every_k_steps(total: int, every: int) -> frozenset[int]:
    """Steps k, 2k, ... before the last (whose image is the final one); none for k = 0."""
    return frozenset(range(every, total, every)) if every > 0 else frozenset()


def spread_over_steps(total: int, count: int) -> frozenset[int]:
    """`count` steps spread evenly before the last, as OpenAI's partial_images asks; fewer when the request has
    fewer steps than that (OpenAI's API may also send fewer partial images than asked)."""
    return frozenset(round(k * total / (count + 1)) for k in range(1, count + 1)) & frozenset(range(1, total))


class EventStream(Response):
    """The ASGI answer of a streamed request: admission, the stream, and its end, in the request's own task
    (the drain and the request timeout reach it like any request). `preview_steps` picks the steps after
    which a preview is decoded; `prepare`, run once admitted, completes the request (an upload decoded into it)."""

    def __init__(self, core: ServingCore, route: str, protocol: str, request: pipelines.GenerateRequest,
                 wire: Wire, preview_steps: Callable[[int], Collection[int]], output: ImageFormat = "png",
                 prepare: Callable[[pipelines.GenerateRequest], Awaitable[pipelines.GenerateRequest]] | None = None):
        self.core, self.route, self.protocol, self.wire = core, route, protocol, wire
        self.request, self.preview_steps, self.output = request.with_seed(), preview_steps, output
        self.prepare = prepare
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        started = False
        try:
            async with self.core.admitted(self.route, self.protocol, [self.request]):
                if self.prepare is not None:
                    self.request = await self.prepare(self.request)
                await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
                started = True
                await self.stream(receive, send)
        except Exception as error:
            if not started:
                if not isinstance(error, AtelierError):
                    raise  # the app's handler logs it and answers 500
                await self.wire.refusal(error)(scope, receive, send)
                return
            if not isinstance(error, AtelierError):
                log.exception("stream failed on %s", self.route)
            if not isinstance(error, ClientDisconnected):  # nobody would read it
                await send_body(send, self.wire.frame(Failed(error)))
        finally:
            if started:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def stream(self, receive, send) -> None:
        """Events in order while the generation runs: progress and previews from a writer task fed by the
        sampler's steps (the sampler never waits on the network or on a preview), then the final images."""
        began, total = time.perf_counter(), pipelines.sampler_steps(self.request)
        await send_body(send, self.wire.frame(Started(self.request, total)))
        steps: asyncio.Queue[tuple[pipelines.Step, float] | None] = asyncio.Queue()
        writer = asyncio.ensure_future(self.write_steps(steps, send, frozenset(self.preview_steps(total))))
        try:
            generated = await self.core.generate(self.request, lambda: disconnected(receive),
                                                 lambda step: steps.put_nowait((step, time.perf_counter() - began)))
            steps.put_nowait(None)
            images = await self.core.encode(generated, self.output)
            await writer  # the last progress events and previews go out before the final images
            await send_body(send, self.wire.frame(Finished(self.request, generated, images)))
        finally:
            writer.cancel()

    async def write_steps(self, steps: asyncio.Queue, send, preview_steps: frozenset[int]) -> None:
        previews = 0
        while (item := await steps.get()) is not None:
            step, elapsed = item
            await send_body(send, self.wire.frame(Progress(step.step, step.total, round(elapsed, 4))))
            if step.step in preview_steps:
                images = await self.core.encode(await pipelines.preview(self.core.engine, self.request, step))
                await send_body(send, self.wire.frame(Preview(step.step, step.total, previews, images)))
                previews += 1


async def send_body(send, chunk: bytes) -> None:
    if chunk:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def disconnected(receive) -> None:
    """Completes when the client goes away (the request's body was read before the stream began)."""
    while (await receive())["type"] != "http.disconnect":
        pass
