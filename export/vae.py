"""Convolutional VAE: 32x32 RGB <-> a 4x8x8 latent, the space the GMM and the diffusion model use.

Loss: L1 + MSE reconstruction, a small KL term (a latent that stays close to the data keeps
samples sharp), and after a warm-up a patch-discriminator hinge loss (as Stable Diffusion's
autoencoder does) so decoded images are crisp rather than averaged.

    python -m export train vae --minutes 20 --seed 0
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from export import data, training
from export.layers import ResBlock, group_norm

log = logging.getLogger(__name__)

LATENT_CHANNELS = 4
LATENT_SHAPE = (LATENT_CHANNELS, 8, 8)
KL_WEIGHT = 1e-5  # per element; larger washes out detail, the diffusion model copes with the rest
ADVERSARIAL_WEIGHT = 0.05
ADVERSARIAL_START = 0.3  # fraction of steps before the discriminator joins in


class Encoder(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            ResBlock(width, width),                                    # (N, 64, 32, 32)
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            ResBlock(2 * width, 2 * width),                            # (N, 128, 16, 16)
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            ResBlock(2 * width, 2 * width), ResBlock(2 * width, 2 * width),  # (N, 128, 8, 8)
            group_norm(2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * LATENT_CHANNELS, 3, padding=1),
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.layers(image).chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)


class Decoder(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(LATENT_CHANNELS, 2 * width, 3, padding=1),
            ResBlock(2 * width, 2 * width), ResBlock(2 * width, 2 * width),  # (N, 128, 8, 8)
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            ResBlock(2 * width, 2 * width), ResBlock(2 * width, width),      # (N, 64, 16, 16)
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, padding=1),
            ResBlock(width, width), ResBlock(width, width),                  # (N, 64, 32, 32)
            group_norm(width), nn.SiLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layers(latent)


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()
        # 1 / std of the latent means over the training set, set after training (folded into ONNX)
        self.register_buffer("latent_scale", torch.ones(()))


class PatchDiscriminator(nn.Module):
    """Judges overlapping 8x8 patches: a sharpness critic, not a global one."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            spectral_norm(nn.Conv2d(3, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * width, 1, 3, padding=1)),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)


class ScaledEncoder(nn.Module):
    """The served `encode`: mean and log-variance in the scaled (unit-variance) latent space."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.encoder, self.latent_scale = vae.encoder, vae.latent_scale

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(image)
        return mean * self.latent_scale, logvar + 2.0 * torch.log(self.latent_scale)


class ScaledDecoder(nn.Module):
    """The served `decode`: scaled latent in, image in [-1, 1] out."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.decoder, self.latent_scale = vae.decoder, vae.latent_scale

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent / self.latent_scale).clamp(-1.0, 1.0)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (peak-to-peak range 2)."""
    mse = torch.mean((reconstruction.clamp(-1, 1) - target) ** 2).item()
    return 10.0 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item()


@torch.no_grad()
def held_out_psnr(vae: VAE, dataset: data.EmojiDataset, device: torch.device) -> float:
    images = torch.from_numpy(data.to_unit_range(dataset.split(held_out=True).images32)).to(device)
    mean, _ = vae.encoder(images)
    return psnr(vae.decoder(mean), images)


@torch.no_grad()
def fit_latent_scale(vae: VAE, images: torch.Tensor) -> None:
    means = torch.cat([vae.encoder(chunk)[0] for chunk in images.split(256)])
    vae.latent_scale.fill_(1.0 / means.std().item())


def train(steps: int, minutes: float, seed: int, device: torch.device, batch: int = 128) -> dict:
    """Train (or resume) the VAE; returns the checkpoint dict."""
    generator = training.seed_everything(seed)
    dataset = data.load()
    images, _ = training.training_images(dataset, device)
    vae, critic = VAE().to(device), PatchDiscriminator().to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-4, betas=(0.5, 0.9))
    opt_critic = torch.optim.Adam(critic.parameters(), lr=2e-4, betas=(0.5, 0.9))
    ema = training.EMA(vae, decay=0.999)
    run = training.Run("vae", {"model": vae, "critic": critic, "opt": opt, "opt_critic": opt_critic,
                               "ema": ema.module}, generator, seed, steps, minutes, device)
    generator = run.generator
    while run.running():
        idx = torch.randint(len(images), (batch,), generator=generator).to(device)
        real = training.augment(images[idx], generator)
        mean, logvar = vae.encoder(real)
        latent = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        fake = vae.decoder(latent)
        kl = 0.5 * torch.mean(mean**2 + logvar.exp() - 1.0 - logvar)
        loss = (fake - real).abs().mean() + ((fake - real) ** 2).mean() + KL_WEIGHT * kl
        adversarial = run.budget.progress(run.step) >= ADVERSARIAL_START
        if adversarial:
            loss = loss - ADVERSARIAL_WEIGHT * critic(fake).mean()
        opt.zero_grad(set_to_none=True), loss.backward(), opt.step(), ema.update(vae)
        if adversarial:  # hinge loss for the critic
            critic_loss = (torch.relu(1 - critic(real)).mean() + torch.relu(1 + critic(fake.detach())).mean())
            opt_critic.zero_grad(set_to_none=True), critic_loss.backward(), opt_critic.step()
        run.advance()
        if run.step % 500 == 0:
            log.info("vae step %d loss %.4f kl %.3f held-out PSNR %.2f dB (%.1f min)", run.step, loss.item(),
                     kl.item(), held_out_psnr(ema.module, dataset, device), run.minutes())
    fit_latent_scale(ema.module, images)
    state = run.save(held_out_psnr=held_out_psnr(ema.module, dataset, device))
    log.info("vae done: %d steps, held-out PSNR %.2f dB, latent scale %.3f", run.step, state["held_out_psnr"],
             ema.module.latent_scale.item())
    return state


def load_trained(device: torch.device | str = "cpu") -> VAE:
    return training.trained("vae", VAE(), device)
