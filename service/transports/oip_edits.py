"""The image inputs of OIP's `img2img` and `inpaint` models as uploads: each row's raw RGB pixels (and
boolean mask) become the `uploads.Edit` that the JSON and OpenAI routes get from a file, through the same
`uploads.decode_edit` (its limits, the white canvas, the square padding, the 32x32 resize, the mask's
32x32 reduction), so a sketch gives the same image on every protocol.

    .venv/bin/python -m pytest tests/test_sketch_assist.py -q -k oip
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace

import numpy as np
from PIL import Image

from service import uploads
from service.errors import InvalidInput


def check_pixels(images: np.ndarray, masks: np.ndarray | None) -> None:
    """The shapes' refusals, before admission: the pixels are decoded after it (`pixel_edits`)."""
    _, height, width, _ = images.shape
    if height == 0 or width == 0:
        raise InvalidInput(f"input 'image' has no pixels: {height}x{width}")
    if masks is not None and masks.shape[1:] != (height, width):
        raise InvalidInput(f"input 'mask' is {masks.shape[1]}x{masks.shape[2]} (height x width) but 'image' is "
                           f"{height}x{width}")


def pixel_edits(images: np.ndarray, masks: np.ndarray | None) -> list[uploads.Edit]:
    """(N, H, W, 3) uint8 and an optional (N, H, W) bool mask (True = repaint) -> one Edit per row, whose
    sha256 is of the row's pixels as the client sent them (row-major uint8). CPU work at the input's size:
    run it off the event loop (`oip.with_uploads`)."""
    check_pixels(images, masks)
    height, width = images.shape[1:3]
    edits = []
    for i, pixels in enumerate(images):
        # the rows as lossless, uncompressed PNG files: decode_edit's checks and resizing, without zlib's cost
        mask = None if masks is None else png(np.dstack([np.zeros((height, width, 3), np.uint8),
                                                         np.where(masks[i], 0, 255).astype(np.uint8)]))
        edit = uploads.decode_edit(png(pixels), mask)
        edits.append(replace(edit, sha256=hashlib.sha256(pixels.tobytes()).hexdigest()))
    return edits


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()
