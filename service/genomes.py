"""Genomes and signed tokens: the state the creative tools hand to clients, so the server keeps none.

A **genome** holds what regenerates one image exactly: the model and its version, the seed, the
condition (class, prompt), the diffusion settings and, for an image that no seed draws (a bred child,
an interpolation frame, a session candidate), its starting vector itself (dcgan's z, the VAE/GMM
latent, diffusion's unit initial noise). Interactive sessions carry their search state the same way.

A token is `<kind><format>.<payload>.<mac>`: kind `g` (genome) or `s` (session), format 1, the payload
zlib-compressed JSON in base64url, and an HMAC-SHA256 of everything before it keyed by
ATELIER_GENOME_KEY (random per process when unset). The kind is inside the signed text, so a session
token is never read as a genome. Every refusal is InvalidInput (400) with a message saying which check
failed: a token never reaches a decoder before its signature has been verified.

    .venv/bin/python -m pytest tests/test_genomes.py -q
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import zlib
from dataclasses import dataclass, field

import numpy as np

from service import rules
from service.errors import InvalidInput

FORMAT = 1  # bump when a payload's meaning changes; tokens of another format are refused by name
KINDS = {"g": "genome", "s": "session"}
MAX_PAYLOAD_BYTES = 64 * 1024  # decompressed; a real payload is under 4 kB


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Seals payloads into tokens and opens them again, refusing any whose signature differs."""

    def __init__(self, key: bytes):
        self.key = key

    @classmethod
    def from_key(cls, key: str | None) -> Signer:
        """ATELIER_GENOME_KEY's signer; without one, a random key that lives as long as this process."""
        return cls(key.encode() if key else secrets.token_bytes(32))

    def _mac(self, signed: str) -> str:
        return _b64encode(hmac.new(self.key, signed.encode(), hashlib.sha256).digest())

    def seal(self, kind: str, payload: dict) -> str:
        body = _b64encode(zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 9))
        signed = f"{kind}{FORMAT}.{body}"
        return f"{signed}.{self._mac(signed)}"

    def open(self, kind: str, token: str) -> dict:
        what = f"{KINDS[kind]} token"
        if not isinstance(token, str) or not 0 < len(token) <= rules.MAX_TOKEN_CHARS:
            raise InvalidInput(f"a {what} is a string of 1..{rules.MAX_TOKEN_CHARS} characters")
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidInput(f"malformed {what}: expected '<kind><format>.<payload>.<signature>'")
        prefix, body, mac = parts
        if prefix[:1] != kind:
            found = KINDS.get(prefix[:1], "unknown")
            raise InvalidInput(f"expected a {what}, got a{'n' if found[0] in 'aeiou' else ''} {found} token")
        if prefix != f"{kind}{FORMAT}":
            raise InvalidInput(f"{what} format {prefix[1:]!r} is not supported; this server reads format {FORMAT}")
        if not hmac.compare_digest(mac.encode(), self._mac(f"{prefix}.{body}").encode()):
            raise InvalidInput(f"{what} signature does not match: it was altered, or signed with another "
                               "server's key (set the same ATELIER_GENOME_KEY on every replica)")
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(_b64decode(body), MAX_PAYLOAD_BYTES)
            if inflater.unconsumed_tail:
                raise ValueError("payload too large")
            payload = json.loads(raw)
        except (binascii.Error, zlib.error, ValueError) as error:
            raise InvalidInput(f"unreadable {what} payload: {error}") from None
        if not isinstance(payload, dict):
            raise InvalidInput(f"unreadable {what} payload")
        return payload


def pack_array(array: np.ndarray) -> dict:
    """A float32 array as JSON: its shape and its bytes (little-endian), exactly."""
    array = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(array.shape), "f32": _b64encode(array.tobytes())}


def unpack_array(packed: dict) -> np.ndarray:
    shape = tuple(int(d) for d in packed["shape"])
    array = np.frombuffer(_b64decode(packed["f32"]), dtype="<f4")
    if array.size != int(np.prod(shape)) or not np.isfinite(array).all():
        raise ValueError("array data does not match its shape")
    return array.reshape(shape).astype(np.float32)


@dataclass(frozen=True)
class Genome:
    """What regenerates one image exactly (service/creative.py turns it into a pipelines request)."""

    model: str
    version: str
    seed: int
    class_id: int | None = None
    prompt: str | None = None
    steps: int = rules.STEPS.default
    guidance: float = rules.GUIDANCE.default
    sampler: str = rules.DEFAULT_SAMPLER
    eta: float = rules.ETA.default
    noise: np.ndarray | None = field(default=None, repr=False)  # the starting vector when no seed draws it

    def to_payload(self) -> dict:
        payload = {"model": self.model, "version": self.version, "seed": self.seed, "class_id": self.class_id,
                   "prompt": self.prompt}
        if self.model == "diffusion":  # the only model these settings change
            payload.update(steps=self.steps, guidance=self.guidance, sampler=self.sampler, eta=self.eta)
        if self.noise is not None:
            payload["noise"] = pack_array(self.noise)
        return payload

    @classmethod
    def from_payload(cls, payload: dict) -> Genome:
        try:
            noise = unpack_array(payload["noise"]) if "noise" in payload else None
            settings = {key: payload[key] for key in ("steps", "guidance", "sampler", "eta") if key in payload}
            return cls(model=str(payload["model"]), version=str(payload["version"]), seed=int(payload["seed"]),
                       class_id=payload["class_id"], prompt=payload["prompt"], noise=noise, **settings)
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInput(f"unreadable genome token payload: {error}") from None


def seal_genome(signer: Signer, genome: Genome) -> str:
    return signer.seal("g", genome.to_payload())


def open_genome(signer: Signer, token: str) -> Genome:
    return Genome.from_payload(signer.open("g", token))
