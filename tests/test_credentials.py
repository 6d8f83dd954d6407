"""Content Credentials (C2PA): a PNG signed with the test chain (scripts/make_test_chain.py) reads back with
c2pa-python's Reader, trust anchored to the test root and no network, as a valid, trusted manifest with the
IPTC source type, the model and the seed; a PNG changed by one byte fails validation; keys and chains the
service cannot use stop it at start-up with a message naming the problem. In process first, then on a real
server that signs with the test chain: every route that returns a PNG signs it, an edit of an upload is a
composite naming the upload by its sha256, and a server without a key signs nothing.

    flock /tmp/atelier-bench.lock .venv/bin/python -m pytest tests/test_credentials.py -q
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
from pathlib import Path

import c2pa
import httpx
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from service import credentials
from service.config import ConfigError, load_config
from service.credentials import Claim, ContentCredentials, CredentialsError

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = {"name": "Atelier", "version": "test"}


def load_script():
    spec = importlib.util.spec_from_file_location("make_test_chain", ROOT / "scripts" / "make_test_chain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_test_chain = load_script()


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    return make_test_chain.write_chain(tmp_path_factory.mktemp("c2pa"))


@pytest.fixture(scope="module")
def signer(chain) -> ContentCredentials:
    return ContentCredentials.from_files(chain["key"], chain["chain"], GENERATOR)


def png_of(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def read_credentials(png: bytes, root_pem: str) -> tuple[str, dict]:
    """(validation state, active manifest) as a verifier that trusts only `root_pem` sees them, offline."""
    settings = {"trust": {"trust_anchors": root_pem},
                "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    with c2pa.Context.from_dict(settings) as context, c2pa.Reader("image/png", io.BytesIO(png),
                                                                  context=context) as reader:
        return reader.get_validation_state(), reader.get_active_manifest()


def assertion(manifest: dict, label: str) -> dict:
    return next(item["data"] for item in manifest["assertions"] if item["label"] == label)


def flipped(data: bytes, offset: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 0x01
    return bytes(changed)


CLAIM = Claim(title="diffusion seed 7", model="diffusion", version="1.0.0", seed=7,
              parameters={"steps": 30, "guidance": 3.0, "prompt": "a red heart"})


def test_signed_png_reads_back_trusted_with_source_type_model_and_seed(signer, chain):
    state, manifest = read_credentials(signer.sign_png(png_of(1), CLAIM), chain["root"].read_text())
    assert state == "Trusted"
    created = assertion(manifest, "c2pa.actions.v2")["actions"][0]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == credentials.TRAINED
    assert created["softwareAgent"] == {"name": "diffusion", "version": "1.0.0"}
    generation = assertion(manifest, credentials.GENERATION_ASSERTION)
    assert (generation["model"], generation["version"], generation["seed"]) == ("diffusion", "1.0.0", 7)
    assert generation["parameters"]["prompt"] == "a red heart"
    assert manifest["signature_info"]["alg"].upper() == "ES256"
    assert manifest["claim_generator_info"][0]["name"] == "Atelier"


def test_the_signed_png_keeps_its_pixels_and_text_chunks(signer):
    info = PngInfo()
    info.add_text("ai_generated", "true")
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(buffer, format="PNG", pnginfo=info)
    signed = Image.open(io.BytesIO(signer.sign_png(buffer.getvalue(), CLAIM)))
    assert np.array_equal(np.asarray(signed), np.full((32, 32, 3), 7, np.uint8))
    assert signed.text["ai_generated"] == "true"


def test_a_png_changed_by_one_byte_fails_validation(signer, chain):
    signed = signer.sign_png(png_of(3), CLAIM)
    pixel_data = signed.index(b"IDAT") + 8  # a byte of the compressed pixels
    state, _ = read_credentials(flipped(signed, pixel_data), chain["root"].read_text())
    assert state == "Invalid"


def test_without_the_test_root_the_signature_is_valid_but_not_trusted(signer):
    """The trust anchor decides trust: another root (here a second test chain's) does not vouch for it."""
    other_root = make_test_chain.make_chain(days=1)[0]
    from cryptography.hazmat.primitives.serialization import Encoding

    state, _ = read_credentials(signer.sign_png(png_of(4), CLAIM), other_root.public_bytes(Encoding.PEM).decode())
    assert state == "Valid"


def test_an_edit_of_an_upload_is_a_composite_with_the_upload_as_ingredient_by_hash(signer, chain):
    upload = "ab" * 32
    claim = Claim(title="edit", model="diffusion", version="1.0.0", seed=5, parameters={"strength": 0.6},
                  upload_sha256=upload)
    state, manifest = read_credentials(signer.sign_png(png_of(5), claim), chain["root"].read_text())
    assert state == "Trusted"
    actions = assertion(manifest, "c2pa.actions.v2")["actions"]
    assert actions[0]["action"] == "c2pa.created" and actions[0]["digitalSourceType"] == credentials.COMPOSITE
    assert actions[1]["action"] == "c2pa.placed"
    [ingredient] = manifest["ingredients"]
    assert ingredient["relationship"] == "componentOf" and ingredient["instance_id"] == f"sha256:{upload}"


def test_a_bare_self_signed_certificate_is_refused_at_start_up(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = make_test_chain.name("self-signed")
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with pytest.raises(CredentialsError, match="refuses the signing chain"):
        ContentCredentials(key_pem, certificate.public_bytes(serialization.Encoding.PEM), GENERATOR)


def test_a_key_that_is_not_the_leafs_is_refused(chain, tmp_path):
    other = make_test_chain.write_chain(tmp_path)
    with pytest.raises(CredentialsError, match="does not belong"):
        ContentCredentials.from_files(other["key"], chain["chain"], GENERATOR)


@pytest.mark.parametrize("key, chain_text, words", [
    (b"not a key", None, "not an unencrypted PEM private key"),
    (None, b"not a certificate", "not PEM certificates"),
])
def test_unreadable_key_or_chain_is_refused_with_a_message(chain, key, chain_text, words):
    with pytest.raises(CredentialsError, match=words):
        ContentCredentials(key or chain["key"].read_bytes(), chain_text or chain["chain"].read_bytes(), GENERATOR)


def test_a_missing_file_is_named(chain, tmp_path):
    with pytest.raises(CredentialsError, match="ATELIER_C2PA_KEY_FILE.*missing.key"):
        ContentCredentials.from_files(tmp_path / "missing.key", chain["chain"], GENERATOR)


def test_signing_is_on_exactly_when_a_key_is_configured(chain):
    files = {"ATELIER_C2PA_KEY_FILE": str(chain["key"]), "ATELIER_C2PA_CHAIN_FILE": str(chain["chain"])}
    assert credentials.load(load_config({}), GENERATOR) is None
    assert isinstance(credentials.load(load_config(files), GENERATOR), ContentCredentials)
    assert credentials.load(load_config({**files, "ATELIER_C2PA": "off"}), GENERATOR) is None


@pytest.mark.parametrize("environ, words", [
    ({"ATELIER_C2PA_KEY_FILE": "/k"}, "go together"),
    ({"ATELIER_C2PA_CHAIN_FILE": "/c"}, "go together"),
    ({"ATELIER_C2PA": "on"}, "needs ATELIER_C2PA_KEY_FILE"),
    ({"ATELIER_C2PA": "sometimes"}, "ATELIER_C2PA must be one of"),
])
def test_inconsistent_signing_settings_are_config_errors(environ, words):
    with pytest.raises(ConfigError, match=words):
        load_config(environ)


def test_the_description_names_the_signer_never_the_key(signer):
    described = json.dumps(signer.describe())
    assert signer.describe()["enabled"] is True and "Atelier test signer" in described
    assert "PRIVATE" not in described


# --- on the real server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_server(chain):
    """A server that signs with the test chain (ATELIER_C2PA=auto: on, because a key is configured)."""
    from harness.serving import AtelierServer

    env = {"ATELIER_C2PA_KEY_FILE": str(chain["key"]), "ATELIER_C2PA_CHAIN_FILE": str(chain["chain"]),
           "ATELIER_WARMUP": "false"}
    with AtelierServer(env=env) as running:
        yield running


def served_png(server, route: str, body: dict) -> list[bytes]:
    response = httpx.post(server.url + route, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return [base64.b64decode(image["png_base64"]) for image in response.json()["images"]]


def test_served_pngs_carry_trusted_credentials_with_their_model_and_seed(signing_server, chain):
    described = httpx.get(signing_server.url + "/v1/models", timeout=10).json()["content_credentials"]
    assert described["enabled"] is True and "Atelier test signer" in described["signer"]
    pngs = served_png(signing_server, "/v1/generate", {"model": "diffusion", "prompt": "a red heart", "seed": 7,
                                                         "steps": 6, "n": 2})
    for seed, png in zip((7, 8), pngs):
        state, manifest = read_credentials(png, chain["root"].read_text())
        assert state == "Trusted"
        created = assertion(manifest, "c2pa.actions.v2")["actions"][0]
        assert (created["action"], created["digitalSourceType"]) == ("c2pa.created", credentials.TRAINED)
        generation = assertion(manifest, credentials.GENERATION_ASSERTION)
        assert (generation["model"], generation["seed"], generation["parameters"]["prompt"]) == \
            ("diffusion", seed, "a red heart")
        assert generation["version"] == Image.open(io.BytesIO(png)).text["version"]
        assert Image.open(io.BytesIO(png)).text["seed"] == str(seed)  # the text chunks stay
    pixel_data = pngs[0].index(b"IDAT") + 8
    assert read_credentials(flipped(pngs[0], pixel_data), chain["root"].read_text())[0] == "Invalid"


def test_every_png_route_signs_its_images(signing_server, chain):
    root = chain["root"].read_text()
    url = signing_server.url
    pngs = [httpx.get(url + "/v1/image.png", params={"model": "dcgan", "seed": 3}, timeout=60).content]
    interpolation = httpx.post(url + "/v1/interpolate", json={"model": "dcgan", "seeds": [1, 2], "frames": 2,
                                                              "sheet": True}, timeout=60).json()
    pngs += [base64.b64decode(image["png_base64"]) for image in interpolation["images"]]
    pngs.append(base64.b64decode(interpolation["sheet_png_base64"]))
    openai_answer = httpx.post(url + "/v1/images/generations", json={"prompt": "a cat", "seed": 2, "steps": 3},
                               timeout=60).json()
    pngs.append(base64.b64decode(openai_answer["data"][0]["b64_json"]))
    assert len(pngs) == 1 + 2 + 1 + 1  # image.png, frames, sheet, OpenAI
    for png in pngs:
        state, manifest = read_credentials(png, root)
        assert state == "Trusted", manifest


def test_streamed_previews_and_results_are_signed(signing_server, chain):
    pngs = []
    with httpx.stream("POST", signing_server.url + "/v1/generate", json={"seed": 5, "steps": 4, "stream": True,
                                                                         "preview_every": 2}, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and "png_base64" in line:
                pngs += [base64.b64decode(image["png_base64"]) for image in json.loads(line[6:])["images"]]
    assert len(pngs) == 2  # the preview after step 2, then the result
    for png in pngs:
        assert read_credentials(png, chain["root"].read_text())[0] == "Trusted"


def test_an_edit_of_an_upload_is_signed_as_a_composite_naming_the_upload_by_hash(signing_server, chain):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (20, 200, 40)).save(buffer, format="PNG")
    upload = buffer.getvalue()
    response = httpx.post(signing_server.url + "/v1/images/edits", files={"image": ("green.png", upload, "image/png")},
                          data={"prompt": "a green leaf", "seed": "4", "steps": "6"}, timeout=60)
    assert response.status_code == 200, response.text
    state, manifest = read_credentials(base64.b64decode(response.json()["data"][0]["b64_json"]),
                                       chain["root"].read_text())
    assert state == "Trusted"
    assert assertion(manifest, "c2pa.actions.v2")["actions"][0]["digitalSourceType"] == credentials.COMPOSITE
    assert manifest["ingredients"][0]["instance_id"] == f"sha256:{hashlib.sha256(upload).hexdigest()}"


def test_signing_is_off_by_default(server):
    assert httpx.get(server.url + "/v1/models", timeout=10).json()["content_credentials"] == {"enabled": False}
    png = httpx.get(server.url + "/v1/image.png", params={"model": "dcgan", "seed": 3}, timeout=60).content
    assert b"caBX" not in png  # PNG's C2PA chunk
