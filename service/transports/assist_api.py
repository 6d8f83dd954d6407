"""Sketch assist in the JSON API: `POST /v1/img2img` (an image or a rough sketch + strength -> SDEdit on
diffusion, with a class or prompt) and `POST /v1/inpaint` (image + mask -> the masked area repainted, the
rest kept). JSON bodies like every `/v1` route, the files as base64 text (`uploads.from_base64`); they
decode with the same `uploads.decode_edit` as the OpenAI edits route, into the same
`pipelines.GenerateRequest`, and run through `core.admitted` + `core.generate`. Results come back at the
upload's aspect and size (at most `uploads.MAX_RETURN_SIDE` a side), with provenance: the upload's
sha256 and `composite: true`. A body is up to two files of ~5.6 MB of base64, so the routes read it
themselves and parse it, decode its files and resize the results in the upload decoding thread, never
on the event loop (issue 17).

    curl -s localhost:3000/v1/img2img -H 'content-type: application/json' \
         -d "{\"image\": \"$(base64 -w0 sketch.png)\", \"strength\": 0.3, \"prompt\": \"a red heart\", \"seed\": 1}"
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service import rules, uploads
from service.transports.bodies import GenerationSettings, Prompt, bounded, parse
from service.transports.context import client_gone, core_of
from service.transports.json_api import GeneratedImage, GenerateResponse

router = APIRouter(prefix="/v1", tags=["Sketch assist"])

Base64File = Annotated[str, Field(min_length=1, max_length=uploads.MAX_UPLOAD_BASE64_CHARS,
                                  description="a PNG, JPEG or WebP file as base64 (a data: URL prefix is allowed)")]


class Img2ImgBody(GenerationSettings):
    image: Annotated[Base64File, Field(description="the image or sketch to start from, any size up to "
                                                   f"{uploads.MAX_UPLOAD_PIXELS} pixels")]
    class_: Annotated[int | str | None, Field(alias="class", description="class id or one of the model's names")] = None
    prompt: Prompt | None = None
    strength: Annotated[float, bounded(rules.STRENGTH)] = rules.SKETCH_STRENGTH


class InpaintBody(Img2ImgBody):
    mask: Annotated[Base64File, Field(description="a PNG of the image's size whose fully transparent pixels "
                                                  "mark the area to repaint (OpenAI's convention)")]
    strength: Annotated[float, bounded(rules.STRENGTH)] = rules.STRENGTH.maximum  # the masked area redrawn whole


def json_body(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of a route that reads its JSON itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.post("/img2img", response_model=GenerateResponse, openapi_extra=json_body(Img2ImgBody))
async def img2img(request: Request) -> GenerateResponse:
    """Images that start from an uploaded image or sketch: strength 0 returns it, 1 ignores it."""
    return await answer(request, "/v1/img2img", Img2ImgBody)


@router.post("/inpaint", response_model=GenerateResponse, openapi_extra=json_body(InpaintBody))
async def inpaint(request: Request) -> GenerateResponse:
    """The masked area of an uploaded image repainted; the pixels outside the mask are the upload's own."""
    return await answer(request, "/v1/inpaint", InpaintBody)


async def answer(request: Request, route: str, body_type: type[Img2ImgBody]) -> GenerateResponse:
    """Parse, admit, decode the upload, run, return at the upload's aspect: the path both routes share. The
    body is parsed in the upload decoding thread before admission (it holds what admission prices); its
    files are decoded there once admitted, and the results resized to the upload's size (up to 16 images
    of 512²) there too."""
    core = core_of(request)
    body = await uploads.decoded(parse, body_type, await request.body())
    mask = getattr(body, "mask", None)
    plain = body.to_request(core.class_id(body.model, body.class_), body.prompt, **uploads.planned(mask),
                            strength=body.strength)
    async with core.admitted(route, "json", [plain]):
        edit = await uploads.decoded(decode_files, body.image, mask)
        plain = replace(plain, init_image=edit.image, mask=edit.mask, upload_sha256=edit.sha256)
        generated = await core.generate(plain, lambda: client_gone(request))
    restored = replace(generated,
                       images=await uploads.off_loop(uploads.restore_aspect, generated.images, edit.size))
    return GenerateResponse(model=generated.model, version=generated.version, parameters=generated.parameters,
                            images=[GeneratedImage.of(image) for image in await core.encode(restored)])


def decode_files(image: str, mask: str | None) -> uploads.Edit:
    """The body's base64 files as an upload: CPU work for the decoding thread."""
    return uploads.decode_edit(uploads.from_base64(image, "image"),
                               None if mask is None else uploads.from_base64(mask, "mask"))
