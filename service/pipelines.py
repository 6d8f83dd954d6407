"""Pipelines: a plain request in, uint8 images and their provenance out. Every transport (JSON,
OIP over HTTP and gRPC, OpenAI routes) decodes into `GenerateRequest` and calls `generate`.

Seeds: image i of a request with seed s is drawn from `Generator(PCG64(s + i))`, so it equals
the single image of the same request with seed s + i, whatever else shared its batches.

    .venv/bin/python -m pytest tests/test_pipelines.py
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction

import emoji
import numpy as np

from service import rules, samplers, style
from service.engine import Engine
from service.errors import InvalidInput, ModelNotFound
from service.style import StyleRequest
from service.tiles import Tiling

KARRAS_SAMPLERS = ("euler", "dpmpp_2m")  # few-step samplers gain most from Karras spacing


@dataclass(frozen=True)
class ConditionBlend:
    """A diffusion condition part way between two endpoints' (the frames of an interpolation, creative.py). The
    prompt enters the denoiser as a vector, so it is given as one, blended; a class enters as an index into the
    denoiser's own embedding table, which no input can blend, so the two classes' conditional outputs are mixed
    instead: eps_c = (1 - weight) eps(x, class_ids[0]) + weight eps(x, class_ids[1]), two rows a step."""

    text_embedding: np.ndarray = field(repr=False)  # (text_dim,) float32: the blended prompts' embeddings
    class_ids: tuple[int | None, int | None]  # the endpoints' classes (None: the null class)
    prompts: tuple[str | None, str | None]  # the endpoints' prompts, for provenance
    weight: float  # 0: the first endpoint's condition, 1: the second's


@dataclass(frozen=True)
class GenerateRequest:
    model: str = rules.DEFAULT_MODEL
    n: int = rules.N.default
    seed: int | None = None  # None: a random seed, drawn once here (`with_seed`) and returned with the image
    class_id: int | None = None
    prompt: str | None = None
    steps: int = rules.STEPS.default
    guidance: float = rules.GUIDANCE.default
    sampler: str = rules.DEFAULT_SAMPLER
    eta: float = rules.ETA.default
    # img2img and inpainting (diffusion only): start from an image instead of pure noise
    init_image: np.ndarray | None = field(default=None, repr=False)  # (32, 32, 3) uint8
    mask: np.ndarray | None = field(default=None, repr=False)  # (32, 32) bool, True = repaint
    strength: float = rules.STRENGTH.default  # the fraction of the schedule run from the noised image (SDEdit)
    upload_sha256: str | None = None  # the client's uploaded file, as it sent it (uploads.Edit.sha256)
    priority: str = rules.DEFAULT_PRIORITY
    # the creative tools (service/creative.py): each image's starting vector given instead of drawn from
    # its seed (n, *draw_shape) float32; the seed still draws everything after it (ancestral sampler noise)
    noise: np.ndarray | None = field(default=None, repr=False)
    upscale: int = 1  # 4: the images go through the super-resolution model's batcher, 32 -> 128 px
    # an interpolation frame between two diffusion conditions (creative.py): used instead of class_id and prompt
    blend: ConditionBlend | None = None

    def with_seed(self) -> GenerateRequest:
        """This request with its seed fixed: the client's, or a random one (the only place one is drawn)."""
        return self if self.seed is not None else replace(self, seed=int(np.random.default_rng().integers(2**31)))


@dataclass(frozen=True)
class UpscaleRequest:
    """An uploaded image to upscale 4x (POST /v1/upscale). Its tiles join the same upscaler batcher as
    generated images with `upscale: 4`; the upscaler draws no noise, so it has no seed."""

    image: np.ndarray | None = field(default=None, repr=False)  # (H, W, 3) uint8; None until decoded
    upload_sha256: str | None = None
    priority: str = rules.DEFAULT_PRIORITY
    model: str = rules.UPSCALER


# Tiles: the upscaler runs on 32 px squares; a larger upload is cut into tiles that overlap by 8 px on every side,
# and only each tile's centre is kept, so no output pixel comes from a tile's edge (the network sees 10 px around
# a pixel, a margin of 8 all but the outermost 2: tests/test_upscale.py checks for seams).
SCALE = 4
UPSCALE_TILES = Tiling(32, 8, Fraction(SCALE), whole_when_it_fits=True)


@dataclass(frozen=True)
class Generated:
    images: np.ndarray  # (n, 32, 32, 3) uint8, or (n, 128, 128, 3) with upscale 4
    seeds: list[int]
    class_ids: list[int | None]
    model: str
    version: str
    parameters: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One finished sampler step of a diffusion request, for progress streaming."""

    step: int  # 1-based
    total: int  # the steps this request runs (fewer than `steps` for img2img: strength x steps)
    denoised: np.ndarray = field(repr=False)  # (n, 4, 8, 8) the sampler's current estimate of the clean latents


# Called after every sampler step, inside the sampler's loop: it must not block (a stream puts it on a queue).
OnStep = Callable[[Step], None]


def validate(engine: Engine, request: GenerateRequest | UpscaleRequest | StyleRequest) -> None:
    """The rules every transport shares (service/rules.py), with the model's own classes; violations
    are InvalidInput (400) / ModelNotFound (404)."""
    if isinstance(request, StyleRequest):
        return style.validate(engine, request)
    if isinstance(request, UpscaleRequest):
        if request.image is not None:
            rules.check_upscale_size(request.image.shape[1], request.image.shape[0])
        rules.check_priority(request.priority)
        return
    if request.model not in rules.MODELS:
        raise ModelNotFound(f"unknown model {request.model!r}; available: {', '.join(rules.MODELS)}")
    classes = engine.manifest(request.model).classes
    rules.N.check(request.n)
    if request.seed is not None:
        rules.SEED.check(request.seed)
    if request.class_id is not None and not 0 <= request.class_id < len(classes):
        raise InvalidInput(f"class must be 0..{len(classes) - 1} or one of {list(classes)}, got {request.class_id}")
    if request.prompt is not None:
        rules.check_prompt(request.prompt)
    if request.model == "diffusion":
        for bound, value in ((rules.STEPS, request.steps), (rules.GUIDANCE, request.guidance),
                             (rules.ETA, request.eta), (rules.STRENGTH, request.strength)):
            bound.check(value)
        rules.check_sampler(request.sampler)
    elif request.init_image is not None:
        raise InvalidInput(f"only the diffusion model edits images; {request.model!r} only generates")
    if request.mask is not None and request.init_image is None:
        raise InvalidInput("a mask needs the image it masks")
    if request.blend is not None:
        check_blend(engine, request)
    if request.noise is not None:
        expected = (request.n, *draw_shape(engine, request.model))
        if request.noise.shape != expected or not np.isfinite(request.noise).all():
            raise InvalidInput(f"a starting vector for {request.model} has shape {expected[1:]} and finite values")
    rules.check_upscale(request.upscale)
    rules.check_priority(request.priority)


def check_blend(engine: Engine, request: GenerateRequest) -> None:
    blend, manifest = request.blend, engine.manifest(request.model)
    if request.model != "diffusion" or request.init_image is not None:
        raise InvalidInput("only diffusion generations blend two conditions")
    if request.class_id is not None or request.prompt is not None:
        raise InvalidInput("a blended condition replaces the request's class and prompt")
    if any(c is not None and not 0 <= c < len(manifest.classes) for c in blend.class_ids):
        raise InvalidInput(f"a blend's classes must be 0..{len(manifest.classes) - 1}, got {blend.class_ids}")
    if blend.text_embedding.shape != (manifest.text_dim,) or not np.isfinite(blend.text_embedding).all():
        raise InvalidInput(f"a blend's text embedding has shape ({manifest.text_dim},) and finite values")
    if not 0.0 <= blend.weight <= 1.0:
        raise InvalidInput(f"a blend's weight must be 0..1, got {blend.weight}")


def blended_classes(request: GenerateRequest) -> int:
    """The conditional rows a diffusion image runs per step: two when it mixes two classes' outputs."""
    return 2 if request.blend is not None and request.blend.class_ids[0] != request.blend.class_ids[1] else 1


def planned_rows(request: GenerateRequest | UpscaleRequest | StyleRequest) -> dict[str, tuple[int, int]]:
    """The model work a valid request will submit, per function: (rows in all, rows per submission).
    Admission prices it with each function's measured cost; a sampler submits its rows once per step.
    (A prompt cached from an earlier request costs no embedding; the plan counts it, erring long. An upload
    to upscale is planned at the largest size allowed until it is decoded.)"""
    if isinstance(request, StyleRequest):
        return style.planned_rows(request)
    if isinstance(request, UpscaleRequest):
        height, width = (request.image.shape[:2] if request.image is not None
                         else (rules.MAX_UPSCALE_SIDE, rules.MAX_UPSCALE_SIDE))
        tiles = math.prod(UPSCALE_TILES.grid(height, width))
        return {"sr.upscale": (tiles, tiles)}
    n = request.n
    plan: dict[str, tuple[int, int]] = {}
    if request.prompt is not None and (request.model == "diffusion" or request.class_id is None):
        plan["text.embed"] = (1, 1)
    if request.model == "dcgan":
        plan["dcgan.generate"] = (n, n)
    elif request.model == "diffusion":
        steps = sampler_steps(request)
        # guidance adds the unconditional row (one per class of a blend)
        rows_per_step = n * (2 if request.guidance != 1.0 else 1) * blended_classes(request)
        plan["diffusion.denoise"] = (steps * rows_per_step, rows_per_step)
        if request.init_image is not None:
            plan["vae.encode"] = (1, 1)
        plan["vae.decode"] = (n, n)
    else:  # vae, gmm: one decode of n latents
        plan["vae.decode"] = (n, n)
    if request.upscale != 1:
        plan["sr.upscale"] = (n, n)
    return plan


def sampler_steps(request: GenerateRequest) -> int:
    """The denoising steps a request runs: `steps`, or its SDEdit tail from an input image (the length of
    `samplers.sdedit_sigmas`); 0 for the one-shot models."""
    if request.model != "diffusion":
        return 0
    return request.steps if request.init_image is None else round(request.strength * request.steps)


def image_rngs(seed: int, n: int) -> list[np.random.Generator]:
    """One generator per image, so an image never depends on its batch-mates."""
    return [np.random.Generator(np.random.PCG64(seed + i)) for i in range(n)]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def prompt_text(prompt: str) -> str:
    """Emoji in a prompt become their names ("❤️ city" -> "red heart city"): MiniLM's vocabulary
    is English words, and would read an emoji as [UNK]."""
    return " ".join(emoji.demojize(prompt, delimiters=(" ", " ")).replace("_", " ").split())


async def theme_class(engine: Engine, prompt: str, neighbours: int = 7, temperature: float = 0.05) -> int:
    """The class of the training captions nearest to the prompt, each neighbour's vote weighted by
    exp(cosine / temperature) so an exact match outvotes loose ones ("a cat" -> Animals & Nature,
    not the cat smileys): how the class-only models (dcgan, gmm) follow a text theme."""
    vector = (await engine.embed_text([prompt_text(prompt)]))[0]
    similarity = engine.theme_vectors @ vector  # (captions,)
    nearest = np.argsort(similarity)[-neighbours:]
    votes = np.exp((similarity[nearest] - similarity[nearest].max()) / temperature)
    return int(np.bincount(engine.theme_classes[nearest], weights=votes).argmax())


async def resolve_classes(engine: Engine, request: GenerateRequest,
                          rngs: list[np.random.Generator]) -> list[int]:
    if request.class_id is not None:
        return [request.class_id] * request.n
    if request.prompt is not None:
        return [await theme_class(engine, request.prompt)] * request.n
    classes = len(engine.manifest(request.model).classes)
    return [int(rng.integers(classes)) for rng in rngs]  # a surprise class, still seed-determined


def draw_shape(engine: Engine, model: str) -> tuple[int, ...]:
    """The shape of one image's starting vector: dcgan's z, else a VAE latent (vae, gmm) or diffusion's noise."""
    return (engine.manifest("dcgan").z_dim,) if model == "dcgan" else tuple(engine.manifest("vae").latent_shape)


async def starting_draws(engine: Engine, request: GenerateRequest,
                         rngs: list[np.random.Generator]) -> tuple[np.ndarray, list[int | None]]:
    """Each image's starting vector and class, as `generate` uses them: the request's `noise` when given,
    else drawn from each image's generator (dcgan: N(0, I) z; vae: an N(0, I) latent; gmm: a latent from
    its class's mixture; diffusion: unit N(0, I) noise that the sampler scales by its first sigma)."""
    if request.model == "diffusion":
        class_ids: list[int | None] = [request.class_id] * request.n
    elif request.model == "vae":  # the plain N(0, I) prior, the baseline the GMM prior improves on
        class_ids = [None] * request.n
    else:
        class_ids = await resolve_classes(engine, request, rngs)  # before the vector: the seed's draw order
    if request.noise is not None:
        return request.noise.astype(np.float32), class_ids
    if request.model == "dcgan":
        z = np.stack([rng.standard_normal(engine.manifest("dcgan").z_dim) for rng in rngs]).astype(np.float32)
        return z, class_ids
    if request.model == "gmm":
        return engine.sample_gmm(np.array(class_ids), rngs), class_ids
    return samplers.noise_like(rngs, engine.manifest("vae").latent_shape), class_ids


async def generate(engine: Engine, request: GenerateRequest | UpscaleRequest | StyleRequest,
                   on_step: OnStep | None = None) -> Generated:
    """The request's images; a diffusion request reports each sampler step to `on_step`."""
    if isinstance(request, UpscaleRequest):
        return await upscale_upload(engine, request)
    if isinstance(request, StyleRequest):
        return await stylise_upload(engine, request)
    request = request.with_seed()
    validate(engine, request)
    rngs = image_rngs(request.seed, request.n)
    draws, class_ids = await starting_draws(engine, request, rngs)
    if request.model == "diffusion":
        latents = await sample_diffusion(engine, request, rngs, draws, on_step)
        images = await decode_diffusion(engine, request, latents)
    elif request.model == "dcgan":
        images = await engine.generate_gan(draws, np.array(class_ids, np.int64))
    else:  # vae, gmm: one decode of the latents
        images = await engine.decode(draws)
    if request.upscale != 1:
        # the cascade, from the 32 px image as a client would receive it (uint8): the 128 px image is exactly
        # what /v1/upscale makes of that image
        images = await engine.upscale(to_uint8(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    return Generated(to_uint8(images), [request.seed + i for i in range(request.n)], class_ids, request.model,
                     engine.manifest(request.model).version, provenance_parameters(request))


async def decode_diffusion(engine: Engine, request: GenerateRequest, latents: np.ndarray) -> np.ndarray:
    """(n, 4, 8, 8) latents -> (n, 3, 32, 32) images in [-1, 1] through the VAE decoder's batcher; inpainting
    keeps the client's own pixels outside the mask, exactly."""
    images = await engine.decode(latents)
    if request.mask is not None:
        keep = ~request.mask[None, None]  # (1, 1, 32, 32)
        images = np.where(keep, to_unit(request.init_image)[None], images)
    return images


async def preview(engine: Engine, request: GenerateRequest, step: Step) -> Generated:
    """What the images look like after `step`: its estimate of the clean latents, decoded like the final
    images (through the same decoder batcher, so previews share runs with other requests' decodes). The
    request must carry its seed (`with_seed`), as the one `generate` ran did."""
    images = await decode_diffusion(engine, request, step.denoised)
    parameters = {**provenance_parameters(request), "preview_step": step.step, "preview_of": step.total}
    return Generated(to_uint8(images), [request.seed + i for i in range(request.n)], [request.class_id] * request.n,
                     request.model, engine.manifest(request.model).version, parameters)


def provenance_parameters(request: GenerateRequest) -> dict:
    """What made the image, for its PNG chunks: the request's settings, the sha256 of an input image or
    mask rather than its pixels (and of the uploaded file, with `composite` when the output is made from
    a client's image). The priority only decided when it ran, so it is left out."""
    uploads = {"init_image": request.init_image, "mask": request.mask, "noise": request.noise}
    parameters = {f.name: getattr(request, f.name) for f in fields(request)
                  if f.name not in ("model", "priority", "blend") and f.name not in uploads
                  and getattr(request, f.name) is not None}
    if request.upscale == 1:
        parameters.pop("upscale")  # the default: the parameters of a plain image stay as they were
    if request.model != "diffusion":
        for key in ("steps", "guidance", "sampler", "eta", "strength"):
            parameters.pop(key)
    elif request.init_image is None:
        parameters.pop("strength")
    else:  # made from a client's image: the output composites it with generated pixels
        parameters["composite"] = True
    for name, upload in uploads.items():
        if upload is not None:
            parameters[f"{name}_sha256"] = hashlib.sha256(upload.tobytes()).hexdigest()
    if request.blend is not None:
        parameters["blend"] = {"class_ids": list(request.blend.class_ids), "prompts": list(request.blend.prompts),
                               "weight": request.blend.weight}
    return parameters


def to_unit(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1], the models' pixel range."""
    return (image.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def latent_mask(mask: np.ndarray, latent_side: int) -> np.ndarray:
    """(32, 32) pixel mask -> (1, 1, 8, 8) float32: a latent cell is repainted when any pixel it
    covers is, so the repainted region never ends inside a cell the model was told to keep."""
    cell = mask.shape[0] // latent_side
    blocks = mask.reshape(latent_side, cell, latent_side, cell).any(axis=(1, 3))
    return blocks.astype(np.float32)[None, None]


async def sample_diffusion(engine: Engine, request: GenerateRequest, rngs: list[np.random.Generator],
                           unit_noise: np.ndarray, on_step: OnStep | None = None) -> np.ndarray:
    """Latents (n, 4, 8, 8): the sampler loop awaits the Engine once per step, so requests at
    different steps share each denoise run (step-level continuous batching)."""
    manifest = engine.manifest("diffusion")
    schedule = samplers.CosineSchedule.from_manifest(manifest.schedule)
    if request.sampler in KARRAS_SAMPLERS:
        sigmas = samplers.karras_sigmas(schedule.sigma_min, schedule.sigma_max, request.steps)
    else:
        sigmas = samplers.uniform_t_sigmas(schedule, request.steps)
    n = request.n
    class_id, text, class_weights = await denoiser_condition(engine, request)  # (rows,), (rows, text_dim)
    mixes = len(class_weights)  # each image runs once per class (rows = mixes x n)
    guidance = np.full(n * mixes, request.guidance, np.float32)
    shape = manifest.latent_shape
    known, repaint = None, None
    if request.init_image is not None:
        known = (await engine.encode(to_unit(request.init_image)[None]))[0]  # (1, 4, 8, 8) posterior mean
        sigmas = samplers.sdedit_sigmas(sigmas, request.strength)
        if request.mask is not None:
            repaint = latent_mask(request.mask, shape[-1])

    steps_done, total = 0, len(sigmas) - 1

    async def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        nonlocal steps_done
        # variance-exploding x (samplers' space) -> the model's variance-preserving x_t and t
        x_t = x / np.sqrt(1.0 + sigma**2)
        t = np.full(n * mixes, samplers.t_of_sigma(sigma), np.float32)
        x_t = x_t.astype(np.float32)
        eps = await engine.denoise(x_t if mixes == 1 else np.concatenate([x_t] * mixes), t, class_id, text, guidance)
        if mixes > 1:  # a blend of two classes: their (guided) outputs mixed, (1 - w) eps_a + w eps_b
            eps = sum(weight * part for weight, part in zip(class_weights, np.split(eps, mixes)))
        denoised = x - sigma * eps  # D(x; sigma) = x - sigma * eps (Karras et al. 2022, Table 1)
        if repaint is not None:
            # inpainting with a model never trained for it: outside the mask the clean latent is known,
            # so every sampler is told exactly that, and its steps blend the repainted cells into it
            denoised = repaint * denoised + (1.0 - repaint) * known
        steps_done += 1  # every sampler calls denoise exactly once per step
        if on_step is not None:
            on_step(Step(steps_done, total, denoised))
        return denoised

    x = float(sigmas[0]) * unit_noise  # samplers.initial_noise from the drawn ε; a python float keeps float32
    if known is not None:
        x = x + known  # SDEdit: the image, noised to the first sigma of the schedule's tail
    kwargs = {"eta": request.eta} if request.sampler == "ddim" else {}
    if engine.cohorts is None:
        return await samplers.SAMPLERS[request.sampler](denoise, x, sigmas, rngs, **kwargs)
    await engine.cohorts.enter()
    try:
        return await samplers.SAMPLERS[request.sampler](denoise, x, sigmas, rngs, **kwargs)
    finally:
        engine.cohorts.leave()


async def prompt_embedding(engine: Engine, prompt: str | None) -> np.ndarray:
    """(1, text_dim): the prompt's embedding, or zeros for none (the dropped text the denoiser learnt)."""
    if prompt:
        return await engine.embed_text([prompt_text(prompt)])
    return np.zeros((1, engine.manifest("diffusion").text_dim), np.float32)


async def denoiser_condition(engine: Engine, request: GenerateRequest
                             ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The denoiser's class_id (rows,) and text_embedding (rows, text_dim) inputs for a request's n images, and
    the weight of each block of n rows in the conditional output: (1.0,), or a blend's two classes' weights."""
    null_class, n, blend = engine.manifest("diffusion").null_class, request.n, request.blend
    if blend is None:
        class_id = np.full(n, null_class if request.class_id is None else request.class_id)
        return class_id, np.repeat(await prompt_embedding(engine, request.prompt), n, axis=0), (1.0,)
    classes = [null_class if c is None else c for c in blend.class_ids][:blended_classes(request)]
    weights = (1.0,) if len(classes) == 1 else (1.0 - blend.weight, blend.weight)
    text = np.repeat(blend.text_embedding[None].astype(np.float32), n * len(classes), axis=0)
    return np.repeat(np.array(classes), n), text, weights


# --- super-resolution of uploads ---

async def upscale_upload(engine: Engine, request: UpscaleRequest) -> Generated:
    """An uploaded image 4x larger: its tiles through the upscaler's batcher, joined back."""
    height, width, _ = request.image.shape
    upscaled = UPSCALE_TILES.join(await engine.upscale(UPSCALE_TILES.cut(to_unit(request.image))), height, width)
    parameters = {"upscale": SCALE, "upload_sha256": request.upload_sha256, "composite": True}
    return Generated(to_uint8(upscaled[None]), [0], [None], rules.UPSCALER, engine.manifest(rules.UPSCALER).version,
                     parameters)


async def stylise_upload(engine: Engine, request: StyleRequest) -> Generated:
    """An uploaded image in a built-in or uploaded style, at its own size (service/style.py)."""
    style.validate(engine, request)  # a transport checked it already; an in-process caller may not have
    chosen = request.style if request.style is not None else to_unit(request.style_image)
    image = await style.stylise(engine, to_unit(request.image), chosen, request.strength)
    return Generated(to_uint8(image[None]), [0], [None], rules.STYLE_MODEL, engine.manifest(rules.STYLE_MODEL).version,
                     style.parameters(request))
