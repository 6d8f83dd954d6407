"""Diffusion schedules and samplers: pure numpy around one awaited `denoise` callable.

Owns the cosine variance-preserving schedule of docs/INTERFACES.md ("Diffusion schedule") in its
variance-exploding sigma form, the sigma sequences that samplers walk (uniform in t, Karras), the
SDEdit tail used by img2img, and four samplers that share one call shape: Euler, DDIM, DDPM and
DPM-Solver++(2M). The engine adapts the ONNX eps-model to `denoise`. Each sampler awaits it once per
step, so requests at different steps share batched runs. Samplers keep no state, and every noise
draw for image i comes from rngs[i].

    .venv/bin/python -m pytest tests/test_samplers.py -q

Notation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"):
    x         (B, C, H, W)  the sample in variance-exploding space: x = x0 + σ·ε = x_t / sqrt(ᾱ)
    sigma     the noise level σ; sigma_next is the level one step later (σ_{i+1})
    denoised  (B, C, H, W)  D(x; σ), the denoiser's estimate of x0
    d         (B, C, H, W)  (x - D(x; σ)) / σ, the probability-flow ODE derivative dx/dσ
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

# await denoise(x, sigma) -> D(x; sigma), both (B, C, H, W); sigma is a python float.
Denoise = Callable[[np.ndarray, float], Awaitable[np.ndarray]]

# s of Nichol & Dhariwal 2021, eq. 17: the offset that keeps beta_t from vanishing near t = 0.
COSINE_OFFSET = 0.008


def _cosine_angle(t: np.ndarray | float, offset: float) -> np.ndarray:
    """The angle π/2 · (t + s)/(1 + s) inside the cosine of Nichol & Dhariwal 2021, eq. 17."""
    return 0.5 * np.pi * (np.asarray(t, dtype=np.float64) + offset) / (1.0 + offset)


def alpha_bar(t: np.ndarray | float, offset: float = COSINE_OFFSET) -> np.ndarray:
    """ᾱ(t) = cos²(π/2 · (t + s)/(1 + s)) / cos²(π/2 · s/(1 + s)) (Nichol & Dhariwal 2021, eq. 17)."""
    return (np.cos(_cosine_angle(t, offset)) / np.cos(_cosine_angle(0.0, offset))) ** 2


def sigma_of_t(t: np.ndarray | float, offset: float = COSINE_OFFSET) -> np.ndarray:
    """The variance-exploding noise level σ(t) = sqrt((1 - ᾱ(t)) / ᾱ(t)) of the cosine schedule."""
    return np.sqrt(1.0 / alpha_bar(t, offset) - 1.0)


def t_of_sigma(sigma: np.ndarray | float, offset: float = COSINE_OFFSET) -> np.ndarray:
    """The closed-form inverse of sigma_of_t.

    ᾱ = 1/(1 + σ²), so cos(angle(t)) = sqrt(ᾱ) · cos(angle(0)), and t follows from arccos.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    angle = np.arccos(np.cos(_cosine_angle(0.0, offset)) / np.sqrt(1.0 + sigma**2))
    return angle * (1.0 + offset) / (0.5 * np.pi) - offset


@dataclass(frozen=True)
class CosineSchedule:
    """The manifest's `schedule`: the cosine VP schedule, sampled only for t in [t_min, t_max]."""

    offset: float  # the manifest's "s"
    t_min: float  # the least noisy timestep the model was trained to denoise
    t_max: float  # the noisiest; below 1 because σ(1) is infinite

    @classmethod
    def from_manifest(cls, schedule: dict) -> CosineSchedule:
        if schedule["kind"] != "cosine":
            raise ValueError(f"schedule kind {schedule['kind']!r} is not 'cosine'")
        return cls(offset=schedule["s"], t_min=schedule["t_min"], t_max=schedule["t_max"])

    @property
    def sigma_min(self) -> float:
        return float(sigma_of_t(self.t_min, self.offset))

    @property
    def sigma_max(self) -> float:
        return float(sigma_of_t(self.t_max, self.offset))


def uniform_t_sigmas(schedule: CosineSchedule, steps: int) -> np.ndarray:
    """Sigmas at `steps` timesteps spaced evenly in t from t_max down to t_min, then 0.

    This is the timestep spacing of DDPM (Ho et al. 2020) and DDIM (Song et al. 2021), mapped to σ.
    """
    t = np.linspace(schedule.t_max, schedule.t_min, steps)  # (steps,)
    return np.append(sigma_of_t(t, schedule.offset), 0.0)  # (steps + 1,)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """σ_i = (σ_max^(1/ρ) + i/(N-1) · (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ for i < N, then σ_N = 0.

    This is Karras et al. 2022, eq. 5, with N = steps. ρ = 7 is the paper's choice: it spends
    more steps at low noise, where the fine detail is decided.
    """
    ramp = np.linspace(0.0, 1.0, steps)  # (steps,) i/(N-1)
    root_max, root_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return np.append((root_max + ramp * (root_min - root_max)) ** rho, 0.0)  # (steps + 1,)


def sdedit_sigmas(sigmas: np.ndarray, strength: float) -> np.ndarray:
    """The tail of `sigmas` that img2img runs (SDEdit, Meng et al. 2022): the last round(strength · steps).

    Strength 1 starts from pure noise at sigmas[0], forgetting the input image. Strength 0 runs no step,
    so the input image comes back unchanged. The caller starts from
    `image + initial_noise(rngs, image.shape[1:], tail[0])`.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength {strength} is outside [0, 1]")
    steps = len(sigmas) - 1
    return sigmas[steps - round(strength * steps) :]  # (round(strength * steps) + 1,)


def noise_like(rngs: Sequence[np.random.Generator], shape_per_image: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise (B, *shape_per_image). Row i comes from rngs[i] alone, so an image
    never depends on its batch-mates."""
    return np.stack([rng.standard_normal(shape_per_image, dtype=np.float32) for rng in rngs])


def initial_noise(
    rngs: Sequence[np.random.Generator], shape_per_image: tuple[int, ...], sigma: float
) -> np.ndarray:
    """The sampler's starting point x = σ · ε, with shape (B, *shape_per_image)."""
    return float(sigma) * noise_like(rngs, shape_per_image)  # python float keeps float32


def to_d(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    """dx/dσ = (x - D(x; σ)) / σ: Karras et al. 2022, eq. 3 substituted into eq. 1 with σ(t) = t."""
    return (x - denoised) / sigma


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """Split the step σ → σ' into a deterministic move to σ_down plus fresh noise of std σ_up.

    Returns (σ_down, σ_up), with σ_down² + σ_up² = σ'². σ_up is DDIM's σ_t(η) (Song et al. 2021,
    eq. 16) rewritten with ᾱ = 1/(1 + σ²) and divided by sqrt(ᾱ'), which gives
    σ_up = η · σ' · sqrt(1 - σ'²/σ²). At η = 0 no noise is added (DDIM). At η = 1 the noise is
    DDPM's posterior variance β̃ (Ho et al. 2020, eq. 7).
    """
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def ddim_step(x: np.ndarray, sigma: float, denoised: np.ndarray, sigma_next: float) -> np.ndarray:
    """Move x from σ to σ_next with the estimate held fixed: x' = D + σ_next · (x - D)/σ.

    This is DDIM's update (Song et al. 2021, eq. 12, divided by sqrt(ᾱ')) and DPM-Solver++'s
    first-order update with α = 1 and e^(-h) = σ_next/σ (Lu et al. 2022, sec. 4). It solves the
    ODE exactly while D is constant, and it returns D itself when σ_next = 0.
    """
    return denoised + sigma_next * to_d(x, sigma, denoised)


async def euler(
    denoise: Denoise, x: np.ndarray, sigmas: np.ndarray, rngs: Sequence[np.random.Generator]
) -> np.ndarray:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without the Heun
    correction). It is deterministic, so `rngs` is unused; it is accepted so that every sampler has
    the same signature. In exact arithmetic it equals ddim with eta = 0 (Karras et al. 2022, sec. 3)."""
    for sigma, sigma_next in pairwise(sigmas.tolist()):
        denoised = await denoise(x, sigma)  # (B, C, H, W)
        x = x + (sigma_next - sigma) * to_d(x, sigma, denoised)  # Algorithm 1, line 5
    return x


async def ddim(
    denoise: Denoise, x: np.ndarray, sigmas: np.ndarray, rngs: Sequence[np.random.Generator], eta: float = 0.0
) -> np.ndarray:
    """DDIM (Song et al. 2021, eq. 12) in sigma space. eta scales the fresh noise: 0 gives the
    deterministic sampler, and 1 gives DDPM's ancestral sampler."""
    for sigma, sigma_next in pairwise(sigmas.tolist()):
        denoised = await denoise(x, sigma)  # (B, C, H, W)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = ddim_step(x, sigma, denoised, sigma_down)
        if sigma_up > 0.0:  # no draw at eta = 0 or on the last step: a generator advances only when used
            x = x + sigma_up * noise_like(rngs, x.shape[1:])
    return x


async def ddpm(
    denoise: Denoise, x: np.ndarray, sigmas: np.ndarray, rngs: Sequence[np.random.Generator]
) -> np.ndarray:
    """DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2), which is DDIM with eta = 1
    (Song et al. 2021, sec. 4.1)."""
    return await ddim(denoise, x, sigmas, rngs, eta=1.0)


async def dpmpp_2m(
    denoise: Denoise, x: np.ndarray, sigmas: np.ndarray, rngs: Sequence[np.random.Generator]
) -> np.ndarray:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, second order, on data predictions.

    In VE space λ = -log σ and α = 1. Each step extrapolates D linearly in λ from this step's
    estimate and the previous one, then takes ddim_step. It is deterministic, so `rngs` is unused.
    """
    previous_denoised, previous_sigma = None, None
    for sigma, sigma_next in pairwise(sigmas.tolist()):
        denoised = await denoise(x, sigma)  # (B, C, H, W)
        if previous_denoised is None or sigma_next == 0.0:
            # The first step has no history. The last step lands on σ = 0, where h is infinite and the
            # answer is D itself, so both are first order (DPM-Solver++(1) = DDIM).
            estimate = denoised
        else:
            h = math.log(sigma / sigma_next)  # h_i = λ_i - λ_{i-1}
            half_inverse_r = h / (2.0 * math.log(previous_sigma / sigma))  # 1/(2 r_i), r_i = h_{i-1}/h_i
            estimate = (1.0 + half_inverse_r) * denoised - half_inverse_r * previous_denoised  # D_i
        x = ddim_step(x, sigma, estimate, sigma_next)
        previous_denoised, previous_sigma = denoised, sigma
    return x


# One call shape for all: `await SAMPLERS[name](denoise, x, sigmas, rngs)`; only ddim takes `eta=`.
SAMPLERS: dict[str, Callable[..., Awaitable[np.ndarray]]] = {
    "euler": euler,
    "ddim": ddim,
    "ddpm": ddpm,
    "dpmpp_2m": dpmpp_2m,
}
