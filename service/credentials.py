"""Content Credentials (C2PA) for the PNGs Atelier returns: a manifest that says an image was made by a
trained model (IPTC digital source type `trainedAlgorithmicMedia`, or `compositeWithTrainedAlgorithmicMedia`
when it is made from a client's upload, which is then an ingredient named by its sha256), by which model and
version, from which seed and parameters; signed with ES256 by c2pa-python, as the very last step of encoding.

Signing needs an X.509 chain, not a bare self-signed certificate (the C2PA library refuses one): a leaf
certificate for signing (key usage digitalSignature, an extended key usage such as emailProtection), issued
by a CA the verifier trusts. `scripts/make_test_chain.py` makes a local test root and leaf for development;
an organisation uses its own (README, "Content Credentials"). The key and chain are read from the files
named by ATELIER_C2PA_KEY_FILE and ATELIER_C2PA_CHAIN_FILE (a Kubernetes Secret in production).

`verify` reads a file's Content Credentials back, as a verifier offline would (POST /v1/credentials/verify,
used by the playground): the c2pa reader's validation state, with trust anchored to the issuers of the
server's own signing chain when it has one.

    .venv/bin/python -m pytest tests/test_credentials.py -q
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service.config import Config
from service.errors import AtelierError, InvalidInput

IPTC_SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = IPTC_SOURCE_TYPES + "trainedAlgorithmicMedia"
COMPOSITE = IPTC_SOURCE_TYPES + "compositeWithTrainedAlgorithmicMedia"
# Atelier's own assertion: what made the image, in the same words as the PNG's text chunks
GENERATION_ASSERTION = "org.atelier.generation"
UPLOAD_INGREDIENT = "upload"

# No thumbnail (a 32x32 image is its own thumbnail; one would double the manifest) and no read-back after
# signing (it would need the verifier's trust anchors, which a signer need not have).
SIGNING_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"verify_after_sign": False}}
# A verifier here never goes to the network: no remote manifests, no OCSP
READING_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
# The formats a file to verify may have, by their first bytes (WebP: RIFF, a length, then WEBP)
MEDIA_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


class CredentialsError(AtelierError):
    """The signing key or chain cannot be used (raised at start-up, never to a client)."""


@dataclass(frozen=True)
class Claim:
    """What one image's manifest says about it."""

    title: str
    model: str
    version: str
    seed: int
    parameters: dict
    upload_sha256: str | None = None  # made from a client's upload: a composite, the upload its ingredient


def manifest_definition(claim: Claim, generator: dict[str, str]) -> dict:
    """The c2pa manifest definition of one image: a c2pa.created action with the IPTC source type and the
    model as its software agent, the upload (if any) as an ingredient placed into it, and the generation's
    seed and parameters."""
    created = {"action": "c2pa.created", "digitalSourceType": COMPOSITE if claim.upload_sha256 else TRAINED,
               "softwareAgent": {"name": claim.model, "version": claim.version}}
    actions, ingredients = [created], []
    if claim.upload_sha256:
        ingredients.append({"title": f"upload sha256:{claim.upload_sha256}", "relationship": "componentOf",
                            "instance_id": f"sha256:{claim.upload_sha256}", "label": UPLOAD_INGREDIENT,
                            "metadata": {"sha256": claim.upload_sha256}})
        actions.append({"action": "c2pa.placed", "parameters": {"ingredientIds": [UPLOAD_INGREDIENT]}})
    generation = {"model": claim.model, "version": claim.version, "seed": claim.seed, "parameters": claim.parameters}
    return {"claim_generator_info": [generator], "title": claim.title, "format": "image/png",
            "ingredients": ingredients,
            "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions}},
                           {"label": GENERATION_ASSERTION, "data": generation}]}


class ContentCredentials:
    """An ES256 signer for PNGs. `sign_png` is CPU work (hashing, an ECDSA signature: ~0.4 ms for a 32x32
    PNG on 2 cores): call it off the event loop. Each thread gets its own native signer and context, so the
    encoder threads never share a native handle."""

    def __init__(self, key_pem: bytes, chain_pem: bytes, generator: dict[str, str]):
        import c2pa  # the native library (~50 MB) loads only where signing is configured

        self._c2pa = c2pa
        self.key_pem, self.chain_pem, self.generator = key_pem, chain_pem, generator
        self.leaf = check_pair(key_pem, chain_pem)
        self._local = threading.local()
        try:  # the library judges the chain when it signs: a refused one fails here, at start-up
            self.sign_png(blank_png(), Claim("start-up check", "none", "0", 0, {}))
        except c2pa.C2paError as error:
            raise CredentialsError(f"the C2PA library refuses the signing chain: {error}") from None

    @classmethod
    def from_files(cls, key_file: Path, chain_file: Path, generator: dict[str, str]) -> ContentCredentials:
        pems = []
        for path, what in ((key_file, "ATELIER_C2PA_KEY_FILE"), (chain_file, "ATELIER_C2PA_CHAIN_FILE")):
            try:
                pems.append(path.read_bytes())
            except OSError as error:
                raise CredentialsError(f"{what}: cannot read {path}: {error.strerror}") from None
        return cls(*pems, generator=generator)

    def sign_png(self, png: bytes, claim: Claim) -> bytes:
        """The PNG with a signed C2PA manifest embedded (a caBX chunk); nothing may change it afterwards."""
        c2pa = self._c2pa
        context, signer = self._thread_signer()
        with c2pa.Builder(manifest_definition(claim, self.generator), context) as builder:
            signed = io.BytesIO()
            builder.sign(signer, "image/png", io.BytesIO(png), signed)
        return signed.getvalue()

    def _thread_signer(self):
        if not hasattr(self._local, "signer"):
            c2pa = self._c2pa
            info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, self.chain_pem, self.key_pem, None)
            self._local.context = c2pa.Context.from_dict(SIGNING_SETTINGS)
            self._local.signer = c2pa.Signer.from_info(info)
        return self._local.context, self._local.signer

    @property
    def trust_anchors_pem(self) -> str:
        """The chain's certificates above the leaf (its issuers, the root if the chain has it), as PEM: what a
        verifier of this server's images trusts. Empty for a chain of the leaf alone."""
        chain = x509.load_pem_x509_certificates(self.chain_pem)
        return "".join(cert.public_bytes(serialization.Encoding.PEM).decode() for cert in chain[1:])

    def describe(self) -> dict:
        """For /v1/models: who signs, until when (never the key)."""
        return {"enabled": True, "algorithm": "ES256", "signer": self.leaf.subject.rfc4514_string(),
                "issuer": self.leaf.issuer.rfc4514_string(),
                "not_after": self.leaf.not_valid_after_utc.isoformat()}


def check_pair(key_pem: bytes, chain_pem: bytes) -> x509.Certificate:
    """The chain's first certificate, once it is known to belong to the key, a P-256 key (ES256). A key that
    does not match its certificate would sign manifests that no verifier accepts, silently."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise CredentialsError(f"the signing key is not an unencrypted PEM private key: {error}") from None
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as error:
        raise CredentialsError(f"the signing chain is not PEM certificates: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise CredentialsError("ES256 needs an EC P-256 (secp256r1) private key")
    leaf = chain[0]
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
        raise CredentialsError("the signing key does not belong to the chain's first (leaf) certificate")
    return leaf


def blank_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    return buffer.getvalue()


def load(config: Config, generator: dict[str, str]) -> ContentCredentials | None:
    """The configured signer, or None when signing is off (ATELIER_C2PA=off, or auto without a key)."""
    if not config.c2pa_enabled:
        return None
    return ContentCredentials.from_files(config.c2pa_key_file, config.c2pa_chain_file, generator)


@dataclass(frozen=True)
class Verdict:
    """What a verifier finds in a file: c2pa's validation state (`Trusted`: valid and signed by a certificate
    the trust anchors issue; `Valid`: intact and well signed, by a signer nobody here trusts; `Invalid`: changed
    after signing, or badly signed), or `absent` when the file has no manifest."""

    state: str
    failures: list[dict]  # c2pa's failure codes and explanations (empty when valid)
    signer: str | None = None  # the signing certificate's common name
    issuer: str | None = None  # its organisation, as the manifest's signature info gives it
    source_type: str | None = None  # the IPTC digital source type of the c2pa.created action
    generation: dict | None = None  # Atelier's own assertion: model, version, seed, parameters


def media_type(data: bytes) -> str:
    for magic, kind in MEDIA_TYPES:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise InvalidInput("the file to verify is not a PNG, JPEG or WebP file")


def verify(data: bytes, trust_anchors_pem: str = "") -> Verdict:
    """The Content Credentials of a PNG, JPEG or WebP file, read and validated by c2pa-python offline, trusting
    only `trust_anchors_pem` (none: a valid manifest is at best `Valid`). CPU work: call it off the event loop."""
    import c2pa

    trust = {"trust": {"trust_anchors": trust_anchors_pem}} if trust_anchors_pem else {}
    settings = {**READING_SETTINGS, **trust}
    try:
        with c2pa.Context.from_dict(settings) as context, c2pa.Reader(media_type(data), io.BytesIO(data),
                                                                      context=context) as reader:
            state, results, manifest = (reader.get_validation_state(), reader.get_validation_results(),
                                        reader.get_active_manifest())
    except c2pa.C2paError.ManifestNotFound:
        return Verdict("absent", [])
    except c2pa.C2paError as error:  # a manifest that cannot be read or checked (a changed signature, a broken file)
        code = type(error).__name__.removeprefix("_C2pa")
        return Verdict("Invalid", [{"code": code, "explanation": str(error)}])
    failures = [{"code": item.get("code"), "explanation": item.get("explanation")}
                for item in (results or {}).get("activeManifest", {}).get("failure", [])]
    signature = manifest.get("signature_info") or {}
    return Verdict(str(state), failures, signature.get("common_name"), signature.get("issuer"),
                   created_source_type(manifest), assertion_data(manifest, GENERATION_ASSERTION))


def assertion_data(manifest: dict, label: str) -> dict | None:
    return next((item.get("data") for item in manifest.get("assertions", []) if item.get("label") == label), None)


def created_source_type(manifest: dict) -> str | None:
    actions = (assertion_data(manifest, "c2pa.actions.v2") or {}).get("actions", [])
    return next((action.get("digitalSourceType") for action in actions if action.get("action") == "c2pa.created"),
                None)
