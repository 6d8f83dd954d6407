"""Tiles: image-to-image models run on squares of one fixed size, so the tiles of any number of requests,
whatever their images' sizes, join the same batched runs.

An image (or feature map) is cut into tiles that overlap by `margin` on every side, and of each output tile
only the centre is kept, so no output pixel comes from a tile's edge; the image's edge values are repeated
past its border. A model that changes the side by `scale` (the upscaler: 4; the style encoder: 1/8; its
decoder: 8) gets its tiles' centres back in place at that scale.

    .venv/bin/python -m pytest tests/test_upscale.py tests/test_style.py -q
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class Tiling:
    tile: int  # the model's input side
    margin: int  # input pixels on each side of a tile's kept centre
    scale: Fraction = Fraction(1)  # output side / input side of the model
    whole_when_it_fits: bool = False  # an input no larger than a tile runs as one tile without margins

    @property
    def kept(self) -> int:
        return self.tile - 2 * self.margin

    def _single(self, height: int, width: int) -> bool:
        return self.whole_when_it_fits and height <= self.tile and width <= self.tile

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of tiles for an input of this size."""
        if self._single(height, width):
            return 1, 1
        return math.ceil(height / self.kept), math.ceil(width / self.kept)

    def cut(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) -> (rows x columns, C, tile, tile)."""
        _, height, width = image.shape
        rows, columns = self.grid(height, width)
        margin, kept = (0, self.tile) if self._single(height, width) else (self.margin, self.kept)
        padded = np.pad(image, [(0, 0), (margin, rows * kept + margin - height),
                                (margin, columns * kept + margin - width)], mode="edge")
        return np.stack([padded[:, r * kept:r * kept + self.tile, c * kept:c * kept + self.tile]
                         for r in range(rows) for c in range(columns)])

    def join(self, tiles: np.ndarray, height: int, width: int) -> np.ndarray:
        """The model's output tiles (T, C', tile x scale, tile x scale) -> (C', H x scale, W x scale): each
        tile's centre in its place (`cut`'s inverse)."""
        rows, columns = self.grid(height, width)
        margin, kept = (0, self.tile) if self._single(height, width) else (self.margin, self.kept)
        lo, hi = int(self.scale * margin), int(self.scale * (margin + kept))
        channels = tiles.shape[1]
        grid = tiles[:, :, lo:hi, lo:hi].reshape(rows, columns, channels, hi - lo, hi - lo)
        image = grid.transpose(2, 0, 3, 1, 4).reshape(channels, rows * (hi - lo), columns * (hi - lo))
        return image[:, :math.ceil(self.scale * height), :math.ceil(self.scale * width)]
