"""Class-conditional GAN over the VAE's latents, served with the VAE decoder as one graph.

Measured on this 2-core CPU (docs/MODELS.md): the 32x32 pixel-space recipe (same losses, a
1.4 M-parameter generator and 3.5 M-parameter discriminator) costs 1.17 s per step, so an hour
buys about 3 000 steps, and 7 335 steps on a lent GPU still gave emoji-coloured blobs. The
VAE's 4x8x8 latent is 12x smaller than the image, and the latent diffusion model shows its
decoder draws clear emoji from latents on the data's manifold. So the adversarial game is
played in latent space, where a step costs milliseconds:

- generator: z (128) -> 4x4x128 -> three 8x8 residual blocks of 64 channels with class-conditional
  batch norm (de Vries et al. 2017) -> a 4x8x8 latent (widths picked by measured step cost on this
  CPU: 0.72 s per step at 256/192 channels and batch 128, 0.20 s at 128/96; the recipe, 128/96 at
  batch 64, 0.11 s);
- discriminator: spectrally normalised convolutions over the latent with a class projection
  (Miyato & Koyama 2018), hinge loss;
- data: posterior samples (mean + std * noise) of every training image and its mirror image,
  drawn afresh each step, plus a one-latent-pixel translation applied to real and fake alike
  (DiffAugment, Zhao et al. 2020), so 3.2 k images do not let the discriminator memorise;
- R1 gradient penalty on real latents (Mescheder et al. 2018) and an EMA of the generator;
- bfloat16 autocast around both networks (this CPU has AMX) and no weight gradients for the
  discriminator in the generator's step: 0.086 s a step instead of 0.148 s, so the hour buys 41,840
  steps instead of 24,292. Six-minute pilots, same judge: float32 2,596 steps, excess 393; bfloat16
  at batch 64, 4,176 steps, 352; at batch 128, 2,651 steps, 377. The batch stays 64.

The served `generate` function is this generator followed by the committed VAE decoder, so the
contract (z, class_id -> 32x32 image in [-1, 1]) is unchanged.

    python -m export train dcgan --seed 0 --minutes 60     # manifest: the steps this run reached
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from export import data, training, vae

log = logging.getLogger(__name__)

NUM_CLASSES = len(data.GROUPS)
Z_DIM = 128
R1_WEIGHT = 0.1
R1_EVERY = 4  # lazy regularisation (Karras et al. 2020): the penalty on every 4th step, scaled by 4
PRECISION = "bfloat16 autocast (float32 weights)"  # recorded in the manifest


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


class Block(nn.Module):
    """Residual block with class-conditional batch norm; `upsample` doubles the side first."""

    def __init__(self, channels_in: int, channels_out: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.norm1, self.norm2 = ConditionalBatchNorm(channels_in), ConditionalBatchNorm(channels_out)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(torch.relu(self.norm1(x, class_id)))
        h = self.conv2(torch.relu(self.norm2(h, class_id)))
        return self.skip(x) + h


class LatentGenerator(nn.Module):
    def __init__(self, width: int = 128):
        super().__init__()
        self.width = width
        self.project = nn.Linear(Z_DIM, 4 * 4 * width)
        self.blocks = nn.ModuleList([Block(width, width // 2, upsample=True),  # 8x8
                                     Block(width // 2, width // 2, upsample=False),
                                     Block(width // 2, width // 2, upsample=False)])
        self.head = nn.Sequential(nn.BatchNorm2d(width // 2), nn.ReLU(),
                                  nn.Conv2d(width // 2, vae.LATENT_CHANNELS, 3, padding=1))

    def forward(self, z: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        h = self.project(z).reshape(-1, self.width, 4, 4)
        for block in self.blocks:
            h = block(h, class_id)
        return self.head(h)  # (N, 4, 8, 8) in the VAE's scaled latent space


class Discriminator(nn.Module):
    def __init__(self, width: int = 96):
        super().__init__()
        self.features = nn.Sequential(
            spectral_norm(nn.Conv2d(vae.LATENT_CHANNELS, width, 3, padding=1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(width, width, 3, padding=1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),  # 4x4
            spectral_norm(nn.Conv2d(2 * width, 2 * width, 3, padding=1)), nn.LeakyReLU(0.1),
        )
        self.linear = spectral_norm(nn.Linear(2 * width, 1))
        self.projection = spectral_norm(nn.Embedding(NUM_CLASSES, 2 * width))

    def forward(self, latent: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        h = self.features(latent).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.projection(class_id) * h).sum(1)


class Generator(nn.Module):
    """The served graph: latent generator, then the VAE decoder (frozen, as committed)."""

    def __init__(self, latent_generator: LatentGenerator, decoder: vae.ScaledDecoder):
        super().__init__()
        self.latent_generator, self.decoder = latent_generator, decoder

    def forward(self, z: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.latent_generator(z, class_id))  # (N, 3, 32, 32) in [-1, 1]


def translate(latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift the whole batch by up to one latent pixel (4 image pixels), edges replicated."""
    dx, dy = torch.randint(-1, 2, (2,), generator=generator).tolist()
    padded = nn.functional.pad(latents, (1, 1, 1, 1), mode="replicate")
    return padded[:, :, 1 + dy:1 + dy + latents.shape[2], 1 + dx:1 + dx + latents.shape[3]]


def mixed_precision(device: torch.device) -> torch.autocast:
    """bfloat16 convolutions; weights, optimiser state and losses stay float32 (why: the docstring above)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train(steps: int, minutes: float, seed: int, device: torch.device, batch: int = 64) -> dict:
    from export import diffusion, from_onnx  # the committed VAE, as served: its latents are what the decoder knows

    generator = training.seed_everything(seed)
    images, labels = training.training_images(data.load(), device)
    means, stds = diffusion.encode_dataset(from_onnx.load_vae().to(device), images)
    labels = torch.cat([labels, labels])
    gen = LatentGenerator().to(device, memory_format=torch.channels_last)
    disc = Discriminator().to(device, memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.0, 0.9))
    ema = training.EMA(gen, decay=0.999)
    run = training.Run("dcgan", {"model": gen, "disc": disc, "opt_g": opt_g, "opt_d": opt_d, "ema": ema.module},
                       generator, seed, steps, minutes, device)
    generator = run.generator
    sampler = training.BalancedSampler(labels, generator)
    while run.running():
        idx = sampler(batch).to(device)
        noise = torch.randn(means[idx].shape, generator=generator).to(device)
        real, class_id = means[idx] + stds[idx] * noise, labels[idx]
        with mixed_precision(device):
            fake = gen(torch.randn(batch, Z_DIM, generator=generator).to(device), class_id)
            real_aug = translate(real, generator).requires_grad_(run.step % R1_EVERY == 0)
            real_score = disc(real_aug, class_id).float()
            loss_d = (torch.relu(1 - real_score).mean()
                      + torch.relu(1 + disc(translate(fake.detach(), generator), class_id).float()).mean())
        if real_aug.requires_grad:
            grad, = torch.autograd.grad(real_score.sum(), real_aug, create_graph=True)
            loss_d = loss_d + R1_EVERY * R1_WEIGHT / 2 * grad.float().pow(2).sum(dim=(1, 2, 3)).mean()
        opt_d.zero_grad(set_to_none=True), loss_d.backward(), opt_d.step()
        disc.requires_grad_(False)  # the generator's step needs no weight gradients of the discriminator
        with mixed_precision(device):
            loss_g = -disc(translate(fake, generator), class_id).float().mean()
        opt_g.zero_grad(set_to_none=True), loss_g.backward(), opt_g.step(), ema.update(gen)
        disc.requires_grad_(True)
        run.advance()
        if run.step % 1000 == 0:
            log.info("dcgan step %d loss_d %.3f loss_g %.3f (%.1f min)", run.step, loss_d.item(), loss_g.item(),
                     run.minutes())
    recalibrate_batch_norm(ema.module, generator, device)
    state = run.save(precision=PRECISION)
    log.info("dcgan done: %d steps in %.1f min", run.step, state["minutes"])
    return state


@torch.no_grad()
def recalibrate_batch_norm(gen: LatentGenerator, generator: torch.Generator, device: torch.device,
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
    """The EMA latent generator from its checkpoint, with the committed VAE decoder behind it."""
    from export import from_onnx

    latent_generator = training.trained("dcgan", LatentGenerator(), device)
    decoder = vae.ScaledDecoder(from_onnx.load_vae()).to(device)
    return Generator(latent_generator, decoder).eval().requires_grad_(False)
