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
  at batch 64, 4,176 steps, 352; at batch 128, 2,651 steps, 377. The batch stays 64;
- optionally (`--image-from-step S`; not in the served 2.2.0), from step S a second discriminator
  on decoded 32x32 images, with DiffAugment in image space (colour, a 4-pixel translation, an 8x8
  cutout). The latent game levels off near excess 235 however long it runs (41,840 steps 235.2,
  61,374 steps 233.5) while its discriminator memorises the training latents (held-out ones score
  almost like fakes); the image discriminator sees what the judge sees. Its real side is the
  decoder's rendering of the real latents, not the emoji themselves, so it asks for latents the
  decoder draws well rather than detail the decoder cannot draw. A step through the decoder costs
  about 0.37 s instead of 0.06 s, so an hour on this CPU buys few of them; `--image-batch K` sends
  only the first K samples of each batch through the decoder and that discriminator (0.24 s a step
  at K=16). Measured runs (it meets the distance bound after some 9,600 of its steps, past the hour)
  and why it is not served yet: docs/MODELS.md.

The served `generate` function is this generator followed by the committed VAE decoder, so the
contract (z, class_id -> 32x32 image in [-1, 1]) is unchanged.

    python -m export train dcgan --seed 0 --minutes 60     # manifest: the steps this run reached
"""

from __future__ import annotations

import functools
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
IMAGE_WARMUP = 300  # steps the image discriminator trains alone first, so its first gradients are not noise
BATCH = 64  # samples per step (pilots in the docstring above)
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


class ProjectionDiscriminator(nn.Module):
    """Spectrally normalised features summed over space, scored by a linear head plus a class
    projection (Miyato & Koyama 2018); the subclasses choose the features."""

    def __init__(self, features: nn.Sequential, channels: int):
        super().__init__()
        self.features = features
        self.linear = spectral_norm(nn.Linear(channels, 1))
        self.projection = spectral_norm(nn.Embedding(NUM_CLASSES, channels))

    def forward(self, x: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        h = self.features(x).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.projection(class_id) * h).sum(1)


class Discriminator(ProjectionDiscriminator):
    """Over the VAE's 4x8x8 latents."""

    def __init__(self, width: int = 96):
        super().__init__(nn.Sequential(
            spectral_norm(nn.Conv2d(vae.LATENT_CHANNELS, width, 3, padding=1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(width, width, 3, padding=1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),  # 4x4
            spectral_norm(nn.Conv2d(2 * width, 2 * width, 3, padding=1)), nn.LeakyReLU(0.1),
        ), 2 * width)


class ImageDiscriminator(ProjectionDiscriminator):
    """Over the decoded 32x32 image."""

    def __init__(self, width: int = 32):
        super().__init__(nn.Sequential(
            spectral_norm(nn.Conv2d(3, width, 3, padding=1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),  # 16x16
            spectral_norm(nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),  # 8x8
            spectral_norm(nn.Conv2d(4 * width, 4 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),  # 4x4
        ), 4 * width)


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


def image_augment(images: torch.Tensor, generator: torch.Generator, shift: int = 4, hole: int = 8) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) on [-1, 1] images, drawn per sample and differentiable:
    brightness, saturation and contrast, a translation of up to `shift` pixels over the white
    background, and a `hole`-pixel square cut out to white."""
    n, channels, height, width = images.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)).to(images.device, images.dtype)

    x = images + uniform(-0.5, 0.5)
    grey = x.mean(1, keepdim=True)
    x = (x - grey) * uniform(0.0, 2.0) + grey
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.5, 1.5) + mean
    padded = nn.functional.pad(x, (shift,) * 4, value=1.0)
    dy, dx = (torch.randint(0, 2 * shift + 1, (n, 1), generator=generator).to(images.device) for _ in range(2))
    rows = (torch.arange(height, device=images.device) + dy)[:, None, :, None]
    x = padded.gather(2, rows.expand(n, channels, height, width + 2 * shift))
    cols = (torch.arange(width, device=images.device) + dx)[:, None, None, :]
    x = x.gather(3, cols.expand(n, channels, height, width))
    cy, cx = (torch.randint(0, side, (n, 1, 1), generator=generator).to(images.device) for side in (height, width))
    ys, xs = torch.arange(height, device=images.device)[:, None], torch.arange(width, device=images.device)
    cut = ((ys - cy).abs() < hole // 2) & ((xs - cx).abs() < hole // 2)
    return torch.where(cut[:, None], torch.ones((), dtype=x.dtype, device=x.device), x)


def hinge_step(disc: nn.Module, optimiser: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
               class_id: torch.Tensor, augment, r1: bool, device: torch.device) -> torch.Tensor:
    """One discriminator update: hinge loss on augmented real and fake, plus lazy R1 on the real."""
    real = augment(real).requires_grad_(r1)
    with mixed_precision(device):
        real_score = disc(real, class_id).float()
        loss = torch.relu(1 - real_score).mean() + torch.relu(1 + disc(augment(fake), class_id).float()).mean()
    if r1:
        grad, = torch.autograd.grad(real_score.sum(), real, create_graph=True)
        loss = loss + R1_EVERY * R1_WEIGHT / 2 * grad.float().pow(2).sum(dim=(1, 2, 3)).mean()
    optimiser.zero_grad(set_to_none=True), loss.backward(), optimiser.step()
    return loss


def contiguous_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Forward pre-hook of the frozen decoder: its latents in the default layout (the generator's come
    out channels-last), since its group norms' bfloat16 backward is slow in channels-last on this CPU.
    The generator, decoder and image discriminator forward and back at batch 64, timed alone: 0.47 s
    from channels-last, 0.37 s from contiguous latents."""
    return tuple(arg.contiguous() for arg in args)


def mixed_precision(device: torch.device) -> torch.autocast:
    """bfloat16 convolutions; weights, optimiser state and losses stay float32 (why: the docstring above)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train(steps: int, minutes: float, seed: int, device: torch.device, batch: int = BATCH,
          image_from_step: int | None = None, image_batch: int | None = None) -> dict:
    """The latent game; with `image_from_step`, from that step on the same game plus a
    discriminator on decoded images, which sees the first `image_batch` samples of each batch (all
    by default; its warm-up draws batches of that size): the decoder's forward and backward are most
    of an image step's cost. Both are recorded in the checkpoint when the phase begins, so the
    manifest's recipe names them."""
    if image_batch is not None and image_from_step is None:
        raise ValueError(f"image_batch {image_batch} sizes the image phase: it needs image_from_step")
    if image_batch is not None and not 1 <= image_batch <= batch:
        raise ValueError(f"image_batch {image_batch} must lie in 1..{batch}, the batch")
    phase = {} if image_from_step is None else {"image_from_step": image_from_step}
    if image_batch not in (None, batch):  # the whole batch is the default recipe, not a second one
        phase["image_batch"] = image_batch
    image_batch = phase.get("image_batch", batch)
    from export import diffusion, from_onnx  # the committed VAE, as served: its latents are what the decoder knows

    generator = training.seed_everything(seed)
    images, labels = training.training_images(data.load(), device)
    autoencoder = from_onnx.load_vae().to(device)
    means, stds = diffusion.encode_dataset(autoencoder, images)
    labels = torch.cat([labels, labels])
    gen = LatentGenerator().to(device, memory_format=torch.channels_last)
    disc = Discriminator().to(device, memory_format=torch.channels_last)
    opt_g, opt_d = (torch.optim.Adam(module.parameters(), lr=2e-4, betas=(0.0, 0.9)) for module in (gen, disc))
    ema = training.EMA(gen, decay=0.999)
    parts = {"model": gen, "disc": disc, "opt_g": opt_g, "opt_d": opt_d, "ema": ema.module}
    if image_from_step is not None:  # built only when asked for, so the plain recipe draws what 2.2.0 drew
        image_disc = ImageDiscriminator().to(device, memory_format=torch.channels_last)
        opt_i = torch.optim.Adam(image_disc.parameters(), lr=2e-4, betas=(0.0, 0.9))
        parts.update(image_disc=image_disc, opt_i=opt_i)
    run = training.Run("dcgan", parts, generator, seed, steps, minutes, device)
    # the phase is recorded when it begins, so a checkpoint past its step must hold the same one
    if run.marks != (phase if image_from_step is not None and run.step > image_from_step else {}):
        began = run.marks.get("image_from_step")
        held = "no image discriminator" if began is None else f"its image discriminator from step {began}"
        raise ValueError(f"the dcgan checkpoint at step {run.step} has {held}: resume it with "
                         f"{training.recipe_flags(run.marks) or 'no --image-from-step'}, or move "
                         f"{training.checkpoint_path('dcgan')} away to start afresh")
    generator = run.generator
    sampler = training.BalancedSampler(labels, generator)
    shift, augment = (functools.partial(f, generator=generator) for f in (translate, image_augment))
    decoder = decoded_real = None
    while run.running():
        if decoder is None and image_from_step is not None and run.step >= image_from_step:
            run.marks.update(phase)
            decoder = vae.ScaledDecoder(autoencoder).eval().requires_grad_(False)
            decoder.register_forward_pre_hook(contiguous_input)
            with torch.no_grad():  # the image discriminator's real side: what the decoder makes of real latents
                decoded_real = torch.cat([decoder(chunk) for chunk in means.split(256)])
            if run.step == image_from_step:
                warm_up(image_disc, opt_i, gen, decoder, decoded_real, labels, sampler, generator, device,
                        image_batch)
        idx = sampler(batch).to(device)
        noise = torch.randn(means[idx].shape, generator=generator).to(device)
        real, class_id = means[idx] + stds[idx] * noise, labels[idx]
        r1 = run.step % R1_EVERY == 0
        with mixed_precision(device):
            fake = gen(torch.randn(batch, Z_DIM, generator=generator).to(device), class_id)
        loss_d = hinge_step(disc, opt_d, real, fake.detach(), class_id, shift, r1, device)
        discriminators = [disc]
        if decoder is not None:
            seen, seen_class = idx[:image_batch], class_id[:image_batch]
            with mixed_precision(device):
                fake_image = decoder(fake[:image_batch])
            hinge_step(image_disc, opt_i, decoded_real[seen], fake_image.detach().float(), seen_class, augment, r1,
                       device)
            discriminators.append(image_disc)
        for module in discriminators:  # the generator's step needs no weight gradients of the discriminators
            module.requires_grad_(False)
        with mixed_precision(device):
            loss_g = -disc(shift(fake), class_id).float().mean()
            if decoder is not None:
                loss_g = loss_g - image_disc(augment(fake_image), seen_class).float().mean()
        opt_g.zero_grad(set_to_none=True), loss_g.backward(), opt_g.step(), ema.update(gen)
        for module in discriminators:
            module.requires_grad_(True)
        run.advance()
        if run.step % 1000 == 0:
            log.info("dcgan step %d loss_d %.3f loss_g %.3f (%.1f min)", run.step, loss_d.item(), loss_g.item(),
                     run.minutes())
    recalibrate_batch_norm(ema.module, generator, device)
    state = run.save(precision=PRECISION)
    log.info("dcgan done: %d steps in %.1f min (image discriminator: %s)", run.step, state["minutes"],
             run.marks or "none")
    return state


def warm_up(image_disc: ImageDiscriminator, optimiser: torch.optim.Optimizer, gen: LatentGenerator,
            decoder: vae.ScaledDecoder, decoded_real: torch.Tensor, labels: torch.Tensor,
            sampler: training.BalancedSampler, generator: torch.Generator, device: torch.device, batch: int) -> None:
    """Train a fresh image discriminator against the generator as it stands, the generator frozen."""
    augment = functools.partial(image_augment, generator=generator)
    for step in range(IMAGE_WARMUP):
        idx = sampler(batch).to(device)
        with torch.no_grad(), mixed_precision(device):
            fake = decoder(gen(torch.randn(batch, Z_DIM, generator=generator).to(device), labels[idx])).float()
        hinge_step(image_disc, optimiser, decoded_real[idx], fake, labels[idx], augment, step % R1_EVERY == 0, device)


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
