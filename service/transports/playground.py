"""The playground's page at `/`: three static files (service/static/: index.html, playground.css,
playground.js; plain HTML, CSS and JavaScript, no build step) that call the JSON API from the browser. They
are read once, at import, and served without the API key (the page asks for it and sends it with each
call) under a Content-Security-Policy that lets the page reach only this server.

    curl -s localhost:3000/ | head -n 5
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from service.transports.context import PLAYGROUND_PATHS

STATIC = Path(__file__).resolve().parent.parent / "static"
# context.PLAYGROUND_PATHS, in order: the paths RequestContext serves without the API key
FILES = dict(zip(PLAYGROUND_PATHS, (("index.html", "text/html; charset=utf-8"),
                                    ("playground.css", "text/css; charset=utf-8"),
                                    ("playground.js", "text/javascript; charset=utf-8")), strict=True))
# Scripts and styles from this server only, images from the API's base64 answers (data:) and the
# visitor's own files (blob:), calls to this server only: the page fetches nothing from elsewhere
HEADERS = {"content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                      "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; "
                                      "form-action 'none'; frame-ancestors 'none'",
           "x-content-type-options": "nosniff", "cache-control": "no-cache"}

router = APIRouter(include_in_schema=False)


def page_route(path: str, name: str, media_type: str) -> None:
    content = (STATIC / name).read_bytes()

    async def serve() -> Response:
        return Response(content, media_type=media_type, headers=HEADERS)

    router.add_api_route(path, serve, methods=["GET"], name=f"playground {name}")


for route_path, (file_name, file_type) in FILES.items():
    page_route(route_path, file_name, file_type)
