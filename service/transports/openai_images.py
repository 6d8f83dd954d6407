"""OpenAI Images API compatibility, so OpenAI clients work unchanged:
- `POST /v1/images/generations` (JSON): prompt -> images;
- `POST /v1/images/edits` (multipart): image + prompt -> img2img (SDEdit), or with a mask (its
  transparent pixels mark what to repaint) -> inpainting, the rest of the image kept exactly;
- `POST /v1/images/variations` (multipart): image -> images like it (img2img without a prompt).

Bodies are OpenAI's (prompt, model, n, size, response_format `b64_json`) plus Atelier's extras as
extra fields (seed, steps, guidance, sampler, eta, class, and strength for edits and variations);
they decode into the same `pipelines.GenerateRequest` as `/v1/generate` and run through
`ServingCore.generate`, so a seed gives the same image on both. Answers and errors have OpenAI's shapes:
`{"created", "data": [{"b64_json"}]}` and `{"error": {"message", "type", "param", "code"}}`.

    .venv/bin/python -c "import openai; c = openai.OpenAI(base_url='http://localhost:3000/v1', \
api_key='unused'); print(c.images.generate(prompt='a red heart', model='diffusion').data[0].b64_json[:40])"
"""

from __future__ import annotations

import base64
import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from service import pipelines, rules, uploads
from service.errors import AtelierError, InvalidInput
from service.server import EncodedImage
from service.transports import streaming
from service.transports.bodies import GenerationSettings, Prompt, bounded, parse
from service.transports.context import client_gone, core_of, error_response

router = APIRouter(prefix="/v1/images", tags=["OpenAI Images API"])

SIZE = "32x32"  # every model draws 32x32; OpenAI's "auto" means the same
UPSCALED_SIZE = "128x128"  # the models' images through the 4x super-resolution model (upscale: 4 in /v1/generate)
MAX_FORM_FIELDS = 32


class ImageGenerationBody(GenerationSettings):
    prompt: Prompt
    size: Literal["32x32", "128x128", "auto"] = SIZE
    response_format: Literal["b64_json"] = "b64_json"  # no "url": Atelier hosts no files
    output_format: Literal["png"] = "png"
    user: str | None = None  # OpenAI's end-user id; accepted and not used
    # Atelier's extras beyond the shared settings, as in /v1/generate
    class_: Annotated[int | None, Field(alias="class", ge=0, description="the model's class id")] = None
    # OpenAI's streaming: server-sent `image_generation.partial_image` events, then `...completed`
    stream: bool = False
    partial_images: Annotated[int | None, bounded(rules.PARTIAL_IMAGES)] = None


class ImageEditForm(ImageGenerationBody):
    """The non-file fields of an edit; `image` and `mask` are the multipart files."""

    strength: Annotated[float | None, bounded(rules.STRENGTH)] = None  # None: 1 with a mask, 0.6 without


class ImageVariationForm(ImageEditForm):
    prompt: None = None  # OpenAI's variations take no prompt
    stream: Literal[False] = False  # nor stream (the SDK has no variation events)


@router.post("/generations", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": ImageGenerationBody.model_json_schema()}}}})
async def generate_images(request: Request) -> JSONResponse:
    async def plain_request() -> tuple[pipelines.GenerateRequest, dict[str, bytes], ImageGenerationBody]:
        body = parse(ImageGenerationBody, await request.body())
        return to_plain(body), {}, body

    return await answer(request, "/v1/images/generations", plain_request)


@router.post("/edits", openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image", "prompt"],
    "properties": {"image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"},
                   **ImageEditForm.model_json_schema()["properties"]}}}}}})
async def edit_images(request: Request) -> JSONResponse:
    async def plain_request() -> tuple[pipelines.GenerateRequest, dict[str, bytes], ImageGenerationBody]:
        fields, files = await read_form(request, ("image", "mask"))
        body = parse(ImageEditForm, fields)
        # a masked area is redrawn whole; an unmasked image keeps some of its layout
        default = rules.STRENGTH.maximum if "mask" in files else rules.IMG2IMG_STRENGTH
        strength = body.strength if body.strength is not None else default
        return to_plain(body, **uploads.planned(files.get("mask")), strength=strength), files, body

    return await answer(request, "/v1/images/edits", plain_request)


@router.post("/variations", openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary"},
                   **ImageVariationForm.model_json_schema()["properties"]}}}}}})
async def image_variations(request: Request) -> JSONResponse:
    async def plain_request() -> tuple[pipelines.GenerateRequest, dict[str, bytes], ImageGenerationBody]:
        fields, files = await read_form(request, ("image",))
        body = parse(ImageVariationForm, fields)
        strength = body.strength if body.strength is not None else rules.IMG2IMG_STRENGTH
        return to_plain(body, **uploads.planned(None), strength=strength), files, body

    return await answer(request, "/v1/images/variations", plain_request)


async def answer(request: Request, route: str, plain_request) -> Response:
    """Decode, validate, admit, run and encode: the path all three routes share. An upload is decoded once
    admitted, off the event loop. With `stream`, the answer is OpenAI's event stream (streaming.py)."""
    core = core_of(request)
    try:
        plain, files, body = await plain_request()
        rules.check_stream(body.stream, rules.PARTIAL_IMAGES, body.partial_images)
        if body.stream:
            async def decode_upload(plain: pipelines.GenerateRequest) -> pipelines.GenerateRequest:
                return (await uploads.decoded_into(plain, files["image"], files.get("mask")))[0]

            partials = body.partial_images or 0
            return streaming.EventStream(core, route, "openai", plain, OpenAIWire(route),
                                         lambda total: streaming.spread_over_steps(total, partials),
                                         prepare=decode_upload if files else None)
        async with core.admitted(route, "openai", [plain]):
            if files:
                plain, _ = await uploads.decoded_into(plain, files["image"], files.get("mask"))
            generated = await core.generate(plain, lambda: client_gone(request))
    except AtelierError as error:
        return openai_error(error)
    data = [{"b64_json": base64.b64encode(image.data).decode()} for image in await core.encode(generated)]
    return JSONResponse({"created": int(time.time()), "data": data, "output_format": "png",
                         "size": size_of(plain)})


class OpenAIWire:
    """OpenAI's image streaming, as its SDK parses it (`ImageGenStreamEvent` / `ImageEditStreamEvent`): each
    image's `partial_image` events, then one `completed` event per image (in image order), or an `error`
    event with OpenAI's error body, which the SDK raises as an APIError. Atelier's progress events have no
    place in it and are not sent."""

    def __init__(self, route: str):
        self.kind = "image_edit" if route.endswith("/edits") else "image_generation"

    def frame(self, event: streaming.Event) -> bytes:
        match event:
            case streaming.Preview(_, _, index, images):
                return b"".join(self.image_event("partial_image", image, partial_image_index=index)
                                for image in images)
            case streaming.Finished(_, _, images):
                usage = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
                         "output_tokens": 0, "total_tokens": 0}  # Atelier counts no tokens
                return b"".join(self.image_event("completed", image, usage=usage) for image in images)
            case streaming.Failed(error):
                return streaming.sse("error", {"type": "error", **json.loads(self.refusal(error).body)})
        return b""

    def image_event(self, name: str, image: EncodedImage, **fields) -> bytes:
        kind = f"{self.kind}.{name}"
        return streaming.sse(kind, {"type": kind, "b64_json": base64.b64encode(image.data).decode(),
                                    "background": "opaque", "created_at": int(time.time()), "output_format": "png",
                                    "quality": "auto", "size": f"{image.shape[1]}x{image.shape[0]}", **fields})

    def refusal(self, error: AtelierError) -> JSONResponse:
        return openai_error(error)


def to_plain(body: ImageGenerationBody, **edit) -> pipelines.GenerateRequest:
    return body.to_request(body.class_, body.prompt, upscale=4 if body.size == UPSCALED_SIZE else 1, **edit)


def size_of(plain: pipelines.GenerateRequest) -> str:
    return UPSCALED_SIZE if plain.upscale != 1 else SIZE


async def read_form(request: Request, file_fields: tuple[str, ...]) -> tuple[dict[str, str], dict[str, bytes]]:
    """A multipart body's text fields and its files (read whole: uploads.decode_* bound their size);
    the first of `file_fields` is required."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("this route takes multipart/form-data (an image file and form fields)")
    try:
        form = await request.form(max_files=len(file_fields), max_fields=MAX_FORM_FIELDS)
    except (MultiPartException, HTTPException) as error:  # starlette turns the first into the second
        raise InvalidInput(f"unreadable multipart body: {getattr(error, 'detail', None) or error}") from None
    fields, files = {}, {}
    for key, value in form.multi_items():
        name = key.removesuffix("[]")  # the SDK names a list of files `image[]`
        if isinstance(value, UploadFile):
            if name not in file_fields:
                raise InvalidInput(f"{name}: unexpected file; this route takes {', '.join(file_fields)}")
            if name in files:
                raise InvalidInput(f"{name}: one file only")
            files[name] = await value.read(uploads.MAX_UPLOAD_BYTES + 1)
        else:
            fields[name] = value
    if file_fields[0] not in files:
        raise InvalidInput(f"{file_fields[0]}: a file is required")
    return fields, files


def openai_error(error: AtelierError) -> JSONResponse:
    """OpenAI's error body, with the status and Retry-After every route gets (errors.py's table)."""
    return error_response(error, router.prefix + "/")
