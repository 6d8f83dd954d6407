"""What every HTTP route shares: the request context (request id, access line, API key), the
error answers (one status table, errors.py, for every route; one body shape per protocol for every
status), the core a route serves from, and the wait for a client that goes away.

Error bodies: `{"error": "<message>"}` on every route (Atelier's JSON API and OIP's own shape), and
OpenAI's `{"error": {"message", "type", "param", "code"}}` under /v1/images. An error answer made by
the framework instead (404 and 405 from routing, 413 from the body limit, `{"detail": ...}` from
FastAPI) is rewritten into its route's shape by `RequestContext`, and an unexpected exception becomes
a 500 in that shape, logged once with its traceback, on a connection that stays open.

Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs each request
in an extra task behind two memory streams, which a profile of GAN load at concurrency 32 showed at
~8 % of the worker's samples, a quarter of its event loop's busy time.

    curl -si localhost:3000/v1/models -H 'x-request-id: abc' | grep x-request-id
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from service import logs
from service.admission import ARRIVED
from service.errors import (AtelierError, ModelNotFound, Unauthenticated, http_status, invalid_request, public_message,
                            retry_after)
from service.server import ServingCore

log = logging.getLogger("atelier")
access_log = logging.getLogger("atelier.access")

OPEN_PATHS = ("/livez", "/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")
# the playground's static files (transports/playground.py): a browser cannot send a key to load a page; the
# page asks for the key and sends it with each API call
PLAYGROUND_PATHS = ("/", "/playground.css", "/playground.js")
KEYLESS_PATHS = OPEN_PATHS + PLAYGROUND_PATHS
OPENAI_PATHS = "/v1/images/"  # the OpenAI Images routes answer errors in OpenAI's shape


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


def error_body(path: str, status: int, message: str, code: str | None = None) -> dict:
    """The error body of the protocol that serves `path` (`code`: OpenAI's machine-readable code)."""
    if not path.startswith(OPENAI_PATHS):
        return {"error": message}
    kind = "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def is_error_body(path: str, body: object) -> bool:
    """Whether an error answer's body already has its protocol's shape."""
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and "message" in error if path.startswith(OPENAI_PATHS) else isinstance(error, str)


def error_response(error: BaseException, path: str = "") -> JSONResponse:
    status, headers = error_status_and_headers(error)
    code = "model_not_found" if isinstance(error, ModelNotFound) else None
    return JSONResponse(error_body(path, status, public_message(error), code), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Our errors by the status table, schema failures as InvalidInput (400); anything else reaches
    RequestContext, which answers a logged 500."""

    @app.exception_handler(AtelierError)
    async def atelier_error(request: Request, error: AtelierError) -> JSONResponse:
        return error_response(error, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(invalid_request(error.errors()), request.url.path)


def reshaped_error(path: str, status: int, body: bytes) -> bytes:
    """A framework's error body (plain text, FastAPI's `{"detail": ...}`) in the route's protocol shape."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body.decode("utf-8", "replace").strip()
    if is_error_body(path, parsed):
        return body
    detail = parsed.get("detail") if isinstance(parsed, dict) else parsed
    if not isinstance(detail, str) or not detail:
        detail = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    return json.dumps(error_body(path, status, detail), separators=(",", ":")).encode()


class RequestContext:
    """Every response carries an x-request-id (the client's, if short and printable) and leaves one JSON
    access line with it; with ATELIER_API_KEY set, every route but health, metrics and the playground's
    files needs `Authorization: Bearer <key>` (compared in constant time). Error answers leave in their route's
    protocol shape; an exception no handler took becomes a 500 here, logged once, and goes no further (a
    server that saw it would log it again and close the client's keep-alive connection)."""

    def __init__(self, asgi_app, state=None, log_probes: bool = True) -> None:
        self.app = asgi_app
        self.state = state  # where the core is: the app's state (None: that of the app serving the request)
        self.log_probes = log_probes  # False: no access line for a health probe or scrape that succeeds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = logs.request_id(headers.get("x-request-id"))
        logs.REQUEST_ID.set(request_id)  # the route runs in this task: its error logs carry the id
        started, status = time.perf_counter(), 500
        ARRIVED.set(started)
        path = scope["path"]
        held: dict | None = None  # an error answer's start, held until its body is reshaped
        held_body: list[bytes] = []
        answered = False

        async def send_with_id(message) -> None:
            nonlocal status, held, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode())]}
                if status >= 400:
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                held_body.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = reshaped_error(path, status, b"".join(held_body))
                kept = [(name, value) for name, value in held["headers"]
                        if name.lower() not in (b"content-length", b"content-type")]
                message = {"type": "http.response.body", "body": body}
                await send({**held, "headers": [*kept, (b"content-length", str(len(body)).encode()),
                                                (b"content-type", b"application/json")]})
                held = None
            answered = True
            await send(message)

        core = getattr(self.state or scope["app"].state, "core", None)
        key = core.config.api_key if core is not None else None
        offered = headers.get("authorization", "").removeprefix("Bearer ").strip()
        try:
            if key and path not in KEYLESS_PATHS and not hmac.compare_digest(offered.encode(), key.encode()):
                await error_response(Unauthenticated("missing or wrong API key"), path)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as error:
            if answered:  # part of the answer is on the wire: only closing the connection can tell the client
                raise
            log.exception("unhandled error on %s %s", scope["method"], path)
            held, held_body[:] = None, []
            await error_response(error, path)(scope, receive, send_with_id)
        finally:
            if self.log_probes or path not in OPEN_PATHS or status >= 400:
                access_log.info("%s %s %d", scope["method"], path, status,
                                extra={"method": scope["method"], "path": path, "status": status,
                                       "ms": round((time.perf_counter() - started) * 1000, 1)})
