"""What every HTTP route shares: the request context (request id, access line, API key), the
error answers (one status table, errors.py, for every route), the core a route serves from, and
the wait for a client that goes away.

Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs each request
in an extra task behind two memory streams, which a profile of GAN load at concurrency 32 showed at
~8 % of the worker's samples, a quarter of its event loop's busy time.

    curl -si localhost:3000/v1/models -H 'x-request-id: abc' | grep x-request-id
"""

from __future__ import annotations

import hmac
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from service import logs
from service.admission import ARRIVED
from service.errors import AtelierError, Unauthenticated, http_status, invalid_request, public_message, retry_after
from service.server import ServingCore

log = logging.getLogger("atelier")
access_log = logging.getLogger("atelier.access")

OPEN_PATHS = ("/livez", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")


def core_of(request: Request) -> ServingCore:
    """The worker's core, which the composition root (api.py) puts on the app's state."""
    return request.app.state.core


async def client_gone(request: Request) -> None:
    """Completes when the HTTP client disconnects (its body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def error_status_and_headers(error: BaseException) -> tuple[int, dict[str, str] | None]:
    wait = retry_after(error)
    return http_status(error), ({"Retry-After": wait} if wait is not None else None)


def error_response(error: BaseException) -> JSONResponse:
    status, headers = error_status_and_headers(error)
    return JSONResponse({"error": public_message(error)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Our errors by the status table, schema failures as InvalidInput (400), anything else a logged 500."""

    @app.exception_handler(AtelierError)
    async def atelier_error(request: Request, error: AtelierError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(invalid_request(error.errors()))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(error)


class RequestContext:
    """Every response carries an x-request-id (the client's, if short and printable) and leaves one JSON
    access line with it; with ATELIER_API_KEY set, every route but health and metrics needs
    `Authorization: Bearer <key>` (compared in constant time)."""

    def __init__(self, asgi_app) -> None:
        self.app = asgi_app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = logs.request_id(headers.get("x-request-id"))
        logs.REQUEST_ID.set(request_id)  # the route runs in this task: its error logs carry the id
        started, status = time.perf_counter(), 500
        ARRIVED.set(started)

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        core = getattr(scope["app"].state, "core", None)
        key = core.config.api_key if core is not None else None
        offered = headers.get("authorization", "").removeprefix("Bearer ").strip()
        try:
            if key and scope["path"] not in OPEN_PATHS and not hmac.compare_digest(offered.encode(), key.encode()):
                await error_response(Unauthenticated("missing or wrong API key"))(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            access_log.info("%s %s %d", scope["method"], scope["path"], status,
                            extra={"method": scope["method"], "path": scope["path"], "status": status,
                                   "ms": round((time.perf_counter() - started) * 1000, 1)})
