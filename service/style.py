"""Style transfer: a content image rendered in the manner of a style image, by adaptive instance
normalisation on a pretrained encoder's features (export/style.py trains the decoder).

    features = encode(content)                                     (40, H/8, W/8)
    target   = s * ((features - mean_c) / std_c * std_s + mean_s) + (1 - s) * features
    image    = decode(target)                                      (3, H, W)

mean and std are per channel over positions; a built-in style's come from models/style/styles.npz, an
uploaded style's from encoding it at rules.STYLE_IMAGE_SIDE. Both graphs run on fixed-size tiles
(service/tiles.py), so the tiles of every style request, whatever the images' sizes, share the batchers'
runs; the content's statistics are taken over the whole image, not per tile, so tiles agree. Cutting,
joining and AdaIN are array work of ~25 ms for a 512 px image: they run in worker threads (numpy
releases the GIL for most of it), not on the event loop.

    .venv/bin/python -m pytest tests/test_style.py -q
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from service import rules
from service.engine import Engine
from service.errors import InvalidInput
from service.tiles import Tiling

DOWNSCALE = 8  # the encoder's features are at 1/8 of the image's side
EPS = 1e-5  # export/style.py's, inside the standard deviation
ENCODE = Tiling(192, 32, Fraction(1, DOWNSCALE))  # 128 px centres; 32 px of context each side
DECODE = Tiling(24, 4, Fraction(DOWNSCALE))  # the same squares in feature cells


@dataclass(frozen=True)
class StyleRequest:
    """A content image in a built-in style (`style`) or an uploaded one (`style_image`)."""

    image: np.ndarray | None = field(default=None, repr=False)  # (H, W, 3) uint8; None until decoded
    style: str | None = None
    style_image: np.ndarray | None = field(default=None, repr=False)  # (h, w, 3) uint8; None until decoded
    strength: float = rules.STYLE_STRENGTH.default
    upload_sha256: str | None = None  # the content's file
    style_sha256: str | None = None  # the style's file, when uploaded
    uploaded_style: bool = False  # admission plans the style's tiles before it is decoded
    priority: str = rules.DEFAULT_PRIORITY
    model: str = rules.STYLE_MODEL


def validate(engine: Engine, request: StyleRequest) -> None:
    rules.check_priority(request.priority)
    rules.STYLE_STRENGTH.check(request.strength)
    if (request.style is None) == (not request.uploaded_style and request.style_image is None):
        raise InvalidInput("give either `style` (a built-in style's name) or `style_image` (an uploaded image)")
    if request.style is not None and request.style not in engine.styles:
        raise InvalidInput(f"unknown style {request.style!r}; built-in styles: {', '.join(engine.styles)}")
    if request.image is not None:
        height, width = request.image.shape[:2]
        if min(height, width) < rules.MIN_STYLE_SIDE or max(height, width) > rules.MAX_STYLE_SIDE:
            raise InvalidInput(f"a content image is {rules.MIN_STYLE_SIDE} to {rules.MAX_STYLE_SIDE} px a side "
                               f"once scaled, got {width}x{height}")


def tiles(height: int, width: int) -> int:
    return int(np.prod(ENCODE.grid(height, width)))


def planned_rows(request: StyleRequest) -> dict[str, tuple[int, int]]:
    """Tiles per function; before the uploads are decoded, at the largest sizes they may have."""
    side = rules.MAX_STYLE_SIDE
    content = tiles(*request.image.shape[:2]) if request.image is not None else tiles(side, side)
    style = 0
    if request.style_image is not None:
        style = tiles(*request.style_image.shape[:2])
    elif request.uploaded_style:
        style = tiles(rules.STYLE_IMAGE_SIDE, rules.STYLE_IMAGE_SIDE)
    return {"style.encode": (content + style, content + style), "style.decode": (content, content)}


def moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) -> per-channel mean and standard deviation over positions, (C, 1, 1) each."""
    mean = features.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    std = np.sqrt(features.var(axis=(1, 2), keepdims=True, dtype=np.float64) + EPS)
    return mean.astype(np.float32), std.astype(np.float32)


def adain(features: np.ndarray, style_mean: np.ndarray, style_std: np.ndarray, strength: float) -> np.ndarray:
    mean, std = moments(features)
    target = (features - mean) / std * style_std + style_mean
    return (strength * target + (1.0 - strength) * features).astype(np.float32)


async def encode(engine: Engine, image: np.ndarray) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (40, ceil(H/8), ceil(W/8)) features, through the encoder's batcher in tiles."""
    _, height, width = image.shape
    features = await engine.style_encode(await asyncio.to_thread(ENCODE.cut, image))
    return await asyncio.to_thread(ENCODE.join, features, height, width)


async def decode(engine: Engine, features: np.ndarray, height: int, width: int) -> np.ndarray:
    """(40, h, w) features -> (3, height, width) in [-1, 1], through the decoder's batcher in tiles."""
    _, cells_high, cells_wide = features.shape
    image = await engine.style_decode(await asyncio.to_thread(DECODE.cut, features))
    return (await asyncio.to_thread(DECODE.join, image, cells_high, cells_wide))[:, :height, :width]


async def stylise(engine: Engine, content: np.ndarray, style: str | np.ndarray, strength: float) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> the same in the style: a built-in style's name or a (3, h, w) image, which is
    encoded together with the content."""
    if isinstance(style, str):
        features = await encode(engine, content)
        style_mean, style_std = engine.styles[style]
    else:
        features, style_features = await asyncio.gather(encode(engine, content), encode(engine, style))
        style_mean, style_std = await asyncio.to_thread(moments, style_features)
    restyled = await asyncio.to_thread(adain, features, style_mean, style_std, strength)
    return await decode(engine, restyled, *content.shape[1:])


def parameters(request: StyleRequest) -> dict:
    """Provenance: the style, the strength and the uploads' sha256 (the output composites the content)."""
    chosen = {"style": request.style} if request.style is not None else {"style_sha256": request.style_sha256}
    return {**chosen, "strength": request.strength, "upload_sha256": request.upload_sha256, "composite": True}
