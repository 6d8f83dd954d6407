"""The HTTP face of Atelier: one FastAPI app mounting every HTTP transport, with the request context
and the error answers. BentoML serves it (`@bentoml.asgi_app` in api.py) beside its own `/livez`,
`/readyz` and `/metrics`; the routes reach the core through `app.state.core`, set by api.py.

BentoML's HTTP metrics (`bentoml_service_request_*`, RunnerTrafficMetricsMiddleware) label each request
with its raw path, so every new URL a client sends added label sets to `/metrics` for good (a few
hundred random URLs took a scrape from 190 KB to 1.7 MB). `label_bentoml_metrics_by_route` makes that
label the route's template (`/v2/models/{model}/infer`), BentoML's own path, or "unmatched" (a request
no route takes, answered here with a 404 in its protocol's shape).

    .venv/bin/python -c "from service.transports.http_app import create_app; \
print(sorted(create_app().openapi()['paths']))"
"""

from __future__ import annotations

import re

from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse
from starlette.routing import Match, compile_path

from service import uploads
from service.transports import (assist_api, bodies, creative_api, credentials_api, json_api, oip_http,
                                openai_images, playground, style_api)
from service.transports.context import RequestContext, install_error_handlers

VERSION = "1.0.0"
# An OpenAI edit uploads an image and a mask of up to uploads.MAX_UPLOAD_BYTES each, plus a few fields.
OPENAI_MAX_BODY_BYTES = 2 * uploads.MAX_UPLOAD_BYTES + (1 << 16)
# /v1/img2img, /v1/inpaint and /v1/style: two files as base64 text in JSON
ASSIST_MAX_BODY_BYTES = 2 * uploads.MAX_UPLOAD_BASE64_CHARS + (1 << 16)
# /v1/credentials/verify: one file as base64 text in JSON
VERIFY_MAX_BODY_BYTES = uploads.MAX_UPLOAD_BASE64_CHARS + (1 << 16)


def create_app() -> FastAPI:
    # max_body_size: FastAPI answers 413 past it, from Content-Length before reading the body, else as soon
    # as the streamed bytes pass it; the JSON API's bodies are as small as OIP's. Set per router, not on the
    # app: the app's limit answers outside the middleware, so its 413 would miss the request id and the
    # protocol's error shape (RequestContext). The routes outside these routers (OpenAPI, docs) read no body.
    app = FastAPI(title="Atelier", version=VERSION,
                  description="Generative-art model server: GAN, VAE + GMM prior and latent diffusion on onnxruntime.")
    # refuse_unknown_query: every route refuses query parameters it does not declare
    strict = [Depends(bodies.refuse_unknown_query)]
    app.include_router(json_api.router, max_body_size=oip_http.MAX_BODY_BYTES, dependencies=strict)
    app.include_router(creative_api.router, max_body_size=oip_http.MAX_BODY_BYTES, dependencies=strict)
    app.include_router(assist_api.router, max_body_size=ASSIST_MAX_BODY_BYTES, dependencies=strict)
    app.include_router(style_api.router, max_body_size=ASSIST_MAX_BODY_BYTES, dependencies=strict)
    app.include_router(oip_http.router, max_body_size=oip_http.MAX_BODY_BYTES, dependencies=strict)
    app.include_router(openai_images.router, max_body_size=OPENAI_MAX_BODY_BYTES, dependencies=strict)
    app.include_router(credentials_api.router, max_body_size=VERIFY_MAX_BODY_BYTES, dependencies=strict)
    # the page at / (BentoML's own index is a route after this app's mount: this one answers first)
    app.include_router(playground.router)
    install_error_handlers(app)
    app.add_middleware(RequestContext)
    return app


UNMATCHED = "unmatched"
_ORIGINAL_SCOPE = "atelier.original_scope"


class RouteLabels:
    """A metrics label from a fixed set for any request, and whether the app serves it: the template of the
    app's route it reaches (`/v2/models/{model}/infer`, a 405 included), the path of BentoML's own route, or
    UNMATCHED when no route takes it."""

    def __init__(self, app: FastAPI):
        self.app = app
        self.templates: list[tuple[re.Pattern, str]] | None = None  # from the OpenAPI paths, at first use

    def app_template(self, path: str) -> str:
        if self.templates is None:
            paths = [*self.app.openapi()["paths"], *(route.path for route in self.app.routes if hasattr(route, "path"))]
            self.templates = [(compile_path(template)[0], template) for template in paths]
        return next((template for pattern, template in self.templates if pattern.match(path)), "app")

    def __call__(self, scope) -> tuple[str, bool]:
        for route in scope["app"].router.routes:  # BentoML's: its own routes, then the mounted app
            if route.matches(scope)[0] is Match.NONE:
                continue
            if getattr(route, "app", None) is self.app:
                return self.app_template(scope["path"]), True
            return route.path, False
        return UNMATCHED, False


def label_bentoml_metrics_by_route(app: FastAPI) -> None:
    """Make BentoML's HTTP metrics middleware label requests by `RouteLabels` instead of the raw path, and
    give the requests the app does not serve its request context too.

    BentoML 1.4 builds its middleware stack when a worker starts, importing this class from its module then;
    the subclass put there first hands the middleware a copy of the request's scope whose path is the label,
    and the app below it the request's own scope. It is the outermost middleware of BentoML's app, so it is
    also where the requests that never reach the app get what the app's RequestContext gives: a request
    id, the API key check (BentoML's index, /docs.json and /schema.json are not health checks) and error
    answers in the protocol's shape (405 on BentoML's routes; a path no route takes, which BentoML would
    answer with a plain-text 404, is answered here)."""
    from bentoml._internal.server.http import instruments

    base = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "labels_by_route", False):
        return
    label_of = RouteLabels(app)
    answer_unmatched = RequestContext(PlainTextResponse("Not Found", status_code=404), app.state)

    class RouteLabelledTrafficMetrics(base):
        labels_by_route = True

        def __init__(self, inner_app, **options) -> None:
            outside_app = RequestContext(inner_app, app.state, log_probes=False)

            async def with_original_scope(scope, receive, send) -> None:
                if _ORIGINAL_SCOPE not in scope:  # lifespan
                    await inner_app(scope, receive, send)
                elif scope["type"] != "http" or scope["atelier.served_by_app"]:
                    await inner_app(scope[_ORIGINAL_SCOPE], receive, send)
                else:
                    target = answer_unmatched if scope["path"] == UNMATCHED else outside_app
                    await target(scope[_ORIGINAL_SCOPE], receive, send)

            super().__init__(with_original_scope, **options)

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] in ("http", "websocket"):
                label, served_by_app = label_of(scope)
                scope = {**scope, "path": label, _ORIGINAL_SCOPE: scope, "atelier.served_by_app": served_by_app}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = RouteLabelledTrafficMetrics
