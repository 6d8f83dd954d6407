"""Latent diffusion: a small UNet denoiser over the VAE's 4x8x8 latents, conditioned on class and
caption embedding, trained with condition dropout for classifier-free guidance.

Training target is v (Salimans & Ho 2022, eq. 7: v = sqrt(ab)·eps - sqrt(1-ab)·x0) on the cosine
schedule of docs/INTERFACES.md; the exported graph converts v back to eps so the service's
samplers see one parameterisation:  eps = sqrt(ab)·v + sqrt(1-ab)·x_t.
Notation: ab = alpha_bar(t), x_t = sqrt(ab)·x0 + sqrt(1-ab)·eps.

    python -m export train diffusion --minutes 20 --seed 0
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from export import data, text, training, vae
from export.layers import ResBlock, SelfAttention, group_norm, timestep_embedding

log = logging.getLogger(__name__)

NUM_CLASSES = len(data.GROUPS)
NULL_CLASS = NUM_CLASSES  # the "no class" row of classifier-free guidance
SCHEDULE = {"kind": "cosine", "s": 0.008, "t_min": 0.002, "t_max": 0.995}
CLASS_DROPOUT = 0.3  # each condition is dropped independently: ~9 % of rows learn the unconditional model
TEXT_DROPOUT = 0.3


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17, in continuous time t in [0, 1]."""
    s = SCHEDULE["s"]
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


class UNet(nn.Module):
    """8x8 -> 4x4 (with attention) -> 8x8, FiLM-conditioned on time + class + caption.
    Sized for the 80 MB budget of committed models: ~2.2 M parameters, 9 MB in fp32."""

    def __init__(self, width: int = 64, embedding_dim: int = 256):
        super().__init__()
        channels = vae.LATENT_CHANNELS
        self.time_mlp = nn.Sequential(nn.Linear(width, embedding_dim), nn.SiLU(),
                                      nn.Linear(embedding_dim, embedding_dim))
        self.class_embedding = nn.Embedding(NUM_CLASSES + 1, embedding_dim)
        self.text_projection = nn.Sequential(nn.Linear(text.EMBEDDING_DIM, embedding_dim), nn.SiLU(),
                                             nn.Linear(embedding_dim, embedding_dim))
        self.width = width
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.down8 = nn.ModuleList([ResBlock(width, width, embedding_dim), ResBlock(width, width, embedding_dim)])
        self.to4 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.down4 = nn.ModuleList([ResBlock(2 * width, 2 * width, embedding_dim)])
        self.mid = ResBlock(2 * width, 2 * width, embedding_dim)
        self.mid_attention = SelfAttention(2 * width)
        self.up4 = nn.ModuleList([ResBlock(4 * width, 2 * width, embedding_dim)])
        self.to8 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * width, width, 3, padding=1))
        self.up8 = nn.ModuleList([ResBlock(2 * width, width, embedding_dim) for _ in range(2)])
        self.head = nn.Sequential(group_norm(width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight), nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_id: torch.Tensor,
                text_embedding: torch.Tensor) -> torch.Tensor:
        emb = (self.time_mlp(timestep_embedding(t, self.width)) + self.class_embedding(class_id)
               + self.text_projection(text_embedding))  # (N, E)
        h = self.stem(x)  # (N, W, 8, 8)
        skips = []
        for block in self.down8:
            h = block(h, emb)
            skips.append(h)
        h = self.to4(h)  # (N, 2W, 4, 4)
        for block in self.down4:
            h = block(h, emb)
            skips.append(h)
        h = self.mid_attention(self.mid(h, emb))
        for block in self.up4:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        h = self.to8(h)  # (N, W, 8, 8)
        for block in self.up8:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)  # v-prediction, (N, 4, 8, 8)


class EpsDenoiser(nn.Module):
    """The served `denoise`: (x_t, t, class, caption) -> eps, converting the UNet's v."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, class_id: torch.Tensor,
                text_embedding: torch.Tensor) -> torch.Tensor:
        ab = alpha_bar(timestep)[:, None, None, None]
        v = self.unet(latent, timestep, class_id, text_embedding)
        return ab.sqrt() * v + (1 - ab).sqrt() * latent


def encode_dataset(autoencoder: vae.VAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every training image and its mirror image: (2N, 4, 8, 8) each."""
    with torch.no_grad():
        both = torch.cat([images, images.flip(3)])
        means, stds = [], []
        for chunk in both.split(256):
            mean, logvar = vae.ScaledEncoder(autoencoder)(chunk)
            means.append(mean), stds.append(torch.exp(0.5 * logvar))
    return torch.cat(means), torch.cat(stds)


def train(steps: int, minutes: float, seed: int, device: torch.device, batch: int = 256) -> dict:
    generator = training.seed_everything(seed)
    dataset = data.load()
    images, labels = training.training_images(dataset, device)
    means, stds = encode_dataset(vae.load_trained(device), images)
    labels = torch.cat([labels, labels])
    captions = torch.from_numpy(text.caption_embeddings(dataset.captions)[~dataset.held_out]).to(device)
    captions = torch.cat([captions, captions])  # (2N, templates, 384)
    unet = UNet().to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-4, weight_decay=0.0)
    ema = training.EMA(unet, decay=0.9995)
    run = training.Run("diffusion", {"model": unet, "opt": opt, "ema": ema.module}, generator, seed, steps,
                       minutes, device)
    generator = run.generator
    sampler = training.BalancedSampler(labels, generator)
    while run.running():
        idx = sampler(batch).to(device)
        x0 = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=generator).to(device)
        template = torch.randint(len(text.CAPTION_TEMPLATES), (batch,), generator=generator).to(device)
        caption = captions[idx, template]
        class_id = labels[idx].clone()
        class_id[torch.rand(batch, generator=generator).to(device) < CLASS_DROPOUT] = NULL_CLASS
        caption = caption * (torch.rand(batch, 1, generator=generator).to(device) >= TEXT_DROPOUT)
        t = SCHEDULE["t_min"] + (SCHEDULE["t_max"] - SCHEDULE["t_min"]) * torch.rand(batch, generator=generator)
        t = t.to(device)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        ab = alpha_bar(t)[:, None, None, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        v_target = ab.sqrt() * eps - (1 - ab).sqrt() * x0
        loss = torch.mean((unet(x_t, t, class_id, caption) - v_target) ** 2)
        opt.zero_grad(set_to_none=True), loss.backward()
        nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step(), ema.update(unet)
        run.advance()
        if run.step % 1000 == 0:
            log.info("diffusion step %d loss %.4f (%.1f min)", run.step, loss.item(), run.minutes())
    state = run.save()
    log.info("diffusion done: %d steps in %.1f min", run.step, state["minutes"])
    return state


def load_trained(device: torch.device | str = "cpu") -> UNet:
    return training.trained("diffusion", UNet(), device)


@torch.no_grad()
def sample(unet: UNet, class_id: torch.Tensor, caption: torch.Tensor, generator: torch.Generator,
           steps: int = 50, guidance: float = 3.0) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0) with classifier-free guidance.
    Returns latents (N, 4, 8, 8); the evaluation harness's reference sampler (the service has its own)."""
    device = class_id.device
    count = class_id.shape[0]
    denoiser = EpsDenoiser(unet)
    x = torch.randn((count, *vae.LATENT_SHAPE), generator=generator).to(device)
    times = torch.linspace(SCHEDULE["t_max"], SCHEDULE["t_min"], steps + 1, device=device)
    null_class = torch.full_like(class_id, NULL_CLASS)
    for t_now, t_next in zip(times[:-1], times[1:]):
        t = t_now.expand(count)
        eps_both = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([class_id, null_class]),
                            torch.cat([caption, torch.zeros_like(caption)]))
        eps_cond, eps_uncond = eps_both.chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        ab_now, ab_next = alpha_bar(t_now), alpha_bar(t_next)
        x0 = (x - (1 - ab_now).sqrt() * eps) / ab_now.sqrt()
        x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
    return x0

