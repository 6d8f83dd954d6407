"""OpenAI Images API compatibility, so OpenAI clients work unchanged:
- `POST /v1/images/generations` (JSON): prompt -> images;
- `POST /v1/images/edits` (multipart): image + prompt -> img2img (SDEdit), or with a mask (its
  transparent pixels mark what to repaint) -> inpainting, the rest of the image kept exactly;
- `POST /v1/images/variations` (multipart): image -> images like it (img2img without a prompt).

Bodies are OpenAI's (prompt, model, n, size, response_format `b64_json`) plus Atelier's extras as
extra fields (seed, steps, guidance, sampler, eta, class, and strength for edits and variations);
they decode into the same `pipelines.GenerateRequest` as `/v1/generate` and run through
`Atelier.run`, so a seed gives the same image on both. Answers and errors have OpenAI's shapes:
`{"created", "data": [{"b64_json"}]}` and `{"error": {"message", "type", "param", "code"}}`.

    .venv/bin/python -c "import openai; c = openai.OpenAI(base_url='http://localhost:3000/v1', \
api_key='unused'); print(c.images.generate(prompt='a red heart', model='diffusion').data[0].b64_json[:40])"
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from service import pipelines, uploads
from service.errors import AtelierError, InvalidInput

router = APIRouter(prefix="/v1/images", tags=["OpenAI Images API"])

SIZE = "32x32"  # every model draws 32x32; OpenAI's "auto" means the same
IMG2IMG_STRENGTH = 0.6  # edits without a mask and variations: keep the layout, redraw the details
MAX_FORM_FIELDS = 32


class ImageGenerationBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: Annotated[str, Field(min_length=1, max_length=pipelines.MAX_PROMPT_CHARS)]
    model: Annotated[str, Field(max_length=64, description="dcgan, vae, gmm or diffusion")] = "diffusion"
    n: Annotated[int, Field(ge=1, le=pipelines.MAX_IMAGES)] = 1
    size: Literal["32x32", "auto"] = SIZE
    response_format: Literal["b64_json"] = "b64_json"  # no "url": Atelier hosts no files
    output_format: Literal["png"] = "png"
    user: str | None = None  # OpenAI's end-user id; accepted and not used
    # Atelier's extras, as in /v1/generate
    seed: Annotated[int | None, Field(ge=0, lt=pipelines.SEED_LIMIT, description="random when absent")] = None
    steps: Annotated[int, Field(ge=1, le=pipelines.MAX_STEPS)] = 30
    guidance: Annotated[float, Field(ge=0.0, le=20.0)] = 3.0
    sampler: Literal["dpmpp_2m", "euler", "ddim", "ddpm"] = "dpmpp_2m"
    eta: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    class_: Annotated[int | None, Field(alias="class", ge=0, description="emoji group 0..8")] = None


class ImageEditForm(ImageGenerationBody):
    """The non-file fields of an edit; `image` and `mask` are the multipart files."""

    strength: Annotated[float | None, Field(ge=0.0, le=1.0, description="1 with a mask, 0.6 without")] = None


class ImageVariationForm(ImageEditForm):
    prompt: None = None  # OpenAI's variations take no prompt


@router.post("/generations", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": ImageGenerationBody.model_json_schema()}}}})
async def generate_images(request: Request) -> JSONResponse:
    async def plain_request() -> pipelines.GenerateRequest:
        return to_plain(parse(ImageGenerationBody, await request.body()))

    return await answer(request, "/v1/images/generations", plain_request)


@router.post("/edits", openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image", "prompt"],
    "properties": {"image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"},
                   **ImageEditForm.model_json_schema()["properties"]}}}}}})
async def edit_images(request: Request) -> JSONResponse:
    async def plain_request() -> pipelines.GenerateRequest:
        fields, files = await read_form(request, ("image", "mask"))
        body = parse(ImageEditForm, fields)
        image, mask = uploads.decode_edit(files["image"], files.get("mask"))
        strength = body.strength if body.strength is not None else 1.0 if mask is not None else IMG2IMG_STRENGTH
        return to_plain(body, init_image=image, mask=mask, strength=strength)

    return await answer(request, "/v1/images/edits", plain_request)


@router.post("/variations", openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary"},
                   **ImageVariationForm.model_json_schema()["properties"]}}}}}})
async def image_variations(request: Request) -> JSONResponse:
    async def plain_request() -> pipelines.GenerateRequest:
        fields, files = await read_form(request, ("image",))
        body = parse(ImageVariationForm, fields)
        strength = body.strength if body.strength is not None else IMG2IMG_STRENGTH
        return to_plain(body, init_image=uploads.decode_image(files["image"]), strength=strength)

    return await answer(request, "/v1/images/variations", plain_request)


async def answer(request: Request, route: str, plain_request) -> JSONResponse:
    """Decode, validate, admit, run and encode: the path all three routes share."""
    atelier = request.app.state.atelier
    try:
        plain = await plain_request()
        pipelines.validate(plain, atelier.engine.manifest("dcgan")["classes"])  # 404 before a metrics label
        async with atelier.admitted(route, plain.model, "openai"):
            generated = await atelier.run(plain, request)
    except AtelierError as error:
        return await openai_error(request, error)
    images = atelier.encode_images(generated, "png")
    return JSONResponse({"created": int(time.time()), "data": [{"b64_json": image.png_base64} for image in images],
                         "output_format": "png", "size": SIZE})


def to_plain(body: ImageGenerationBody, **edit) -> pipelines.GenerateRequest:
    seed = body.seed if body.seed is not None else int(np.random.default_rng().integers(2**31))
    return pipelines.GenerateRequest(model=body.model, n=body.n, seed=seed, class_id=body.class_, prompt=body.prompt,
                                     steps=body.steps, guidance=body.guidance, sampler=body.sampler, eta=body.eta,
                                     **edit)


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


def parse(model: type[BaseModel], raw: bytes | dict):
    try:
        return model.model_validate_json(raw) if isinstance(raw, bytes) else model.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        raise InvalidInput(f"invalid request: {problems}") from None


async def openai_error(request: Request, error: AtelierError) -> JSONResponse:
    """OpenAI's error body. Status and Retry-After come from the app's AtelierError handler (api.py),
    so they are decided in one place for every route."""
    answered = await request.app.exception_handlers[AtelierError](request, error)
    status = answered.status_code
    kind = "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    code = "model_not_found" if status == 404 else None
    retry_after = {"Retry-After": answered.headers["Retry-After"]} if "Retry-After" in answered.headers else None
    return JSONResponse({"error": {"message": str(error), "type": kind, "param": None, "code": code}},
                        status_code=status, headers=retry_after)
