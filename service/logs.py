"""Atelier's structured logs: one JSON object per line on stderr, carrying the request id.

The HTTP request context (transports/context.py) sets `REQUEST_ID` for each request and returns the same id in the
`x-request-id` header, so a client's complaint leads straight to its access line and to any error
logged while serving it. BentoML's own lines keep its text format; ours go to the loggers
`atelier` (access and errors) and `service` (modules), which stop propagating to BentoML's.

    .venv/bin/python -c "import logging; from service import logs; logs.configure(); \
logging.getLogger('atelier').info('hello', extra={'status': 200})"
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
OUR_LOGGERS = ("atelier", "service")
# LogRecord's own attributes; anything else on a record came in through `extra=` and is a field.
_RECORD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def request_id(offered: str | None) -> str:
    """The client's request id if it is short and printable, else a fresh one: ids end up in log lines
    and response headers, so a client cannot put anything else there."""
    return offered if offered and len(offered) <= 128 and offered.isprintable() else uuid.uuid4().hex


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if (request_id := REQUEST_ID.get()) is not None:
            line["request_id"] = request_id
        line.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES})
        if record.exc_info:  # in the log (operators), never in a response (errors.public_message)
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure() -> None:
    """Send our loggers' INFO and above to stderr as JSON lines (idempotent: one handler each)."""
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h.formatter, JsonLines) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonLines())
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
