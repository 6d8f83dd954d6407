"""Atelier's own JSON API under `/v1`: generate (n images as JSON, with their genomes on request, or as a
stream of progress events with `stream: true`; `upscale: 4` for 128 px), image.png (one PNG file), upscale
(an uploaded image 4x larger, by the super-resolution model) and models. The creative tools are in
creative_api.py.

The routes are module functions that reach the core through the app's state (`context.core_of`),
not methods of the BentoML service: BentoML injects a method's `self` through a synchronous FastAPI
dependency, which costs every request a hop through the thread pool (seen in a profile under load).

    curl -s localhost:3000/v1/generate -H 'content-type: application/json' \
         -d '{"model": "diffusion", "prompt": "a red heart", "seed": 7}'
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service import creative, genomes, pipelines, rules, uploads
from service.errors import AtelierError, http_status, public_message
from service.server import EncodedImage, ServingCore
from service.transports import streaming
from service.transports.bodies import GenerationSettings, PriorityName, Prompt, SamplerName, bounded
from service.transports.context import client_gone, core_of, error_response

router = APIRouter(prefix="/v1", tags=["JSON API"])


class GenerateBody(GenerationSettings):
    class_: Annotated[int | str | None, Field(alias="class", description="class id or one of the model's names")] = None
    prompt: Prompt | None = None
    output: Literal["png", "raw"] = "png"
    genome: Annotated[bool, Field(description="also return each image's genome token (for /v1/breed, "
                                              "/v1/interpolate and /v1/regenerate)")] = False
    stream: Annotated[bool, Field(description="answer text/event-stream: start, progress per step, previews, "
                                              "then the result (docs/PROTOCOLS.md)")] = False
    preview_every: Annotated[int | None, bounded(rules.PREVIEW_EVERY)] = None  # None: the rule's default
    # an int checked by rules.check_upscale (a Literal would take 4.0 for 4, where every other int field refuses it)
    upscale: Annotated[int, Field(description="4: each image through the 4x super-resolution model (128 px)",
                                  json_schema_extra={"enum": list(rules.UPSCALE_FACTORS)})] = 1


class GeneratedImage(BaseModel):
    seed: int
    class_id: int | None
    png_base64: str | None = None
    raw_base64: str | None = Field(None, description="uint8 RGB, row-major (height, width, 3)")
    shape: list[int]
    genome: str | None = Field(None, description="the token that regenerates this image exactly")

    @classmethod
    def of(cls, image: EncodedImage) -> GeneratedImage:
        encoded = base64.b64encode(image.data).decode()
        return cls(seed=image.seed, class_id=image.class_id, shape=list(image.shape),
                   **({"png_base64": encoded} if image.format == "png" else {"raw_base64": encoded}))


class GenerateResponse(BaseModel):
    model: str
    version: str
    ai_generated: bool = True
    parameters: dict
    images: list[GeneratedImage]


@router.post("/generate", response_model=GenerateResponse,
             responses={200: {"content": {"text/event-stream": {"description": "with stream: true"}}}})
async def generate(body: GenerateBody, request: Request) -> GenerateResponse | streaming.EventStream:
    """Generate n images from a model, by class, prompt (theme) or neither, with a seed."""
    core = core_of(request)
    rules.check_stream(body.stream, rules.PREVIEW_EVERY, body.preview_every)
    plain = body.to_request(core.class_id(body.model, body.class_), body.prompt, upscale=body.upscale)
    if body.stream:
        every = rules.PREVIEW_EVERY.default if body.preview_every is None else body.preview_every
        return streaming.EventStream(core, "/v1/generate", "json", plain, JsonWire(core, body),
                                     lambda total: streaming.every_k_steps(total, every), body.output)
    async with core.admitted("/v1/generate", "json", [plain]):
        generated = await core.generate(plain, lambda: client_gone(request))
    return answer(core, body, plain, generated, await core.encode(generated, body.output))


def answer(core: ServingCore, body: GenerateBody, plain: pipelines.GenerateRequest, generated: pipelines.Generated,
           encoded: list[EncodedImage]) -> GenerateResponse:
    images = [GeneratedImage.of(image) for image in encoded]
    if body.genome:
        tokens = [genomes.seal_genome(core.signer, genome) for genome in creative.genomes_of(plain, generated)]
        images = [image.model_copy(update={"genome": token}) for image, token in zip(images, tokens)]
    return GenerateResponse(model=generated.model, version=generated.version, parameters=generated.parameters,
                            images=images)


class JsonWire:
    """/v1/generate's stream (docs/PROTOCOLS.md): `start`, `progress` per step, `preview` after every
    `preview_every` steps, then `result` (the non-streaming answer's JSON) or `error`."""

    def __init__(self, core: ServingCore, body: GenerateBody):
        self.core, self.body = core, body

    def frame(self, event: streaming.Event) -> bytes:
        match event:
            case streaming.Started(request, total):
                return streaming.sse("start", {"model": request.model, "seed": request.seed, "n": request.n,
                                               "total": total})
            case streaming.Progress(step, total, elapsed):
                return streaming.sse("progress", {"step": step, "total": total, "elapsed": elapsed})
            case streaming.Preview(step, total, _, images):
                return streaming.sse("preview", {"step": step, "total": total, "images": [
                    GeneratedImage.of(image).model_dump(include={"seed", "png_base64", "shape"}) for image in images]})
            case streaming.Finished(request, generated, images):
                return streaming.sse("result", answer(self.core, self.body, request, generated, images).model_dump())
            case streaming.Failed(error):
                return streaming.sse("error", {"error": public_message(error), "status": http_status(error)})
        raise TypeError(f"not a stream event: {event!r}")

    def refusal(self, error: AtelierError):
        return error_response(error)


@router.get("/image.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def image_png(request: Request, model: str = rules.DEFAULT_MODEL,
                    class_: Annotated[str | None, Query(alias="class")] = None,
                    prompt: Annotated[str | None, Query(min_length=1, max_length=rules.MAX_PROMPT_CHARS)] = None,
                    seed: Annotated[int, bounded(rules.SEED, Query)] = 0,
                    steps: Annotated[int, bounded(rules.STEPS, Query)] = rules.STEPS.default,
                    guidance: Annotated[float, bounded(rules.GUIDANCE, Query)] = rules.GUIDANCE.default,
                    sampler: SamplerName = rules.DEFAULT_SAMPLER,
                    priority: PriorityName = rules.DEFAULT_PRIORITY,
                    upscale: Annotated[int, Query(description="4: 128 px, through the super-resolution model")] = 1,
                    ) -> Response:
    """One image as a PNG file (for curl and <img> tags)."""
    core = core_of(request)
    plain = pipelines.GenerateRequest(model=model, seed=seed, class_id=core.class_id(model, class_), prompt=prompt,
                                      steps=steps, guidance=guidance, sampler=sampler, priority=priority,
                                      upscale=upscale)
    async with core.admitted("/v1/image.png", "json", [plain]):
        generated = await core.generate(plain, lambda: client_gone(request))
    return Response((await core.encode(generated))[0].data, media_type="image/png")


class UpscaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image: Annotated[str, Field(min_length=1, max_length=uploads.MAX_UPLOAD_BASE64_CHARS,
                                description=f"a PNG, JPEG or WebP file as base64, at most {rules.MAX_UPSCALE_SIDE} "
                                            "px a side (a data: URL prefix is allowed)")]
    output: Literal["png", "raw"] = "png"
    priority: PriorityName = rules.DEFAULT_PRIORITY


@router.post("/upscale", response_model=GenerateResponse)
async def upscale(body: UpscaleBody, request: Request) -> GenerateResponse:
    """An uploaded image 4x larger (at most 512 px a side), by the super-resolution model; transparent
    pixels become the white the model was trained on."""
    core = core_of(request)
    payload = uploads.from_base64(body.image, "image")
    plain = pipelines.UpscaleRequest(priority=body.priority)
    async with core.admitted("/v1/upscale", "json", [plain]):
        pixels, sha256 = await uploads.decoded(upload_pixels, payload)
        plain = pipelines.UpscaleRequest(pixels, sha256, body.priority)
        generated = await core.generate(plain, lambda: client_gone(request))
    encoded = await core.encode(generated, body.output)
    return GenerateResponse(model=generated.model, version=generated.version, parameters=generated.parameters,
                            images=[GeneratedImage.of(image) for image in encoded])


def upload_pixels(payload: bytes) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 on white and the file's sha256, after every upload check (format, bytes, declared
    pixels, corruption) and the upscaler's own size limit, which refuses by the header before decoding."""
    return uploads.decode_fitted(payload, "image", rules.MAX_UPSCALE_SIDE, check=rules.check_upscale_size)


@router.get("/models")
async def models(request: Request) -> dict:
    """Manifests, the execution provider each model runs on, batching settings and live stats."""
    return core_of(request).describe_models()
