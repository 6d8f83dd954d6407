"""Arbitrary style transfer: adaptive instance normalisation (Huang & Belongie 2017) on the judge's
pretrained encoder, with a decoder trained here.

The encoder is export/judge.py's ImageNet EfficientNet-Lite0, frozen, up to block 4 (40 channels at 1/8
of the image's side). A content image's encoder features are renormalised, channel by channel, to the
mean and standard deviation of a style image's features (AdaIN); the decoder turns the result back into
an image. Strength s in [0, 1] mixes the renormalised features with the content's own before decoding
(s * AdaIN + (1 - s) * content). Any image can be a style, so one small model serves the built-in styles
(their feature statistics, computed from their recipe) and uploaded ones alike; per-style feed-forward
networks would need a network per style and could not take an upload.

Training (one command, two torch threads): content crops from the photos in PyPI scikit-image's wheel
and the emoji renders, styles from the wheel's textures and procedural paintings drawn from a seed
(mosaics, waves, dots, brush strokes). Loss: content = the output's block-4 features against the AdaIN
target; style = mean and standard deviation of the output's features against the style's at blocks 0,
2, 4 and 7 (1/2 to 1/16 of the side). Held out of training: the cat photo (content) and the
immunohistochemistry texture (the "uploaded" style of docs/STYLE.md).

    flock /tmp/atelier-train.lock python -m export train style --minutes 35 --seed 0   # 2 torch threads
    python -m export onnx style         # models/style/: encoder.onnx, decoder.onnx, styles.npz, manifest
    python -m export style-report       # docs/STYLE.md and docs/samples/style_grid.png
"""

from __future__ import annotations

import importlib.resources
import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from export import data, perceptual, training
from service import rules
from service.uploads import on_white

log = logging.getLogger(__name__)

ENCODER_BLOCK = 4  # 40 channels at 1/8 of the side
FEATURES = 40
DOWNSCALE = 8
LOSS_BLOCKS = (0, 2, 4, 7)
CROP = 128
BATCH = 8
STYLE_WEIGHT = 4.0
LEARNING_RATE = 3e-4
EMA_DECAY = 0.998
EPS = 1e-5

SKIMAGE = "PyPI scikit-image 0.25.2 (skimage/data inside the wheel)"
SKIMAGE_LICENSE = "CC0 / public domain / BSD-3-Clause per skimage/data/README.txt (scikit-image 0.25.2)"
CONTENT_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
HELD_OUT_PHOTO = "chelsea.png"
STYLE_TEXTURES = ("hubble_deep_field.jpg", "retina.jpg", "color.png", "logo.png", "brick.png", "grass.png",
                  "gravel.png")
HELD_OUT_STYLE = "ihc.png"
PROCEDURAL = ("mosaic", "waves", "dots", "strokes")
# the built-in styles: name -> (title, source); a procedural source is (kind, seed)
BUILT_IN = {
    "mosaic": ("Stained-glass mosaic", ("mosaic", 7)),
    "waves": ("Bold wavy bands", ("waves", 3)),
    "strokes": ("Brush strokes", ("strokes", 11)),
    "cosmos": ("Hubble deep field", "hubble_deep_field.jpg"),
}
STYLE_SIDE = rules.STYLE_IMAGE_SIDE  # style images are seen at this long side, in training and serving alike


# --- images that ship offline ---

def skimage_file(name: str) -> Path:
    return Path(str(importlib.resources.files("skimage") / "data" / name))


def skimage_rgb(name: str) -> np.ndarray:
    """(H, W, 3) uint8; grey textures become grey RGB, a logo's transparency becomes white."""
    with Image.open(skimage_file(name)) as image:
        return np.asarray(on_white(image))


def palette(rng: np.random.Generator, colours: int) -> np.ndarray:
    """(colours, 3) uint8: saturated hues around a random base, and one dark and one light."""
    base = rng.random()
    hues = (base + rng.normal(0, 0.18, colours)) % 1.0
    hsv = np.stack([hues, rng.uniform(0.55, 1.0, colours), rng.uniform(0.45, 1.0, colours)], axis=1)
    rgb = np.asarray(Image.fromarray((hsv[None] * 255).astype(np.uint8), "HSV").convert("RGB"))[0]
    return np.concatenate([rgb, [[20, 18, 30], [245, 240, 225]]]).astype(np.uint8)


def procedural(kind: str, seed: int, side: int = STYLE_SIDE) -> np.ndarray:
    """A painting drawn from a seed: (side, side, 3) uint8."""
    rng = np.random.default_rng(seed)
    colours = palette(rng, int(rng.integers(4, 8)))
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    if kind == "mosaic":  # Voronoi tiles, each one colour, with dark leading between them
        points = rng.random((int(rng.integers(25, 90)), 2)).astype(np.float32)
        distance = np.sqrt((x[..., None] - points[:, 0]) ** 2 + (y[..., None] - points[:, 1]) ** 2)
        nearest = np.sort(distance, axis=-1)
        cell = distance.argmin(axis=-1)
        image = colours[:-2][cell % (len(colours) - 2)].copy()
        image[(nearest[..., 1] - nearest[..., 0]) < rng.uniform(0.006, 0.015)] = colours[-2]
        return image
    if kind == "waves":  # bands of flat colour along a warped sine field
        f1, f2, warp = rng.uniform(3, 12), rng.uniform(2, 8), rng.uniform(0.5, 2.5)
        angle = rng.uniform(0, np.pi)
        u = x * np.cos(angle) + y * np.sin(angle)
        v = -x * np.sin(angle) + y * np.cos(angle)
        field = np.sin(2 * np.pi * f1 * u + warp * np.sin(2 * np.pi * f2 * v))
        bands = np.clip(((field + 1) / 2 * len(colours)).astype(int), 0, len(colours) - 1)
        return colours[bands]
    canvas = Image.new("RGB", (side, side), tuple(int(c) for c in colours[rng.integers(len(colours))]))
    draw = ImageDraw.Draw(canvas)
    if kind == "dots":  # pointillism: many small discs
        for _ in range(int(rng.integers(600, 1800))):
            cx, cy = rng.random(2) * side
            r = rng.uniform(1.5, 6.0) * side / 256
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in colours[rng.integers(len(colours))]))
        return np.asarray(canvas)
    if kind == "strokes":  # short thick strokes following a smooth direction field
        f = rng.uniform(1, 4)
        for _ in range(int(rng.integers(500, 1200))):
            cx, cy = rng.random(2) * side
            angle = np.pi * np.sin(2 * np.pi * f * cx / side) * np.cos(2 * np.pi * f * cy / side) + rng.normal(0, 0.3)
            length = rng.uniform(6, 18) * side / 256
            dx, dy = np.cos(angle) * length, np.sin(angle) * length
            colour = colours[rng.integers(len(colours))].astype(int) + rng.integers(-25, 26, 3)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), width=max(2, int(rng.uniform(2, 6) * side / 256)),
                      fill=tuple(int(c) for c in np.clip(colour, 0, 255)))
        return np.asarray(canvas)
    raise ValueError(f"no procedural style {kind!r}")


def built_in_image(name: str) -> np.ndarray:
    """A built-in style's image at its long side of STYLE_SIDE px."""
    _, source = BUILT_IN[name]
    image = procedural(*source) if isinstance(source, tuple) else skimage_rgb(source)
    return fit_long_side(image, STYLE_SIDE)


def describe_source(source: str | tuple[str, int]) -> str:
    if isinstance(source, tuple):
        return f"procedural: export/style.py procedural({source[0]!r}, seed={source[1]})"
    return f"{SKIMAGE}: {source}"


def built_in_statistics(encoder_path: Path) -> dict[str, np.ndarray]:
    """The built-in styles' feature mean and std, (styles, 40) each, from the exported encoder graph through
    the service's own tiling and moments: exactly what the service computes for the same image uploaded."""
    import onnxruntime as ort

    from service import style as serving

    session = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    means, stds = [], []
    for name in BUILT_IN:
        image = data.to_unit_range(built_in_image(name)[None])[0]
        tiles = serving.ENCODE.cut(image)
        features = serving.ENCODE.join(session.run(["features"], {"image": tiles})[0], *image.shape[1:])
        mean, std = serving.moments(features)
        means.append(mean[:, 0, 0]), stds.append(std[:, 0, 0])
    return {"names": np.array(list(BUILT_IN)), "mean": np.stack(means), "std": np.stack(stds)}


def fit_long_side(image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale == 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def source_record() -> dict:
    """What the manifest says about the training and style images: sources, licences, sha256."""
    from service.manifest import sha256_file

    files = (*CONTENT_PHOTOS, HELD_OUT_PHOTO, *STYLE_TEXTURES, HELD_OUT_STYLE)
    return {"skimage": {"source": SKIMAGE, "license": SKIMAGE_LICENSE,
                        "files": {name: sha256_file(skimage_file(name)) for name in files}},
            "emoji": data.data_record(),
            "procedural": "export/style.py `procedural(kind, seed)`: numpy + Pillow drawings, no files"}


# --- the model ---

class Encoder(nn.Module):
    """The pretrained network's stem and blocks 0..ENCODER_BLOCK: (N, 3, H, W) in [-1, 1] -> (N, 40, H/8, W/8)."""

    def __init__(self, taps: perceptual.FeatureTaps | None = None):
        super().__init__()
        taps = taps if taps is not None else perceptual.FeatureTaps(LOSS_BLOCKS)
        self.stem = taps.stem
        self.body = nn.Sequential(*list(taps.body)[: ENCODER_BLOCK + 1])
        self.eval().requires_grad_(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(image))

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False)


def conv(channels_in: int, channels_out: int) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, padding=1, padding_mode="reflect")


class Decoder(nn.Module):
    """(N, 40, h, w) features -> (N, 3, 8h, 8w) in [-1, 1]: nearest upsampling and 3x3 convolutions
    (no transposed convolutions, so no checkerboard)."""

    def __init__(self, widths: tuple[int, ...] = (128, 64, 32)):
        super().__init__()
        layers: list[nn.Module] = [conv(FEATURES, widths[0]), nn.ReLU()]
        for width_in, width_out in zip(widths, (*widths[1:], 16)):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(width_in, width_out), nn.ReLU(),
                       conv(width_out, width_out), nn.ReLU()]
        layers += [conv(16, 3)]
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(features))


def moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation over positions: (N, C, 1, 1) each."""
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = (features.var(dim=(2, 3), keepdim=True, unbiased=False) + EPS).sqrt()
    return mean, std


def adain(content: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor,
          strength: torch.Tensor | float = 1.0) -> torch.Tensor:
    mean, std = moments(content)
    target = (content - mean) / std * style_std + style_mean
    return strength * target + (1.0 - strength) * content


# --- training data ---

class Sources:
    """Training content and style images, as (H, W, 3) uint8 arrays, and crops of them as tensors."""

    def __init__(self, generator: torch.Generator):
        dataset = data.load().split(held_out=False)
        self.photos = [skimage_rgb(name) for name in CONTENT_PHOTOS]
        self.emoji = dataset.images128
        self.textures = [skimage_rgb(name) for name in STYLE_TEXTURES]
        self.generator = generator

    def _int(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=self.generator))

    def crop(self, image: np.ndarray, scale: float) -> np.ndarray:
        """A CROP x CROP crop of the image resized by `scale` (at least CROP on its short side)."""
        height, width = image.shape[:2]
        scale = max(scale, CROP / min(height, width))
        if abs(scale - 1.0) > 1e-3:
            image = np.asarray(Image.fromarray(image).resize((max(CROP, round(width * scale)),
                                                              max(CROP, round(height * scale))),
                                                             Image.Resampling.BILINEAR))
        top, left = self._int(image.shape[0] - CROP + 1), self._int(image.shape[1] - CROP + 1)
        crop = image[top:top + CROP, left:left + CROP]
        return crop[:, ::-1] if self._int(2) else crop

    def content(self) -> np.ndarray:
        if self._int(2):  # half photos, half emoji (an emoji render is 128 px: the whole glyph)
            return self.crop(self.photos[self._int(len(self.photos))], self._uniform(0.25, 0.6))
        return self.emoji[self._int(len(self.emoji))]

    def style(self) -> np.ndarray:
        if self._int(3) == 0:
            texture = self.textures[self._int(len(self.textures))]
            return self.crop(texture, self._uniform(0.2, 0.5) * 512 / max(texture.shape[:2]) * 2)
        kind = PROCEDURAL[self._int(len(PROCEDURAL))]
        return procedural(kind, self._int(2**31 - 1), side=CROP)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        content = np.stack([self.content() for _ in range(BATCH)])
        style = np.stack([self.style() for _ in range(BATCH)])
        return (torch.from_numpy(data.to_unit_range(np.ascontiguousarray(content))),
                torch.from_numpy(data.to_unit_range(np.ascontiguousarray(style))))


def learning_rate(progress: float) -> float:
    return LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def style_loss(output_taps: list[torch.Tensor], style_taps: list[torch.Tensor]) -> torch.Tensor:
    loss = output_taps[0].new_zeros(())
    for out, style in zip(output_taps, style_taps):
        out_mean, out_std = moments(out)
        style_mean, style_std = moments(style)
        loss = loss + (out_mean - style_mean).pow(2).mean() + (out_std - style_std).pow(2).mean()
    return loss


def train(steps: int, minutes: float, seed: int, device: torch.device) -> dict:
    """Train (or resume) the decoder; returns the checkpoint dict."""
    generator = training.seed_everything(seed)
    taps = perceptual.FeatureTaps(LOSS_BLOCKS).to(device)
    encoder = Encoder(taps).to(device)
    decoder = Decoder().to(device)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=LEARNING_RATE)
    ema = training.EMA(decoder, EMA_DECAY)
    run = training.Run("style", {"model": decoder, "opt": optimiser, "ema": ema.module}, generator, seed, steps,
                       minutes, device)
    sources = Sources(run.generator)
    content_index = LOSS_BLOCKS.index(ENCODER_BLOCK)
    while run.running():
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(run.budget.progress(run.step))
        content, style = (t.to(device) for t in sources.batch())
        with torch.no_grad():
            content_features = encoder(content)
            style_taps = taps(style)
            # most steps at full strength; a quarter at a random one, so mixed features decode too
            strength = torch.ones(BATCH, 1, 1, 1, device=device)
            mixed = torch.rand(BATCH, 1, 1, 1, generator=run.generator) < 0.25
            strength = torch.where(mixed.to(device), torch.rand(BATCH, 1, 1, 1, generator=run.generator).to(device),
                                   strength)
            target = adain(content_features, *moments(style_taps[content_index]), strength)
        output = decoder(target)
        output_taps = taps(output)
        content_loss = (output_taps[content_index] - target).pow(2).mean()
        weights = strength.flatten()
        per_image_style = torch.stack([style_loss([t[i:i + 1] for t in output_taps], [t[i:i + 1] for t in style_taps])
                                       for i in range(BATCH)])
        loss_style = (weights * per_image_style).mean()
        loss = content_loss + STYLE_WEIGHT * loss_style
        optimiser.zero_grad(set_to_none=True), loss.backward(), optimiser.step(), ema.update(decoder)
        run.advance()
        if run.step % 50 == 0:
            log.info("style step %d content %.4f style %.4f (%.1f min)", run.step, content_loss.item(),
                     loss_style.item(), run.minutes())
    state = run.save(parameters=training.count_parameters(decoder))
    log.info("style done: %d steps in %.1f min", run.step, state["minutes"])
    return state


def load_trained(device: torch.device | str = "cpu") -> Decoder:
    return training.trained("style", Decoder(), device)
