"""The HTTP face of Atelier: one FastAPI app mounting every HTTP transport, with the request context
and the error answers. BentoML serves it (`@bentoml.asgi_app` in api.py) beside its own `/livez`,
`/readyz` and `/metrics`; the routes reach the core through `app.state.core`, set by api.py.

    .venv/bin/python -c "from service.transports.http_app import create_app; \
print(sorted(r.path for r in create_app().routes))"
"""

from __future__ import annotations

from fastapi import FastAPI

from service import uploads
from service.transports import assist_api, creative_api, json_api, oip_http, openai_images
from service.transports.context import RequestContext, install_error_handlers

VERSION = "1.0.0"
# An OpenAI edit uploads an image and a mask of up to uploads.MAX_UPLOAD_BYTES each, plus a few fields.
OPENAI_MAX_BODY_BYTES = 2 * uploads.MAX_UPLOAD_BYTES + (1 << 16)
# /v1/img2img and /v1/inpaint: the same two files as base64 text in JSON
ASSIST_MAX_BODY_BYTES = 2 * uploads.MAX_UPLOAD_BASE64_CHARS + (1 << 16)


def create_app() -> FastAPI:
    # max_body_size: FastAPI answers 413 past it, from Content-Length before reading the body, else as soon
    # as the streamed bytes pass it; the JSON API's bodies are as small as OIP's
    app = FastAPI(title="Atelier", version=VERSION, max_body_size=oip_http.MAX_BODY_BYTES,
                  description="Generative-art model server: GAN, VAE + GMM prior and latent diffusion on onnxruntime.")
    app.include_router(json_api.router)
    app.include_router(creative_api.router)
    app.include_router(assist_api.router, max_body_size=ASSIST_MAX_BODY_BYTES)
    app.include_router(oip_http.router)
    app.include_router(openai_images.router, max_body_size=OPENAI_MAX_BODY_BYTES)
    install_error_handlers(app)
    app.add_middleware(RequestContext)
    return app
