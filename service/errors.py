"""Typed errors and the one table that maps each to an HTTP status and a gRPC status code.

Every transport (JSON API, OIP over HTTP and gRPC, OpenAI routes) raises these and asks
`http_status` / `grpc_code`; nothing else decides a status. A body that fails its schema (pydantic)
becomes `InvalidInput` through `invalid_request` on every transport, so it is a 400 everywhere: the
status the Open Inference Protocol and the OpenAI API give a malformed request (docs/PROTOCOLS.md).

    .venv/bin/python -m pytest tests/test_api.py -k error
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import grpc


class AtelierError(Exception):
    """Base of every error a client may see; its message is safe to return verbatim."""


class InvalidInput(AtelierError):
    """The request is malformed or out of bounds."""


class ModelNotFound(AtelierError):
    """No such model (or version) in the registry."""


class Unauthenticated(AtelierError):
    """Missing or wrong API key."""


class Overloaded(AtelierError):
    """Admission refused the request; `retry_after` is when the server predicts room for it."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(AtelierError):
    """The request ran longer than ATELIER_REQUEST_TIMEOUT_SECONDS; its remaining work was cancelled."""


class NotReady(AtelierError):
    """Models are still loading, or the server is draining."""


class ClientDisconnected(AtelierError):
    """The client went away; its remaining work was cancelled (nobody reads the answer)."""


class RegistryError(AtelierError):
    """The model registry cannot be served (raised at start-up, never to a client)."""


class ManifestHashMismatch(RegistryError):
    """A model file differs from the sha256 its manifest records."""


# exception type -> (HTTP status, gRPC code); the most specific class first
STATUS_TABLE: tuple[tuple[type[BaseException], int, grpc.StatusCode], ...] = (
    (InvalidInput, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, 404, grpc.StatusCode.NOT_FOUND),
    (Unauthenticated, 401, grpc.StatusCode.UNAUTHENTICATED),
    (Overloaded, 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RequestTimeout, 504, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotReady, 503, grpc.StatusCode.UNAVAILABLE),
    (ClientDisconnected, 499, grpc.StatusCode.CANCELLED),  # nginx's "client closed request"
)


def _lookup(error: BaseException) -> tuple[int, grpc.StatusCode]:
    for error_type, http, code in STATUS_TABLE:
        if isinstance(error, error_type):
            return http, code
    return 500, grpc.StatusCode.INTERNAL


def http_status(error: BaseException) -> int:
    return _lookup(error)[0]


def grpc_code(error: BaseException) -> grpc.StatusCode:
    return _lookup(error)[1]


def retry_after(error: BaseException) -> str | None:
    """The Retry-After header (whole seconds, at least 1) for refusals a client should retry."""
    if isinstance(error, Overloaded):
        return str(max(1, math.ceil(error.retry_after)))
    if isinstance(error, NotReady):
        return "1"
    return None


def invalid_request(problems: Iterable[Mapping], what: str = "request") -> InvalidInput:
    """A schema failure (pydantic's `errors()`: dicts with `loc` and `msg`) as one InvalidInput naming
    each field, the same on every transport."""
    listed = "; ".join(f"{'.'.join(str(part) for part in problem['loc'] if part != 'body') or 'body'}: "
                       f"{problem['msg']}" for problem in problems)
    return InvalidInput(f"invalid {what}: {listed}")


def public_message(error: BaseException) -> str:
    """What a client may read: our own messages verbatim, never an internal exception's text."""
    return str(error) if isinstance(error, AtelierError) else "internal error"
