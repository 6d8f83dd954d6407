"""Images that clients upload (img2img, inpainting, variations), decoded safely into model input.

An upload is refused with InvalidInput (400) before Pillow decodes a pixel when it is not an image,
when its bytes exceed MAX_UPLOAD_BYTES, when its header declares more than MAX_UPLOAD_PIXELS
(a decompression bomb: a few kB of PNG can declare 10⁹ pixels), or when it is a JPEG of more than
MAX_JPEG_SCANS scans (a progressive JPEG decodes every pixel once per scan: a few kB of repeated
scans cost seconds). A JPEG larger than the models need is decoded at libjpeg's reduced scale (1/2, 1/4
or 1/8, in the DCT), never below PREPARED_SIDE a side. Accepted images are composited on the training
set's white canvas, reduced to at most PREPARED_SIDE a side, padded to a square and resized to the
models' 32×32, as the emoji were when the models learnt them: the work is bounded by the upload's pixels
whatever its aspect (a 16384×1024 strip is not padded to 16384² first).

Decoding is CPU work of up to a few hundred ms, so transports run it with `decoded`: in one thread
beside the event loop (Pillow releases the GIL while it decodes and resizes), after
admission, with at most MAX_WAITING_DECODES uploads waiting for it (429 past that).

Masks follow OpenAI's convention: a PNG of the image's size with an alpha channel, whose fully
transparent pixels mark the area to repaint. JSON routes send the same files as base64 text
(`from_base64`), and a result can be returned at the upload's aspect and size (`restore_aspect`).

    .venv/bin/python -m pytest tests/test_uploads.py -q
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidInput, Overloaded

MAX_UPLOAD_BYTES = 4 * 2**20  # a 32x32 model needs far less; 4 MiB admits any ordinary photo or sketch
MAX_UPLOAD_PIXELS = 4096 * 4096  # the header's claim is checked before decoding (decompression bombs)
IMAGE_SIZE = 32
WHITE = (255, 255, 255)  # export/data.py's canvas
# base64 needs 4 characters per 3 bytes; a data URL's short prefix fits in the slack
MAX_UPLOAD_BASE64_CHARS = 4 * (MAX_UPLOAD_BYTES // 3 + 1) + 64
BASE64_PIECE_CHARS = 1 << 18  # decoded a piece at a time (a multiple of 4: pieces end on whole groups), ~1 ms each
# a result is a 32x32 drawing: returned at the upload's size up to this side, past which an upscale adds
# only blur and bytes (16 images of 512x512 are a few MB of PNG)
MAX_RETURN_SIDE = 512
# libjpeg's own progressive script has 10 scans for colour (6 for grey); a count of FF DA bytes (which can
# only overcount: an EXIF thumbnail adds its own) past this is not an ordinary camera or web file. Measured:
# a 4096² progressive JPEG with 30 scans decodes in 0.26 s, with 110 in 0.93 s (Pillow 13, 2-core VM).
MAX_JPEG_SCANS = 32
# Before padding and resizing, an upload is box-reduced until its longer side is at most this (8× the model's
# side keeps Lanczos' quality), so the padded square is at most 256² whatever the upload's aspect.
PREPARED_SIDE = 256
# One decoding thread: uploads take one core at most, the other stays with the event loop and the Engine.
# Uploads waiting past this many are refused (429) rather than queued without bound (a worst-case upload,
# ~0.3 s of decoding, waits at most ~2 s).
MAX_WAITING_DECODES = 8
_DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-decode")
_waiting_decodes = 0
T = TypeVar("T")
# What admission plans an edit by before its upload is decoded: the shapes `decode_edit` returns
PLANNED_IMAGE = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8)
PLANNED_MASK = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)


@dataclass(frozen=True)
class Edit:
    """An upload decoded once for a model: what the pipeline takes and what the answer and provenance need."""

    image: np.ndarray  # (32, 32, 3) uint8 RGB on white
    mask: np.ndarray | None  # (32, 32) bool, True = repaint
    size: tuple[int, int]  # the upload's (width, height) as shown, upright by its EXIF orientation
    sha256: str  # of the uploaded image's bytes, for provenance


# The documented upload formats: Pillow would otherwise open every format it knows (TIFF, BMP, ICO, EPS, ...),
# each a decoder more for a client to reach.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


def _open(payload: bytes, what: str) -> Image.Image:
    return _loaded(_checked(payload, what), what)


def _checked(payload: bytes, what: str) -> Image.Image:
    """The upload opened (its header read, no pixel decoded) after every check that can refuse it."""
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
    except UnidentifiedImageError:
        raise InvalidInput(f"{what} is not a PNG, JPEG or WebP image") from None
    except ValueError:  # Pillow's bound on what a text or ICC chunk inflates to (1 MiB)
        raise InvalidInput(f"{what} has a text or ICC chunk too large to read") from None
    except Exception:  # a header Pillow cannot parse raises whatever its parser hit (OSError, SyntaxError, ...)
        raise InvalidInput(f"{what} is not a valid PNG, JPEG or WebP image") from None
    width, height = image.size
    if width * height > MAX_UPLOAD_PIXELS:
        raise InvalidInput(f"{what} declares {width}x{height} pixels; the limit is {MAX_UPLOAD_PIXELS} pixels")
    if image.format == "JPEG" and (scans := payload.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise InvalidInput(f"{what} is a JPEG of {scans} scans; the limit is {MAX_JPEG_SCANS}")
    return image


def _drafted(image: Image.Image, side: int) -> Image.Image:
    """A JPEG whose longer side exceeds `side` set to decode at libjpeg's reduced scale (1/2, 1/4 or 1/8, done
    in the DCT: less work per pixel, a smaller image out), never below `side` on its longer side. Other
    formats decode at full size (`_reduced` then box-reduces them)."""
    width, height = image.size
    if image.format == "JPEG" and max(width, height) > side:
        longer = max(width, height)
        image.draft(None, (max(1, width * side // longer), max(1, height * side // longer)))
    return image


def _loaded(image: Image.Image, what: str) -> Image.Image:
    """The upload's pixels decoded; 16- or 32-bit grey as 8-bit grey (the top 8 of 16 bits), which every later
    conversion would otherwise clip at 255, turning a mid-grey image white."""
    try:
        image.load()
    except MemoryError:
        raise
    except Exception:
        raise InvalidInput(f"{what} is truncated or corrupt") from None
    if image.mode.startswith("I"):
        grey = Image.fromarray((np.clip(np.asarray(image, np.float64), 0, 65535) / 257).round().astype(np.uint8))
        if "exif" in image.info:  # the orientation travels with the pixels (`_turn` reads it next)
            grey.info["exif"] = image.info["exif"]
        return grey
    return image


def _pixels_and_turn(image: Image.Image, side: int, what: str) -> tuple[Image.Image, Image.Transpose | None]:
    """The checked upload's pixels (a large JPEG at reduced scale) and the turn that shows them upright: the
    orientation is read once the pixels are loaded (a PNG may store it after them) and before `reduce()`
    drops it."""
    image = _loaded(_drafted(image, side), what)
    return image, _turn(image)


def decode_image(payload: bytes, what: str = "image") -> np.ndarray:
    """Upload bytes -> (32, 32, 3) uint8 RGB on white, upright (EXIF), the way the training emoji look."""
    return _model_input(*_pixels_and_turn(_checked(payload, what), PREPARED_SIDE, what))


def decode_edit(image_payload: bytes, mask_payload: bytes | None) -> Edit:
    """An image and its optional mask, each decoded once: the image as `decode_image` gives it, the
    mask as (32, 32) bool, True where the image is to be repainted. Each is shown upright by its own
    EXIF orientation, as a viewer or an editor shows it, and then they must be the same size."""
    image = _checked(image_payload, "image")
    stored = image.size  # the upload's own: a JPEG may decode smaller (`_drafted`)
    image, turn = _pixels_and_turn(image, PREPARED_SIDE, "image")
    size = _upright_size(stored, turn)
    mask = None if mask_payload is None else _repaint_mask(_open(mask_payload, "mask"), size, turn)
    return Edit(_model_input(image, turn), mask, size, hashlib.sha256(image_payload).hexdigest())


def planned(mask_payload: bytes | None) -> dict[str, np.ndarray | None]:
    """A request's edit fields as admission plans them before the upload is decoded (`decoded_into`)."""
    return {"init_image": PLANNED_IMAGE, "mask": None if mask_payload is None else PLANNED_MASK}


async def decoded_into(request, image_payload: bytes, mask_payload: bytes | None):
    """(`request` with the decoded upload in place of what `planned` put there, the Edit): `decode_edit` in
    the decoding thread, so the event loop (health checks, other requests, gRPC) keeps running while it
    works; Overloaded (429) when MAX_WAITING_DECODES uploads already wait for it. Call it once admitted."""
    edit = await decoded(decode_edit, image_payload, mask_payload)
    return replace(request, init_image=edit.image, mask=edit.mask, upload_sha256=edit.sha256), edit


async def decoded(decode: Callable[..., T], *payloads) -> T:
    """`decode(*payloads)` in the decoding thread; Overloaded (429) when MAX_WAITING_DECODES uploads already
    wait for it, rather than a queue without bound."""
    global _waiting_decodes
    if _waiting_decodes >= MAX_WAITING_DECODES:
        raise Overloaded(f"{_waiting_decodes} uploads are waiting to be decoded; retry shortly", retry_after=1.0)
    _waiting_decodes += 1
    try:
        return await off_loop(decode, *payloads)
    finally:
        _waiting_decodes -= 1


async def off_loop(work: Callable[..., T], *args) -> T:
    """`work(*args)` in the decoding thread: decoding, and what is made at an upload's size."""
    return await asyncio.get_running_loop().run_in_executor(_DECODER, work, *args)


def from_base64(text: str, what: str = "image") -> bytes:
    """A file sent as base64 text in a JSON body (a `data:image/...;base64,` URL prefix is allowed), with
    its length bounded before decoding; the bytes then go through `decode_edit`'s checks."""
    if len(text) > MAX_UPLOAD_BASE64_CHARS:
        raise InvalidInput(f"{what} has {len(text)} base64 characters; the limit is {MAX_UPLOAD_BASE64_CHARS} "
                           f"({MAX_UPLOAD_BYTES} bytes)")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        # in pieces: one call on 5.6 MB would hold the GIL for ~20 ms, and so stall the event loop even from
        # the decoding thread; between pieces the loop gets its turn
        return b"".join(base64.b64decode(text[start:start + BASE64_PIECE_CHARS], validate=True)
                        for start in range(0, len(text), BASE64_PIECE_CHARS))
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what} is not valid base64") from None


def restore_aspect(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, 32, 32, 3) results -> (N, H, W, 3) at the upload's upright (width, height), scaled down to at most
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


# modes Image.reduce takes as they are (it weights colour by alpha itself); others are converted first
_REDUCIBLE_MODES = ("RGB", "RGBA", "L", "LA")


def _reduced(image: Image.Image) -> Image.Image:
    """The image box-reduced by a whole factor until its longer side is at most PREPARED_SIDE, before any
    other work and copy at full size: cost in proportion to its pixels, and the square it is padded to
    stays small whatever its aspect."""
    return _box_reduced(image, -(-max(image.size) // PREPARED_SIDE))  # ceiling division


def _box_reduced(image: Image.Image, factor: int) -> Image.Image:
    """Each factor x factor box of pixels averaged into one (colour weighted by alpha)."""
    if factor <= 1:
        return image
    return (image if image.mode in _REDUCIBLE_MODES else image.convert("RGBA")).reduce(factor)


def on_white(image: Image.Image) -> Image.Image:
    """RGB, its transparency composited on the training set's white canvas."""
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba).convert("RGB")


def _model_input(image: Image.Image, turn: Image.Transpose | None) -> np.ndarray:
    flat = on_white(_turned(_reduced(image), turn))  # turned once small: no full-size copy
    square = ImageOps.pad(flat, (max(flat.size),) * 2, color=WHITE)
    return np.asarray(square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS), dtype=np.uint8)


def _repaint_mask(mask: Image.Image, size: tuple[int, int], image_turn: Image.Transpose | None) -> np.ndarray:
    """A 32×32 pixel is repainted when most of the mask pixels it covers are fully transparent. `size` is the
    image's upright size; the mask is turned upright by its own EXIF orientation before it is compared."""
    turn = _turn(mask)
    upright = _upright_size(mask.size, turn)
    if upright != size:
        sideways = " (the image's EXIF orientation turns it upright; send the mask as the image is shown)"
        raise InvalidInput(f"mask is {upright[0]}x{upright[1]} but the image is {size[0]}x{size[1]}"
                           + (sideways if image_turn in _QUARTER_TURNS and upright == size[::-1] else ""))
    if "A" not in mask.getbands() and "transparency" not in mask.info:
        raise InvalidInput("mask needs an alpha channel: its fully transparent pixels mark the area to edit")
    rgba = mask if mask.mode in ("RGBA", "LA") else mask.convert("RGBA")
    alpha = _turned(_reduced(rgba), turn).getchannel("A")
    square = ImageOps.pad(alpha, (max(alpha.size),) * 2, color=255)  # padding is kept, like the image's
    small = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)  # mean alpha per pixel
    return np.asarray(small) < 128


# EXIF orientation -> the transpose that shows the photo upright (a phone stores it sideways and says so)
EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                  5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                  8: Image.Transpose.ROTATE_90}


_QUARTER_TURNS = tuple(EXIF_TRANSPOSE[orientation] for orientation in (5, 6, 7, 8))  # they swap width, height


def _turn(image: Image.Image) -> Image.Transpose | None:
    """What shows the image upright, None when it already is."""
    return EXIF_TRANSPOSE.get(_orientation(image))


def _turned(image: Image.Image, turn: Image.Transpose | None) -> Image.Image:
    return image if turn is None else image.transpose(turn)


def _upright_size(size: tuple[int, int], turn: Image.Transpose | None) -> tuple[int, int]:
    return (size[1], size[0]) if turn in _QUARTER_TURNS else size


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag, 1 (upright) when absent or unreadable: a broken EXIF block is no reason to refuse
    pixels that decoded."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises whatever the bytes provoke
        return 1


def decode_fitted(payload: bytes, what: str, side: int,
                  check: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 RGB on white at the upload's own size and orientation (EXIF), scaled down (never up) to
    at most `side` px on its longer side, and the file's sha256: for the models that work at an image's size.
    `check(width, height)` may refuse the upload by its header's size before any pixel is decoded; a large
    JPEG decodes at libjpeg's reduced scale, other formats are box-reduced by a whole factor first."""
    image = _checked(payload, what)
    if check is not None:
        check(*image.size)
    image, turn = _pixels_and_turn(image, side, what)
    image = _box_reduced(image, max(image.size) // side)  # at least `side` left for Lanczos below
    flat = on_white(_turned(image, turn))
    if max(flat.size) > side:
        scale = side / max(flat.size)
        flat = flat.resize((max(1, round(flat.size[0] * scale)), max(1, round(flat.size[1] * scale))),
                           Image.Resampling.LANCZOS)
    return np.asarray(flat), hashlib.sha256(payload).hexdigest()
