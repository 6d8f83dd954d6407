"""Style transfer over JSON: POST /v1/style renders an uploaded image in a built-in style or in the manner
of a second uploaded image (service/style.py). The answer has the content's size (a content image larger
than rules.MAX_STYLE_SIDE is scaled down to it) and the same shape as /v1/upscale's; its provenance names
the style (or the style upload's sha256), the strength and the content upload's sha256, as a composite.

    curl -s localhost:3000/v1/style -H 'content-type: application/json' \
         -d "{\"image\": \"$(base64 -w0 photo.jpg)\", \"style\": \"mosaic\", \"strength\": 0.8}"
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from service import rules, uploads
from service.style import StyleRequest
from service.transports.bodies import PriorityName, bounded
from service.transports.context import client_gone, core_of
from service.transports.json_api import GeneratedImage, GenerateResponse

router = APIRouter(prefix="/v1", tags=["Style transfer"])

class StyleBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image: Annotated[str, Field(min_length=1, max_length=uploads.MAX_UPLOAD_BASE64_CHARS,
                                description=f"the content: a PNG, JPEG or WebP file as base64; scaled down to at "
                                            f"most {rules.MAX_STYLE_SIDE} px on its longer side, after which "
                                            f"both sides must be at least {rules.MIN_STYLE_SIDE} px")]
    style: Annotated[str | None, Field(max_length=rules.MAX_MODEL_NAME_CHARS,
                                       description="a built-in style (GET /v1/models, model `style`, `styles`)")] = None
    style_image: Annotated[str | None, Field(min_length=1, max_length=uploads.MAX_UPLOAD_BASE64_CHARS,
                                             description="or any image as the style, as base64; scaled down to "
                                                         f"at most {rules.STYLE_IMAGE_SIDE} px on its longer "
                                                         "side")] = None
    strength: Annotated[float, bounded(rules.STYLE_STRENGTH)] = rules.STYLE_STRENGTH.default
    output: Literal["png", "raw"] = "png"
    priority: PriorityName = rules.DEFAULT_PRIORITY


@router.post("/style", response_model=GenerateResponse)
async def style(body: StyleBody, request: Request) -> GenerateResponse:
    """The image in a built-in style or an uploaded one, at its own size (at most 512 px a side)."""
    core = core_of(request)
    content = uploads.from_base64(body.image, "image")
    style_upload = uploads.from_base64(body.style_image, "style_image") if body.style_image is not None else None
    plain = StyleRequest(style=body.style, strength=body.strength, uploaded_style=style_upload is not None,
                         priority=body.priority)
    async with core.admitted("/v1/style", "json", [plain]):
        plain = await decoded(plain, content, style_upload)
        core.check(plain)  # the sizes, now that they are known
        generated = await core.generate(plain, lambda: client_gone(request))
    encoded = await core.encode(generated, body.output)
    return GenerateResponse(model=generated.model, version=generated.version, parameters=generated.parameters,
                            images=[GeneratedImage.of(image) for image in encoded])


async def decoded(request: StyleRequest, content: bytes, style_upload: bytes | None) -> StyleRequest:
    """The request with its uploads decoded in the decoding thread (the event loop keeps serving)."""
    image, sha256 = await uploads.decoded(uploads.decode_fitted, content, "image", rules.MAX_STYLE_SIDE)
    request = replace(request, image=image, upload_sha256=sha256)
    if style_upload is None:
        return request
    style_image, style_sha256 = await uploads.decoded(uploads.decode_fitted, style_upload, "style_image",
                                                      rules.STYLE_IMAGE_SIDE)
    return replace(request, style_image=style_image, style_sha256=style_sha256)
