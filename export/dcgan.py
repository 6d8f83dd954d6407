"""Class-conditional GAN at 32x32: a DCGAN-shaped generator with class-conditional batch norm,
a spectrally normalised projection discriminator (Miyato & Koyama 2018), hinge loss, and
DiffAugment (Zhao et al. 2020: translation, colour, cutout on real and fake alike) because 3.2 k
images are too few for a discriminator that sees them unaugmented. MEASURED.md: a 6-minute run
without these collapsed.

    python -m export train dcgan --minutes 20 --seed 0
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from export import data, training

log = logging.getLogger(__name__)

NUM_CLASSES = len(data.GROUPS)
Z_DIM = 128


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose scale and shift are looked up per class (de Vries et al. 2017)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Embedding(NUM_CLASSES, channels)
        self.shift = nn.Embedding(NUM_CLASSES, channels)
        nn.init.ones_(self.scale.weight), nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale(class_id)[:, :, None, None] + self.shift(class_id)[:, :, None, None]


class UpBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.norm1, self.norm2 = ConditionalBatchNorm(channels_in), ConditionalBatchNorm(channels_out)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, x: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(torch.relu(self.norm1(x, class_id)))
        h = self.conv2(torch.relu(self.norm2(h, class_id)))
        return self.skip(x) + h


class Generator(nn.Module):
    def __init__(self, width: int = 192):
        super().__init__()
        self.width = width
        self.project = nn.Linear(Z_DIM, 4 * 4 * width)
        self.blocks = nn.ModuleList([UpBlock(width, width), UpBlock(width, width // 2), UpBlock(width // 2, width // 4)])
        self.head = nn.Sequential(nn.BatchNorm2d(width // 4), nn.ReLU(), nn.Conv2d(width // 4, 3, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        h = self.project(z).reshape(-1, self.width, 4, 4)  # (N, 192, 4, 4)
        for block in self.blocks:  # -> 8 -> 16 -> 32
            h = block(h, class_id)
        return self.head(h)  # (N, 3, 32, 32) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(self, width: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            spectral_norm(nn.Conv2d(3, width // 2, 3, padding=1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(width // 2, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),   # 16
            spectral_norm(nn.Conv2d(width, width, 3, padding=1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),  # 8
            spectral_norm(nn.Conv2d(2 * width, 2 * width, 3, padding=1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),  # 4
        )
        self.linear = spectral_norm(nn.Linear(4 * width, 1))
        self.projection = spectral_norm(nn.Embedding(NUM_CLASSES, 4 * width))

    def forward(self, image: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        h = self.features(image).sum(dim=(2, 3))  # (N, 512), global sum pooling
        return self.linear(h).squeeze(1) + (self.projection(class_id) * h).sum(1)


def diff_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Differentiable colour, translation (1/8 of the side) and cutout (half the side)."""
    batch, _, size, _ = images.shape
    device = images.device

    def uniform(*shape):
        return torch.rand(shape, generator=generator).to(device)

    images = images + (uniform(batch, 1, 1, 1) - 0.5)  # brightness
    mean = images.mean(dim=1, keepdim=True)
    images = (images - mean) * (uniform(batch, 1, 1, 1) * 2) + mean  # saturation
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * (uniform(batch, 1, 1, 1) + 0.5) + mean  # contrast
    shift = size // 8
    dx, dy = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
    images = torch.roll(nn.functional.pad(images, (shift,) * 4, value=1.0), (dy, dx), dims=(2, 3))
    images = images[:, :, shift:shift + size, shift:shift + size]
    cut = size // 2
    cx, cy = torch.randint(0, size - cut + 1, (2,), generator=generator).tolist()
    mask = torch.ones_like(images[:, :1])
    mask[:, :, cy:cy + cut, cx:cx + cut] = 0.0
    return images * mask


def train(steps: int, minutes: float, seed: int, device: torch.device, batch: int = 64) -> dict:
    generator = training.seed_everything(seed)
    images, labels = training.training_images(data.load(), device)
    gen, disc = Generator().to(device), Discriminator().to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.0, 0.9))
    ema = training.EMA(gen, decay=0.999)
    run = training.Run("dcgan", {"model": gen, "disc": disc, "opt_g": opt_g, "opt_d": opt_d, "ema": ema.module},
                       generator, seed, steps, minutes, device)
    generator = run.generator
    sampler = training.BalancedSampler(labels, generator)
    while run.running():
        idx = sampler(batch).to(device)
        real, class_id = images[idx], labels[idx]
        real = torch.where((torch.rand(batch, 1, 1, 1, generator=generator) < 0.5).to(device), real.flip(3), real)
        z = torch.randn(batch, Z_DIM, generator=generator).to(device)
        fake = gen(z, class_id)
        loss_d = (torch.relu(1 - disc(diff_augment(real, generator), class_id)).mean()
                  + torch.relu(1 + disc(diff_augment(fake.detach(), generator), class_id)).mean())
        opt_d.zero_grad(set_to_none=True), loss_d.backward(), opt_d.step()
        loss_g = -disc(diff_augment(fake, generator), class_id).mean()
        opt_g.zero_grad(set_to_none=True), loss_g.backward(), opt_g.step(), ema.update(gen)
        run.advance()
        if run.step % 1000 == 0:
            log.info("dcgan step %d loss_d %.3f loss_g %.3f (%.1f min)", run.step, loss_d.item(), loss_g.item(),
                     run.minutes())
    recalibrate_batch_norm(ema.module, generator, device)
    state = run.save()
    log.info("dcgan done: %d steps in %.1f min", run.step, state["minutes"])
    return state


@torch.no_grad()
def recalibrate_batch_norm(gen: Generator, generator: torch.Generator, device: torch.device,
                           batches: int = 100, batch: int = 256) -> None:
    """Re-estimate the EMA generator's batch-norm statistics from its own activations: the running
    averages it inherited belong to the raw generator, whose weights differ."""
    for module in gen.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    gen.train()
    for _ in range(batches):
        z = torch.randn(batch, Z_DIM, generator=generator).to(device)
        gen(z, torch.randint(NUM_CLASSES, (batch,), generator=generator).to(device))
    gen.eval()


def load_trained(device: torch.device | str = "cpu") -> Generator:
    state = training.load_checkpoint("dcgan", device)
    if state is None:
        raise FileNotFoundError("no dcgan checkpoint: run `python -m export train dcgan` first")
    gen = Generator().to(device)
    gen.load_state_dict(state["ema"])
    return gen.eval()
