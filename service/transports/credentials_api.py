"""POST /v1/credentials/verify: the Content Credentials (C2PA) of an image, read back and validated by the
c2pa reader offline (`credentials.verify`), as a verifier would; the playground shows its verdict beside each
image. Trust is anchored to the issuers of this server's own signing chain, so an image this server signed
reads `Trusted`; with signing off the server trusts no one, and an intact manifest reads `Valid` at best.

    curl -s localhost:3000/v1/credentials/verify -H 'content-type: application/json' \
         -d "{\"image\": \"$(base64 -w0 heart.png)\"}"
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from service import credentials, uploads
from service.transports.context import core_of

router = APIRouter(prefix="/v1", tags=["Content Credentials"])


class VerifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image: Annotated[str, Field(min_length=1, max_length=uploads.MAX_UPLOAD_BASE64_CHARS,
                                description="a PNG, JPEG or WebP file as base64 (a data: URL prefix is allowed)")]


class Failure(BaseModel):
    code: str | None
    explanation: str | None


class VerifyResponse(BaseModel):
    state: str = Field(
        description="Trusted: intact, signed by a certificate this server's chain issues; Valid: intact and well "
                    "signed, by a signer this server does not trust; Invalid: changed after signing or badly "
                    "signed; absent: no Content Credentials")
    trust_anchored: bool = Field(description="whether this server has a signing chain to anchor trust to (signing "
                                             "on); without one nothing reads Trusted")
    failures: list[Failure]
    signer: str | None
    issuer: str | None
    source_type: str | None = Field(description="the IPTC digital source type of the c2pa.created action")
    generation: dict | None = Field(description="Atelier's assertion: model, version, seed, parameters")


@router.post("/credentials/verify", response_model=VerifyResponse)
async def verify(body: VerifyBody, request: Request) -> VerifyResponse:
    """Whether an image's Content Credentials verify, and what they say."""
    core = core_of(request)
    payload = uploads.from_base64(body.image, "image")
    anchors = core.credentials.trust_anchors_pem if core.credentials is not None else ""
    verdict = await asyncio.to_thread(credentials.verify, payload, anchors)
    return VerifyResponse(state=verdict.state, trust_anchored=bool(anchors),
                          failures=[Failure(**failure) for failure in verdict.failures], signer=verdict.signer,
                          issuer=verdict.issuer, source_type=verdict.source_type, generation=verdict.generation)
