"""The creative tools in process, against the real Engine (no HTTP): interpolation, breeding and the
interactive session's cross-entropy method with a simulated audience.

    .venv/bin/python -m pytest tests/test_creative.py -q -s   # -s prints the measured figures
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from harness import in_process
from harness.in_process import generate_all, run
from service import creative, pipelines
from service.errors import InvalidInput
from service.genomes import Genome

GenerateRequest = pipelines.GenerateRequest




@pytest.fixture(scope="module")
def engine():
    with in_process.engine() as running:
        yield running


def redness(image: np.ndarray) -> float:
    """The simulated audience's taste: how much red exceeds the other channels, in [-1, 1]."""
    pixels = image.astype(np.float32) / 255
    return float((pixels[..., 0] - (pixels[..., 1] + pixels[..., 2]) / 2).mean())


def test_slerp_keeps_the_endpoints_and_a_gaussian_norm():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(128).astype(np.float32), rng.standard_normal(128).astype(np.float32)
    assert np.array_equal(creative.slerp(a, b, 0.0), a) and np.allclose(creative.slerp(a, b, 1.0), b, atol=1e-6)
    typical = (np.linalg.norm(a) + np.linalg.norm(b)) / 2
    assert abs(np.linalg.norm(creative.slerp(a, b, 0.5)) - typical) < 0.05 * typical
    assert np.linalg.norm((a + b) / 2) < 0.75 * typical  # a straight line passes through the low-norm middle


@pytest.mark.parametrize("model, condition", [("dcgan", {"class_id": 2}), ("vae", {}), ("gmm", {"class_id": 4}),
                                              ("diffusion", {"prompt": "a red heart", "steps": 8})])
def test_interpolation_ends_on_the_endpoints_own_images_in_even_steps(engine, model, condition):
    start, end = GenerateRequest(model=model, seed=3, **condition), GenerateRequest(model=model, seed=9, **condition)
    frames = run(creative.interpolation_frames(engine, start, end, 8))
    results = run(creative.run_interpolation(frames, lambda rows: generate_all(engine, rows)))
    alone = [run(pipelines.generate(engine, start)), run(pipelines.generate(engine, end))]
    # the same bytes for every model: diffusion's endpoints run in their own generation's batches
    assert results[0].images.tobytes() == alone[0].images.tobytes()
    assert results[-1].images.tobytes() == alone[1].images.tobytes()
    images = np.stack([result.images[0] for result in results]).astype(np.float32)
    steps = np.abs(np.diff(images, axis=0)).mean(axis=(1, 2, 3))  # mean |pixel change| per frame
    print(f"\n{model}: step distance mean {steps.mean():.2f}, max/mean {steps.max() / steps.mean():.2f}")
    assert steps.max() / steps.mean() < 3.0 and steps.min() > 0


def test_interpolation_between_uploads_decodes_the_vae_reconstructions_in_even_steps(engine):
    images = (sketch_pixels(flipped=False), sketch_pixels(flipped=True))
    frames = run(creative.upload_frames(engine, images, 8))
    results = run(generate_all(engine, frames))
    means, _ = run(engine.encode(np.stack([pipelines.to_unit(image) for image in images])))
    reconstructions = pipelines.to_uint8(run(engine.decode(means)))  # each upload through the VAE, alone
    assert results[0].images[0].tobytes() == reconstructions[0].tobytes()
    assert results[-1].images[0].tobytes() == reconstructions[1].tobytes()
    assert np.abs(reconstructions.astype(int) - np.stack(images)).mean() < 25  # they are the uploads, roughly
    pixels = np.stack([result.images[0] for result in results]).astype(np.float32)
    steps = np.abs(np.diff(pixels, axis=0)).mean(axis=(1, 2, 3))
    print(f"\nuploads: step distance mean {steps.mean():.2f}, max/mean {steps.max() / steps.mean():.2f}")
    assert steps.max() / steps.mean() < 2.0 and steps.min() > 0


def sketch_pixels(flipped: bool) -> np.ndarray:
    """A 32x32 crude sketch (a red disc and a blue bar on white), as uploads.decode_edit would give it."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (32, 32), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((2, 4, 16, 18), fill=(220, 30, 40))
    draw.rectangle((19, 20, 30, 28), fill=(30, 60, 210))
    return np.asarray(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else image)


def test_frames_of_one_interpolation_share_batched_runs(engine):
    start, end = GenerateRequest(model="dcgan", seed=1, class_id=0), GenerateRequest(model="dcgan", seed=2, class_id=0)
    frames = run(creative.interpolation_frames(engine, start, end, 16))
    runs_before = engine.batchers["dcgan.generate"].runs
    run(generate_all(engine, frames))
    assert engine.batchers["dcgan.generate"].runs - runs_before < 4  # 16 frames, not 16 runs


def test_interpolation_refuses_frames_out_of_bounds_and_mixed_models(engine):
    start = GenerateRequest(model="dcgan", seed=1)
    with pytest.raises(InvalidInput, match="frames must be between 2 and 32"):
        run(creative.interpolation_frames(engine, start, replace(start, seed=2), 33))
    with pytest.raises(InvalidInput, match="one model"):
        run(creative.interpolation_frames(engine, start, GenerateRequest(model="vae", seed=2), 4))


def parents_of(engine, model="gmm", **condition):
    generated = run(pipelines.generate(engine, GenerateRequest(model=model, n=3, seed=40, **condition)))
    genomes = creative.genomes_of(GenerateRequest(model=model, n=3, seed=40, **condition), generated)
    return genomes, [creative.request_of(engine, genome) for genome in genomes]


def test_a_seed_genome_regenerates_its_image_exactly(engine):
    request = GenerateRequest(model="dcgan", n=3, seed=11)  # the class drawn from each seed
    generated = run(pipelines.generate(engine, request))
    for i, genome in enumerate(creative.genomes_of(request, generated)):
        again = run(pipelines.generate(engine, creative.request_of(engine, genome)))
        assert again.images[0].tobytes() == generated.images[i].tobytes()


def test_breeding_is_deterministic_and_children_regenerate_exactly(engine):
    _, parents = parents_of(engine, "dcgan", class_id=1)
    children = run(creative.offspring(engine, parents, 4, 0.2, seed=5))
    twins = run(creative.offspring(engine, parents, 4, 0.2, seed=5))
    assert all(np.array_equal(a.noise, b.noise) for a, b in zip(children, twins))
    first = run(generate_all(engine, children))
    for child, generated in zip(children, first):
        genome = creative.genomes_of(child, generated)[0]
        regenerated = run(pipelines.generate(engine, creative.request_of(engine, genome)))
        assert regenerated.images.tobytes() == generated.images.tobytes()
    assert len({generated.images.tobytes() for generated in first}) == 4


def test_without_mutation_every_gene_comes_from_a_parent(engine):
    _, parents = parents_of(engine, "diffusion", prompt="a cat", steps=4)
    vectors = np.stack([run(creative.vector_of(engine, parent))[0] for parent in parents])  # (3, 4, 8, 8)
    for child in run(creative.offspring(engine, parents, 3, 0.0, seed=1)):
        matches = (child.noise[0][None] == vectors).all(axis=1)  # (3, 8, 8): a cell inherited whole
        assert matches.any(axis=0).all() and matches.sum(axis=0).max() >= 1
    assert child.prompt == "a cat" and child.steps == 4


def test_children_inherit_a_parents_class_and_stay_near_the_prior(engine):
    _, parents = parents_of(engine, "gmm")  # each parent's class drawn from its seed
    classes = {run(creative.vector_of(engine, parent))[1] for parent in parents}
    children = run(creative.offspring(engine, parents, 6, 0.5, seed=2))
    assert {child.class_id for child in children} <= classes
    mean, spread = creative.prior_moments(engine, "gmm", children[0].class_id)
    assert np.abs((children[0].noise[0] - mean) / spread).mean() < 3


def test_a_genome_for_another_model_version_is_refused(engine):
    genome = Genome(model="dcgan", version="0.0.1-elsewhere", seed=1)
    with pytest.raises(InvalidInput, match="version 0.0.1-elsewhere"):
        creative.request_of(engine, genome)
    with pytest.raises(InvalidInput, match="does not serve"):
        creative.request_of(engine, Genome(model="stylegan", version="1", seed=1))


def test_duplicate_or_too_few_parents_are_refused(engine):
    genomes, _ = parents_of(engine, "dcgan")
    with pytest.raises(InvalidInput, match="distinct"):
        creative.check_parents([genomes[0], genomes[1], genomes[0]])
    with pytest.raises(InvalidInput, match="2..8 parent genomes"):
        creative.check_parents(genomes[:1])
    with pytest.raises(InvalidInput, match="one model"):
        creative.check_parents([genomes[0], Genome(model="vae", version="1", seed=1)])


async def session_property(engine, seed: int, audience: str, rounds: int = 5, population: int = 8) -> list[float]:
    """Mean redness of each round's population while an audience scores it (round 0 included)."""
    session = await creative.start_session(engine, GenerateRequest(model="dcgan", seed=seed), population)
    votes = np.random.default_rng(seed)
    means = []
    for round_ in range(rounds + 1):
        scores = [redness(g.images[0]) for g in await generate_all(engine, session.candidates())]
        means.append(float(np.mean(scores)))
        if round_ < rounds:
            liked = scores if audience == "redness" else list(votes.random(population))
            session = creative.next_round(session, liked)
    return means


def test_a_session_moves_toward_what_its_audience_likes(engine):
    def gain(seed: int, audience: str) -> float:
        means = run(session_property(engine, seed, audience))
        return means[-1] - means[0]

    gains = {audience: np.array([gain(seed, audience) for seed in range(10)]) for audience in ("redness", "random")}
    for audience, gain in gains.items():
        print(f"\n{audience} audience: redness gain over 5 rounds mean {gain.mean():+.3f}, sd {gain.std():.3f}, "
              f"min {gain.min():+.3f}, max {gain.max():+.3f}")
    assert (gains["redness"] > 0.1).all()  # every seed, not only on average
    assert (gains["redness"] > gains["random"]).all()  # seed by seed, the same start and population size
    assert gains["redness"].mean() > gains["random"].mean() + 2 * gains["random"].std()


def test_feedback_needs_one_finite_score_per_candidate(engine):
    session = run(creative.start_session(engine, GenerateRequest(model="vae", seed=1), 4))
    with pytest.raises(InvalidInput, match="one number per candidate: 4, got 3"):
        creative.next_round(session, [1.0, 2.0, 3.0])
    with pytest.raises(InvalidInput, match="finite"):
        creative.next_round(session, [1.0, 2.0, 3.0, float("nan")])
    assert creative.next_round(session, [1.0, 2.0, 3.0, 4.0]).round == 1
