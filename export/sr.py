"""4x super-resolution, 32 -> 128 px: a small residual network with a sub-pixel output (ESPCN,
Shi et al. 2016) added to a bicubic upsampling, so it learns only what bicubic misses.

Trained on the training split's 128 px emoji renders (export/data.py) against their 4x box
reductions, which is exactly how the 32 px images the generators learn were made. Crops of 16 px
(64 px targets) keep a step cheap on two cores; the network is convolutional, so it runs on whole
32 px images and on the service's 32 px tiles alike. Loss: L1 + a light perceptual term on the
pretrained judge's early blocks (export/perceptual.py), which trades a little PSNR for edges that
are not averaged into blur.

    flock /tmp/atelier-train.lock python -m export train sr --minutes 18 --seed 0   # 2 torch threads
    python -m export onnx sr        # models/sr/: upscaler.onnx + manifest (held-out PSNR vs bicubic)
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from PIL import Image
from torch import nn

from export import data, perceptual, training

log = logging.getLogger(__name__)

SCALE = 4
TILE = 32  # the served function's input side; uploads are cut into tiles of this size
CROP = 16  # training crops, in low-resolution pixels
BATCH = 32
WIDTH = 32
BLOCKS = 4
PERCEPTUAL_WEIGHT = 0.1  # about a fifth of the L1 term early on; more costs PSNR for little visible gain
# the perceptual term on 8 of the 32 crops: the pretrained network's depthwise blocks cost 4x the upscaler's
# own step on this CPU, and 8 crops already give its gradient the edges it is after
PERCEPTUAL_CROPS = 8
LEARNING_RATE = 1e-3
EMA_DECAY = 0.998


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class Upscaler(nn.Module):
    """(N, 3, h, w) in [-1, 1] -> (N, 3, 4h, 4w) in [-1, 1]: bicubic plus a learnt residual."""

    def __init__(self, width: int = WIDTH, blocks: int = BLOCKS):
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.tail = nn.Conv2d(width, 3 * SCALE**2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(SCALE)  # (N, 48, h, w) -> (N, 3, 4h, 4w)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        base = nn.functional.interpolate(image, scale_factor=SCALE, mode="bicubic", align_corners=False)
        features = self.head(image)
        residual = self.shuffle(self.tail(features + self.body(features)))
        return (base + residual).clamp(-1.0, 1.0)


def reduce(images: torch.Tensor) -> torch.Tensor:
    """High-resolution (N, 3, 4h, 4w) -> (N, 3, h, w) by 4x4 box averages: data.py's 128 -> 32 step."""
    return nn.functional.avg_pool2d(images, SCALE)


def random_crops(images128: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N, 128, 128, 3) uint8 -> BATCH high-resolution crops (BATCH, 3, 64, 64) in [-1, 1], aligned to the
    4x4 grid, randomly flipped and transposed (the square's symmetries: emoji edges run every way)."""
    side = CROP * SCALE
    index = torch.randint(len(images128), (BATCH,), generator=generator).tolist()
    cells = images128.shape[1] // SCALE - CROP + 1
    x, y = (torch.randint(cells, (2, BATCH), generator=generator) * SCALE).tolist()
    crops = torch.stack([images128[i, top:top + side, left:left + side] for i, top, left in zip(index, y, x)])
    crops = crops.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    flips = torch.rand(3, generator=generator) < 0.5
    if flips[0]:
        crops = crops.flip(3)
    if flips[1]:
        crops = crops.flip(2)
    if flips[2]:
        crops = crops.transpose(2, 3)
    return crops


def learning_rate(progress: float) -> float:
    """Cosine decay from LEARNING_RATE to 1 % of it over the budget."""
    return LEARNING_RATE * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def train(steps: int, minutes: float, seed: int, device: torch.device) -> dict:
    """Train (or resume) the upscaler; returns the checkpoint dict."""
    generator = training.seed_everything(seed)
    dataset = data.load().split(held_out=False)
    images128 = torch.from_numpy(dataset.images128).to(device)  # (N, 128, 128, 3) uint8: crops convert
    model = Upscaler().to(device)
    taps = perceptual.FeatureTaps(perceptual.SR_BLOCKS).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    ema = training.EMA(model, EMA_DECAY)
    run = training.Run("sr", {"model": model, "opt": optimiser, "ema": ema.module}, generator, seed, steps,
                       minutes, device)
    generator = run.generator
    while run.running():
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(run.budget.progress(run.step))
        target = random_crops(images128, generator)
        upscaled = model(reduce(target))
        l1 = (upscaled - target).abs().mean()
        some = slice(0, PERCEPTUAL_CROPS)
        distance = perceptual.perceptual_distance(taps, upscaled[some], target[some]).mean()
        loss = l1 + PERCEPTUAL_WEIGHT * distance
        optimiser.zero_grad(set_to_none=True), loss.backward(), optimiser.step(), ema.update(model)
        run.advance()
        if run.step % 200 == 0:
            log.info("sr step %d l1 %.4f perceptual %.4f (%.1f min)", run.step, l1.item(), distance.item(),
                     run.minutes())
    state = run.save(parameters=training.count_parameters(model))
    log.info("sr done: %d steps in %.1f min", run.step, state["minutes"])
    return state


def load_trained(device: torch.device | str = "cpu") -> Upscaler:
    return training.trained("sr", Upscaler(), device)


# --- held-out figures: what docs/UPSCALE.md and the manifest report ---

def bicubic(images32: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> (N, 128, 128, 3) uint8 with Pillow's bicubic: what a user would do instead."""
    return np.stack([np.asarray(Image.fromarray(image).resize((image.shape[1] * SCALE, image.shape[0] * SCALE),
                                                              Image.Resampling.BICUBIC)) for image in images32])


def psnr(images: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) peak signal-to-noise ratio in dB of uint8 images against the truth."""
    error = (images.astype(np.float64) - truth.astype(np.float64)) ** 2
    return 10.0 * np.log10(255.0**2 / np.maximum(error.mean(axis=(1, 2, 3)), 1e-10))


@torch.no_grad()
def perceptual_distances(taps: perceptual.FeatureTaps, images: np.ndarray, truth: np.ndarray,
                         chunk: int = 64) -> np.ndarray:
    """(N,) perceptual distance of uint8 images to the truth (export/perceptual.py)."""
    out = []
    for start in range(0, len(images), chunk):
        a = torch.from_numpy(data.to_unit_range(images[start:start + chunk]))
        b = torch.from_numpy(data.to_unit_range(truth[start:start + chunk]))
        out.append(perceptual.perceptual_distance(taps, a, b).numpy())
    return np.concatenate(out)


def held_out_scores(upscaled: np.ndarray, baseline: np.ndarray, truth: np.ndarray) -> dict:
    """PSNR and two perceptual distances of the upscaler and of bicubic against the truth: the training
    loss's own (early blocks, which the upscaler was trained to lower) and the judge's pooled features
    (its last layer, which no loss here saw)."""
    from export import judge

    network = judge.load_network()
    taps = perceptual.FeatureTaps(perceptual.SR_BLOCKS, network)
    truth_features = judge.features(network, truth)
    scores = {}
    for name, images in (("upscaler", upscaled), ("bicubic", baseline)):
        judge_distance = np.linalg.norm(judge.features(network, images) - truth_features, axis=1)
        scores[name] = {"psnr_db": round(float(psnr(images, truth).mean()), 3),
                        "perceptual_distance": round(float(perceptual_distances(taps, images, truth).mean()), 4),
                        "judge_feature_distance": round(float(judge_distance.mean()), 3)}
    scores["psnr_gain_db"] = round(scores["upscaler"]["psnr_db"] - scores["bicubic"]["psnr_db"], 3)
    scores["images"] = int(len(truth))
    return scores
