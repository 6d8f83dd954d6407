"""Images that clients upload (img2img, inpainting, variations), decoded safely into model input.

An upload is refused with InvalidInput (400) before Pillow decodes a pixel when it is not an image,
when its bytes exceed MAX_UPLOAD_BYTES, or when its header declares more than MAX_UPLOAD_PIXELS
(a decompression bomb: a few kB of PNG can declare 10⁹ pixels). Accepted images are composited on
the training set's white canvas, padded to a square and resized to the models' 32×32, as the
emoji were when the models learnt them.

Masks follow OpenAI's convention: a PNG of the image's size with an alpha channel, whose fully
transparent pixels mark the area to repaint. JSON routes send the same files as base64 text
(`from_base64`), and a result can be returned at the upload's aspect and size (`restore_aspect`).

    .venv/bin/python -m pytest tests/test_uploads.py -q
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidInput

MAX_UPLOAD_BYTES = 4 * 2**20  # a 32x32 model needs far less; 4 MiB admits any ordinary photo or sketch
MAX_UPLOAD_PIXELS = 4096 * 4096  # the header's claim is checked before decoding (decompression bombs)
IMAGE_SIZE = 32
WHITE = (255, 255, 255)  # export/data.py's canvas
# base64 needs 4 characters per 3 bytes; a data URL's short prefix fits in the slack
MAX_UPLOAD_BASE64_CHARS = 4 * (MAX_UPLOAD_BYTES // 3 + 1) + 64
# a result is a 32x32 drawing: returned at the upload's size up to this side, past which an upscale adds
# only blur and bytes (16 images of 512x512 are a few MB of PNG)
MAX_RETURN_SIDE = 512


@dataclass(frozen=True)
class Edit:
    """An upload decoded once for a model: what the pipeline takes and what the answer and provenance need."""

    image: np.ndarray  # (32, 32, 3) uint8 RGB on white
    mask: np.ndarray | None  # (32, 32) bool, True = repaint
    size: tuple[int, int]  # the upload's (width, height)
    sha256: str  # of the uploaded image's bytes, for provenance


# The documented upload formats: Pillow would otherwise open every format it knows (TIFF, BMP, ICO, EPS, ...),
# each a decoder more for a client to reach.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


def _open(payload: bytes, what: str) -> Image.Image:
    if not payload:
        raise InvalidInput(f"{what} is empty")
    if len(payload) > MAX_UPLOAD_BYTES:
        raise InvalidInput(f"{what} has {len(payload)} bytes; the limit is {MAX_UPLOAD_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload), formats=ACCEPTED_FORMATS)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(f"{what} declares more than {MAX_UPLOAD_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError):
        raise InvalidInput(f"{what} is not a PNG, JPEG or WebP image") from None
    width, height = image.size
    if width * height > MAX_UPLOAD_PIXELS:
        raise InvalidInput(f"{what} declares {width}x{height} pixels; the limit is {MAX_UPLOAD_PIXELS} pixels")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError):
        raise InvalidInput(f"{what} is truncated or corrupt") from None
    return image


def decode_image(payload: bytes, what: str = "image") -> np.ndarray:
    """Upload bytes -> (32, 32, 3) uint8 RGB on white, the way the training emoji look."""
    return _model_input(_open(payload, what))


def decode_edit(image_payload: bytes, mask_payload: bytes | None) -> Edit:
    """An image and its optional mask, each decoded once: the image as `decode_image` gives it, the
    mask as (32, 32) bool, True where the image is to be repainted."""
    image = _open(image_payload, "image")
    mask = None if mask_payload is None else _repaint_mask(_open(mask_payload, "mask"), image.size)
    return Edit(_model_input(image), mask, image.size, hashlib.sha256(image_payload).hexdigest())


def from_base64(text: str, what: str = "image") -> bytes:
    """A file sent as base64 text in a JSON body (a `data:image/...;base64,` URL prefix is allowed), with
    its length bounded before decoding; the bytes then go through `decode_edit`'s checks."""
    if len(text) > MAX_UPLOAD_BASE64_CHARS:
        raise InvalidInput(f"{what} has {len(text)} base64 characters; the limit is {MAX_UPLOAD_BASE64_CHARS} "
                           f"({MAX_UPLOAD_BYTES} bytes)")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what} is not valid base64") from None


def restore_aspect(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, 32, 32, 3) results -> (N, H, W, 3) at the upload's (width, height), scaled down to at most
    MAX_RETURN_SIDE on the longer side: the padding `decode_edit` added to make the upload square is
    cropped off, so the result has the upload's aspect again."""
    width, height = size
    scale = min(1.0, MAX_RETURN_SIDE / max(width, height))
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    side = IMAGE_SIZE / max(width, height)  # model pixels per upload pixel
    left, top = (IMAGE_SIZE - width * side) / 2, (IMAGE_SIZE - height * side) / 2  # ImageOps.pad centres
    box = (left, top, IMAGE_SIZE - left, IMAGE_SIZE - top)
    return np.stack([np.asarray(Image.fromarray(image).resize(target, Image.Resampling.LANCZOS, box=box))
                     for image in images])


def _model_input(image: Image.Image) -> np.ndarray:
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
    flat = Image.alpha_composite(canvas, rgba).convert("RGB")
    square = ImageOps.pad(flat, (max(flat.size),) * 2, color=WHITE)
    return np.asarray(square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS), dtype=np.uint8)


def _repaint_mask(mask: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A 32×32 pixel is repainted when most of the mask pixels it covers are fully transparent."""
    if mask.size != size:
        raise InvalidInput(f"mask is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}")
    if "A" not in mask.getbands() and "transparency" not in mask.info:
        raise InvalidInput("mask needs an alpha channel: its fully transparent pixels mark the area to edit")
    alpha = mask.convert("RGBA").getchannel("A")
    square = ImageOps.pad(alpha, (max(size),) * 2, color=255)  # padding is kept, like the image's
    small = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)  # mean alpha per pixel
    return np.asarray(small) < 128
