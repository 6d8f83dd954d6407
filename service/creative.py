"""The creative tools as plain requests: genomes of generated images, breeding, interpolation, and
interactive sessions that learn from feedback (the cross-entropy method over starting vectors).

Every tool works in the space of each image's starting vector (`pipelines.starting_draws`): dcgan's
z and the vae's and diffusion's initial noise are N(0, I), so they interpolate spherically and mutate
by mixing in fresh N(0, I) noise; a gmm latent is a VAE latent drawn from its class's mixture, so it
interpolates linearly and mutates around its class's mean. Between two diffusion conditions an
interpolation also blends the condition (`condition_blend`). Each tool only *plans*: it returns
`pipelines.GenerateRequest`s (one image each, with its vector as `noise`) that the core admits and runs
concurrently, so the images of one tool request share the Engine's batched runs with all other traffic.

    .venv/bin/python -m pytest tests/test_creative.py -q
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np

from service import genomes, pipelines, rules
from service.engine import Engine
from service.errors import InvalidInput
from service.genomes import Genome, Signer

GAUSSIAN_MODELS = ("dcgan", "vae", "diffusion")  # starting vectors drawn from N(0, I)
DIFFUSION_SETTINGS = ("steps", "guidance", "sampler", "eta")
ELITE_FRACTION = 0.25  # CEM keeps the best quarter of each population (at least two)
CEM_SMOOTHING = 0.7  # the new distribution moves this far toward the elites' (1: all the way)
MIN_SCALE = 0.15  # the search never collapses to one image: a floor on each coordinate's spread


# --- genomes ----------------------------------------------------------------------------------------


def genome_of(request: pipelines.GenerateRequest, version: str) -> Genome:
    """The genome of a one-image request whose seed is fixed."""
    if request.init_image is not None:
        raise InvalidInput("an image made from an upload has no genome: the upload is not part of one")
    if request.blend is not None:
        raise InvalidInput("an interpolation frame between two conditions has no genome: a genome holds one")
    settings = {key: getattr(request, key) for key in DIFFUSION_SETTINGS}
    return Genome(model=request.model, version=version, seed=request.seed, class_id=request.class_id,
                  prompt=request.prompt, noise=None if request.noise is None else request.noise[0], **settings)


def genomes_of(request: pipelines.GenerateRequest, generated: pipelines.Generated) -> list[Genome]:
    """The genome of each generated image: image i of a request regenerates as the request for one image
    with seed + i (pipelines' seed rule), or from its own starting vector when the request gave them."""
    return [genome_of(replace(request, n=1, seed=seed,
                              noise=None if request.noise is None else request.noise[i:i + 1]), generated.version)
            for i, seed in enumerate(generated.seeds)]


def request_of(engine: Engine, genome: Genome, priority: str = rules.DEFAULT_PRIORITY) -> pipelines.GenerateRequest:
    """The request that regenerates a genome's image, refused when this server cannot do it exactly."""
    if genome.model not in rules.MODELS:
        raise InvalidInput(f"the genome names model {genome.model!r}, which this server does not serve")
    served = engine.manifest(genome.model).version
    if genome.version != served:
        raise InvalidInput(f"the genome was made by {genome.model} version {genome.version}; this server serves "
                           f"version {served}, which would not regenerate it")
    request = pipelines.GenerateRequest(model=genome.model, seed=genome.seed, class_id=genome.class_id,
                                        prompt=genome.prompt, steps=genome.steps, guidance=genome.guidance,
                                        sampler=genome.sampler, eta=genome.eta, priority=priority,
                                        noise=None if genome.noise is None else genome.noise[None])
    pipelines.validate(engine, request)
    return request


async def vector_of(engine: Engine, request: pipelines.GenerateRequest) -> tuple[np.ndarray, int | None]:
    """A one-image request's starting vector and class, exactly as `pipelines.generate` will use them."""
    draws, class_ids = await pipelines.starting_draws(engine, request, pipelines.image_rngs(request.seed, 1))
    return draws[0], class_ids[0]


def prior_moments(engine: Engine, model: str, class_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and per-coordinate spread of the model's starting vectors: N(0, I), or the class's mixture
    moment-matched for gmm (sum_k w_k (mu_k^2 + diag L_k L_k^T) - mean^2)."""
    shape = pipelines.draw_shape(engine, model)
    if model in GAUSSIAN_MODELS:
        return np.zeros(shape, np.float32), np.ones(shape, np.float32)
    members = np.flatnonzero(engine.gmm["component_class"] == class_id)
    weights = engine.gmm["weights"][members].astype(np.float64)
    weights /= weights.sum()
    means = engine.gmm["means"][members].astype(np.float64)  # (k, 256)
    cholesky = engine.gmm["cholesky"][members].astype(np.float64)  # (k, 256, 256)
    mean = weights @ means
    second = weights @ (means**2 + (cholesky**2).sum(axis=2))
    std = np.sqrt(np.maximum(second - mean**2, 1e-8))
    return mean.reshape(shape).astype(np.float32), std.reshape(shape).astype(np.float32)


def fresh_vector(engine: Engine, model: str, class_id: int | None, rng: np.random.Generator) -> np.ndarray:
    """One new draw from the model's prior, for mutation."""
    if model == "gmm":
        return engine.sample_gmm(np.array([class_id]), [rng])[0]
    return rng.standard_normal(pipelines.draw_shape(engine, model)).astype(np.float32)


# --- interpolation ----------------------------------------------------------------------------------


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985): for Gaussian vectors it keeps the norm a sample has,
    where a straight line would pass through the low-norm middle the models never saw."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cosine = np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64))
    omega = math.acos(float(np.clip(cosine, -1.0, 1.0)))
    if omega < 1e-6:
        mixed = (1 - t) * a64 + t * b64
    else:
        mixed = (math.sin((1 - t) * omega) * a64 + math.sin(t * omega) * b64) / math.sin(omega)
    return mixed.reshape(a.shape).astype(np.float32)


async def interpolation_frames(engine: Engine, start: pipelines.GenerateRequest, end: pipelines.GenerateRequest,
                               frames: int) -> list[pipelines.GenerateRequest]:
    """`frames` one-image requests from `start` to `end`: the endpoints are their own requests unchanged
    (so frame 0 and the last are their images exactly), the frames between them start from vectors
    interpolated at even steps (spherically for N(0, I) vectors, linearly for gmm latents). Between two
    diffusion conditions the frames blend them too (`condition_blend`). Otherwise a condition (dcgan's and
    gmm's class, diffusion's sampler settings) is not blended: each frame takes its nearer endpoint's."""
    rules.FRAMES.check(frames)
    if start.model != end.model:
        raise InvalidInput(f"both endpoints must come from one model, got {start.model} and {end.model}")
    (a, class_a), (b, class_b) = await vector_of(engine, start), await vector_of(engine, end)
    blended = start.model == "diffusion" and (start.class_id, start.prompt or None) != (end.class_id, end.prompt or None)
    texts = [(await pipelines.prompt_embedding(engine, e.prompt))[0] for e in (start, end)] if blended else None
    middle = []
    for k in range(1, frames - 1):
        t = k / (frames - 1)
        vector = slerp(a, b, t) if start.model in GAUSSIAN_MODELS else ((1 - t) * a + t * b).astype(np.float32)
        nearer, class_id = (start, class_a) if t < 0.5 else (end, class_b)
        frame = replace(nearer, n=1, class_id=class_id, noise=vector[None])
        if blended:
            frame = replace(frame, class_id=None, prompt=None, blend=condition_blend(start, end, texts, t))
        middle.append(frame)
    return [start, *middle, end]


def condition_blend(start: pipelines.GenerateRequest, end: pipelines.GenerateRequest, texts: list[np.ndarray],
                    t: float) -> pipelines.ConditionBlend:
    """The condition at `t` between two diffusion endpoints': their prompt embeddings interpolated
    spherically when both are prompts (MiniLM's embeddings are unit vectors: the blend stays one), linearly
    toward the zero vector a missing prompt is; their classes' outputs mixed in the proportion t."""
    both_prompts = bool(start.prompt) and bool(end.prompt)
    text = slerp(texts[0], texts[1], t) if both_prompts else ((1 - t) * texts[0] + t * texts[1]).astype(np.float32)
    return pipelines.ConditionBlend(text_embedding=text, class_ids=(start.class_id, end.class_id),
                                    prompts=(start.prompt or None, end.prompt or None), weight=t)


async def run_interpolation(frames: list[pipelines.GenerateRequest],
                            run_together: Callable[[list[pipelines.GenerateRequest]], Awaitable[list]]) -> list:
    """An interpolation's results in frame order, run by `run_together` (which runs requests concurrently, so
    they share batched runs). dcgan's and the VAE's graphs give a row the same bits whatever its batch
    (docs/CREATIVE.md), so all frames run together. The denoiser's fused kernels do not (a row alone and in
    a batch of 12+ rows differ by ~1e-7, which the steps can carry into a pixel level), so each diffusion
    endpoint first runs alone, in the batches its own generation has when nothing else shares them, and
    only then the frames between them."""
    if frames[0].model != "diffusion":
        return await run_together(frames)
    first, last = await run_together(frames[:1]), await run_together(frames[-1:])
    return [*first, *(await run_together(frames[1:-1]) if len(frames) > 2 else []), *last]


async def upload_frames(engine: Engine, images: tuple[np.ndarray, np.ndarray],
                        frames: int) -> list[pipelines.GenerateRequest]:
    """`frames` vae requests between two uploaded images (each (32, 32, 3) uint8, as `uploads.decode_edit`
    gives them): both are encoded by the VAE (its posterior mean) and the frames decode latents on the
    straight line between them, so frame 0 and K-1 are the VAE's reconstructions of the uploads. An
    encoded latent is a point, not a draw from N(0, I): a straight line keeps even steps between them."""
    rules.FRAMES.check(frames)
    means, _ = await engine.encode(np.stack([pipelines.to_unit(image) for image in images]))  # (2, 4, 8, 8)
    start, end = means.astype(np.float32)
    return [pipelines.GenerateRequest(model="vae", seed=0, noise=((1 - t) * start + t * end)[None].astype(np.float32))
            for t in np.linspace(0.0, 1.0, frames)]


# --- breeding ---------------------------------------------------------------------------------------


def check_parents(parents: list[Genome]) -> None:
    if not rules.PARENTS.minimum <= len(parents) <= rules.PARENTS.maximum:
        raise InvalidInput(f"breeding takes {rules.PARENTS.minimum:g}..{rules.PARENTS.maximum:g} parent genomes, "
                           f"got {len(parents)}")
    if len({parent.model for parent in parents}) > 1:
        raise InvalidInput(f"parents must come from one model, got {sorted({p.model for p in parents})}")
    keys = [genome_identity(parent) for parent in parents]
    if len(set(keys)) < len(keys):
        raise InvalidInput("parents must be distinct genomes; the same genome was given twice")


def genome_identity(genome: Genome) -> tuple:
    noise = None if genome.noise is None else genome.noise.tobytes()
    return (genome.model, genome.version, genome.seed, genome.class_id, genome.prompt, genome.steps,
            genome.guidance, genome.sampler, genome.eta, noise)


async def offspring(engine: Engine, parents: list[pipelines.GenerateRequest], children: int, mutation: float,
                    seed: int) -> list[pipelines.GenerateRequest]:
    """Children by uniform crossover of the parents' starting vectors (per latent cell across channels, so
    a child inherits regions; per coordinate of dcgan's z), then mutation: the share `mutation` of each
    child's variance drawn fresh from the prior (0: crossover only, 1: a new random image). Each child
    inherits the condition (class, prompt, diffusion settings) of one parent drawn at random. The draws
    come from `seed`, so the same parents, rate and seed give the same children."""
    rules.CHILDREN.check(children)
    rules.MUTATION.check(mutation)
    model = parents[0].model
    drawn = [await vector_of(engine, parent) for parent in parents]
    vectors = np.stack([vector for vector, _ in drawn])  # (parents, *shape)
    rng = np.random.Generator(np.random.PCG64(seed))
    genes_shape = vectors.shape[1:] if model == "dcgan" else (1, *vectors.shape[2:])  # (128,) or (1, 8, 8)
    born = []
    for _ in range(children):
        genes = rng.integers(len(parents), size=genes_shape)
        crossed = np.take_along_axis(vectors, np.broadcast_to(genes, vectors.shape[1:])[None], axis=0)[0]
        heir = int(rng.integers(len(parents)))
        class_id = drawn[heir][1]
        mean, _ = prior_moments(engine, model, class_id)
        fresh = fresh_vector(engine, model, class_id, rng)
        child = mean + math.sqrt(1 - mutation) * (crossed - mean) + math.sqrt(mutation) * (fresh - mean)
        child_seed = int(rng.integers(rules.SEED.maximum))
        born.append(replace(parents[heir], n=1, seed=child_seed, class_id=class_id,
                            noise=child.astype(np.float32)[None]))
    return born


# --- interactive sessions (the cross-entropy method) ----------------------------------------------


@dataclass(frozen=True)
class Session:
    """A search distribution over one model's starting vectors, N(mean, diag(scale^2)), and what each
    candidate shares (model, condition, settings); the population of round r is drawn from (seed, r)."""

    template: pipelines.GenerateRequest  # one image: model, seed, class, prompt, diffusion settings
    version: str
    round: int
    population: int
    mean: np.ndarray
    scale: np.ndarray

    def candidates(self) -> list[pipelines.GenerateRequest]:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.template.seed, self.round])))
        epsilon = rng.standard_normal((self.population, *self.mean.shape)).astype(np.float32)
        vectors = self.mean[None] + self.scale[None] * epsilon
        seeds = rng.integers(rules.SEED.maximum, size=self.population)
        return [replace(self.template, seed=int(seed), noise=vector[None]) for seed, vector in zip(seeds, vectors)]


async def start_session(engine: Engine, template: pipelines.GenerateRequest, population: int) -> Session:
    """Round 0: the model's own prior (for gmm: the theme's class, fixed for the session)."""
    rules.POPULATION.check(population)
    template = replace(template.with_seed(), n=1, noise=None)
    pipelines.validate(engine, template)
    if template.model != "diffusion" and template.model != "vae":
        _, class_id = await vector_of(engine, template)
        template = replace(template, class_id=class_id)
    mean, scale = prior_moments(engine, template.model, template.class_id)
    return Session(template, engine.manifest(template.model).version, 0, population, mean, scale)


def next_round(session: Session, scores: list[float]) -> Session:
    """One step of the cross-entropy method (Rubinstein 1999): refit the distribution to the best-scored
    candidates (the elites), smoothed toward the old one so a few noisy votes cannot collapse it."""
    if len(scores) != session.population:
        raise InvalidInput(f"scores must give one number per candidate: {session.population}, got {len(scores)}")
    for score in scores:
        if not math.isfinite(score):
            raise InvalidInput("scores must be finite numbers")
        rules.SCORE.check(score)
    vectors = np.stack([candidate.noise[0] for candidate in session.candidates()])
    elites = vectors[np.argsort(scores, kind="stable")[-max(2, round(ELITE_FRACTION * session.population)):]]
    prior_mean, prior_scale = session.mean, session.scale
    mean = (1 - CEM_SMOOTHING) * prior_mean + CEM_SMOOTHING * elites.mean(axis=0)
    scale = (1 - CEM_SMOOTHING) * prior_scale + CEM_SMOOTHING * elites.std(axis=0)
    return replace(session, round=session.round + 1, mean=mean.astype(np.float32),
                   scale=np.maximum(scale, MIN_SCALE).astype(np.float32))


def seal_session(signer: Signer, session: Session) -> str:
    genome = genome_of(session.template, session.version)
    return signer.seal("s", {"genome": genome.to_payload(), "round": session.round, "population": session.population,
                             "mean": genomes.pack_array(session.mean), "scale": genomes.pack_array(session.scale)})


def open_session(signer: Signer, engine: Engine, token: str, priority: str = rules.DEFAULT_PRIORITY) -> Session:
    payload = signer.open("s", token)
    try:
        genome = Genome.from_payload(payload["genome"])
        round_, population = int(payload["round"]), int(payload["population"])
        mean, scale = genomes.unpack_array(payload["mean"]), genomes.unpack_array(payload["scale"])
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInput(f"unreadable session token payload: {error}") from None
    template = request_of(engine, genome, priority)
    return Session(template, genome.version, round_, population, mean, scale)
