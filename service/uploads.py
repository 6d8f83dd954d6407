"""Images that clients upload (img2img, inpainting, variations), decoded safely into model input.

An upload is refused with InvalidInput (400) before Pillow decodes a pixel when it is not an image,
when its bytes exceed MAX_UPLOAD_BYTES, or when its header declares more than MAX_UPLOAD_PIXELS
(a decompression bomb: a few kB of PNG can declare 10⁹ pixels). Accepted images are composited on
the training set's white canvas, padded to a square and resized to the models' 32×32, as the
emoji were when the models learnt them.

Masks follow OpenAI's convention: a PNG of the image's size with an alpha channel, whose fully
transparent pixels mark the area to repaint.

    .venv/bin/python -m pytest tests/test_uploads.py -q
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidInput

MAX_UPLOAD_BYTES = 4 * 2**20  # a 32x32 model needs far less; 4 MiB admits any ordinary photo or sketch
MAX_UPLOAD_PIXELS = 4096 * 4096  # the header's claim is checked before decoding (decompression bombs)
IMAGE_SIZE = 32
WHITE = (255, 255, 255)  # export/data.py's canvas


def _open(payload: bytes, what: str) -> Image.Image:
    if not payload:
        raise InvalidInput(f"{what} is empty")
    if len(payload) > MAX_UPLOAD_BYTES:
        raise InvalidInput(f"{what} has {len(payload)} bytes; the limit is {MAX_UPLOAD_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload))  # reads the header only
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


def decode_edit(image_payload: bytes, mask_payload: bytes | None) -> tuple[np.ndarray, np.ndarray | None]:
    """An image and its optional mask, each decoded once: the image as `decode_image` gives it, the
    mask as (32, 32) bool, True where the image is to be repainted."""
    image = _open(image_payload, "image")
    mask = None if mask_payload is None else _repaint_mask(_open(mask_payload, "mask"), image.size)
    return _model_input(image), mask


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
