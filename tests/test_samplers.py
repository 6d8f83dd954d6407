"""Specifications of service/samplers.py, checked against closed forms and Gaussian data.

.venv/bin/python -m pytest tests/test_samplers.py -q
"""

import asyncio

import numpy as np
import pytest

from service.samplers import (
    SAMPLERS,
    CosineSchedule,
    alpha_bar,
    ancestral_step,
    ddim,
    euler,
    initial_noise,
    karras_sigmas,
    sdedit_sigmas,
    sigma_of_t,
    t_of_sigma,
    uniform_t_sigmas,
)

SCHEDULE = CosineSchedule.from_manifest({"kind": "cosine", "s": 0.008, "t_min": 0.002, "t_max": 0.995})
IMAGE_SHAPE = (1, 2, 2)  # (C, H, W): small, because each pixel is an independent sample
DATA_MEAN, DATA_STD = 0.7, 0.5  # the data x0 ~ N(μ, s² I)


def generators(seeds):
    return [np.random.Generator(np.random.PCG64(seed)) for seed in seeds]


async def gaussian_denoiser(x, sigma):
    """The exact D(x; σ) = E[x0 | x] for x0 ~ N(μ, s² I) and x = x0 + σ ε: μ + s²/(s² + σ²) · (x - μ)."""
    return DATA_MEAN + DATA_STD**2 / (DATA_STD**2 + sigma**2) * (x - DATA_MEAN)


def sample(name, seeds, sigmas, denoise=gaussian_denoiser):
    rngs = generators(seeds)
    x = initial_noise(rngs, IMAGE_SHAPE, sigmas[0])  # (B, C, H, W)
    return asyncio.run(SAMPLERS[name](denoise, x, sigmas, rngs))


def test_karras_sigmas_run_from_sigma_max_to_sigma_min_then_zero():
    sigmas = karras_sigmas(SCHEDULE.sigma_min, SCHEDULE.sigma_max, steps=12)
    assert sigmas.shape == (13,)
    assert sigmas[0] == pytest.approx(SCHEDULE.sigma_max, rel=1e-12)
    assert sigmas[-2] == pytest.approx(SCHEDULE.sigma_min, rel=1e-12)
    assert sigmas[-1] == 0.0
    assert np.all(np.diff(sigmas) < 0)


def test_uniform_t_sigmas_are_evenly_spaced_in_t_from_t_max_to_t_min_then_zero():
    sigmas = uniform_t_sigmas(SCHEDULE, steps=10)
    assert sigmas.shape == (11,)
    assert sigmas[-1] == 0.0
    t = t_of_sigma(sigmas[:-1], SCHEDULE.offset)
    np.testing.assert_allclose(t, np.linspace(SCHEDULE.t_max, SCHEDULE.t_min, 10), rtol=0, atol=1e-12)


def test_t_of_sigma_inverts_sigma_of_t():
    t = np.linspace(0.0, 0.995, 200)
    np.testing.assert_allclose(t_of_sigma(sigma_of_t(t)), t, rtol=0, atol=1e-12)


def test_alpha_bar_is_one_at_t_zero_and_sigma_is_zero():
    assert alpha_bar(0.0) == 1.0
    assert sigma_of_t(0.0) == 0.0


def test_schedule_reads_the_manifest_and_refuses_other_kinds():
    assert (SCHEDULE.offset, SCHEDULE.t_min, SCHEDULE.t_max) == (0.008, 0.002, 0.995)
    assert SCHEDULE.sigma_min < 0.01 < 100.0 < SCHEDULE.sigma_max
    with pytest.raises(ValueError, match="linear"):
        CosineSchedule.from_manifest({"kind": "linear", "s": 0.008, "t_min": 0.002, "t_max": 0.995})


def test_sdedit_runs_the_last_strength_fraction_of_the_steps():
    sigmas = karras_sigmas(SCHEDULE.sigma_min, SCHEDULE.sigma_max, steps=10)
    np.testing.assert_array_equal(sdedit_sigmas(sigmas, 1.0), sigmas)
    np.testing.assert_array_equal(sdedit_sigmas(sigmas, 0.3), sigmas[7:])
    np.testing.assert_array_equal(sdedit_sigmas(sigmas, 0.0), [0.0])
    with pytest.raises(ValueError):
        sdedit_sigmas(sigmas, 1.5)


def test_ancestral_step_at_eta_one_adds_the_ddpm_posterior_variance():
    sigma, sigma_next = 3.0, 1.2
    assert ancestral_step(sigma, sigma_next, eta=0.0) == (sigma_next, 0.0)
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta=1.0)
    assert sigma_down**2 + sigma_up**2 == pytest.approx(sigma_next**2)
    # Ho et al. 2020, eq. 7, β̃ = (1 - ᾱ')/(1 - ᾱ) · β, with β = 1 - ᾱ/ᾱ' for a step σ → σ'.
    # β̃ is a VP variance; in VE space it is divided by ᾱ'.
    bar, bar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    posterior_variance = (1 - bar_next) / (1 - bar) * (1 - bar / bar_next)
    assert sigma_up**2 * bar_next == pytest.approx(posterior_variance)


def test_ddim_without_noise_returns_the_oracle_x0():
    x0 = np.random.Generator(np.random.PCG64(0)).standard_normal((3, *IMAGE_SHAPE), dtype=np.float32)

    async def oracle(x, sigma):
        return x0

    rngs = generators([1, 2, 3])
    sigmas = uniform_t_sigmas(SCHEDULE, steps=20)
    x = initial_noise(rngs, IMAGE_SHAPE, sigmas[0])
    np.testing.assert_array_equal(asyncio.run(ddim(oracle, x, sigmas, rngs, eta=0.0)), x0)


def test_euler_equals_ddim_without_noise():
    # Karras et al. 2022, sec. 3: DDIM is Euler's method on the probability-flow ODE in σ.
    sigmas = karras_sigmas(SCHEDULE.sigma_min, SCHEDULE.sigma_max, steps=25)
    rngs = generators(range(64))
    x = initial_noise(rngs, IMAGE_SHAPE, sigmas[0])
    by_euler = asyncio.run(euler(gaussian_denoiser, x, sigmas, rngs))
    by_ddim = asyncio.run(ddim(gaussian_denoiser, x, sigmas, rngs, eta=0.0))
    np.testing.assert_allclose(by_euler, by_ddim, rtol=0, atol=1e-5)


def exact_ode_sample(x, sigmas):
    """Gaussian data's probability-flow ODE solved exactly from sigmas[0] to sigmas[-2], where x - μ
    scales by sqrt((s² + σ'²)/(s² + σ²)), then the last step's D(x; sigmas[-2])."""
    variance_start, variance_end = DATA_STD**2 + sigmas[0] ** 2, DATA_STD**2 + sigmas[-2] ** 2
    x_end = DATA_MEAN + np.sqrt(variance_end / variance_start) * (x.astype(np.float64) - DATA_MEAN)
    return DATA_MEAN + DATA_STD**2 / variance_end * (x_end - DATA_MEAN)


@pytest.mark.parametrize(("name", "order"), [("euler", 1), ("dpmpp_2m", 2)])
def test_doubling_the_steps_divides_the_ode_error_by_two_to_the_order(name, order):
    # Euler is first order, DPM-Solver++(2M) second (Lu et al. 2022, sec. 4). On Karras sigmas the measured
    # ratios from 40 to 80 steps are 1.98 and 4.3; a bound halfway to the next order tells them apart.
    rngs = generators(range(64))
    x = initial_noise(rngs, IMAGE_SHAPE, SCHEDULE.sigma_max)  # (64, 1, 2, 2)
    errors = []
    for steps in (40, 80):
        sigmas = karras_sigmas(SCHEDULE.sigma_min, SCHEDULE.sigma_max, steps)
        images = asyncio.run(SAMPLERS[name](gaussian_denoiser, x, sigmas, rngs))
        errors.append(np.abs(images - exact_ode_sample(x, sigmas)).max())
    assert 2**order / 1.4 < errors[0] / errors[1] < 2**order * 1.4


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_draws_gaussian_data_with_its_mean_and_variance(name):
    # 4000 images × 4 pixels = 16 000 independent draws from N(μ, s²), to be compared with μ and s².
    # Mean: its standard error is s/sqrt(16 000) = 0.004, so 5 standard errors are 0.02. Starting from
    #   σ_max·ε rather than N(μ, s² + σ_max²) adds a bias of about μ·s/σ_max = 0.003, for 0.025 in all.
    # Variance: its standard error is s²·sqrt(2/16 000) = 0.003, so 5 standard errors are 0.015. At 50
    #   steps the first-order samplers also lose variance, O(1/steps): 0.032 for DDPM and 0.015 for
    #   Euler/DDIM (from the closed-form variance recursion of their linear updates on Gaussian data),
    #   and DPM-Solver++(2M) gains 0.007. In all, 0.05 (20 % of s²).
    sigmas = uniform_t_sigmas(SCHEDULE, steps=50)
    images = sample(name, range(4000), sigmas)  # (4000, 1, 2, 2)
    assert images.dtype == np.float32
    assert abs(images.mean() - DATA_MEAN) < 0.025
    assert abs(images.var() - DATA_STD**2) < 0.05


@pytest.mark.parametrize("name", SAMPLERS)
def test_image_depends_on_seed_not_batch_mates(name):
    sigmas = karras_sigmas(SCHEDULE.sigma_min, SCHEDULE.sigma_max, steps=15)
    together = sample(name, [1, 2, 3], sigmas)  # (3, 1, 2, 2)
    alone = sample(name, [2], sigmas)  # (1, 1, 2, 2)
    np.testing.assert_array_equal(together[1], alone[0])


class RecordingDenoiser:
    """The Gaussian denoiser, recording each σ it is called with and its last estimate."""

    def __init__(self):
        self.sigmas, self.last_denoised = [], None

    async def __call__(self, x, sigma):
        self.sigmas.append(sigma)
        self.last_denoised = await gaussian_denoiser(x, sigma)
        return self.last_denoised


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_calls_denoise_once_per_step_in_sigma_order(name):
    sigmas = karras_sigmas(SCHEDULE.sigma_min, SCHEDULE.sigma_max, steps=7)
    denoise = RecordingDenoiser()
    sample(name, [1, 2], sigmas, denoise)
    assert denoise.sigmas == sigmas[:-1].tolist()
    assert all(type(sigma) is float for sigma in denoise.sigmas)


@pytest.mark.parametrize("name", SAMPLERS)
def test_last_step_returns_the_denoised_estimate_without_noise(name):
    # Exact for DDIM, DDPM and DPM-Solver++; Euler's x + (0 - σ)·(x - D)/σ rounds to D within float32.
    denoise = RecordingDenoiser()
    images = sample(name, [1, 2], uniform_t_sigmas(SCHEDULE, steps=10), denoise)
    np.testing.assert_allclose(images, denoise.last_denoised, rtol=0, atol=1e-6)
