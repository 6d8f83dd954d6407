"""OpenAI Images API compatibility: `POST /v1/images/generations`, so OpenAI clients work unchanged.

The body is OpenAI's (prompt, model, n, size, response_format `b64_json`) plus Atelier's extras as
extra fields (seed, steps, guidance, sampler, eta, class); it decodes into the same
`pipelines.GenerateRequest` as `/v1/generate` and runs through `Atelier.run`, so a seed gives the
same image on both. Answers and errors have OpenAI's shapes: `{"created", "data": [{"b64_json"}]}`
and `{"error": {"message", "type", "param", "code"}}`.

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

from service import pipelines
from service.errors import AtelierError, InvalidInput

router = APIRouter(prefix="/v1/images", tags=["OpenAI Images API"])

SIZE = "32x32"  # every model draws 32x32; OpenAI's "auto" means the same


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


@router.post("/generations")
async def generate_images(request: Request) -> JSONResponse:
    atelier = request.app.state.atelier
    try:
        body = parse_body(await request.body())
        seed = body.seed if body.seed is not None else int(np.random.default_rng().integers(2**31))
        plain = pipelines.GenerateRequest(model=body.model, n=body.n, seed=seed, class_id=body.class_,
                                          prompt=body.prompt, steps=body.steps, guidance=body.guidance,
                                          sampler=body.sampler, eta=body.eta)
        pipelines.validate(plain, atelier.engine.manifest("dcgan")["classes"])  # 404 before a metrics label
        async with atelier.admitted("/v1/images/generations", body.model, "openai"):
            generated = await atelier.run(plain, request)
    except AtelierError as error:
        return await openai_error(request, error)
    images = atelier.encode_images(generated, "png")
    return JSONResponse({"created": int(time.time()), "data": [{"b64_json": image.png_base64} for image in images],
                         "output_format": "png", "size": SIZE})


def parse_body(raw: bytes) -> ImageGenerationBody:
    try:
        return ImageGenerationBody.model_validate_json(raw)
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
